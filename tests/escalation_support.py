"""Helpers of the escalation tests: a moto server running the state machine,
queue pumps that feed the handlers as Lambda would, and API Gateway events.
"""

from __future__ import annotations

import base64
import html
import json
import re
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import boto3
import pytest

from local.embedded import free_port
from resilience.db import Database

ROOT = Path(__file__).resolve().parents[1]
ASL_PATH = ROOT / "statemachines" / "escalation.asl.json"
LINK_KEY = "k" * 48
LOCAL_KEY = base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
SLACK_SECRET = "slack-signing-secret-for-tests"
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}

# Outcomes handed to the test resumer (see ``record_resumed``).
RESUMED: list[Any] = []


def record_resumed(outcome: Any) -> None:
    """Resumer registered for ``source.pattern == "test"``: keeps each outcome."""
    RESUMED.append(outcome)


@dataclass
class LambdaContextStandIn:
    """The attributes of a Lambda context that Powertools reads."""

    function_name: str = "escalation-test"
    memory_limit_in_mb: int = 512
    invoked_function_arn: str = (
        "arn:aws:lambda:us-east-1:123456789012:function:escalation-test"
    )
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))

    def get_remaining_time_in_millis(self) -> int:
        return 30_000


@dataclass
class MotoStack:
    """A moto server with the escalation queues and state machine of one test."""

    endpoint: str
    notify_url: str
    resume_url: str
    state_machine_arn: str

    @property
    def sqs(self) -> Any:
        return boto3.client("sqs", endpoint_url=self.endpoint)

    @property
    def sfn(self) -> Any:
        return boto3.client("stepfunctions", endpoint_url=self.endpoint)

    def receive(self, queue_url: str, *, wait_s: float = 5.0) -> list[dict[str, Any]]:
        """Receive and delete the messages of a queue, waiting up to ``wait_s``."""
        deadline = time.monotonic() + wait_s
        while True:
            answer = self.sqs.receive_message(
                QueueUrl=queue_url,
                MaxNumberOfMessages=10,
                WaitTimeSeconds=1,
                MessageAttributeNames=["All"],
            )
            messages = answer.get("Messages", [])
            for message in messages:
                self.sqs.delete_message(
                    QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"]
                )
            if messages or time.monotonic() >= deadline:
                return messages

    def execution_status(self, escalation_id: str, *, wait_s: float = 10.0) -> str:
        """Wait for the execution to leave RUNNING and return its status."""
        arn = self.state_machine_arn.replace(":stateMachine:", ":execution:")
        deadline = time.monotonic() + wait_s
        while True:
            status = self.sfn.describe_execution(executionArn=f"{arn}:{escalation_id}")[
                "status"
            ]
            if status != "RUNNING" or time.monotonic() >= deadline:
                return str(status)
            time.sleep(0.1)


def sqs_event(messages: list[dict[str, Any]], queue_arn: str) -> dict[str, Any]:
    """Build the Lambda SQS event for received messages."""
    records = []
    for message in messages:
        records.append(
            {
                "messageId": message["MessageId"],
                "receiptHandle": message["ReceiptHandle"],
                "body": message["Body"],
                "attributes": {"ApproximateReceiveCount": "1"},
                "messageAttributes": {},
                "md5OfBody": message["MD5OfBody"],
                "eventSource": "aws:sqs",
                "eventSourceARN": queue_arn,
                "awsRegion": "us-east-1",
            }
        )
    return {"Records": records}


def http_event(
    method: str,
    url: str,
    *,
    body: bytes | str | None = None,
    headers: dict[str, str] | None = None,
    cookies: list[str] | None = None,
    base64_body: bool = False,
) -> dict[str, Any]:
    """Build an API Gateway HTTP API (v2) event for ``url``."""
    parts = urlsplit(url)
    query: dict[str, str] = {}
    for pair in parts.query.split("&") if parts.query else []:
        name, _, value = pair.partition("=")
        query[urllib.parse.unquote_plus(name)] = urllib.parse.unquote_plus(value)
    raw = body.encode() if isinstance(body, str) else body
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": parts.path,
        "rawQueryString": parts.query,
        "headers": {"host": parts.netloc or "approvals.test", **(headers or {})},
        "requestContext": {
            "domainName": parts.netloc or "approvals.test",
            "http": {"method": method, "path": parts.path, "sourceIp": "127.0.0.1"},
            "requestId": str(uuid.uuid4()),
            "stage": "$default",
        },
        "isBase64Encoded": base64_body,
    }
    if query:
        event["queryStringParameters"] = query
    if cookies:
        event["cookies"] = cookies
    if raw is not None:
        event["body"] = base64.b64encode(raw).decode() if base64_body else raw.decode()
    return event


def start_moto() -> tuple[Any, str]:
    """Start a moto server on a free port with state machines executed for real."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    request = urllib.request.Request(
        f"{endpoint}/moto-api/config",
        data=json.dumps({"stepfunctions": {"execute_state_machine": True}}).encode(),
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=5):
        pass
    return server, endpoint


def moto_session() -> Iterator[str]:
    """Run a moto server for a fixture: AWS test credentials and MOTO_PORT set."""
    with pytest.MonkeyPatch.context() as patch:
        for key, value in AWS_ENV.items():
            patch.setenv(key, value)
        server, endpoint = start_moto()
        # moto's state machine interpreter calls SQS at localhost:$MOTO_PORT.
        patch.setenv("MOTO_PORT", endpoint.rsplit(":", 1)[1])
        try:
            yield endpoint
        finally:
            server.stop()


def create_stack(endpoint: str) -> MotoStack:
    suffix = uuid.uuid4().hex[:8]
    sqs = boto3.client("sqs", endpoint_url=endpoint)
    sfn = boto3.client("stepfunctions", endpoint_url=endpoint)
    notify_url = sqs.create_queue(QueueName=f"escalation-notify-{suffix}")["QueueUrl"]
    resume_url = sqs.create_queue(QueueName=f"escalation-resume-{suffix}")["QueueUrl"]
    # The template substitutes these in AWS; moto substitutes nothing.
    definition = (
        ASL_PATH.read_text()
        .replace("${NotifyQueueUrl}", notify_url)
        .replace("${ResumeQueueUrl}", resume_url)
    )
    arn = sfn.create_state_machine(
        name=f"escalation-{suffix}",
        definition=definition,
        roleArn="arn:aws:iam::123456789012:role/escalation",
        type="STANDARD",
    )["stateMachineArn"]
    return MotoStack(endpoint, notify_url, resume_url, arn)


def escalation_env(
    stack: MotoStack, *, app_url: str = "https://approvals.test"
) -> dict[str, str]:
    """Environment of the escalation handlers against ``stack``."""
    return {
        **AWS_ENV,
        "AWS_ENDPOINT_URL": stack.endpoint,
        "STATE_MACHINE_ARN": stack.state_machine_arn,
        "APP_URL": app_url,
        "LINK_SIGNING_KEY": LINK_KEY,
        "ESCALATION_LOCAL_KEY": LOCAL_KEY,
        "SLACK_SIGNING_SECRET": SLACK_SECRET,
        "ESCALATION_RESUMERS": json.dumps(
            {"test": "tests.escalation_support:record_resumed"}
        ),
    }


def pump(
    stack: MotoStack,
    queue_url: str,
    handler: Callable[[dict[str, Any], Any], Any],
    *,
    wait_s: float = 5.0,
) -> list[dict[str, Any]]:
    """Feed the next messages of a queue to a handler; return the messages."""
    messages = stack.receive(queue_url, wait_s=wait_s)
    if messages:
        arn = "arn:aws:sqs:us-east-1:123456789012:" + queue_url.rsplit("/", 1)[1]
        answer = handler(sqs_event(messages, arn), LambdaContextStandIn())
        assert answer == {"batchItemFailures": []}, answer
    return messages


def load_handler(name: str) -> Any:
    """Import ``functions/escalation/{name}.py`` under a name no other test uses."""
    import importlib.util
    import sys

    module_name = f"escalation_handler_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    path = ROOT / "functions" / "escalation" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(module_name, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


class Harness:
    """Drives the escalation handlers the way API Gateway and SQS would."""

    def __init__(self, stack: MotoStack) -> None:
        self.stack = stack
        self.app = load_handler("app")
        self.notify = load_handler("notify")
        self.resume = load_handler("resume")
        self.reminder = load_handler("reminder")

    def call(self, event: dict[str, Any]) -> dict[str, Any]:
        return dict(self.app.lambda_handler(event, LambdaContextStandIn()))

    def start(self, body: dict[str, Any], *, expect: int = 202) -> dict[str, Any]:
        response = self.call(
            http_event(
                "POST",
                "https://approvals.test/escalations",
                body=json.dumps(body),
                headers={"content-type": "application/json"},
            )
        )
        assert response["statusCode"] == expect, response
        return dict(json.loads(response["body"]))

    def status(self, escalation_id: str) -> dict[str, Any]:
        response = self.call(
            http_event("GET", f"https://approvals.test/escalations/{escalation_id}")
        )
        assert response["statusCode"] == 200, response
        return dict(json.loads(response["body"]))

    def pump_notify(self, *, wait_s: float = 5.0) -> list[dict[str, Any]]:
        return pump(
            self.stack, self.stack.notify_url, self.notify.lambda_handler, wait_s=wait_s
        )

    def pump_resume(self, *, wait_s: float = 5.0) -> list[dict[str, Any]]:
        return pump(
            self.stack, self.stack.resume_url, self.resume.lambda_handler, wait_s=wait_s
        )

    def open_link(
        self, url: str, *, method: str = "GET", headers: dict[str, str] | None = None
    ) -> dict[str, Any]:
        return self.call(http_event(method, url, headers=headers))

    def submit_form(
        self,
        url: str,
        fields: Mapping[Any, str | bytes] | Sequence[tuple[Any, str | bytes]],
        *,
        opened: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """POST the approval form as a browser would after opening the link.

        Names and values given as bytes are percent-encoded byte for byte,
        which sends text that is not UTF-8. A sequence of (name, value) pairs
        can repeat a name, and the page's CSRF token is added after them.
        """
        page = opened or self.open_link(url)
        cookies = [c.split(";", 1)[0] for c in page.get("cookies", [])]
        match = re.search(r'name="csrf" value="([^"]+)"', page["body"])
        form: dict[Any, str | bytes] | list[tuple[Any, str | bytes]]
        if isinstance(fields, Mapping):
            form = dict(fields)
            if match is not None:
                form["csrf"] = html.unescape(match.group(1))
        else:
            form = list(fields)
            if match is not None:
                form.append(("csrf", html.unescape(match.group(1))))
        parts = urllib.parse.urlsplit(url)
        return self.call(
            http_event(
                "POST",
                url,
                body=urllib.parse.urlencode(form),
                headers={
                    "content-type": "application/x-www-form-urlencoded",
                    "origin": f"{parts.scheme}://{parts.netloc}",
                },
                cookies=cookies,
            )
        )

    def post_json(self, url: str, body: Any) -> dict[str, Any]:
        return self.call(
            http_event(
                "POST",
                url,
                body=json.dumps(body),
                headers={"content-type": "application/json"},
            )
        )


def harness_for_test(
    endpoint: str, monkeypatch: pytest.MonkeyPatch, *, slack_url: str | None = None
) -> Iterator[Harness]:
    """Yield a harness on fresh queues and a fresh state machine of ``endpoint``.

    Call it from a test module's ``harness`` fixture, after ``app_env``.
    """
    from resilience.escalation.crypto import encryptor_from_env
    from resilience.escalation.service import reset_service

    stack = create_stack(endpoint)
    for key, value in escalation_env(stack).items():
        monkeypatch.setenv(key, value)
    if slack_url:
        monkeypatch.setenv("SLACK_API_URL", f"{slack_url}/api")
        monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-test")
        monkeypatch.setenv("SLACK_CHANNEL", "#escalations")
    reset_service()
    encryptor_from_env.cache_clear()
    RESUMED.clear()
    yield Harness(stack)
    reset_service()


def count_task_calls() -> list[str]:
    """Record every SendTaskSuccess/SendTaskFailure the service's client makes."""
    calls: list[str] = []
    events = _service().stepfunctions.meta.events
    for operation in ("SendTaskSuccess", "SendTaskFailure"):
        events.register(
            f"before-call.sfn.{operation}",
            lambda model, **_: calls.append(model.name),
        )
    return calls


def audit_actions(database: Database, escalation_id: str | None) -> list[str]:
    """Return the audit actions of one escalation (None: of no escalation)."""
    with database.transaction() as connection:
        rows = connection.execute(
            "SELECT action FROM audit_log "
            "WHERE task_id IS NOT DISTINCT FROM %s AND pattern = 'escalation' "
            "ORDER BY id",
            (escalation_id,),
        ).fetchall()
    return [row["action"] for row in rows]


def _service() -> Any:
    from resilience.escalation.service import get_service

    return get_service()
