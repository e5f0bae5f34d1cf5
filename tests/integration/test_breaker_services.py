"""call_service: retries, Retry-After, deadlines and the breaker around them."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
import stamina

from resilience.breaker import clear_breakers, get_breaker
from resilience.errors import BreakerOpenError, UpstreamTimeoutError, ValidationError
from resilience.kvstore import reset_store_cache
from resilience.services import ServiceRegistry, _attempt, call_service
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


BAD_INPUTS = [
    ({"headers": {"X-A": "a\nb"}}, "headers.X-A"),
    ({"headers": {"X-A": "a\r\nInjected: 1"}}, "headers.X-A"),
    ({"headers": {"X-A": "a\x00b"}}, "headers.X-A"),
    ({"headers": {"X-A": "caf\u00e9"}}, "headers.X-A"),
    ({"headers": {"X-A": " padded"}}, "headers.X-A"),
    ({"headers": {"X A": "v"}}, "headers.X A"),
    ({"headers": {"X:A": "v"}}, "headers.X:A"),
    ({"headers": {"": "v"}}, "headers."),
    ({"headers": {"X-A": "v\n"}}, "headers.X-A"),
    ({"headers": {"X-A\n": "v"}}, "headers.X-A\n"),
    ({"idempotency_key": "k\n"}, "idempotencyKey"),
    ({"idempotency_key": "a\u0000b"}, "idempotencyKey"),
    ({"idempotency_key": "caf\u00e9"}, "idempotencyKey"),
    ({"idempotency_key": "k" * 256}, "idempotencyKey"),
    ({"path": "/\ud800"}, "path"),
    ({"path": "/x?q=\udfff"}, "path"),
    ({"path": "/100%"}, "path"),
]


@pytest.mark.parametrize(("arguments", "field"), BAD_INPUTS)
def test_bad_input_rejected_uncounted(
    registry: ServiceRegistry,
    downstream: Downstream,
    arguments: dict[str, object],
    field: str,
) -> None:
    """Input httpx cannot send is a ValidationError, never a service failure."""
    request: dict[str, object] = {"path": "/x", **arguments}
    for _ in range(4):  # more than failureThreshold (3)
        with pytest.raises(ValidationError) as caught:
            call_service("demo", "GET", registry=registry, **request)  # type: ignore[arg-type]
        assert caught.value.field == field

    snapshot = get_breaker("demo", registry.get("demo").breaker).snapshot()
    assert downstream.requests == []
    assert snapshot.state.value == "closed"
    assert snapshot.failure_count == 0
    assert call_service("demo", "GET", "/ok", registry=registry).status == 200


def test_valid_unusual_input_is_sent(
    registry: ServiceRegistry, downstream: Downstream
) -> None:
    response = call_service(
        "demo",
        "GET",
        "/caf\u00e9/a%20b",
        headers={"X-Tab": "a\tb", "X-Symbols": "!#$%&'*+-.^_`|~"},
        idempotency_key="order 42/retry",
        registry=registry,
    )

    assert response.status == 200
    assert downstream.requests[0]["path"] == "/caf%C3%A9/a%20b"


def test_send_time_client_error_uncounted(
    registry: ServiceRegistry, downstream: Downstream
) -> None:
    """An httpx error raised before sending releases the permit uncounted."""
    service = registry.get("demo")
    breaker = get_breaker("demo", service.breaker)
    client = registry.client(service)
    for _ in range(4):
        permit = breaker.acquire()
        # Headers that skipped validation, as a caller of _attempt could pass.
        with pytest.raises(ValidationError) as caught:
            _attempt(permit, client, service, "GET", "/x", None, {"X-A": "a\nb"}, None)
        assert caught.value.field == "request"

    snapshot = breaker.snapshot()
    assert downstream.requests == []
    assert snapshot.failure_count == 0
    assert snapshot.state.value == "closed"
