"""Escalations end to end on moto's Step Functions and a real PostgreSQL.

Each test starts escalations through the HTTP handler, feeds the notify and
resume queues to their handlers as Lambda would, and decides through the
approval form, the JSON API or the cancel route.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.exceptions import ClientError

from local.embedded import free_port
from local.standins import SlackStandIn
from resilience.db import Database
from resilience.errors import ValidationError
from resilience.escalation.models import Decision
from resilience.escalation.resume import record_outcome
from resilience.escalation.service import get_service
from tests.escalation_support import (
    RESUMED,
    Harness,
    LambdaContextStandIn,
    audit_actions,
    count_task_calls,
    harness_for_test,
    http_event,
    moto_session,
)

pytestmark = pytest.mark.timeout(60)

ARN_PREFIX = "arn:aws:sqs:us-east-1:123456789012:"


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    yield from moto_session()


@pytest.fixture
def slack() -> Iterator[SlackStandIn]:
    stand_in = SlackStandIn().start()
    yield stand_in  # type: ignore[misc]
    stand_in.stop()


@pytest.fixture
def harness(
    app_env: dict[str, str],
    moto_endpoint: str,
    monkeypatch: pytest.MonkeyPatch,
    slack: SlackStandIn,
) -> Iterator[Harness]:
    yield from harness_for_test(moto_endpoint, monkeypatch, slack_url=slack.url)


def slack_calls(slack: SlackStandIn, method: str) -> list[dict[str, Any]]:
    return [entry for entry in slack.recorded if entry["path"] == f"/api/{method}"]


def start_and_notify(harness: Harness, **fields: Any) -> dict[str, Any]:
    body = {"data": {"refund": 120}, "reason": "refund above limit", **fields}
    started = harness.start(body)
    assert len(harness.pump_notify()) == 1
    return started


def test_approve_resumes_with_edited_data(harness: Harness) -> None:
    started = start_and_notify(harness, source={"pattern": "test", "itemId": "i1"})
    assert started["status"] == "pending"

    answer = harness.submit_form(
        started["approvalUrl"], {"decision": "approve", "data": '{"refund": 100}'}
    )

    assert answer["statusCode"] == 200, answer["body"]
    assert harness.stack.execution_status(started["id"]) == "SUCCEEDED"
    assert len(harness.pump_resume()) == 1
    assert [r.outcome for r in RESUMED] == ["approved"]
    assert [r.data for r in RESUMED] == [{"refund": 100}]
    status = harness.status(started["id"])
    assert status["status"] == "approved"
    assert status["decision"]["decidedBy"] == "anyone"
    assert status["decision"]["channel"] == "link"
    assert status["decision"]["delivery"] == "delivered"
    assert status["decision"]["data"] == {"refund": 100}
    assert status["resumedAt"] is not None


def test_reject_with_reason_ends_rejected(harness: Harness) -> None:
    started = start_and_notify(harness, source={"pattern": "test"})

    answer = harness.submit_form(
        started["approvalUrl"], {"decision": "reject", "reason": "not allowed"}
    )

    assert answer["statusCode"] == 200, answer["body"]
    assert harness.stack.execution_status(started["id"]) == "SUCCEEDED"
    harness.pump_resume()
    assert [r.outcome for r in RESUMED] == ["rejected"]
    assert RESUMED[0].data is None
    status = harness.status(started["id"])
    assert status["status"] == "rejected"
    assert status["decision"]["reason"] == "not allowed"
    assert status["decision"]["data"] is None


def test_cancel_by_requester(harness: Harness) -> None:
    started = start_and_notify(harness, requestedBy="agent-7")

    answer = harness.call(
        http_event(
            "POST",
            f"https://approvals.test/escalations/{started['id']}/cancel",
            body=json.dumps({"reason": "no longer needed", "requestedBy": "agent-7"}),
            headers={"content-type": "application/json"},
        )
    )

    assert answer["statusCode"] == 200, answer["body"]
    assert json.loads(answer["body"])["status"] == "cancelled"
    assert harness.stack.execution_status(started["id"]) == "SUCCEEDED"
    harness.pump_resume()
    assert harness.status(started["id"])["status"] == "cancelled"


def test_cancel_by_someone_else_is_forbidden(harness: Harness) -> None:
    started = start_and_notify(harness, requestedBy="agent-7")

    answer = harness.call(
        http_event(
            "POST",
            f"https://approvals.test/escalations/{started['id']}/cancel",
            body=json.dumps({"requestedBy": "agent-8"}),
            headers={"content-type": "application/json"},
        )
    )

    assert answer["statusCode"] == 403
    assert harness.status(started["id"])["status"] == "pending"


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        ({"reasn": "typo", "requestedBy": "agent-7"}, "reasn", "reasn"),
        ({"reason": "x" * 2001}, "reason", "maximum is 2000"),
        ({"requestedBy": "a" * 257}, "requestedBy", "maximum is 256"),
    ],
)
def test_bad_cancel_body_is_400_and_cancels_nothing(
    harness: Harness, body: dict[str, str], field: str, message: str
) -> None:
    started = start_and_notify(harness, requestedBy="agent-7")

    answer = harness.call(
        http_event(
            "POST",
            f"https://approvals.test/escalations/{started['id']}/cancel",
            body=json.dumps(body),
            headers={"content-type": "application/json"},
        )
    )

    assert answer["statusCode"] == 400, answer["body"]
    error = json.loads(answer["body"])
    assert error["field"] == field
    assert message in error["message"]
    assert harness.status(started["id"])["status"] == "pending"
    assert harness.stack.execution_status(started["id"], wait_s=0) == "RUNNING"


def test_expiry_is_expired_not_rejected(
    harness: Harness, slack: SlackStandIn, database: Database
) -> None:
    """A 2 s timeout with no decision ends expired, resolved by the system."""
    started = start_and_notify(harness, timeoutSeconds=2, source={"pattern": "test"})
    assert len(slack_calls(slack, "chat.postMessage")) == 1

    assert harness.stack.execution_status(started["id"], wait_s=15) == "SUCCEEDED"
    assert len(harness.pump_resume()) == 1

    status = harness.status(started["id"])
    assert status["status"] == "expired"
    assert status["decision"]["decidedBy"] == "system"
    assert [r.outcome for r in RESUMED] == ["expired"]
    updates = slack_calls(slack, "chat.update")
    assert len(updates) == 1
    assert "expired" in updates[0]["body"]["text"]
    assert "actions" not in json.dumps(updates[0]["body"]["blocks"])
    assert harness.open_link(started["approvalUrl"])["statusCode"] == 410
    assert "escalation.expired" in audit_actions(database, started["id"])


def test_scanner_prefetch_changes_nothing(harness: Harness, database: Database) -> None:
    """HEAD, then GET with extra query and a headless agent, then a click."""
    started = start_and_notify(harness)
    url = started["approvalUrl"]
    scanner = {"user-agent": "Mozilla/5.0 HeadlessChrome/120.0 Slackbot-LinkExpanding"}

    head = harness.open_link(url, method="HEAD", headers=scanner)
    get = harness.open_link(url + "&utm_source=mail&decision=approve", headers=scanner)

    assert head["statusCode"] == 200
    assert head["body"] == ""
    assert get["statusCode"] == 200
    assert harness.status(started["id"])["status"] == "pending"
    assert "escalation.decided" not in audit_actions(database, started["id"])

    answer = harness.submit_form(url, {"decision": "approve"})
    assert answer["statusCode"] == 200
    assert harness.stack.execution_status(started["id"]) == "SUCCEEDED"


def test_preview_metadata_has_no_sensitive_data(harness: Harness) -> None:
    started = start_and_notify(harness, data={"iban": "DE89370400440532013000"})

    page = harness.open_link(started["approvalUrl"])

    head = page["body"].split("</head>")[0]
    assert "DE89370400440532013000" not in head
    assert "refund above limit" not in head
    assert '<meta name="robots" content="noindex, nofollow">' in head
    assert page["headers"]["X-Robots-Tag"] == "noindex, nofollow"
    assert "<script" not in page["body"]
    assert "DE89370400440532013000" in page["body"]


def test_used_link_refused_before_step_functions(harness: Harness) -> None:
    """Approve, then a stale reject: refused by the database, no call."""
    started = start_and_notify(harness)
    url = started["approvalUrl"]
    opened = harness.open_link(url)
    assert harness.submit_form(url, {"decision": "approve"})["statusCode"] == 200
    calls = count_task_calls()

    stale = harness.submit_form(
        url, {"decision": "reject", "reason": "stale message"}, opened=opened
    )

    assert stale["statusCode"] == 409
    assert "is already approved (by anyone at" in stale["body"]
    assert calls == []


def test_token_gone_shows_resolved_page(harness: Harness, database: Database) -> None:
    """Step Functions reports the token gone: a clear page, no 500."""
    started = start_and_notify(harness)
    service = get_service()
    with database.transaction() as connection:
        row = connection.execute(
            "SELECT task_token FROM escalation_token WHERE task_run_id = %s",
            (started["id"],),
        ).fetchone()
    token = service.encryptor.decrypt(
        bytes(row["task_token"]), escalation_id=started["id"], purpose="task_token"
    )
    # The workflow ends without this service's knowledge (an operator, or a
    # timeout whose outcome has not reached the database yet).
    harness.stack.sfn.send_task_failure(
        taskToken=token.decode(), error="Escalation.Cancelled", cause="operator"
    )
    assert harness.stack.execution_status(started["id"]) == "SUCCEEDED"

    answer = harness.post_json(started["approvalUrl"], {"decision": "approve"})

    assert answer["statusCode"] == 410
    body = json.loads(answer["body"])
    assert body["delivery"] == "gone"
    assert "Traceback" not in answer["body"]


@pytest.mark.parametrize(
    "body",
    [{"decision_": "approve"}, {"decision": "approved"}, {}, {"decision": None}],
)
def test_bad_decision_body_changes_nothing(
    harness: Harness, database: Database, body: dict[str, Any]
) -> None:
    """422, still pending, no outbox row, the execution still waits."""
    started = start_and_notify(harness)

    answer = harness.post_json(started["approvalUrl"], body)

    assert answer["statusCode"] == 422, answer["body"]
    assert harness.status(started["id"])["status"] == "pending"
    with database.transaction() as connection:
        outbox = connection.execute("SELECT count(*) AS n FROM escalation_outbox")
        assert outbox.fetchone()["n"] == 0
    assert harness.stack.execution_status(started["id"], wait_s=0) == "RUNNING"


def test_invalid_edited_data_is_422(harness: Harness) -> None:
    started = start_and_notify(harness)

    answer = harness.submit_form(
        started["approvalUrl"], {"decision": "approve", "data": "{not json"}
    )

    assert answer["statusCode"] == 422
    assert "data is not valid JSON" in answer["body"]
    assert "{not json</textarea>" in answer["body"]
    assert harness.status(started["id"])["status"] == "pending"


def test_state_machine_never_approves_missing_decision(harness: Harness) -> None:
    """Task output without an approve decision fails the execution."""
    started = harness.start({"data": {"a": 1}, "reason": "check"})
    message = harness.stack.receive(harness.stack.notify_url)[0]
    token = json.loads(message["Body"])["taskToken"]

    harness.stack.sfn.send_task_success(
        taskToken=token, output=json.dumps({"decision_": "approve", "data": {}})
    )

    assert harness.stack.execution_status(started["id"]) == "FAILED"
    assert harness.stack.receive(harness.stack.resume_url, wait_s=1) == []


def test_click_before_notify_is_delivered_after(harness: Harness) -> None:
    """The row exists at once; a decision before the token waits for it."""
    started = harness.start({"data": {"a": 1}, "reason": "quick"})
    assert harness.status(started["id"])["status"] == "pending"

    early = harness.post_json(started["approvalUrl"], {"decision": "approve"})
    assert early["statusCode"] == 202
    assert json.loads(early["body"])["delivery"] == "pending"

    harness.pump_notify()
    assert harness.stack.execution_status(started["id"]) == "SUCCEEDED"
    assert harness.status(started["id"])["decision"]["delivery"] == "delivered"


def test_redelivered_notify_posts_once(
    harness: Harness, slack: SlackStandIn, database: Database
) -> None:
    """The same notify message twice: one Slack post, one token row."""
    started = harness.start({"data": {"a": 1}, "reason": "twice"})
    message = harness.stack.receive(harness.stack.notify_url)[0]
    for _ in range(2):
        harness.stack.sqs.send_message(
            QueueUrl=harness.stack.notify_url, MessageBody=message["Body"]
        )

    assert len(harness.pump_notify()) == 2
    assert harness.pump_notify(wait_s=0) == []

    assert len(slack_calls(slack, "chat.postMessage")) == 1
    with database.transaction() as connection:
        rows = connection.execute(
            "SELECT token FROM escalation_token WHERE task_run_id = %s",
            (started["id"],),
        ).fetchall()
    assert len(rows) == 1
    assert rows[0]["token"] is not None


def test_secrets_are_not_stored_in_clear(harness: Harness, database: Database) -> None:
    started = start_and_notify(harness, data={"ssn": "078-05-1120"})
    signature = started["approvalUrl"].rsplit("signature=", 1)[1]

    with database.transaction() as connection:
        dump = json.dumps(
            [
                connection.execute("SELECT * FROM escalation_token").fetchall(),
                connection.execute("SELECT * FROM escalation_link").fetchall(),
            ],
            default=_as_text,
        )
    assert "078-05-1120" not in dump
    assert b"078-05-1120".hex() not in dump
    assert signature not in dump


def _as_text(value: Any) -> str:
    if isinstance(value, bytes | memoryview):
        return bytes(value).hex()
    return str(value)


def test_reminder_after_two_hours(
    harness: Harness,
    slack: SlackStandIn,
    database: Database,
    capsys: pytest.CaptureFixture[str],
) -> None:
    started = start_and_notify(harness)
    with database.transaction() as connection:
        connection.execute(
            "UPDATE escalation_token SET created_at = now() - interval '3 hours' "
            "WHERE task_run_id = %s",
            (started["id"],),
        )

    first = harness.reminder.lambda_handler({}, LambdaContextStandIn())
    second = harness.reminder.lambda_handler({}, LambdaContextStandIn())

    assert first["reminded"] == [started["id"]]
    assert second["reminded"] == []
    assert first["pendingOverThreshold"] == 1
    posts = slack_calls(slack, "chat.postMessage")
    assert len(posts) == 2
    assert posts[1]["body"]["thread_ts"] is not None
    emitted = [
        json.loads(line)["EscalationsPendingOver2h"]
        for line in capsys.readouterr().out.splitlines()
        if '"EscalationsPendingOver2h"' in line
    ]
    assert emitted == [1, 1]


def test_kms_envelope_round_trip(moto_endpoint: str) -> None:
    import boto3

    from resilience.escalation.crypto import KmsEncryptor

    kms = boto3.client("kms", endpoint_url=moto_endpoint)
    key_id = kms.create_key()["KeyMetadata"]["KeyId"]
    encryptor = KmsEncryptor(key_id, kms)

    blob = encryptor.encrypt(b"secret", escalation_id="esc-1", purpose="data")

    assert b"secret" not in blob
    assert encryptor.decrypt(blob, escalation_id="esc-1", purpose="data") == b"secret"
    # KMS refuses to decrypt the data key under another encryption context.
    with pytest.raises(ClientError, match="InvalidCiphertextException"):
        encryptor.decrypt(blob, escalation_id="esc-2", purpose="data")


def test_webhook_only_posts_once_and_never_updates(
    app_env: dict[str, str],
    moto_endpoint: str,
    monkeypatch: pytest.MonkeyPatch,
    slack: SlackStandIn,
) -> None:
    """Without a bot token the notification goes to the webhook, once."""
    monkeypatch.setenv("SLACK_WEBHOOK_URL", f"{slack.url}/services/T0/B0/x")
    for harness in harness_for_test(moto_endpoint, monkeypatch):
        started = harness.start({"data": {"a": 1}, "reason": "webhook only"})
        harness.pump_notify()
        harness.submit_form(started["approvalUrl"], {"decision": "approve"})
        harness.pump_resume()

        paths = [entry["path"] for entry in slack.recorded]
        assert paths == ["/services/T0/B0/x"]
        body = slack.recorded[0]["body"]
        assert "webhook only" in body["text"]
        assert "actions" not in json.dumps(body["blocks"])
        assert harness.status(started["id"])["status"] == "approved"


def test_sqs_request_starts_and_replies(harness: Harness) -> None:
    stack = harness.stack
    reply_url = stack.sqs.create_queue(QueueName=f"replies-{id(harness)}")["QueueUrl"]
    good = {"data": {"a": 1}, "reason": "from a queue"}
    bad = {"data": {"a": 1}}
    records = []
    for index, body in enumerate((good, bad)):
        records.append(
            {
                "messageId": f"m{index}",
                "receiptHandle": f"r{index}",
                "body": json.dumps(body),
                "attributes": {"ApproximateReceiveCount": "1"},
                "messageAttributes": {
                    "replyTo": {"stringValue": reply_url, "dataType": "String"},
                    "orgId": {"stringValue": "acme", "dataType": "String"},
                },
                "md5OfBody": "",
                "eventSource": "aws:sqs",
                "eventSourceARN": ARN_PREFIX + "escalation-requests",
                "awsRegion": "us-east-1",
            }
        )

    answer = harness.app.lambda_handler({"Records": records}, LambdaContextStandIn())

    assert answer == {"batchItemFailures": []}
    replies = [json.loads(m["Body"]) for m in stack.receive(reply_url, wait_s=2)]
    started = next(reply for reply in replies if "id" in reply)
    invalid = next(reply for reply in replies if "error" in reply)
    assert started["status"] == "pending"
    assert started["approvalUrl"].startswith("https://approvals.test/approvals/")
    assert invalid["field"] == "reason"
    record = get_service().get(started["id"])
    assert record.org_id == "acme"


def test_other_org_cannot_read_escalation(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRUST_ORG_ID_HEADER", "true")
    started = harness.start({"data": {"a": 1}, "reason": "org scoped"})

    other = harness.call(
        http_event(
            "GET",
            f"https://approvals.test/escalations/{started['id']}",
            headers={"x-org-id": "other-org"},
        )
    )

    assert other["statusCode"] == 404
    assert harness.status(started["id"])["status"] == "pending"


def test_execution_started_elsewhere_gets_its_row(harness: Harness) -> None:
    """A run started through StartExecution alone is registered by notify."""
    stack = harness.stack
    stack.sfn.start_execution(
        stateMachineArn=stack.state_machine_arn,
        name="esc-direct-1",
        input=json.dumps(
            {
                "escalationId": "esc-direct-1",
                "data": {"answer": "draft"},
                "reason": "flagged for review",
                "orgId": "default",
                "escalationType": "default",
                "timeoutSeconds": 600,
                "source": {"pattern": "test"},
                "appUrl": "https://approvals.test",
            }
        ),
    )

    harness.pump_notify()
    record = get_service().get("esc-direct-1")
    decided = get_service().decide(
        "esc-direct-1", Decision(kind="approve", actor="anyone", channel="api")
    )

    assert record.data == {"answer": "draft"}
    assert record.has_task_token
    assert decided.delivery == "delivered"
    assert stack.execution_status("esc-direct-1") == "SUCCEEDED"
    harness.pump_resume()
    assert [r.data for r in RESUMED] == [{"answer": "draft"}]


def test_sweep_retries_failed_notification(
    harness: Harness,
    slack: SlackStandIn,
    database: Database,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # GIVEN Slack unreachable when the escalation is notified
    monkeypatch.setenv("SLACK_API_URL", f"http://127.0.0.1:{free_port()}/api")
    started = start_and_notify(harness)
    assert get_service().get(started["id"]).notify_state == "failed"
    with database.transaction() as connection:
        connection.execute(
            "UPDATE escalation_token "
            "SET notify_claimed_at = now() - interval '10 minutes' "
            "WHERE task_run_id = %s",
            (started["id"],),
        )

    # WHEN Slack is back and the sweep runs
    monkeypatch.setenv("SLACK_API_URL", f"{slack.url}/api")
    report = harness.reminder.lambda_handler({}, LambdaContextStandIn())

    # THEN the notification is posted once
    assert report["renotified"] == [started["id"]]
    assert len(slack_calls(slack, "chat.postMessage")) == 1
    assert get_service().get(started["id"]).notify_state == "posted"


def test_redelivered_outcome_resumes_once(harness: Harness) -> None:
    started = start_and_notify(harness, source={"pattern": "test"})
    harness.submit_form(started["approvalUrl"], {"decision": "approve"})
    message = harness.stack.receive(harness.stack.resume_url)[0]
    for _ in range(2):
        harness.stack.sqs.send_message(
            QueueUrl=harness.stack.resume_url, MessageBody=message["Body"]
        )

    delivered = len(harness.pump_resume())
    delivered += len(harness.pump_resume(wait_s=1))

    assert delivered == 2
    assert [r.outcome for r in RESUMED] == ["approved"]
    assert harness.status(started["id"])["status"] == "approved"


def test_page_escapes_data_and_reason(harness: Harness) -> None:
    payload = "</textarea><script>alert(1)</script>"
    started = start_and_notify(
        harness, data={"note": payload}, reason=f"<img src=x onerror=alert(1)>{payload}"
    )

    page = harness.open_link(started["approvalUrl"])

    assert page["statusCode"] == 200
    assert "<script" not in page["body"]
    assert "<img" not in page["body"]
    assert "&lt;/textarea&gt;&lt;script&gt;" in page["body"]


def _approved_without_stored_data(harness: Harness, database: Database) -> Any:
    """Approve, take the resume message, and clear the stored approved data."""
    started = start_and_notify(harness, source={"pattern": "test"})
    answer = harness.post_json(
        started["approvalUrl"], {"decision": "approve", "data": {"refund": 90}}
    )
    assert answer["statusCode"] == 200, answer["body"]
    assert harness.stack.execution_status(started["id"]) == "SUCCEEDED"
    [message] = harness.stack.receive(harness.stack.resume_url)
    with database.transaction() as connection:
        connection.execute(
            "UPDATE escalation_token SET decided_data = NULL WHERE task_run_id = %s",
            (started["id"],),
        )
    return json.loads(message["Body"])


def test_resume_takes_data_carried_in_message(
    harness: Harness, database: Database
) -> None:
    # Executions of an earlier state machine sent the data in the message.
    message = _approved_without_stored_data(harness, database)
    assert "data" not in message

    outcome, first = record_outcome(
        get_service(), None, {**message, "data": {"refund": 90}}
    )

    assert first is True
    assert outcome.data == {"refund": 90}
    assert [r.data for r in RESUMED] == [{"refund": 90}]


def test_resume_without_approved_data_raises(
    harness: Harness, database: Database
) -> None:
    message = _approved_without_stored_data(harness, database)

    with pytest.raises(ValidationError, match="no approved data is stored"):
        record_outcome(get_service(), None, message)

    assert RESUMED == []
