"""All four patterns end to end, over HTTP and SQS only, on the local stack.

Each test drives the stack as a user would: the HTTP API on the gateway, the
SQS queues on the local moto server, and the control endpoints of the demo
service, the LLM server and the Slack stand-in. Step Functions is read
through its own API on moto to see an execution's status.
"""

from __future__ import annotations

import json
import uuid
from html.parser import HTMLParser
from typing import Any
from urllib.parse import urljoin

import httpx
import pytest

from tests.e2e.harness import LocalStackHandle, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _call_demo(client: httpx.Client, path: str = "/ok") -> httpx.Response:
    return client.post("/breaker/calls", json={"service": "demo", "path": path})


# ---------------------------------------------------------------- circuit breaker


def test_breaker_opens_then_closes(local_stack: LocalStackHandle, demo: str) -> None:
    client = local_stack.http()
    httpx.post(
        f"{demo}/_control", json={"mode": "fail", "status": 503}
    ).raise_for_status()

    # GIVEN a downstream that returns 503: each call returns 200 with the
    # downstream status until the breaker opens (failure threshold 3).
    answers = []
    for _ in range(6):
        response = _call_demo(client)
        answers.append(response)
        if response.status_code == 503:
            break
    rejected = answers[-1]
    assert rejected.status_code == 503, rejected.text
    assert rejected.json()["error"] == "breaker_open"
    assert rejected.json()["retryAfterMs"] > 0
    assert "Retry-After" in rejected.headers
    passed = answers[:-1]
    assert 1 <= len(passed) <= 3
    for answer in passed:
        assert answer.status_code == 200, answer.text
        assert answer.json()["status"] == 503
    assert client.get("/breaker/demo").json()["state"] == "open"

    # WHEN the downstream recovers and the 2 s cooldown passes
    httpx.post(f"{demo}/_control", json={"mode": "ok"}).raise_for_status()

    def probe_succeeds() -> httpx.Response | None:
        response = _call_demo(client)
        return response if response.status_code == 200 else None

    recovered = wait_until(probe_succeeds, timeout_s=15, interval_s=0.5)

    # THEN the probe call goes through and the breaker is closed again
    assert recovered.json()["status"] == 200
    assert client.get("/breaker/demo").json()["state"] == "closed"


def test_unknown_route_is_404(local_stack: LocalStackHandle) -> None:
    response = local_stack.http().get("/no-such-route")

    assert response.status_code == 404
    assert response.json() == {"message": "Not Found"}


# ---------------------------------------------------------------- partial success


def test_batch_second_run_served_from_cache(
    local_stack: LocalStackHandle, demo: str
) -> None:
    client = local_stack.http(org_id="acme")
    batch_id = _unique("orders")
    body = {
        "batchId": batch_id,
        "items": [
            {
                "id": f"order-{n}",
                "processor": "service",
                "data": {"service": "demo", "method": "POST", "path": "/orders"},
            }
            for n in (1, 2)
        ],
    }

    first = client.post("/batches", json=body)
    second = client.post("/batches", json=body)

    assert first.status_code == 200, first.text
    assert first.json()["okCount"] == 2
    assert [r["cached"] for r in first.json()["results"]] == [False, False]
    assert second.status_code == 200, second.text
    assert second.json()["okCount"] == 2
    assert [r["cached"] for r in second.json()["results"]] == [True, True]
    # The downstream saw one effect per idempotency key, not two.
    effects = httpx.get(f"{demo}/_control").json()["effects"]
    assert effects == {
        f"batch:{batch_id}:item:order-1": 1,
        f"batch:{batch_id}:item:order-2": 1,
    }
    stored = client.get(f"/batches/{batch_id}")
    assert stored.json()["okCount"] == 2


def test_sqs_batch_retries_only_failed_item(
    local_stack: LocalStackHandle, demo: str
) -> None:
    client = local_stack.http(org_id="acme")
    sqs = local_stack.aws("sqs")
    queue_url = local_stack.queue_url("batch-items")
    batch_id = _unique("sqs")
    items = [
        {
            "id": "good",
            "processor": "service",
            "data": {"service": "demo", "path": "/ok"},
        },
        {"id": "bad", "data": {"fail": "transient"}},
    ]

    # GIVEN two items sent as one SQS batch, one of which always fails
    sqs.send_message_batch(
        QueueUrl=queue_url,
        Entries=[
            {
                "Id": item["id"],
                "MessageBody": json.dumps({"batchId": batch_id, "item": item}),
                "MessageAttributes": {
                    "orgId": {"DataType": "String", "StringValue": "acme"}
                },
            }
            for item in items
        ],
    )

    # WHEN the failed message has come back (it is visible again after 1 s)
    def failed_item_retried() -> dict[str, Any] | None:
        response = client.get(f"/batches/{batch_id}")
        if response.status_code != 200:
            return None
        results = {r["id"]: r for r in response.json()["results"]}
        bad = results.get("bad")
        # More attempts than one delivery makes (3) means it came back.
        return results if bad and bad["attempts"] > 3 else None

    results = wait_until(failed_item_retried, timeout_s=30, interval_s=0.5)

    # THEN the good item ran once and the bad one was delivered again
    assert results["good"]["ok"] is True
    assert results["good"]["attempts"] == 1
    assert results["bad"]["ok"] is False
    key = f"batch:{batch_id}:item:good"
    assert httpx.get(f"{demo}/_control").json()["attempts"] == {key: 1}


def test_sqs_poison_message_reaches_dlq(local_stack: LocalStackHandle) -> None:
    sqs = local_stack.aws("sqs")
    batch_id = _unique("poison")
    body = {"batchId": batch_id, "item": {"id": "p", "data": {"fail": "transient"}}}
    sqs.send_message(
        QueueUrl=local_stack.queue_url("batch-items"), MessageBody=json.dumps(body)
    )
    dlq_url = local_stack.queue_url("batch-items-dlq")

    # maxReceiveCount is 5; a failed message comes back after 1 s.
    def message_in_dlq() -> list[dict[str, Any]] | None:
        # Other tests' poison messages share the DLQ: take several at once.
        response = sqs.receive_message(
            QueueUrl=dlq_url, MaxNumberOfMessages=10, WaitTimeSeconds=1
        )
        mine = [m for m in response.get("Messages") or [] if batch_id in m["Body"]]
        return mine or None

    dead = wait_until(message_in_dlq, timeout_s=45, interval_s=0.5)

    assert json.loads(dead[0]["Body"]) == body


# ---------------------------------------------------------------- human escalation


class _FormParser(HTMLParser):
    """Collect the action and fields of the first form of an HTML page."""

    def __init__(self) -> None:
        super().__init__()
        self.action: str | None = None
        self.fields: dict[str, str] = {}
        self._textarea: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name: value or "" for name, value in attrs}
        if tag == "form" and self.action is None:
            self.action = values.get("action", "")
        elif tag == "input" and values.get("name"):
            self.fields[values["name"]] = values.get("value", "")
        elif tag == "textarea" and values.get("name"):
            self._textarea = values["name"]
            self.fields[self._textarea] = ""

    def handle_data(self, data: str) -> None:
        if self._textarea is not None:
            self.fields[self._textarea] += data

    def handle_endtag(self, tag: str) -> None:
        if tag == "textarea":
            self._textarea = None


def test_escalation_approved_through_form(local_stack: LocalStackHandle) -> None:
    client = local_stack.http(org_id="acme")
    slack = str(local_stack.info["slack"])

    # GIVEN an escalation whose approvers have been notified in Slack
    started = client.post(
        "/escalations",
        json={
            "data": {"refundUsd": 120, "customer": "c-42"},
            "reason": "refund above the automatic limit",
        },
    )
    assert started.status_code == 202, started.text
    escalation = started.json()
    assert escalation["status"] == "pending"
    assert escalation["approvalUrl"].startswith(local_stack.api)
    posted = wait_until(
        lambda: _slack_calls(slack, "/api/chat.postMessage", escalation["id"]),
        timeout_s=20,
        description="Slack message posted by the notify handler",
    )
    assert len(posted) == 1

    # WHEN a person opens the approval link, lowers the refund and approves
    browser = httpx.Client(timeout=35)
    page = browser.get(escalation["approvalUrl"])
    assert page.status_code == 200, page.text
    form = _FormParser()
    form.feed(page.text)
    assert form.action is not None
    assert json.loads(form.fields["data"]) == {"refundUsd": 120, "customer": "c-42"}
    edited = {"refundUsd": 100, "customer": "c-42"}
    decided = browser.post(
        urljoin(str(page.url), form.action),
        data={**form.fields, "data": json.dumps(edited), "decision": "approve"},
    )
    assert decided.status_code == 200, decided.text

    # THEN the execution succeeds with the decision alone: the approved data
    # stays in PostgreSQL, and the resume handler reads it from there
    execution = _finished_execution(local_stack, escalation["id"])
    assert execution["status"] == "SUCCEEDED"
    decision = json.loads(execution["output"])["decision"]
    assert decision["decision"] == "approve"
    assert decision["edited"] is True
    assert "data" not in decision

    # The resume handler stamps resumedAt when it has handed the outcome on,
    # and updates the Slack message.
    def resumed() -> dict[str, Any] | None:
        record = client.get(f"/escalations/{escalation['id']}").json()
        return record if record.get("resumedAt") else None

    record = wait_until(resumed, timeout_s=20, description="escalation resumed")
    assert record["status"] == "approved"
    assert record["decision"]["decision"] == "approve"
    assert record["decision"]["delivery"] == "delivered"
    assert record["decision"]["data"] == edited
    updated = _slack_calls(slack, "/api/chat.update", escalation["id"])
    assert len(updated) == 1


def test_escalation_expires_after_timeout(local_stack: LocalStackHandle) -> None:
    client = local_stack.http(org_id="acme")
    slack = str(local_stack.info["slack"])

    # GIVEN an escalation that no approver decides within its 2-second timeout
    started = client.post(
        "/escalations",
        json={"data": {"userId": "u-9"}, "reason": "expiry", "timeoutSeconds": 2},
    )
    assert started.status_code == 202, started.text
    escalation = started.json()

    # WHEN the state machine's wait times out
    def expired() -> dict[str, Any] | None:
        record = client.get(f"/escalations/{escalation['id']}").json()
        return record if record["status"] != "pending" else None

    record = wait_until(expired, timeout_s=30, description="escalation expired")

    # THEN it is expired (not rejected), the execution SUCCEEDED, the Slack
    # message shows the expiry, and the old link returns the expired page
    assert record["status"] == "expired"
    execution = _finished_execution(local_stack, escalation["id"])
    assert execution["status"] == "SUCCEEDED"
    updated = wait_until(
        lambda: _slack_calls(slack, "/api/chat.update", escalation["id"]),
        timeout_s=20,
        description="Slack message updated to expired",
    )
    assert "xpired" in json.dumps(updated[-1])
    page = httpx.get(escalation["approvalUrl"], timeout=35)
    assert page.status_code == 410


def _finished_execution(
    local_stack: LocalStackHandle, escalation_id: str
) -> dict[str, Any]:
    """Wait for the escalation's execution to leave RUNNING and return it."""
    sfn = local_stack.aws("stepfunctions")
    state_machine = next(iter(local_stack.info["stateMachines"].values()))
    execution_arn = state_machine.replace(":stateMachine:", ":execution:") + (
        f":{escalation_id}"
    )

    def execution_finished() -> dict[str, Any] | None:
        execution = sfn.describe_execution(executionArn=execution_arn)
        return execution if execution["status"] != "RUNNING" else None

    return dict(wait_until(execution_finished, timeout_s=20))


def _slack_calls(slack_url: str, path: str, needle: str) -> list[dict[str, Any]]:
    requests = httpx.get(f"{slack_url}/_recorded").json()["requests"]
    return [r for r in requests if r["path"] == path and needle in json.dumps(r)]


# ---------------------------------------------------------------- graceful degradation


def test_completion_fallback_chain(
    local_stack: LocalStackHandle, llm_server: str
) -> None:
    client = local_stack.http()
    control = f"{llm_server}/_control/failures"

    # GIVEN OpenAI failing with 500s
    rule = {"provider": "openai", "model": "*", "mode": "error", "status": 500}
    httpx.post(control, json=rule).raise_for_status()
    via_anthropic = client.post(
        "/completions", json={"prompt": _unique("Summarise the refund policy")}
    )

    # AND THEN Anthropic overloaded as well
    rule = {"provider": "anthropic", "model": "*", "mode": "529"}
    httpx.post(control, json=rule).raise_for_status()
    via_template = client.post(
        "/completions", json={"prompt": _unique("Summarise the refund policy")}
    )

    assert via_anthropic.status_code == 200, via_anthropic.text
    assert via_anthropic.json()["provider"] == "anthropic"
    assert via_anthropic.json()["ok"] is True
    assert via_template.status_code == 200, via_template.text
    assert via_template.json()["provider"] == "local"
    assert via_template.json()["degraded"] is True
    assert via_template.json()["output"]
