"""How the local stack runs the template: FIFO order, SNS delivery, HTTP details."""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
import pytest

from tests.e2e.harness import LocalStackHandle, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]


def _results(client: httpx.Client, batch_id: str) -> dict[str, dict[str, Any]]:
    response = client.get(f"/batches/{batch_id}")
    if response.status_code != 200:
        return {}
    return {result["id"]: result for result in response.json()["results"]}


def test_fifo_group_waits_for_failed_message(local_stack: LocalStackHandle) -> None:
    client = local_stack.http(org_id="acme")
    sqs = local_stack.aws("sqs")
    batch_id = f"fifo-{uuid.uuid4().hex[:8]}"
    messages = [
        ("g1", {"id": "x1", "data": {"fail": "transient"}}),
        ("g1", {"id": "x2", "data": {"n": 2}}),
        ("g2", {"id": "y1", "data": {"n": 3}}),
    ]

    # GIVEN group g1 whose first message always fails, and group g2
    for group, item in messages:
        sqs.send_message(
            QueueUrl=local_stack.queue_url("batch-items.fifo"),
            MessageBody=json.dumps({"batchId": batch_id, "item": item}),
            MessageGroupId=group,
            MessageAttributes={"orgId": {"DataType": "String", "StringValue": "acme"}},
        )

    # WHEN g2 is done and g1's first message has failed at least once
    def other_group_done() -> dict[str, dict[str, Any]] | None:
        results = _results(client, batch_id)
        done = results.get("y1", {}).get("ok") and results.get("x1", {}).get("attempts")
        return results if done else None

    results = wait_until(
        other_group_done, timeout_s=45, description="group g2 processed"
    )

    # THEN g1's second message has not run ahead of the failed one
    assert results["y1"]["ok"] is True, results
    assert results["x1"]["ok"] is False, results
    assert results.get("x2", {}).get("status") != "completed", results

    # AND once the failed message reaches the DLQ (maxReceiveCount 5), it runs
    def second_message_done() -> dict[str, Any] | None:
        x2 = _results(client, batch_id).get("x2")
        return x2 if x2 and x2["ok"] else None

    x2 = wait_until(second_message_done, timeout_s=60, description="x2 processed")
    assert x2["attempts"] == 1, x2
    dead = sqs.receive_message(
        QueueUrl=local_stack.queue_url("batch-items-dlq.fifo"),
        MaxNumberOfMessages=10,
        WaitTimeSeconds=2,
    )
    bodies = [json.loads(m["Body"]) for m in dead.get("Messages") or []]
    assert {"batchId": batch_id, "item": messages[0][1]} in bodies, (
        local_stack.log_tail()
    )


def test_alarm_on_topic_reaches_slack(local_stack: LocalStackHandle) -> None:
    sns = local_stack.aws("sns")
    slack = str(local_stack.info["slack"])
    topic_arn = next(
        t["TopicArn"]
        for t in sns.list_topics()["Topics"]
        if t["TopicArn"].endswith(":agent-resilience-alerts")
    )
    alarm = f"E2eAlarm{uuid.uuid4().hex[:6]}"

    sns.publish(
        TopicArn=topic_arn,
        Subject=f'ALARM: "{alarm}"',
        Message=json.dumps(
            {
                "AlarmName": alarm,
                "AlarmDescription": "A circuit breaker opened.",
                "NewStateValue": "ALARM",
                "NewStateReason": "Threshold crossed",
                "StateChangeTime": "2026-01-01T00:00:00.000+0000",
                "Trigger": {
                    "MetricName": "BreakerOpened",
                    "Namespace": "AgentResilience",
                },
            }
        ),
    )

    def forwarded() -> list[dict[str, Any]] | None:
        requests = httpx.get(f"{slack}/_recorded").json()["requests"]
        return [r for r in requests if alarm in json.dumps(r)] or None

    posts = wait_until(forwarded, timeout_s=20, description="alarm forwarded to Slack")
    assert posts[0]["path"].startswith("/services/")


def test_head_route_sends_no_body(local_stack: LocalStackHandle) -> None:
    url = f"{local_stack.api}/approvals/esc-unknown"

    head = httpx.head(url, timeout=10)
    get = httpx.get(url, timeout=10)

    assert head.status_code == get.status_code
    assert head.content == b""
    assert get.content != b""


def test_method_not_declared_is_404(local_stack: LocalStackHandle) -> None:
    response = httpx.delete(f"{local_stack.api}/batches/b1", timeout=10)

    assert response.status_code == 404
    assert response.json() == {"message": "Not Found"}
