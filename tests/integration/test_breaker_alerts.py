"""Openings announce themselves once: Slack, PagerDuty, metric, signed requests."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from local.embedded import free_port
from resilience.alerts import Alert, send_alert, sign_body
from resilience.breaker import BreakerConfig, CircuitBreaker
from resilience.breaker.listeners import OpeningNotifier
from resilience.kvstore import KeyValueStore
from tests.breaker_fixtures import (
    Downstream,
    FakeClock,
    clock,
    downstream,
    make_store,
    store_kind,
    upstash_bridge,
)

__all__ = ["clock", "downstream", "make_store", "store_kind", "upstash_bridge"]


@pytest.fixture
def alert_env(monkeypatch: pytest.MonkeyPatch, downstream: Downstream) -> Downstream:
    monkeypatch.setenv("SLACK_WEBHOOK_URL", f"{downstream.url}/slack")
    monkeypatch.setenv("PAGERDUTY_EVENTS_URL", f"{downstream.url}/pagerduty")
    monkeypatch.setenv("PAGERDUTY_ROUTING_KEY", "routing-key")
    monkeypatch.setenv("WEBHOOK_SIGNING_SECRET", "signing-secret")
    monkeypatch.delenv("ALERTING_SECRET", raising=False)
    monkeypatch.delenv("SENTRY_DSN", raising=False)
    return downstream


def requests_to(downstream: Downstream, path: str) -> list[dict[str, object]]:
    return [r for r in downstream.requests if r["path"] == path]


@pytest.mark.parametrize("store_kind", ["redis"], indirect=True)
def test_opening_notifies_once_across_instances(
    alert_env: Downstream,
    make_store: Callable[..., KeyValueStore],
    clock: FakeClock,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = BreakerConfig(failure_threshold=2, state_cache_ttl=0)
    instances = [
        CircuitBreaker(
            "payments",
            config,
            store=make_store(),
            clock=clock,
            listeners=[OpeningNotifier(critical=True)],
        )
        for _ in range(3)
    ]
    permits = [breaker.acquire() for breaker in instances]

    for permit in permits:
        permit.failure()

    slack = requests_to(alert_env, "/slack")
    pagerduty = requests_to(alert_env, "/pagerduty")
    assert len(slack) == 1
    assert len(pagerduty) == 1
    event = json.loads(str(pagerduty[0]["body"]))
    assert event["routing_key"] == "routing-key"
    assert event["payload"]["severity"] == "critical"
    assert event["dedup_key"] == "breaker:payments:generation:1"
    metrics = [
        json.loads(line)
        for line in capsys.readouterr().out.splitlines()
        if '"BreakerOpened"' in line
    ]
    assert len(metrics) == 1
    assert metrics[0]["_aws"]["CloudWatchMetrics"][0]["Dimensions"] in ([], [[]])


@pytest.mark.parametrize("store_kind", ["redis"], indirect=True)
def test_non_critical_opening_skips_pagerduty(
    alert_env: Downstream,
    make_store: Callable[..., KeyValueStore],
    clock: FakeClock,
) -> None:
    breaker = CircuitBreaker(
        "search",
        BreakerConfig(failure_threshold=1),
        store=make_store(),
        clock=clock,
        listeners=[OpeningNotifier(critical=False)],
    )
    breaker.acquire().failure()

    slack = requests_to(alert_env, "/slack")
    assert len(slack) == 1
    assert "Circuit breaker search opened" in json.loads(str(slack[0]["body"]))["text"]
    assert requests_to(alert_env, "/pagerduty") == []


def test_alert_requests_are_signed(alert_env: Downstream) -> None:
    send_alert(Alert(title="t", text="x", dedupe_key="k"))

    request = requests_to(alert_env, "/slack")[0]
    headers = {k.lower(): v for k, v in dict(request["headers"]).items()}  # type: ignore[call-overload]
    timestamp = int(headers["x-resilience-timestamp"])
    expected = sign_body(str(request["body"]).encode(), "signing-secret", timestamp)
    assert headers["x-resilience-signature"] == expected


def test_unreachable_slack_does_not_raise(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("SLACK_WEBHOOK_URL", f"http://127.0.0.1:{free_port()}/hook")
    monkeypatch.delenv("ALERTING_SECRET", raising=False)

    send_alert(Alert(title="t", text="x", dedupe_key="k"))

    assert any(r.getMessage() == "alert.failed" for r in caplog.records)


def test_unconfigured_alert_sends_nothing(
    monkeypatch: pytest.MonkeyPatch, downstream: Downstream
) -> None:
    for name in ("SLACK_WEBHOOK_URL", "PAGERDUTY_ROUTING_KEY", "ALERTING_SECRET"):
        monkeypatch.delenv(name, raising=False)

    send_alert(Alert(title="t", text="x", dedupe_key="k", page=True))

    assert downstream.requests == []
