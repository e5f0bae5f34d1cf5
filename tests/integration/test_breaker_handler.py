"""The circuit_breaker handler with API Gateway HTTP API v2 and SQS events."""

from __future__ import annotations

import copy
import importlib.util
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import stamina

from local.embedded import EmbeddedRedis, free_port
from resilience import messaging
from resilience.breaker import clear_breakers
from resilience.db import Database
from resilience.kvstore import reset_store_cache
from resilience.services import reset_default_registry
from tests.breaker_fixtures import Downstream, downstream

__all__ = ["downstream"]

ROOT = Path(__file__).resolve().parents[2]
EVENTS = ROOT / "tests" / "events" / "breaker"


def load_event(name: str) -> dict[str, Any]:
    return json.loads((EVENTS / name).read_text())


@dataclass
class FakeContext:
    function_name: str = "circuit-breaker"
    memory_limit_in_mb: int = 512
    invoked_function_arn: str = (
        "arn:aws:lambda:us-east-1:123456789012:function:circuit-breaker"
    )
    aws_request_id: str = "req-1"
    remaining_ms: int = 20_000

    def get_remaining_time_in_millis(self) -> int:
        return self.remaining_ms


@pytest.fixture
def handler(
    app_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    downstream: Downstream,
) -> Iterator[ModuleType]:
    services = {
        "demo": {
            "baseUrl": downstream.url,
            "timeoutS": 0.5,
            "breaker": {"failureThreshold": 3, "stateCacheTtlS": 0},
            "retry": {"attempts": 2, "initialWaitS": 0.01},
        },
        "dead": {"baseUrl": f"http://127.0.0.1:{free_port()}", "timeoutS": 0.5},
    }
    monkeypatch.setenv("BREAKER_SERVICES", json.dumps(services))
    monkeypatch.delenv("ADMIN_API_TOKEN", raising=False)
    monkeypatch.delenv("SLACK_WEBHOOK_URL", raising=False)
    monkeypatch.delenv("PAGERDUTY_ROUTING_KEY", raising=False)
    reset_store_cache()
    clear_breakers()
    reset_default_registry()

    spec = importlib.util.spec_from_file_location(
        "circuit_breaker_app", ROOT / "functions" / "circuit_breaker" / "app.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with stamina.set_testing(True, attempts=10, cap=True):
        yield module
    reset_store_cache()
    clear_breakers()
    reset_default_registry()


def invoke(handler: ModuleType, event: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    response = handler.lambda_handler(event, FakeContext())
    return response["statusCode"], json.loads(response["body"])


def call_event(**body: Any) -> dict[str, Any]:
    event = load_event("post_call.json")
    event["body"] = json.dumps(body)
    return event


def test_call_returns_downstream_status(
    handler: ModuleType, downstream: Downstream
) -> None:
    status, body = invoke(handler, load_event("post_call.json"))

    assert status == 200
    assert body["status"] == 200
    assert body["breakerState"] == "closed"
    assert body["body"] == {"path": "/ok", "method": "GET"}
    assert body["attempts"] == 1
    assert downstream.requests[0]["path"] == "/ok"


def test_call_5xx_is_200_after_retries(
    handler: ModuleType, downstream: Downstream
) -> None:
    downstream.status = 503

    status, body = invoke(handler, call_event(service="demo", path="/x"))

    assert status == 200
    assert body["status"] == 503
    assert body["attempts"] == 2
    assert len(downstream.requests) == 2


def test_call_forwards_body_and_idempotency_key(
    handler: ModuleType, downstream: Downstream
) -> None:
    event = call_event(
        service="demo",
        path="/orders?x=1",
        method="POST",
        body={"amount": 5},
        headers={"X-Trace": "t1"},
        idempotencyKey="order-9",
    )

    status, _ = invoke(handler, event)

    request = downstream.requests[0]
    assert status == 200
    assert request["method"] == "POST"
    assert request["path"] == "/orders?x=1"
    assert json.loads(request["body"]) == {"amount": 5}
    assert request["headers"]["Idempotency-Key"] == "order-9"
    assert request["headers"]["X-Trace"] == "t1"


def test_call_unreachable_is_502(handler: ModuleType) -> None:
    status, body = invoke(handler, call_event(service="dead", path="/"))
    assert status == 502
    assert body["error"] == "upstream_unreachable"


def test_call_timeout_is_504(handler: ModuleType, downstream: Downstream) -> None:
    downstream.delay_s = 1.0
    status, body = invoke(handler, call_event(service="demo", path="/slow"))
    assert status == 504
    assert body["error"] == "upstream_timeout"


def test_open_breaker_is_503_with_retry_after(
    handler: ModuleType, downstream: Downstream
) -> None:
    downstream.status = 500
    invoke(handler, call_event(service="demo", path="/fail"))
    invoke(handler, call_event(service="demo", path="/fail"))
    calls_before = len(downstream.requests)

    response = handler.lambda_handler(
        call_event(service="demo", path="/fail"), FakeContext()
    )
    body = json.loads(response["body"])

    assert response["statusCode"] == 503
    assert body["error"] == "breaker_open"
    assert 29_000 < body["retryAfterMs"] <= 30_000
    assert response["headers"]["Retry-After"] == "30"
    assert len(downstream.requests) == calls_before


@pytest.mark.parametrize(
    ("event_name", "field"),
    [
        ("post_call_unknown_service.json", "service"),
        ("post_call_absolute_url.json", "path"),
    ],
)
def test_bad_call_is_400_naming_field(
    handler: ModuleType, downstream: Downstream, event_name: str, field: str
) -> None:
    status, body = invoke(handler, load_event(event_name))
    assert status == 400
    assert body["field"] == field
    assert downstream.requests == []


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"path": "//evil.example/x"}, "path"),
        ({"path": "/a/../admin"}, "path"),
        ({"path": "relative"}, "path"),
        ({"method": "TRACE"}, "method"),
        ({"method": ["GET"]}, "method"),
        ({"method": []}, "method"),
        ({"method": {}}, "method"),
        ({"method": 5}, "method"),
        ({"headers": {"Host": "evil.example"}}, "headers.Host"),
        ({"headers": ["x"]}, "headers"),
        ({"idempotencyKey": ""}, "idempotencyKey"),
        ({"service": None}, "service"),
    ],
)
def test_invalid_fields_are_400(
    handler: ModuleType, changes: dict[str, Any], field: str
) -> None:
    request = {"service": "demo", "path": "/x", **changes}
    status, body = invoke(handler, call_event(**request))
    assert status == 400
    assert body["field"] == field


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"headers": {"X-A": "a\nb"}}, "headers.X-A"),
        ({"headers": {"X A": "v"}}, "headers.X A"),
        ({"headers": {"": "v"}}, "headers."),
        ({"headers": {"X-A": "\u00e9"}}, "headers.X-A"),
        ({"idempotencyKey": "\u00e9"}, "idempotencyKey"),
        # The JSON body check rejects NUL and lone surrogates in any field,
        # and names the field as the handler's own checks above do.
        ({"idempotencyKey": "a\u0000b"}, "idempotencyKey"),
        ({"path": "/\ud800"}, "path"),
        ({"headers": {"X-A": "a\u0000b"}}, "headers.X-A"),
    ],
)
def test_unsendable_input_leaves_breaker_closed(
    handler: ModuleType, downstream: Downstream, changes: dict[str, Any], field: str
) -> None:
    """Bad input from one caller must not open the breaker shared by all."""
    for _ in range(4):  # more than failureThreshold (3)
        status, body = invoke(
            handler, call_event(**{"service": "demo", "path": "/x", **changes})
        )
        assert status == 400
        assert body["field"] == field

    status, body = invoke(handler, call_event(service="demo", path="/ok"))
    assert downstream.requests[0]["path"] == "/ok"
    assert status == 200
    assert body["breakerState"] == "closed"


@pytest.mark.parametrize(
    ("service", "expected"),
    [
        (5, "service must be a string"),
        (["demo"], "service must be a string"),
        (None, "service is missing"),
        ("", "service is missing"),
    ],
)
def test_service_type_named_in_400(
    handler: ModuleType, service: object, expected: str
) -> None:
    status, body = invoke(handler, call_event(service=service))
    assert status == 400
    assert body["field"] == "service"
    assert expected in body["message"]


def test_unknown_call_fields_are_400(
    handler: ModuleType, downstream: Downstream
) -> None:
    status, body = invoke(
        handler, call_event(service="demo", path="/ok", timeout=1, retries=0)
    )
    assert status == 400
    assert body["field"] == "retries"
    assert "unknown field 'retries' and 1 more" in body["message"]
    accepted = "body, headers, idempotencyKey, method, path, service"
    assert accepted in body["message"]
    assert downstream.requests == []


@pytest.mark.parametrize("request_body", [{}, {"path": None}, {"path": ""}])
def test_missing_path_is_400(
    handler: ModuleType, downstream: Downstream, request_body: dict[str, Any]
) -> None:
    """Without a path the call would go to the service's root."""
    status, body = invoke(handler, call_event(service="demo", **request_body))

    assert status == 400
    assert body["field"] == "path"
    assert body["message"].startswith("path is missing: ")
    assert downstream.requests == []


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"path": "/" + "x" * 100_000 + "/.."}, "path"),
        ({"path": "x" * 100_000}, "path"),
        ({"path": "/" + "x" * 100_000 + "%"}, "path"),
        ({"service": "s" * 5_000}, "service"),
        ({"service": ["s" * 5_000]}, "service"),
        ({"method": "M" * 5_000}, "method"),
        ({"headers": {"X-A": "v\n" * 5_000}}, "headers.X-A"),
        ({"headers": {"X" * 5_000: "v\n"}}, "headers." + "X" * 64 + "…"),
        ({"x" * 5_000: 1}, "x" * 64 + "…"),
    ],
)
def test_long_input_cut_in_400(
    handler: ModuleType, changes: dict[str, Any], field: str
) -> None:
    request = {"service": "demo", "path": "/x", **changes}
    status, body = invoke(handler, call_event(**request))

    assert status == 400
    assert body["field"] == field
    assert len(body["message"]) < 400


def test_long_service_name_cut_in_404(
    handler: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ADMIN_API_TOKEN", "s3cret-token")
    name = "s" * 5_000
    get = load_event("get_state.json")
    get["rawPath"] = get["requestContext"]["http"]["path"] = f"/breaker/{name}"
    get["pathParameters"] = {"service": name}
    reset = load_event("reset_no_auth.json")
    reset["headers"]["authorization"] = "Bearer s3cret-token"
    reset["rawPath"] = reset["requestContext"]["http"]["path"] = (
        f"/breaker/{name}/reset"
    )
    reset["pathParameters"] = {"service": name}

    for event in (get, reset):
        status, body = invoke(handler, event)

        assert status == 404
        assert len(body["message"]) < 200


@pytest.mark.timeout(60)
def test_state_reported_while_redis_down(
    handler: ModuleType, downstream: Downstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the store gone, the state reported is the one that admitted the call."""
    server = EmbeddedRedis().start()
    try:
        monkeypatch.setenv("REDIS_URL", server.url)
        reset_store_cache()
        clear_breakers()
        downstream.status = 500
        invoke(handler, call_event(service="demo", path="/fail"))
        status, body = invoke(handler, call_event(service="demo", path="/fail"))
        assert body["breakerState"] == "open"  # GIVEN the stored state is open

        server.stop()  # WHEN Redis dies and the service recovers
        downstream.status = 200
        results = [
            invoke(handler, call_event(service="demo", path="/ok")) for _ in range(3)
        ]
    finally:
        server.close()

    for status, body in results:
        assert status == 200
        assert body["status"] == 200
        assert body["breakerState"] == "closed"


def test_body_not_json_is_400(handler: ModuleType) -> None:
    event = load_event("post_call.json")
    event["body"] = "{not json"
    status, body = invoke(handler, event)
    assert status == 400
    assert body["field"] == "body"


def test_get_state(handler: ModuleType, downstream: Downstream) -> None:
    downstream.status = 500
    invoke(handler, call_event(service="demo", path="/fail"))

    status, body = invoke(handler, load_event("get_state.json"))

    assert status == 200
    assert body["service"] == "demo"
    assert body["state"] == "closed"
    assert body["failureCount"] == 2
    assert body["openedUntil"] is None


def test_get_unregistered_is_404(handler: ModuleType) -> None:
    event = load_event("get_state.json")
    event["rawPath"] = event["requestContext"]["http"]["path"] = "/breaker/nope"
    event["pathParameters"] = {"service": "nope"}
    status, body = invoke(handler, event)
    assert status == 404
    assert body["error"] == "not_found"


def open_demo(handler: ModuleType, downstream: Downstream) -> None:
    downstream.status = 500
    invoke(handler, call_event(service="demo", path="/fail"))
    invoke(handler, call_event(service="demo", path="/fail"))


def test_reset_with_admin_scope(
    handler: ModuleType, downstream: Downstream, database: Database
) -> None:
    open_demo(handler, downstream)

    status, body = invoke(handler, load_event("reset_jwt_admin.json"))

    assert status == 200
    assert body["state"] == "closed"
    assert body["generation"] == 2
    with database.transaction() as connection:
        row = connection.execute(
            "SELECT actor, action FROM audit_log WHERE task_id = 'demo' "
            "ORDER BY id DESC LIMIT 1"
        ).fetchone()
    assert row == {"actor": "user-42", "action": "breaker.open_to_closed"}


@pytest.mark.parametrize(
    ("event_name", "expected"),
    [("reset_jwt_no_scope.json", 403), ("reset_no_auth.json", 401)],
)
def test_reset_unauthorized(
    handler: ModuleType, event_name: str, expected: int
) -> None:
    status, _ = invoke(handler, load_event(event_name))
    assert status == expected


def test_reset_with_admin_token(
    handler: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ADMIN_API_TOKEN", "s3cret-token")
    good = load_event("reset_no_auth.json")
    good["headers"]["authorization"] = "Bearer s3cret-token"
    bad = copy.deepcopy(good)
    bad["headers"]["authorization"] = "Bearer wrong"

    good_status, good_body = invoke(handler, good)
    bad_status, _ = invoke(handler, bad)

    assert good_status == 200
    assert good_body["state"] == "closed"
    assert bad_status == 401


def test_sqs_transient_retried_bad_input_final(
    handler: ModuleType, downstream: Downstream
) -> None:
    downstream.status_by_path = {"/ok": 200, "/fail": 500}

    result = handler.lambda_handler(load_event("sqs_calls.json"), FakeContext())

    failed = [item["itemIdentifier"] for item in result["batchItemFailures"]]
    assert failed == ["m-fail"]
    paths = [request["path"] for request in downstream.requests]
    assert paths.count("/ok") == 1
    assert paths.count("/fail") == 2
    assert "//evil.example/x" not in paths


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ('{"service": "demo", "path": "/\\ud800"}', "path"),
        ('{"service": "demo", "path": "//evil.example/x"}', "path"),
        ('{"service": "demo", "path": "/x", "method": ["GET"]}', "method"),
        ('{"service": "demo", "path": "/x", "method": {}}', "method"),
    ],
)
def test_sqs_reply_names_field_like_http(
    handler: ModuleType,
    monkeypatch: pytest.MonkeyPatch,
    downstream: Downstream,
    body: str,
    field: str,
) -> None:
    replies: list[dict[str, Any]] = []
    monkeypatch.setattr(messaging, "send_reply", lambda _, reply: replies.append(reply))
    event = load_event("sqs_calls.json")
    event["Records"] = [{**event["Records"][0], "body": body}]

    result = handler.lambda_handler(event, FakeContext())

    assert result["batchItemFailures"] == []
    assert len(replies) == 1
    assert replies[0]["field"] == field
    assert downstream.requests == []


@pytest.fixture
def moto_sqs(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """SQS from moto, with the handler's cached client built inside it."""
    from moto import mock_aws

    from resilience.messaging import sqs_client

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with mock_aws():
        sqs_client.cache_clear()
        yield
    sqs_client.cache_clear()


def call_event_replying_to(queue: str, body: str | None = None) -> dict[str, Any]:
    event = load_event("sqs_calls.json")
    record = event["Records"][0]
    if body is not None:
        record["body"] = body
    record["messageAttributes"]["replyTo"] = {
        "stringValue": queue,
        "dataType": "String",
    }
    event["Records"] = [record]
    return event


def test_reply_to_missing_queue_not_retried(
    handler: ModuleType, moto_sqs: None, caplog: pytest.LogCaptureFixture
) -> None:
    body = '{"service": "demo", "path": "/x", "path": "/y"}'
    event = call_event_replying_to("no-such-queue", body)

    result = handler.lambda_handler(event, FakeContext())

    # The bad message is still handled once, although its reply failed.
    assert result["batchItemFailures"] == []
    failed = [r for r in caplog.records if r.getMessage() == "sqs.reply_failed"]
    assert len(failed) == 1


def test_sqs_reply_sent_to_reply_queue(handler: ModuleType, moto_sqs: None) -> None:
    import boto3

    sqs = boto3.client("sqs")
    queue_url = sqs.create_queue(QueueName="breaker-replies")["QueueUrl"]

    result = handler.lambda_handler(
        call_event_replying_to("breaker-replies"), FakeContext()
    )

    messages = sqs.receive_message(QueueUrl=queue_url)["Messages"]
    reply = json.loads(messages[0]["Body"])
    assert result["batchItemFailures"] == []
    assert reply["ok"] is True
    assert reply["status"] == 200
    assert reply["service"] == "demo"
