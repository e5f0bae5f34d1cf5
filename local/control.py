"""Talk to a running local stack: send and receive SQS messages, switch failures.

Every function takes the stack's ``stack.json`` contents (see
:func:`local.stack.read_state`) and calls only servers on 127.0.0.1 that the
stack started.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

import httpx

from local.aws import LOCAL_CREDENTIALS

__all__ = [
    "banner",
    "create_queue",
    "receive_messages",
    "recorded",
    "send_message",
    "set_failure",
]

_TIMEOUT_S = 10.0


def sqs_client(state: dict[str, Any]) -> Any:
    import boto3

    return boto3.client(
        "sqs",
        endpoint_url=state["moto"],
        region_name=state["region"],
        aws_access_key_id=LOCAL_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=LOCAL_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
    )


def _queue_url(state: dict[str, Any], queue: str) -> str:
    if queue.startswith("http"):
        return queue
    if queue in state["queues"]:
        return str(state["queues"][queue])
    # Queues created after start (reply queues) are looked up in moto.
    return str(sqs_client(state).get_queue_url(QueueName=queue)["QueueUrl"])


def create_queue(state: dict[str, Any], name: str) -> str:
    """Create a queue (a no-op when it exists) and return its URL."""
    return str(sqs_client(state).create_queue(QueueName=name)["QueueUrl"])


def send_message(
    state: dict[str, Any],
    queue: str,
    body: str,
    attributes: dict[str, str] | None = None,
    group_id: str | None = None,
) -> dict[str, Any]:
    """Send one message with String attributes; return its id and queue URL."""
    url = _queue_url(state, queue)
    request: dict[str, Any] = {
        "QueueUrl": url,
        "MessageBody": body,
        "MessageAttributes": {
            name: {"DataType": "String", "StringValue": value}
            for name, value in (attributes or {}).items()
        },
    }
    if url.endswith(".fifo"):
        request["MessageGroupId"] = group_id or "default"
        request["MessageDeduplicationId"] = str(uuid.uuid4())
    response = sqs_client(state).send_message(**request)
    return {"queueUrl": url, "messageId": response["MessageId"]}


def receive_messages(
    state: dict[str, Any], queue: str, wait_s: int
) -> list[dict[str, Any]]:
    """Receive up to 10 messages, delete them, and return bodies and attributes."""
    client = sqs_client(state)
    url = _queue_url(state, queue)
    response = client.receive_message(
        QueueUrl=url,
        MaxNumberOfMessages=10,
        WaitTimeSeconds=min(max(wait_s, 0), 20),
        MessageAttributeNames=["All"],
    )
    messages = []
    for message in response.get("Messages") or []:
        client.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
        try:
            body: Any = json.loads(message["Body"])
        except json.JSONDecodeError:
            body = message["Body"]
        attributes = {
            name: value.get("StringValue")
            for name, value in (message.get("MessageAttributes") or {}).items()
        }
        messages.append(
            {"messageId": message["MessageId"], "body": body, "attributes": attributes}
        )
    return messages


def set_failure(state: dict[str, Any], target: str, mode: str) -> Any:
    """Switch the demo service or one LLM provider to ``mode`` (``ok`` recovers)."""
    if target == "demo":
        if mode == "ok":
            settings: dict[str, Any] = {"mode": "ok"}
        elif mode == "hang":
            settings = {"mode": "hang"}
        else:
            settings = {"mode": "fail", "status": _status(mode)}
        response = httpx.post(
            f"{state['demo']}/_control", json=settings, timeout=_TIMEOUT_S
        )
    else:
        if not state.get("llm"):
            raise SystemExit("the local LLM server is not running in this stack")
        rule: dict[str, Any] = {"provider": target, "model": "*", "mode": mode}
        # A plain status other than the modes with their own names is an error.
        if mode.isdigit() and mode not in ("429", "529"):
            rule = {**rule, "mode": "error", "status": int(mode)}
        response = httpx.post(
            f"{state['llm']}/_control/failures", json=rule, timeout=_TIMEOUT_S
        )
    if response.status_code >= 400:
        raise SystemExit(f"{target} rejected mode {mode!r}: {response.text}")
    state_now = response.json()
    if target == "demo":
        return {
            "target": "demo",
            "mode": state_now["mode"],
            "status": state_now["status"],
        }
    rule = state_now.get("failure") or {}
    summary = {"target": target, "mode": rule.get("mode", mode)}
    if rule.get("mode") == "error":
        summary["status"] = rule.get("status")
    return summary


def _status(mode: str) -> int:
    if not mode.isdigit() or not 400 <= int(mode) <= 599:
        raise SystemExit(
            f"mode must be ok, hang or an HTTP status 400-599, got {mode!r}"
        )
    return int(mode)


def recorded(state: dict[str, Any], target: str) -> Any:
    """Return what a stand-in received (the demo service: its counters)."""
    paths = {
        "slack": f"{state['slack']}/_recorded",
        "pagerduty": f"{state['pagerduty']}/_recorded",
        "demo": f"{state['demo']}/_control",
        "llm": f"{state.get('llm')}/_control/requests",
    }
    response = httpx.get(paths[target], timeout=_TIMEOUT_S)
    response.raise_for_status()
    return response.json()


def _without_password(url: str) -> str:
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)


def banner(info: dict[str, Any]) -> str:
    """Return the start-up summary: every URL and queue URL of the stack."""
    width = max(len(name) for name in info["queues"]) + 2
    lines = [
        "",
        "agent-resilience local stack is ready",
        f"  HTTP API      {info['gateway']}   (send X-Org-Id to set the org)",
        f"  moto (AWS)    {info['moto']}   (aws --endpoint-url {info['moto']} ...)",
        f"  LLM server    {info.get('llm') or 'not running'}",
        f"  demo service  {info['demo']}   (python -m local fail demo 503)",
        f"  Slack         {info['slack']}/_recorded",
        f"  PagerDuty     {info['pagerduty']}/_recorded",
        f"  PostgreSQL    {_without_password(info['database'])}",
        f"  Redis         {info.get('redis') or 'Upstash (from the environment)'}",
        "  queues",
    ]
    lines.extend(
        f"    {name:<{width}}{url}" for name, url in sorted(info["queues"].items())
    )
    for name, arn in info["stateMachines"].items():
        lines.append(f"  state machine {name}: {arn}")
    lines.append("Press Ctrl-C to stop.")
    return "\n".join(lines)
