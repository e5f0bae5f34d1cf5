"""The local AWS: a moto server and the template's queues, topic and state machine.

moto runs as a child process on 127.0.0.1 with ``MOTO_PORT`` set to its own
port, because its Step Functions interpreter calls SQS at
``localhost:$MOTO_PORT`` when it runs an execution. Queues are created with
their names, redrive policies, FIFO settings and visibility timeouts from
the template. Every created resource is registered with the resolver, so
``!Ref`` and ``!GetAtt`` then return the local URLs and ARNs.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

from local.cfn import IntrinsicResolver, TemplateError
from local.embedded import free_port, wait_for_port
from local.functions import exit_with_parent
from local.model import resources_of_type

__all__ = ["LOCAL_CREDENTIALS", "MotoServer", "create_resources"]

logger = logging.getLogger(__name__)

LOCAL_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
}

# Queue properties that map one to one onto SQS queue attributes.
_QUEUE_ATTRIBUTES = (
    "ContentBasedDeduplication",
    "DeduplicationScope",
    "DelaySeconds",
    "FifoQueue",
    "FifoThroughputLimit",
    "MaximumMessageSize",
    "MessageRetentionPeriod",
    "ReceiveMessageWaitTimeSeconds",
    "VisibilityTimeout",
)


class MotoServer:
    """A moto server child process on 127.0.0.1 with Step Functions execution on."""

    def __init__(self, port: int | None = None, *, region: str = "us-east-1") -> None:
        self.port = port or free_port()
        self.region = region
        self._process: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        running = self._process is not None and self._process.poll() is None
        return f"<MotoServer port={self.port} running={running}>"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, log_path: Path) -> MotoServer:
        env = {**os.environ, **LOCAL_CREDENTIALS, "MOTO_PORT": str(self.port)}
        env["AWS_DEFAULT_REGION"] = self.region
        env.pop("AWS_ENDPOINT_URL", None)
        with log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "moto.server",
                    "-H",
                    "127.0.0.1",
                    "-p",
                    str(self.port),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
                preexec_fn=exit_with_parent,
            )
        wait_for_port(self.port, timeout_s=30)
        if self._process.poll() is not None:
            raise RuntimeError(
                f"the moto server exited with code {self._process.returncode}: "
                f"see {log_path}"
            )
        # Without this, moto accepts StartExecution but never runs a state.
        response = httpx.post(
            f"{self.url}/moto-api/config",
            json={"stepfunctions": {"execute_state_machine": True}},
            timeout=10,
        )
        response.raise_for_status()
        logger.info("moto.started url=%s log=%s", self.url, log_path)
        return self

    def client(self, service: str) -> Any:
        import boto3

        return boto3.client(
            service,
            endpoint_url=self.url,
            region_name=self.region,
            aws_access_key_id=LOCAL_CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=LOCAL_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            aws_session_token=LOCAL_CREDENTIALS["AWS_SESSION_TOKEN"],
        )

    def stop(self) -> None:
        if self._process is None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(timeout=5)
        self._process = None
        logger.info("moto.stopped port=%s", self.port)


def create_resources(
    moto: MotoServer, resolver: IntrinsicResolver, root: Path
) -> dict[str, str]:
    """Create queues, topics, KMS keys and state machines; return queue URLs by name."""
    queue_urls = _create_queues(moto, resolver)
    _create_topics(moto, resolver)
    _create_kms_keys(moto, resolver)
    _create_state_machines(moto, resolver, root)
    return queue_urls


def _create_queues(moto: MotoServer, resolver: IntrinsicResolver) -> dict[str, str]:
    sqs = moto.client("sqs")
    queues = resources_of_type(resolver, "AWS::SQS::Queue")

    # Names and ARNs first, so that redrive policies can name their DLQ.
    names = {}
    for logical_id, resource in queues.items():
        properties = resource.get("Properties") or {}
        name = resolver.resolve(properties.get("QueueName")) or logical_id
        if properties.get("FifoQueue") and not name.endswith(".fifo"):
            name += ".fifo"
        names[logical_id] = name
        arn = f"arn:aws:sqs:{resolver.region}:{resolver.account_id}:{name}"
        resolver.attributes[(logical_id, "Arn")] = arn
        resolver.attributes[(logical_id, "QueueName")] = name

    # Dead-letter queues before the queues that redrive into them.
    ordered = sorted(
        queues, key=lambda lid: "RedrivePolicy" in (queues[lid].get("Properties") or {})
    )
    urls = {}
    for logical_id in ordered:
        properties = resolver.resolve(queues[logical_id].get("Properties") or {})
        attributes = {
            key: _attribute_text(properties[key])
            for key in _QUEUE_ATTRIBUTES
            if key in properties
        }
        if "RedrivePolicy" in properties:
            attributes["RedrivePolicy"] = json.dumps(properties["RedrivePolicy"])
        url = sqs.create_queue(QueueName=names[logical_id], Attributes=attributes)[
            "QueueUrl"
        ]
        resolver.refs[logical_id] = url
        resolver.attributes[(logical_id, "QueueUrl")] = url
        urls[names[logical_id]] = url
    return urls


def _attribute_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _create_topics(moto: MotoServer, resolver: IntrinsicResolver) -> None:
    sns = moto.client("sns")
    for logical_id, resource in resources_of_type(resolver, "AWS::SNS::Topic").items():
        properties = resolver.resolve(resource.get("Properties") or {})
        name = properties.get("TopicName") or f"{resolver.stack_name}-{logical_id}"
        attributes = {"FifoTopic": "true"} if properties.get("FifoTopic") else {}
        arn = sns.create_topic(Name=name, Attributes=attributes)["TopicArn"]
        resolver.refs[logical_id] = arn
        resolver.attributes[(logical_id, "TopicArn")] = arn
        resolver.attributes[(logical_id, "TopicName")] = name


def _create_kms_keys(moto: MotoServer, resolver: IntrinsicResolver) -> None:
    kms = moto.client("kms")
    for logical_id, resource in resources_of_type(resolver, "AWS::KMS::Key").items():
        properties = resolver.resolve(resource.get("Properties") or {})
        metadata = kms.create_key(Description=properties.get("Description", logical_id))
        key = metadata["KeyMetadata"]
        resolver.refs[logical_id] = key["KeyId"]
        resolver.attributes[(logical_id, "Arn")] = key["Arn"]
        resolver.attributes[(logical_id, "KeyId")] = key["KeyId"]


def _create_state_machines(
    moto: MotoServer, resolver: IntrinsicResolver, root: Path
) -> None:
    sfn = moto.client("stepfunctions")
    role_arn = f"arn:aws:iam::{resolver.account_id}:role/local-state-machine"
    for logical_id, resource in resources_of_type(
        resolver, "AWS::Serverless::StateMachine"
    ).items():
        properties = resource.get("Properties") or {}
        name = resolver.resolve(properties.get("Name")) or logical_id
        arn = (
            f"arn:aws:states:{resolver.region}:{resolver.account_id}"
            f":stateMachine:{name}"
        )
        resolver.refs[logical_id] = arn
        resolver.attributes[(logical_id, "Arn")] = arn
        resolver.attributes[(logical_id, "Name")] = name

        definition = _state_machine_definition(resolver, logical_id, properties, root)
        if definition is None:
            continue
        sfn.create_state_machine(
            name=name,
            definition=definition,
            roleArn=role_arn,
            type=str(properties.get("Type", "STANDARD")).upper(),
        )
        logger.info("state_machine.created name=%s arn=%s", name, arn)


def _state_machine_definition(
    resolver: IntrinsicResolver,
    logical_id: str,
    properties: dict[str, Any],
    root: Path,
) -> str | None:
    if "Definition" in properties:
        text = json.dumps(resolver.resolve(properties["Definition"]))
    else:
        uri = properties.get("DefinitionUri")
        if not isinstance(uri, str):
            raise TemplateError(f"{logical_id}: DefinitionUri must be a local path")
        path = root / uri
        if not path.exists():
            logger.warning(
                "state_machine.skipped logical_id=%s reason=%s is missing",
                logical_id,
                path,
            )
            return None
        text = path.read_text(encoding="utf-8")

    # DefinitionSubstitutions replace ${Name} placeholders in the definition text.
    substitutions = resolver.resolve(properties.get("DefinitionSubstitutions") or {})
    for key, value in substitutions.items():
        text = text.replace("${" + key + "}", str(value))
    return text
