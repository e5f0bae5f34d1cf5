"""Built-in processors against local servers: a registered service and the LLM chain."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import stamina

from resilience.batch import BatchItem, BatchRunner, BatchSettings, ItemStatus
from resilience.db import Database
from tests.batch_support import CountingDownstream
from tests.llm_fixtures import LLMControl, llm, llm_env, llm_server

__all__ = ["llm", "llm_env", "llm_server"]


@pytest.fixture(autouse=True)
def no_retry_waits() -> Iterator[None]:
    with stamina.set_testing(True, attempts=100, cap=True):
        yield


@pytest.fixture
def downstream(
    app_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> Iterator[CountingDownstream]:
    from resilience.breaker.registry import clear_breakers
    from resilience.services import reset_default_registry

    server = CountingDownstream().start()
    services = {
        "payments": {
            "baseUrl": server.url,
            "timeoutS": 2,
            "retry": {"attempts": 2, "initialWaitS": 0, "maxWaitS": 0},
            "breaker": {"failureThreshold": 50},
        }
    }
    monkeypatch.setenv("BREAKER_SERVICES", json.dumps(services))
    for name in ("SLACK_WEBHOOK_URL", "PAGERDUTY_ROUTING_KEY", "ALERTING_SECRET"):
        monkeypatch.delenv(name, raising=False)
    reset_default_registry()
    clear_breakers()
    yield server
    reset_default_registry()
    clear_breakers()
    server.stop()


def _service_item(item_id: str) -> BatchItem:
    data = {"service": "payments", "method": "POST", "path": "/effects", "body": {}}
    return BatchItem("svc", item_id, data, "service")


def test_service_item_sends_idempotency_key(
    database: Database, downstream: CountingDownstream
) -> None:
    runner = BatchRunner(database, settings=BatchSettings())

    first = runner.run([_service_item("i1")])
    second = runner.run([_service_item("i1")])

    assert first.results[0].status is ItemStatus.COMPLETED
    assert first.results[0].output["status"] == 201
    assert second.results[0].cached is True
    assert downstream.calls == {"batch:svc:item:i1": 1}
    assert downstream.effects == {"batch:svc:item:i1": 1}


def test_service_5xx_retryable_with_every_call_counted(
    database: Database, downstream: CountingDownstream
) -> None:
    """The service's own retries count as attempts: 3 allowed, 2 per try."""
    downstream.fail_keys.add("batch:svc:item:i2")
    runner = BatchRunner(database, settings=BatchSettings())

    run = runner.run([_service_item("i2")])

    result = run.results[0]
    assert result.status is ItemStatus.FAILED
    assert result.reason == "server_error"
    assert result.retryable is True
    assert downstream.calls["batch:svc:item:i2"] == 4
    assert result.attempts == 4


def test_unknown_service_is_final(
    database: Database, downstream: CountingDownstream
) -> None:
    item = BatchItem("svc", "i3", {"service": "nope", "path": "/x"}, "service")

    run = BatchRunner(database, settings=BatchSettings()).run([item])

    assert run.results[0].reason == "validation_error"
    assert run.results[0].retryable is False


def _llm_item(item_id: str, processor: str = "llm") -> BatchItem:
    return BatchItem(
        "llm", item_id, {"prompt": "Summarise the report", "maxTokens": 50}, processor
    )


def test_llm_item_completes(
    database: Database, llm_env: dict[str, str], llm: LLMControl
) -> None:
    run = BatchRunner(database, settings=BatchSettings()).run([_llm_item("i1")])

    result = run.results[0]
    assert result.status is ItemStatus.COMPLETED
    assert result.output["provider"] == "openai"
    assert result.output["degraded"] is False


def test_llm_fallback_provider_completes(
    database: Database, llm_env: dict[str, str], llm: LLMControl
) -> None:
    llm.fail("openai", "error", status=500)

    run = BatchRunner(database, settings=BatchSettings()).run([_llm_item("i2")])

    result = run.results[0]
    assert result.status is ItemStatus.COMPLETED
    assert result.output["provider"] == "anthropic"


def test_llm_template_answer_is_retryable_failure(
    database: Database, llm_env: dict[str, str], llm: LLMControl
) -> None:
    llm.fail("openai", "error", status=500)
    llm.fail("anthropic", "error", status=500)

    run = BatchRunner(database, settings=BatchSettings()).run([_llm_item("i3")])

    result = run.results[0]
    assert result.status is ItemStatus.FAILED
    assert result.reason == "degraded"
    assert result.retryable is True


def test_llm_degraded_accepted_when_configured(
    database: Database, llm_env: dict[str, str], llm: LLMControl
) -> None:
    llm.fail("openai", "error", status=500)
    llm.fail("anthropic", "error", status=500)
    settings = BatchSettings(
        processors={"summary": {"builtin": "llm", "options": {"acceptDegraded": True}}}
    )

    run = BatchRunner(database, settings=settings).run([_llm_item("i4", "summary")])

    result = run.results[0]
    assert result.status is ItemStatus.COMPLETED
    assert result.output["provider"] == "local"


@pytest.mark.parametrize(
    "sleep_ms", [10**400, 1e300, 120_000], ids=["int-1e400", "float-1e300", "2-min"]
)
def test_echo_sleep_capped_at_60s(
    database: Database, monkeypatch: pytest.MonkeyPatch, sleep_ms: float
) -> None:
    """A sleepMs beyond the float range sleeps the 60 s cap like any large value."""
    from resilience.batch import processors

    slept: list[float] = []
    monkeypatch.setattr(processors.time, "sleep", slept.append)
    runner = BatchRunner(database)

    run = runner.run([BatchItem("echo-sleep", "i1", {"sleepMs": sleep_ms}, "echo")])

    assert run.results[0].status is ItemStatus.COMPLETED, run.results[0].error
    assert slept == [60.0]
