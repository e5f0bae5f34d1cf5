"""call_service: retries, Retry-After, deadlines and the breaker around them."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
import stamina

from resilience.breaker import clear_breakers, get_breaker
from resilience.errors import BreakerOpenError, UpstreamTimeoutError
from resilience.kvstore import reset_store_cache
from resilience.services import ServiceRegistry, call_service
from tests.breaker_fixtures import Downstream, downstream

__all__ = ["downstream"]


@pytest.fixture
def registry(
    app_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, downstream: Downstream
) -> Iterator[ServiceRegistry]:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    reset_store_cache()
    clear_breakers()
    services = {
        "demo": {
            "baseUrl": downstream.url,
            "timeoutS": 1,
            "breaker": {"failureThreshold": 3, "stateCacheTtlS": 0},
            "retry": {"attempts": 3, "initialWaitS": 0.01, "maxWaitS": 0.05},
        }
    }
    with stamina.set_testing(True, attempts=10, cap=True):
        yield ServiceRegistry.from_json(json.dumps(services))
    reset_store_cache()
    clear_breakers()


def test_success_single_attempt(
    registry: ServiceRegistry, downstream: Downstream
) -> None:
    response = call_service("demo", "GET", "/ok", registry=registry)
    assert response.status == 200
    assert response.attempts == 1
    assert response.breaker_state == "closed"
    assert response.body == {"path": "/ok", "method": "GET"}


def test_5xx_retried_up_to_attempts(
    registry: ServiceRegistry, downstream: Downstream
) -> None:
    downstream.status = 502
    response = call_service("demo", "GET", "/x", registry=registry)
    assert response.status == 502
    assert response.attempts == 3
    assert len(downstream.requests) == 3


def test_4xx_not_retried(registry: ServiceRegistry, downstream: Downstream) -> None:
    downstream.status = 404
    response = call_service("demo", "GET", "/missing", registry=registry)
    assert response.status == 404
    assert response.attempts == 1


def test_retry_after_beyond_deadline_stops(
    registry: ServiceRegistry, downstream: Downstream
) -> None:
    downstream.status = 503
    downstream.headers = {"Retry-After": "120"}

    response = call_service(
        "demo", "GET", "/busy", registry=registry, deadline=time.time() + 5
    )

    assert response.status == 503
    assert response.attempts == 1


def test_retry_after_within_deadline_retries(
    registry: ServiceRegistry, downstream: Downstream
) -> None:
    downstream.status = 429
    downstream.headers = {"Retry-After": "0"}
    response = call_service(
        "demo", "GET", "/busy", registry=registry, deadline=time.time() + 5
    )
    assert response.attempts == 3


def test_no_time_left_makes_no_call(
    registry: ServiceRegistry, downstream: Downstream
) -> None:
    with pytest.raises(UpstreamTimeoutError, match="no time left"):
        call_service("demo", "GET", "/ok", registry=registry, deadline=time.time())
    assert downstream.requests == []


def test_breaker_stops_retries_and_keeps_answer(
    registry: ServiceRegistry, downstream: Downstream
) -> None:
    downstream.status = 500
    call_service("demo", "GET", "/fail", registry=registry)  # 3 failures: opens
    downstream.requests.clear()

    with pytest.raises(BreakerOpenError) as caught:
        call_service("demo", "GET", "/fail", registry=registry)

    assert caught.value.service == "demo"
    assert downstream.requests == []


def test_open_mid_retries_returns_last_answer(
    registry: ServiceRegistry, downstream: Downstream
) -> None:
    service = registry.get("demo")
    breaker = get_breaker("demo", service.breaker)
    breaker.acquire().failure()
    breaker.acquire().failure()  # GIVEN one failure short of opening
    downstream.status = 500

    response = call_service("demo", "GET", "/fail", registry=registry)

    assert response.status == 500
    assert response.breaker_state == "open"
    assert response.attempts == 1
    assert len(downstream.requests) == 1
