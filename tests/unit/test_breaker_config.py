"""BreakerConfig, the service registry and path checks, without servers."""

from __future__ import annotations

import json

import pytest

from resilience.breaker import BreakerConfig, StoreFailurePolicy
from resilience.breaker.local import LocalState
from resilience.errors import (
    ConfigError,
    RateLimitedError,
    UpstreamClientError,
    UpstreamConnectionError,
    ValidationError,
)
from resilience.services import ServiceRegistry, validate_path


def test_defaults() -> None:
    config = BreakerConfig()
    assert config.failure_threshold == 5
    assert config.reset_timeout == 30.0
    assert config.half_open_max_calls == 1
    assert config.failure_rate_threshold == 0.5
    assert config.window == 60.0
    assert config.minimum_calls == 20
    assert config.store_failure_policy is StoreFailurePolicy.FAIL_OPEN


@pytest.mark.parametrize(
    ("changes", "setting"),
    [
        ({"failure_threshold": -1}, "failure_threshold"),
        ({"reset_timeout": 0}, "reset_timeout"),
        ({"half_open_max_calls": 0}, "half_open_max_calls"),
        ({"failure_rate_threshold": 1.5}, "failure_rate_threshold"),
        ({"minimum_calls": 0}, "minimum_calls"),
        ({"slow_call_duration": 0}, "slow_call_duration"),
        ({"failure_threshold": 0, "failure_rate_threshold": 0}, "failure_threshold"),
        ({"store_failure_policy": "sideways"}, "store_failure_policy"),
        ({"pipeline_successes": "yes"}, "pipeline_successes"),
    ],
)
def test_invalid_config_names_setting(changes: dict[str, object], setting: str) -> None:
    with pytest.raises(ConfigError, match=setting) as caught:
        BreakerConfig(**changes)  # type: ignore[arg-type]
    assert caught.value.setting == setting


def test_from_env_and_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BREAKER_FAILURE_THRESHOLD", "7")
    monkeypatch.setenv("BREAKER_RESET_TIMEOUT_S", "12.5")
    monkeypatch.setenv("BREAKER_STORE_FAILURE_POLICY", "fail_closed")
    monkeypatch.setenv("BREAKER_SLOW_CALL_S", "off")

    config = BreakerConfig.from_env(failure_threshold=9)

    assert config.failure_threshold == 9
    assert config.reset_timeout == 12.5
    assert config.store_failure_policy is StoreFailurePolicy.FAIL_CLOSED
    assert config.slow_call_duration is None


@pytest.mark.parametrize(("raw", "expected"), [("false", False), ("On", True)])
def test_pipeline_successes_from_env(
    monkeypatch: pytest.MonkeyPatch, raw: str, expected: bool
) -> None:
    monkeypatch.setenv("BREAKER_PIPELINE_SUCCESSES", raw)
    assert BreakerConfig.from_env().pipeline_successes is expected


def test_pipeline_successes_rejects_other_words(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BREAKER_PIPELINE_SUCCESSES", "maybe")
    with pytest.raises(ConfigError, match="BREAKER_PIPELINE_SUCCESSES must be true"):
        BreakerConfig.from_env()


def test_from_env_rejects_text(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BREAKER_MINIMUM_CALLS", "many")
    with pytest.raises(ConfigError, match="BREAKER_MINIMUM_CALLS"):
        BreakerConfig.from_env()


def test_counted_outcomes_by_default() -> None:
    config = BreakerConfig()
    assert config.counts_status(500)
    assert config.counts_status(429)
    assert not config.counts_status(404)
    assert config.counts_error(None)
    assert config.counts_error(TimeoutError())
    assert config.counts_error(UpstreamConnectionError("down"))
    assert config.counts_error(RateLimitedError("slow down"))
    assert not config.counts_error(UpstreamClientError("bad", status=400))
    assert not config.counts_error(KeyError("x"))


def test_custom_failure_statuses() -> None:
    config = BreakerConfig().with_mapping(
        {"failureStatusCodes": [502, 503]}, source="s.breaker"
    )
    assert config.counts_status(503)
    assert not config.counts_status(500)


def test_unknown_breaker_key_rejected() -> None:
    with pytest.raises(ConfigError, match=r"s\.breaker\.threshold"):
        BreakerConfig().with_mapping({"threshold": 3}, source="s.breaker")


def test_registry_parses_services() -> None:
    raw = json.dumps(
        {
            "payments": {
                "baseUrl": "https://payments.internal/api/",
                "timeoutS": 3,
                "critical": True,
                "breaker": {"failureThreshold": 2, "storeFailurePolicy": "fail_closed"},
                "retry": {"attempts": 3},
            }
        }
    )

    service = ServiceRegistry.from_json(raw).get("payments")

    assert service.base_url == "https://payments.internal/api"
    assert service.critical is True
    assert service.breaker.failure_threshold == 2
    assert service.breaker.probe_lease == 6
    assert service.breaker.store_failure_policy is StoreFailurePolicy.FAIL_CLOSED
    assert service.retry.attempts == 3
    assert service.retry.backoff_factor == 2


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        ("[", "not valid JSON"),
        ("[]", "JSON object"),
        ('{"x": {"baseUrl": "ftp://host"}}', "baseUrl"),
        ('{"x": {}}', "baseUrl"),
        ('{"bad name": {"baseUrl": "http://h"}}', "service name"),
        ('{"x": {"baseUrl": "http://h", "timeoutS": 0}}', "timeoutS"),
        ('{"x": {"baseUrl": "http://h", "retry": {"attempts": 0}}}', "attempts"),
    ],
)
def test_registry_rejects_bad_settings(raw: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        ServiceRegistry.from_json(raw)


def test_unknown_service_names_field() -> None:
    registry = ServiceRegistry.from_json('{"demo": {"baseUrl": "http://h"}}')
    with pytest.raises(ValidationError, match="use one of demo") as caught:
        registry.get("other")
    assert caught.value.field == "service"


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "/ok",
        "/a/b?x=1&y=2",
        "/items/42#frag",
        "/v1/a.b/c..d",
        "/search?next=http://example.com",
    ],
)
def test_valid_paths(path: str) -> None:
    assert validate_path(path) == path


@pytest.mark.parametrize(
    "path",
    [
        "",
        "ok",
        "//evil.example/x",
        "http://169.254.169.254/latest",
        "/a/../b",
        "/..",
        "/./a",
        "/a/%2e%2e/b",
        "/a%2fb",
        "/a\\b",
        "/http://evil.example",
        "/a\nb",
        None,
        42,
    ],
)
def test_invalid_paths(path: object) -> None:
    with pytest.raises(ValidationError) as caught:
        validate_path(path)
    assert caught.value.field == "path"


def test_local_state_opens_and_probes() -> None:
    config = BreakerConfig(failure_threshold=2, reset_timeout=1)
    state = LocalState()
    for _ in range(2):
        permit = state.acquire(0, config, "p")
        state.report(0, config, ok=False, generation=permit.generation, probe_id="")

    rejected = state.acquire(500, config, "p1")
    probe = state.acquire(1000, config, "p2")
    closed = state.report(
        1000, config, ok=True, generation=probe.generation, probe_id="p2"
    )

    assert rejected.verdict == "reject"
    assert rejected.retry_ms == 500
    assert probe.verdict == "probe"
    assert closed.state == "closed"
    assert closed.generation == 3
