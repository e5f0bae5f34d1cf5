"""The partial-success handler: HTTP API v2 events and SQS events from JSON files."""

from __future__ import annotations

import base64
import importlib.util
import json
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import stamina

from resilience.batch.sqs import validate_partial_response
from resilience.db import Database
from tests.batch_support import FakeLambdaContext, http_event, sqs_event, sqs_record

ROOT = Path(__file__).resolve().parents[2]
EVENTS = ROOT / "tests" / "events" / "batches"


@pytest.fixture(autouse=True)
def no_retry_waits() -> Iterator[None]:
    with stamina.set_testing(True, attempts=100, cap=True):
        yield


@pytest.fixture
def handler(app_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.setenv("TRUST_ORG_ID_HEADER", "true")
    monkeypatch.setenv("POWERTOOLS_SERVICE_NAME", "partial-success")
    path = ROOT / "functions" / "partial_success" / "app.py"
    spec = importlib.util.spec_from_file_location("partial_success_app", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load(name: str) -> dict[str, Any]:
    return json.loads((EVENTS / name).read_text())


def call(handler: ModuleType, event: dict[str, Any]) -> Any:
    return handler.lambda_handler(event, FakeLambdaContext())


def body_of(response: dict[str, Any]) -> Any:
    return json.loads(response["body"])


def test_post_batch_runs_items_in_order(handler: ModuleType) -> None:
    response = call(handler, load("post_batch.json"))

    assert response["statusCode"] == 200
    body = body_of(response)
    assert body["ok"] is False
    assert body["batchId"] == "demo-1"
    assert body["total"] == 3
    assert body["okCount"] == 2
    assert body["failedCount"] == 1
    assert [r["id"] for r in body["results"]] == ["i1", "i2", "i3"]
    assert body["results"][0] == {
        "id": "i1",
        "ok": True,
        "status": "completed",
        "attempts": 1,
        "reason": None,
        "cached": False,
        "output": {"text": "hello"},
    }
    assert body["results"][1]["reason"] == "processor_error"
    assert body["results"][1]["retryable"] is False


def test_second_post_served_from_cache(handler: ModuleType) -> None:
    call(handler, load("post_batch.json"))

    body = body_of(call(handler, load("post_batch.json")))

    assert [r["cached"] for r in body["results"]] == [True, True, True]
    assert [r["attempts"] for r in body["results"]] == [1, 1, 1]


def test_get_batch_from_postgres(handler: ModuleType) -> None:
    call(handler, load("post_batch.json"))

    response = call(handler, load("get_batch.json"))

    assert response["statusCode"] == 200
    body = body_of(response)
    assert body["total"] == 3
    assert body["okCount"] == 2
    assert body["failedCount"] == 1
    assert [r["status"] for r in body["results"]] == [
        "completed",
        "failed",
        "completed",
    ]
    assert body["results"][2]["output"] == {"text": "world"}


def test_get_batch_of_other_org_not_found(handler: ModuleType) -> None:
    call(handler, load("post_batch.json"))
    event = load("get_batch.json")
    event["headers"]["x-org-id"] = "someone-else"

    response = call(handler, event)

    assert response["statusCode"] == 404
    assert "demo-1" in body_of(response)["message"]


def test_unknown_batch_is_404(handler: ModuleType) -> None:
    event = http_event("GET", "/batches/nope", path_parameters={"batchId": "nope"})

    response = call(handler, event)

    assert response["statusCode"] == 404
    assert body_of(response)["error"] == "not_found"


def test_changed_payload_is_409(handler: ModuleType) -> None:
    """New data under a used item id is a 409, and no output leaks."""
    first = {
        "batchId": "b5",
        "items": [{"id": "i1", "data": {"prompt": "A", "budget_usd": 1}}],
    }
    second = {"batchId": "b5", "items": [{"id": "i1", "data": {"budget_usd": 5}}]}
    call(handler, http_event("POST", "/batches", first))

    response = call(handler, http_event("POST", "/batches", second))

    assert response["statusCode"] == 409
    body = body_of(response)
    assert body["error"] == "conflict"
    assert "batch:b5:item:i1" in body["message"]
    assert "output" not in body


def test_large_batch_is_413_with_queue_advice(handler: ModuleType) -> None:
    batch = {
        "batchId": "big",
        "items": [{"id": f"i{n}", "data": {}} for n in range(101)],
    }

    response = call(handler, http_event("POST", "/batches", batch))

    assert response["statusCode"] == 413
    body = body_of(response)
    assert body["limit"] == 100
    assert "batch-items queue" in body["message"]
    assert body["messageExample"]["item"]["id"] == "<id>"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"items": [{"id": "i1"}]}, "batchId"),
        ({"batchId": "a:item:b", "items": [{"id": "i1"}]}, "batchId"),
        ({"batchId": "atk-nl\n", "items": [{"id": "i1"}]}, "batchId"),
        ({"batchId": "b1", "items": []}, "items"),
        ({"batchId": "b1", "items": "i1"}, "items"),
        ({"batchId": "b1", "items": [5]}, "items[0]"),
        (
            {"batchId": "b1", "items": [{"id": "i1", "processor": 3}]},
            "items[0].processor",
        ),
        ({"batchId": "b1", "items": [{"id": "i1"}, {"id": "i1"}]}, "items[1].id"),
        (
            {"batchId": "b1", "items": [{"id": "i1"}, {"id": "i2", "dat": {}}]},
            "items[1].dat",
        ),
        ({"batchId": "b1", "items": [{"id": "i1"}], "item": {}}, "item"),
    ],
)
def test_bad_input_is_400_naming_field(
    handler: ModuleType, body: dict[str, Any], field: str
) -> None:
    response = call(handler, http_event("POST", "/batches", body))

    assert response["statusCode"] == 400
    assert body_of(response)["field"] == field


def test_body_not_utf8_is_400(handler: ModuleType) -> None:
    # API Gateway base64-encodes a body whose content type is not text.
    event = http_event("POST", "/batches", headers={"content-type": "x/bin"})
    event["body"] = base64.b64encode(b'{"batchId": "\xff"}').decode()
    event["isBase64Encoded"] = True

    response = call(handler, event)

    assert response["statusCode"] == 400
    assert body_of(response)["field"] == "body"
    assert "UTF-8" in body_of(response)["message"]


def test_huge_input_is_not_echoed_whole(handler: ModuleType) -> None:
    repeated = "i" * 100_000
    body = {"batchId": "b1", "items": [{"id": repeated}, {"id": repeated}]}

    response = call(handler, http_event("POST", "/batches", body))

    assert response["statusCode"] == 400
    assert len(response["body"]) < 2_000
    assert body_of(response)["field"] == "items[1].id"


def item_ids(database: Database, batch_id: str) -> list[str]:
    with database.transaction() as conn:
        rows = conn.execute(
            "SELECT item_id FROM batch_item WHERE batch_id = %s ORDER BY item_id",
            (batch_id,),
        ).fetchall()
    return [r["item_id"] for r in rows]


def test_misspelt_item_field_claims_nothing(
    handler: ModuleType, database: Database
) -> None:
    """A misspelt processor is 400, so the corrected request still runs."""
    item = {"id": "x", "data": {"prompt": "Summarise A"}}
    typo = {"batchId": "atk-typo", "items": [{**item, "procesor": "llm"}]}

    response = call(handler, http_event("POST", "/batches", typo))

    assert response["statusCode"] == 400
    error = body_of(response)
    assert error["field"] == "items[0].procesor"
    assert "The accepted fields are data, id, processor" in error["message"]
    assert item_ids(database, "atk-typo") == []

    fixed = {"batchId": "atk-typo", "items": [{**item, "processor": "echo"}]}
    response = call(handler, http_event("POST", "/batches", fixed))

    assert response["statusCode"] == 200
    assert body_of(response)["okCount"] == 1


def test_sqs_misspelt_field_is_final(
    handler: ModuleType, database: Database, caplog: pytest.LogCaptureFixture
) -> None:
    """Messages with unknown fields fail alone, are logged and claim nothing."""
    event = sqs_event(
        sqs_record(
            "m1", {"batchId": "b13", "item": {"id": "x", "procesor": "llm", "data": {}}}
        ),
        sqs_record("m2", {"batchId": "b13", "item": {"id": "y", "data": {}}}),
        sqs_record(
            "m3", {"batchId": "b13", "item": {"id": "z", "data": {}}, "replyTo": "q"}
        ),
    )

    response = call(handler, event)

    assert response == {
        "batchItemFailures": [{"itemIdentifier": "m1"}, {"itemIdentifier": "m3"}]
    }
    assert item_ids(database, "b13") == ["y"]
    invalid = [r for r in caplog.records if r.getMessage() == "batch.message_invalid"]
    assert [getattr(r, "message_id", None) for r in invalid] == ["m1", "m3"]
    assert "item.procesor" in getattr(invalid[0], "error", "")
    assert "replyTo" in getattr(invalid[1], "error", "")


def test_missing_ids_over_http(handler: ModuleType) -> None:
    """Each missing or empty id fails on its own while the rest runs."""
    batch = {
        "batchId": "b4",
        "items": [
            {"id": None, "data": {"v": 1}},
            {"data": {"v": 2}},
            {"id": "", "data": {"v": 3}},
            {"id": "ok", "data": {"v": 4}},
        ],
    }

    body = body_of(call(handler, http_event("POST", "/batches", batch)))

    assert [r["reason"] for r in body["results"]] == ["missing item id"] * 3 + [None]
    assert [r["ok"] for r in body["results"]] == [False, False, False, True]
    assert body["failedCount"] == 3


def test_sqs_reports_only_failed_message(handler: ModuleType) -> None:
    """When m2 fails the response names exactly its message id."""
    event = load("sqs_m2_fails.json")

    response = call(handler, event)

    assert response == {"batchItemFailures": [{"itemIdentifier": "m2"}]}
    assert validate_partial_response(response, event["Records"]) == []


def test_sqs_fifo_skips_rest_of_failed_group(
    handler: ModuleType, database: Database
) -> None:
    """When m2 fails, m4 of the same group is handed back unattempted."""
    event = load("sqs_fifo_groups.json")

    response = call(handler, event)

    assert response == {
        "batchItemFailures": [{"itemIdentifier": "m2"}, {"itemIdentifier": "m4"}]
    }
    with database.transaction() as conn:
        rows = {
            r["item_id"]: r
            for r in conn.execute(
                "SELECT item_id, status, attempts FROM batch_item WHERE batch_id = 'b7'"
            ).fetchall()
        }
    assert rows["i3"]["status"] == "completed"
    assert rows["i5"]["status"] == "completed"
    assert rows["i2"]["status"] == "failed"
    assert rows["i4"]["attempts"] == 0
    assert rows["i4"]["status"] == "in_progress"


def test_sqs_breaker_open_reports_all(
    handler: ModuleType,
    database: Database,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Both items fail on an open breaker and are reported without raising."""
    from resilience.breaker import get_breaker
    from resilience.breaker.registry import clear_breakers
    from resilience.services import default_registry, reset_default_registry

    monkeypatch.setenv(
        "BREAKER_SERVICES", json.dumps({"down": {"baseUrl": "http://127.0.0.1:9"}})
    )
    reset_default_registry()
    clear_breakers()
    try:
        service = default_registry().get("down")
        get_breaker("down", service.breaker).open_until(time.time() + 60)
        event = load("sqs_breaker_open.json")

        response = call(handler, event)
    finally:
        reset_default_registry()
        clear_breakers()

    assert response == {
        "batchItemFailures": [{"itemIdentifier": "m1"}, {"itemIdentifier": "m2"}]
    }
    with database.transaction() as conn:
        rows = conn.execute(
            "SELECT reason, retryable, attempts FROM batch_item "
            "WHERE batch_id = 'b9' ORDER BY item_id"
        ).fetchall()
    assert [r["reason"] for r in rows] == ["breaker_open", "breaker_open"]
    assert [r["retryable"] for r in rows] == [True, True]
    assert [r["attempts"] for r in rows] == [0, 0]


def test_sqs_all_failed_raises_when_configured(
    handler: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    from aws_lambda_powertools.utilities.batch.exceptions import BatchProcessingError

    monkeypatch.setenv("BATCH_RAISE_ON_ALL_FAILED", "true")
    event = sqs_event(
        sqs_record(
            "m1",
            {"batchId": "b11", "item": {"id": "i1", "data": {"fail": "permanent"}}},
        )
    )

    with pytest.raises(BatchProcessingError):
        call(handler, event)


def test_sqs_bad_bodies_fail_alone(handler: ModuleType) -> None:
    event = load("sqs_bad_bodies.json")

    response = call(handler, event)

    assert response == {
        "batchItemFailures": [{"itemIdentifier": "m1"}, {"itemIdentifier": "m2"}]
    }


def test_sqs_duplicate_in_flight_hands_back_one(
    handler: ModuleType, database: Database
) -> None:
    """Only the record whose item another worker has leased is reported."""
    from resilience.batch import BatchItem, BatchRunner, BatchSettings

    # GIVEN another worker holds i1 of b12 under a live lease
    class Holder:
        name = "echo"
        side_effects = False
        takeover_policy = "retry"
        expected_duration_s = 0.0

        def process(self, context: Any) -> Any:
            raise KeyboardInterrupt  # leaves the claim in place, like a crash

    runner = BatchRunner(database, settings=BatchSettings())
    runner.registry.register(Holder())
    with pytest.raises(KeyboardInterrupt):
        runner.run([BatchItem("b12", "i1", {"n": 1}, "echo")])

    # WHEN the same item arrives in another batch with a second message
    event = sqs_event(
        sqs_record("m1", {"batchId": "b12", "item": {"id": "i1", "data": {"n": 1}}}),
        sqs_record("m2", {"batchId": "b12", "item": {"id": "i2", "data": {"n": 2}}}),
    )
    response = call(handler, event)

    # THEN only m1 goes back, and it was not run a second time
    assert response == {"batchItemFailures": [{"itemIdentifier": "m1"}]}
    with database.transaction() as conn:
        rows = {
            r["item_id"]: r
            for r in conn.execute(
                "SELECT item_id, status, attempts FROM batch_item "
                "WHERE batch_id = 'b12'"
            ).fetchall()
        }
    assert rows["i1"]["status"] == "in_progress"
    assert rows["i1"]["attempts"] == 1
    assert rows["i2"]["status"] == "completed"


def test_get_shows_expired_lease(handler: ModuleType, database: Database) -> None:
    """An item whose worker stopped shows reason lease_expired once its lease ends."""
    from resilience.batch import BatchItem, BatchRunner, BatchSettings

    class Crashes:
        name = "echo"
        side_effects = False
        takeover_policy = "retry"
        expected_duration_s = 0.0

        def process(self, context: Any) -> Any:
            raise KeyboardInterrupt  # leaves the claim in place, like a crash

    runner = BatchRunner(database, settings=BatchSettings())
    runner.registry.register(Crashes())
    with pytest.raises(KeyboardInterrupt):
        runner.run([BatchItem("b13", "i1", {"n": 1}, "echo")])
    with database.transaction() as conn:
        conn.execute("UPDATE batch_item SET lease_until = now() - interval '1 second'")

    event = http_event("GET", "/batches/b13", path_parameters={"batchId": "b13"})
    body = body_of(call(handler, event))

    assert body["inProgressCount"] == 1
    assert body["results"][0]["status"] == "in_progress"
    assert body["results"][0]["reason"] == "lease_expired"
