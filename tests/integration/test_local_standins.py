"""The local stand-ins for the demo downstream, Slack and PagerDuty."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from local.standins import DemoService, PagerDutyStandIn, SlackStandIn


@pytest.fixture
def demo() -> Iterator[DemoService]:
    service = DemoService()
    service.start()
    yield service
    service.stop()


@pytest.fixture
def slack() -> Iterator[SlackStandIn]:
    service = SlackStandIn()
    service.start()
    yield service
    service.stop()


@pytest.fixture
def pagerduty() -> Iterator[PagerDutyStandIn]:
    service = PagerDutyStandIn()
    service.start()
    yield service
    service.stop()


def test_demo_counts_effects_per_key(demo: DemoService) -> None:
    headers = {"Idempotency-Key": "k1"}

    first = httpx.post(f"{demo.url}/orders", headers=headers)
    second = httpx.post(f"{demo.url}/orders", headers=headers)
    state = httpx.get(f"{demo.url}/_control").json()

    assert first.json()["effects"] == 1
    assert second.json()["effects"] == 2
    assert state["effects"] == {"k1": 2}
    assert state["requests"] == 2


def test_demo_fails_when_switched(demo: DemoService) -> None:
    switched = httpx.post(
        f"{demo.url}/_control", json={"mode": "fail", "status": 429, "retryAfter": 7}
    )
    failed = httpx.get(f"{demo.url}/ok", headers={"Idempotency-Key": "k2"})
    state = httpx.get(f"{demo.url}/_control").json()

    assert switched.status_code == 200
    assert failed.status_code == 429
    assert failed.headers["Retry-After"] == "7"
    assert state["attempts"] == {"k2": 1}
    assert state["effects"] == {}


def test_demo_recovers_and_resets(demo: DemoService) -> None:
    httpx.post(f"{demo.url}/_control", json={"mode": "fail", "status": 503})
    httpx.post(f"{demo.url}/_control", json={"mode": "ok"})
    recovered = httpx.get(f"{demo.url}/ok")
    reset = httpx.delete(f"{demo.url}/_control").json()

    assert recovered.status_code == 200
    assert reset["mode"] == "ok"
    assert reset["requests"] == 0


def test_demo_fixed_failure_paths(demo: DemoService) -> None:
    assert httpx.get(f"{demo.url}/fail").status_code == 500
    assert httpx.get(f"{demo.url}/status/418").status_code == 418


def test_demo_rejects_unknown_mode(demo: DemoService) -> None:
    response = httpx.post(f"{demo.url}/_control", json={"mode": "explode"})

    assert response.status_code == 400
    assert "ok, fail or hang" in response.json()["error"]


def test_slack_post_then_update(slack: SlackStandIn) -> None:
    auth = {"Authorization": "Bearer xoxb-test"}

    posted = httpx.post(
        f"{slack.url}/api/chat.postMessage",
        headers=auth,
        json={"channel": "#ops", "text": "first"},
    ).json()
    updated = httpx.post(
        f"{slack.url}/api/chat.update",
        headers=auth,
        json={"channel": "#ops", "ts": posted["ts"], "text": "second"},
    ).json()
    recorded = httpx.get(f"{slack.url}/_recorded").json()["requests"]

    assert posted["ok"] is True
    assert updated == {
        "ok": True,
        "channel": "#ops",
        "ts": posted["ts"],
        "message": {"ts": posted["ts"], "text": "second", "blocks": None},
    }
    assert [r["path"] for r in recorded] == [
        "/api/chat.postMessage",
        "/api/chat.update",
    ]


def test_slack_errors(slack: SlackStandIn) -> None:
    auth = {"Authorization": "Bearer xoxb-test"}

    no_token = httpx.post(f"{slack.url}/api/chat.postMessage", json={"channel": "#a"})
    unknown_ts = httpx.post(
        f"{slack.url}/api/chat.update",
        headers=auth,
        json={"channel": "#a", "ts": "1.000001", "text": "x"},
    )

    assert no_token.json() == {"ok": False, "error": "not_authed"}
    assert unknown_ts.json() == {"ok": False, "error": "message_not_found"}


def test_slack_webhook_and_form_body(slack: SlackStandIn) -> None:
    webhook = httpx.post(f"{slack.url}/services/T/B/x", json={"text": "hello"})
    form = httpx.post(
        f"{slack.url}/api/chat.postMessage",
        headers={"Authorization": "Bearer xoxb-test"},
        data={"channel": "#b", "text": "from a form"},
    )
    recorded = httpx.get(f"{slack.url}/_recorded").json()["requests"]

    assert webhook.text == "ok"
    assert form.json()["channel"] == "#b"
    assert recorded[0]["body"] == {"text": "hello"}
    assert recorded[1]["body"] == {"channel": "#b", "text": "from a form"}


def test_pagerduty_accepts_and_rejects(pagerduty: PagerDutyStandIn) -> None:
    accepted = httpx.post(
        f"{pagerduty.url}/v2/enqueue",
        json={"routing_key": "r", "event_action": "trigger", "dedup_key": "d1"},
    )
    rejected = httpx.post(f"{pagerduty.url}/v2/enqueue", json={"event_action": "page"})
    cleared = httpx.delete(f"{pagerduty.url}/_recorded").json()

    assert accepted.status_code == 202
    assert accepted.json()["dedup_key"] == "d1"
    assert rejected.status_code == 400
    assert len(rejected.json()["errors"]) == 2
    assert cleared == {"requests": []}
