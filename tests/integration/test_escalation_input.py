"""Escalation input that would fail deep in PostgreSQL is rejected up front."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest

from resilience.db import Database
from resilience.escalation.validation import state_bytes
from tests.escalation_support import (
    RESUMED,
    Harness,
    LambdaContextStandIn,
    harness_for_test,
    http_event,
    moto_session,
)


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    yield from moto_session()


@pytest.fixture
def harness(
    app_env: dict[str, str], moto_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Harness]:
    yield from harness_for_test(moto_endpoint, monkeypatch)


def test_nul_in_approver_is_400(harness: Harness) -> None:
    response = harness.call(
        http_event(
            "POST",
            "https://approvals.test/escalations",
            body='{"data": {"a": 1}, "reason": "r", "approvers": ["a\\u0000b"]}',
            headers={"content-type": "application/json"},
        )
    )

    assert response["statusCode"] == 400
    assert json.loads(response["body"])["field"] == "approvers[0]"


def test_nul_in_reject_reason_changes_nothing(harness: Harness) -> None:
    started = harness.start({"data": {"a": 1}, "reason": "check"})
    harness.pump_notify()

    response = harness.submit_form(
        started["approvalUrl"], {"decision": "reject", "reason": "bad\x00"}
    )

    assert response["statusCode"] in (400, 422)
    assert "\x00" not in response["body"]
    assert harness.status(started["id"])["status"] == "pending"


def test_sqs_request_not_json_is_final(harness: Harness) -> None:
    record = {
        "messageId": "m-not-json",
        "receiptHandle": "r",
        "body": "not json",
        "attributes": {"ApproximateReceiveCount": "1"},
        "messageAttributes": {},
        "md5OfBody": "",
        "eventSource": "aws:sqs",
        "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:escalation-requests",
        "awsRegion": "us-east-1",
    }

    answer = harness.app.lambda_handler({"Records": [record]}, LambdaContextStandIn())

    # Retrying a body that is not JSON cannot help, so it is not handed back.
    assert answer == {"batchItemFailures": []}


def test_form_data_too_deep_is_rejected(harness: Harness) -> None:
    started = harness.start({"data": {"a": 1}, "reason": "deep"})
    harness.pump_notify()

    response = harness.submit_form(
        started["approvalUrl"],
        {"decision": "approve", "data": '{"a": ' + "[" * 3000 + "]" * 3000 + "}"},
    )

    assert response["statusCode"] in (400, 422)
    assert "nested too deeply" in response["body"]
    assert harness.status(started["id"])["status"] == "pending"


@pytest.mark.parametrize("value", ['"\\u0000"', '"\\ud800"', "NaN"])
def test_form_data_unstorable_is_rejected(harness: Harness, value: str) -> None:
    started = harness.start({"data": {"a": 1}, "reason": "bad data"})
    harness.pump_notify()

    response = harness.submit_form(
        started["approvalUrl"], {"decision": "approve", "data": '{"a": ' + value + "}"}
    )

    assert response["statusCode"] in (400, 422)
    assert harness.status(started["id"])["status"] == "pending"


def test_nan_in_request_data_is_400(harness: Harness) -> None:
    response = harness.call(
        http_event(
            "POST",
            "https://approvals.test/escalations",
            body='{"data": {"a": NaN}, "reason": "r"}',
            headers={"content-type": "application/json"},
        )
    )

    assert response["statusCode"] == 400
    assert "finite" in json.loads(response["body"])["message"]


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"decision": "reject", "reason": b"bad \xff\xfe"}, "reason"),
        ({"decision": "approve", "reason": b"ok \xc3("}, "reason"),
        ({"decision": b"approve\xff"}, "decision"),
        ({"decision": "approve", "data": b'{"a": "\xff"}'}, "data"),
    ],
)
def test_form_value_not_utf8_is_400(
    harness: Harness, database: Database, fields: dict[str, Any], field: str
) -> None:
    started = harness.start({"data": {"a": 1}, "reason": "check"})
    harness.pump_notify()

    response = harness.submit_form(started["approvalUrl"], fields)

    assert response["statusCode"] == 400, response["body"]
    assert f"{field} must be UTF-8 text" in response["body"]
    assert "\ufffd" not in response["body"]
    status = harness.status(started["id"])
    assert status["status"] == "pending"
    assert status["decision"] is None
    assert outbox_rows(database) == 0
    assert harness.stack.execution_status(started["id"], wait_s=0) == "RUNNING"


def _post_json_decision(
    harness: Harness, body: bytes, content_type: str = "application/json"
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Start an escalation and POST ``body`` to its link; return both answers."""
    started = harness.start({"data": {"a": 1}, "reason": "check"})
    harness.pump_notify()
    response = harness.call(
        http_event(
            "POST",
            started["approvalUrl"],
            body=body,
            headers={"content-type": content_type},
            base64_body=True,
        )
    )
    return started, response


def test_json_decision_not_utf8_is_400(harness: Harness, database: Database) -> None:
    body = b'{"decision": "reject", "reason": "r\xe9"}'

    started, response = _post_json_decision(harness, body)

    assert response["statusCode"] == 400, response["body"]
    assert "body is not valid UTF-8" in json.loads(response["body"])["message"]
    assert harness.status(started["id"])["status"] == "pending"
    assert outbox_rows(database) == 0


def test_empty_json_decision_is_400(harness: Harness) -> None:
    started, response = _post_json_decision(harness, b"")

    assert response["statusCode"] == 400, response["body"]
    assert "body is missing" in json.loads(response["body"])["message"]
    assert harness.status(started["id"])["status"] == "pending"


def test_json_media_type_is_case_insensitive(harness: Harness) -> None:
    body = json.dumps({"decision": "reject", "reason": "no"}).encode()

    started, response = _post_json_decision(harness, body, "Application/JSON")

    assert response["statusCode"] == 200, response["body"]
    assert harness.status(started["id"])["status"] == "rejected"


def test_form_name_not_utf8_is_400(harness: Harness, database: Database) -> None:
    started = harness.start({"data": {"a": 1}, "reason": "check"})
    harness.pump_notify()

    response = harness.submit_form(
        started["approvalUrl"], {"decision": "approve", b"re\xffason": "x"}
    )

    assert response["statusCode"] == 400, response["body"]
    assert "field name &#x27;re\\xffason&#x27; is not valid UTF-8" in response["body"]
    assert harness.status(started["id"])["status"] == "pending"
    assert outbox_rows(database) == 0


def outbox_rows(database: Database) -> int:
    with database.transaction() as connection:
        row = connection.execute("SELECT count(*) AS n FROM escalation_outbox")
        return int(row.fetchone()["n"])


LONG_NAME = "x" * 100_000
SHORT_NAME = "x" * 64 + "…"


@pytest.mark.parametrize(
    ("fields", "status", "expected"),
    [
        (
            {"decision": "approve", LONG_NAME: "y" * 100_000},
            422,
            f"unknown field &#x27;{SHORT_NAME}&#x27;",
        ),
        ({"decision": "approve", LONG_NAME: "a\x00"}, 422, f"{SHORT_NAME} contains"),
        ({"decision": "approve", LONG_NAME: b"\xff"}, 400, f"{SHORT_NAME} must be"),
        (
            {"decision": "z" * 100_000},
            422,
            "decision must be &quot;approve&quot; or &quot;reject&quot;, got &quot;"
            + "z" * 63
            + "…",
        ),
    ],
    ids=["unknown-name", "nul-value", "not-utf8-value", "long-decision"],
)
def test_form_error_page_is_bounded(
    harness: Harness, fields: dict[str, Any], status: int, expected: str
) -> None:
    started = harness.start({"data": {"a": 1}, "reason": "check"})
    harness.pump_notify()

    response = harness.submit_form(started["approvalUrl"], fields)

    assert response["statusCode"] == status
    alert = re.search(r'role="alert">(.*?)</p>', response["body"], re.DOTALL)
    assert alert is not None
    assert alert.group(1).startswith(expected)
    assert len(alert.group(1)) < 300
    assert "y" * 65 not in response["body"]
    assert len(response["body"]) < 5_000
    assert harness.status(started["id"])["status"] == "pending"


@pytest.mark.parametrize(
    ("fields", "name"),
    [
        (
            [("decision", "reject"), ("decision", "approve"), ("reason", "x")],
            "decision",
        ),
        ([("decision", "approve"), ("reason", "a"), ("reason", "b")], "reason"),
        ([("decision", "approve"), ("data", "{}"), ("data", '{"a": 2}')], "data"),
        ([("decision", "approve"), ("csrf", "forged")], "csrf"),
    ],
    ids=["decision", "reason", "data", "csrf"],
)
def test_repeated_form_field_is_422(
    harness: Harness, database: Database, fields: list[tuple[str, str]], name: str
) -> None:
    started = harness.start({"data": {"a": 1}, "reason": "check"})
    harness.pump_notify()

    response = harness.submit_form(started["approvalUrl"], fields)

    assert response["statusCode"] == 422, response["body"]
    alert = re.search(r'role="alert">(.*?)</p>', response["body"], re.DOTALL)
    assert alert is not None
    assert alert.group(1).startswith(f"{name} was sent more than once")
    assert harness.status(started["id"])["status"] == "pending"
    assert outbox_rows(database) == 0


@pytest.mark.parametrize(
    ("changes", "field", "expected"),
    [
        ({"requestedBy": "a" * 1_000_000}, "requestedBy", "maximum is 256"),
        ({"requestedBy": "a" * 257}, "requestedBy", "maximum is 256"),
        (
            {"source": {"pattern": "batch", "note": "x" * 1_000_000}},
            "source",
            "maximum is 16384",
        ),
        (
            {"source": {"pattern": "batch", "note": "\u00e9" * 3_000}},
            "source",
            "maximum is 16384",
        ),
    ],
    ids=["requester-1mb", "requester-257", "source-1mb", "source-escaped"],
)
def test_oversized_start_field_is_400(
    harness: Harness, changes: dict[str, Any], field: str, expected: str
) -> None:
    body = {"data": {"a": 1}, "reason": "check", **changes}

    error = harness.start(body, expect=400)

    assert error["field"] == field
    assert expected in error["message"]
    assert len(error["message"]) < 400


def test_start_fields_at_limits_accepted(harness: Harness) -> None:
    """The largest accepted fields still fit the 256 KiB execution input."""
    source = {"pattern": "test", "note": ""}
    source["note"] = "x" * (16_384 - state_bytes(source))
    data = _list_near_limit(0)

    started = harness.start(
        {
            "data": data,
            "reason": "\U0001f600" * 2000,
            "requestedBy": "r" * 256,
            "source": source,
        }
    )

    arn = harness.stack.state_machine_arn.replace(":stateMachine:", ":execution:")
    execution = harness.stack.sfn.describe_execution(
        executionArn=f"{arn}:{started['id']}"
    )
    assert len(execution["input"].encode()) <= 262_144
    assert harness.status(started["id"])["status"] == "pending"


def test_data_over_limit_with_spaces_is_400(harness: Harness) -> None:
    data = {"n": [0] * 33_332, "m": [0] * 33_331}
    assert len(json.dumps(data, separators=(",", ":"))) < 140_000
    assert state_bytes(data) > 200_000

    error = harness.start({"data": data, "reason": "check"}, expect=400)

    assert error["field"] == "data"
    assert "the maximum is 200000" in error["message"]


def _string_near_limit(letter: str) -> dict[str, Any]:
    data = {"text": letter * 199_987}
    assert state_bytes(data) == 199_999
    return data


def _list_near_limit(value: int) -> dict[str, Any]:
    # Many separators: its compact JSON is a third smaller.
    data = {"n": [value] * 66_664}
    assert state_bytes(data) == 199_999
    return data


@pytest.mark.parametrize(
    ("data", "edited_data"),
    [
        (_string_near_limit("a"), _string_near_limit("b")),
        (_list_near_limit(0), _list_near_limit(1)),
    ],
    ids=["string", "list"],
)
@pytest.mark.parametrize("edited", [False, True], ids=["as-sent", "edited"])
def test_approval_of_data_at_limit_resumes(
    harness: Harness, data: dict[str, Any], edited_data: dict[str, Any], edited: bool
) -> None:
    """The state after the approval contains the data once, within 256 KiB."""
    started = harness.start(
        {"data": data, "reason": "check", "source": {"pattern": "test"}}
    )
    harness.pump_notify()
    decision: dict[str, Any] = {"decision": "approve"}
    if edited:
        decision["data"] = edited_data

    answer = harness.post_json(started["approvalUrl"], decision)

    assert answer["statusCode"] == 200, answer["body"]
    assert harness.stack.execution_status(started["id"]) == "SUCCEEDED"
    assert len(harness.pump_resume()) == 1
    assert [r.outcome for r in RESUMED] == ["approved"]
    assert [r.data for r in RESUMED] == [edited_data if edited else data]


@pytest.mark.parametrize(
    ("raw", "name"),
    [
        ('{"decision": "reject", "decision": "approve", "reason": "x"}', "decision"),
        ('{"decision": "approve", "data": {"a": 1, "a": 2}}', "a"),
    ],
    ids=["decision", "nested-data-key"],
)
def test_repeated_json_key_is_422(
    harness: Harness, database: Database, raw: str, name: str
) -> None:
    started, response = _post_json_decision(harness, raw.encode())

    assert response["statusCode"] == 422, response["body"]
    error = json.loads(response["body"])
    assert error["field"] == name
    assert error["message"].startswith(f"{name} was sent more than once")
    assert harness.status(started["id"])["status"] == "pending"
    assert outbox_rows(database) == 0
