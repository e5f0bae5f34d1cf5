"""A decision Step Functions does not accept is kept, retried and alerted."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import boto3
import pytest
from botocore.config import Config

from local.standins import SlackStandIn
from resilience.db import Database
from resilience.escalation import cli
from resilience.escalation.service import get_service
from tests.escalation_support import (
    Harness,
    LambdaContextStandIn,
    harness_for_test,
    moto_session,
)

pytestmark = pytest.mark.timeout(60)


class ThrottlingStepFunctions(BaseHTTPRequestHandler):
    """Respond to every Step Functions call with ThrottlingException (HTTP 400)."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", "0")))
        body = json.dumps(
            {"__type": "ThrottlingException", "message": "Rate exceeded"}
        ).encode()
        self.send_response(400)
        self.send_header("content-type", "application/x-amz-json-1.0")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    yield from moto_session()


@pytest.fixture
def throttling_endpoint() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), ThrottlingStepFunctions)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def harness(
    app_env: dict[str, str], moto_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Harness]:
    yield from harness_for_test(moto_endpoint, monkeypatch)


def throttled_client(endpoint: str) -> Any:
    return boto3.client(
        "stepfunctions",
        endpoint_url=endpoint,
        config=Config(retries={"total_max_attempts": 1, "mode": "standard"}),
    )


def outbox_row(database: Database, escalation_id: str) -> dict[str, Any]:
    with database.transaction() as connection:
        row = connection.execute(
            "SELECT * FROM escalation_outbox WHERE escalation_id = %s",
            (escalation_id,),
        ).fetchone()
    assert row is not None
    return row


def test_throttled_delivery_kept_and_retried(
    harness: Harness,
    database: Database,
    throttling_endpoint: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    alerts = SlackStandIn().start()
    monkeypatch.setenv("SLACK_WEBHOOK_URL", f"{alerts.url}/services/T0/B0/alerts")
    started = harness.start({"data": {"a": 1}, "reason": "throttled"})
    harness.pump_notify()
    service = get_service()
    real_client = service.stepfunctions
    monkeypatch.setattr(service, "stepfunctions", throttled_client(throttling_endpoint))

    answer = harness.submit_form(started["approvalUrl"], {"decision": "approve"})

    # GIVEN a recorded decision that Step Functions throttled
    assert answer["statusCode"] == 202
    assert "has not accepted it yet" in answer["body"]
    assert "workflow has continued" not in answer["body"]
    row = outbox_row(database, started["id"])
    assert row["status"] == "pending"
    assert row["last_error"] == "ThrottlingException"
    assert harness.stack.execution_status(started["id"], wait_s=0) == "RUNNING"

    # WHEN it keeps failing, the sweep alerts once after three attempts
    for _ in range(2):
        assert cli.main(["redeliver", started["id"]]) == 0
    first = harness.reminder.lambda_handler({}, LambdaContextStandIn())
    second = harness.reminder.lambda_handler({}, LambdaContextStandIn())
    assert outbox_row(database, started["id"])["attempts"] == 3
    assert first["alerted"] == [started["id"]]
    assert second["alerted"] == []
    alert_texts = [json.dumps(entry["body"]) for entry in alerts.recorded]
    alerts.stop()
    undelivered = [text for text in alert_texts if "undelivered" in text]
    assert len(undelivered) == 1
    assert started["id"] in undelivered[0]

    # THEN once Step Functions accepts calls again, the operator command delivers it
    monkeypatch.setattr(service, "stepfunctions", real_client)
    capsys.readouterr()
    assert cli.main(["redeliver"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == [
        {
            "id": started["id"],
            "outcome": "approved",
            "delivery": "delivered",
            "error": None,
        }
    ]
    assert harness.stack.execution_status(started["id"]) == "SUCCEEDED"
    assert outbox_row(database, started["id"])["status"] == "delivered"


def test_cli_pending_and_show(
    harness: Harness, capsys: pytest.CaptureFixture[str]
) -> None:
    started = harness.start({"data": {"a": 1}, "reason": "listed"})
    harness.pump_notify()
    capsys.readouterr()

    assert cli.main(["pending"]) == 0
    pending = json.loads(capsys.readouterr().out)
    assert cli.main(["show", started["id"]]) == 0
    shown = json.loads(capsys.readouterr().out)

    assert [row["id"] for row in pending] == [started["id"]]
    assert pending[0]["status"] == "pending"
    assert shown["id"] == started["id"]
    assert shown["reason"] == "listed"
    assert shown["audit"][0]["action"] == "escalation.created"


def test_cli_show_unknown_id_fails(
    harness: Harness, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["show", "esc-missing"]) == 1
    assert "not found" in capsys.readouterr().err
