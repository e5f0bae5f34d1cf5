"""The alert forwarder handler, sending to local Slack and PagerDuty stand-ins."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from local.standins import PagerDutyStandIn, SlackStandIn
from resilience.alerts import sign_body

REPO = Path(__file__).resolve().parents[2]
EVENTS = REPO / "tests" / "events" / "ops"
SIGNING_SECRET = "test-signing-secret"
ROUTING_KEY = "test-routing-key"


@dataclass
class LambdaContextStub:
    function_name: str = "alert-forwarder"
    memory_limit_in_mb: int = 512
    invoked_function_arn: str = (
        "arn:aws:lambda:us-east-1:123456789012:function:alert-forwarder"
    )
    aws_request_id: str = "6f1c7e2a-0000-4000-8000-000000000001"


def _load_handler() -> ModuleType:
    # Each function directory is its own Lambda package, so the handler is
    # loaded from its file under a name no other test uses.
    path = REPO / "functions" / "ops" / "alerts.py"
    spec = importlib.util.spec_from_file_location("ops_alerts_handler", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def handler() -> ModuleType:
    return _load_handler()


# The stand-ins live for the module because stopping one takes up to 0.5 s;
# each test starts with empty recordings instead.
@pytest.fixture(scope="module")
def slack_server() -> Iterator[SlackStandIn]:
    stand_in = SlackStandIn()
    stand_in.start()
    yield stand_in
    stand_in.stop()


@pytest.fixture(scope="module")
def pagerduty_server() -> Iterator[PagerDutyStandIn]:
    stand_in = PagerDutyStandIn()
    stand_in.start()
    yield stand_in
    stand_in.stop()


@pytest.fixture
def slack(slack_server: SlackStandIn) -> SlackStandIn:
    slack_server.recorded.clear()
    return slack_server


@pytest.fixture
def pagerduty(pagerduty_server: PagerDutyStandIn) -> PagerDutyStandIn:
    pagerduty_server.recorded.clear()
    return pagerduty_server


@pytest.fixture
def alert_env(
    monkeypatch: pytest.MonkeyPatch, slack: SlackStandIn, pagerduty: PagerDutyStandIn
) -> None:
    monkeypatch.delenv("ALERTING_SECRET", raising=False)
    monkeypatch.setenv("SLACK_WEBHOOK_URL", f"{slack.url}/services/T000/B000/XXXX")
    monkeypatch.setenv("PAGERDUTY_ROUTING_KEY", ROUTING_KEY)
    monkeypatch.setenv("PAGERDUTY_EVENTS_URL", f"{pagerduty.url}/v2/enqueue")
    monkeypatch.setenv("WEBHOOK_SIGNING_SECRET", SIGNING_SECRET)
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "AgentResilienceTest")


def _event(name: str) -> dict[str, Any]:
    event: dict[str, Any] = json.loads((EVENTS / name).read_text())
    return event


def _invoke(handler: ModuleType, event_file: str) -> dict[str, int]:
    result: dict[str, int] = handler.lambda_handler(
        _event(event_file), LambdaContextStub()
    )
    return result


@pytest.mark.usefixtures("alert_env")
def test_breaker_alarm_posts_to_slack_only(
    handler: ModuleType, slack: SlackStandIn, pagerduty: PagerDutyStandIn
) -> None:
    result = _invoke(handler, "breaker_opened_alarm.json")

    assert result == {"alerts": 1, "skipped": 0}
    assert len(slack.recorded) == 1
    text = slack.recorded[0]["body"]["text"]
    assert text.startswith(":warning: *ALARM: A circuit breaker opened.*")
    assert "Threshold Crossed: 1 out of the last 1 datapoints" in text
    assert "alarm: agent-resilience-dev-BreakerOpenedAlarm-1A2B3C4D5E6F" in text
    assert pagerduty.recorded == []


@pytest.mark.usefixtures("alert_env")
def test_slack_request_is_signed(handler: ModuleType, slack: SlackStandIn) -> None:
    _invoke(handler, "breaker_opened_alarm.json")

    request = slack.recorded[0]
    headers = request["headers"]
    body = json.dumps(request["body"]).encode()
    timestamp = int(headers["x-resilience-timestamp"])
    assert headers["x-resilience-signature"] == sign_body(
        body, SIGNING_SECRET, timestamp
    )


@pytest.mark.usefixtures("alert_env")
def test_template_fallback_alarm_pages(
    handler: ModuleType, slack: SlackStandIn, pagerduty: PagerDutyStandIn
) -> None:
    result = _invoke(handler, "template_fallback_alarm.json")

    assert result == {"alerts": 1, "skipped": 0}
    assert len(slack.recorded) == 1
    assert slack.recorded[0]["body"]["text"].startswith(":rotating_light:")
    assert len(pagerduty.recorded) == 1
    page = pagerduty.recorded[0]["body"]
    assert page["routing_key"] == ROUTING_KEY
    assert page["event_action"] == "trigger"
    assert page["dedup_key"] == (
        "alarm:agent-resilience-dev-TemplateFallbackAlarm-7G8H9I0J1K2L"
    )
    assert page["payload"]["severity"] == "critical"
    assert page["payload"]["source"] == "agent-resilience/llm"
    assert page["payload"]["summary"] == (
        "ALARM: More than 10 % of completions were answered by the template."
    )


@pytest.mark.usefixtures("alert_env")
def test_resolved_spend_alarm_does_not_page(
    handler: ModuleType, slack: SlackStandIn, pagerduty: PagerDutyStandIn
) -> None:
    result = _invoke(handler, "spend_ok.json")

    assert result == {"alerts": 1, "skipped": 0}
    text = slack.recorded[0]["body"]["text"]
    assert "*Resolved: An org's LLM spend today is over the daily budget.*" in text
    assert pagerduty.recorded == []


@pytest.mark.usefixtures("alert_env")
def test_insufficient_data_sends_nothing(
    handler: ModuleType, slack: SlackStandIn, pagerduty: PagerDutyStandIn
) -> None:
    result = _invoke(handler, "batch_failure_insufficient_data.json")

    assert result == {"alerts": 0, "skipped": 1}
    assert slack.recorded == []
    assert pagerduty.recorded == []


@pytest.mark.usefixtures("alert_env")
def test_dead_letter_alarm_names_metric(
    handler: ModuleType, slack: SlackStandIn, pagerduty: PagerDutyStandIn
) -> None:
    _invoke(handler, "dead_letter_alarm.json")

    text = slack.recorded[0]["body"]["text"]
    assert "*ALARM: Messages are waiting in a dead-letter queue" in text
    assert "metrics: ['ApproximateNumberOfMessagesVisible']" in text
    assert pagerduty.recorded == []


@pytest.mark.usefixtures("alert_env")
def test_plain_message_forwarded_with_subject(
    handler: ModuleType, slack: SlackStandIn
) -> None:
    result = _invoke(handler, "plain_message.json")

    assert result == {"alerts": 1, "skipped": 0}
    text = slack.recorded[0]["body"]["text"]
    assert text.startswith(":warning: *Deploy finished*")
    assert "agent-resilience-dev was deployed at 16:00 UTC." in text


@pytest.mark.usefixtures("alert_env")
def test_slack_unreachable_does_not_fail_invocation(
    handler: ModuleType, monkeypatch: pytest.MonkeyPatch, pagerduty: PagerDutyStandIn
) -> None:
    # Port 1 on the loopback interface: nothing listens there.
    monkeypatch.setenv("SLACK_WEBHOOK_URL", "http://127.0.0.1:1/services/T/B/X")

    result = _invoke(handler, "template_fallback_alarm.json")

    assert result == {"alerts": 1, "skipped": 0}
    assert len(pagerduty.recorded) == 1


def test_unconfigured_channels_send_nothing(
    handler: ModuleType,
    monkeypatch: pytest.MonkeyPatch,
    slack: SlackStandIn,
    pagerduty: PagerDutyStandIn,
) -> None:
    for name in (
        "ALERTING_SECRET",
        "SLACK_WEBHOOK_URL",
        "PAGERDUTY_ROUTING_KEY",
        "PAGERDUTY_EVENTS_URL",
    ):
        monkeypatch.delenv(name, raising=False)

    result = _invoke(handler, "template_fallback_alarm.json")

    assert result == {"alerts": 1, "skipped": 0}
    assert slack.recorded == []
    assert pagerduty.recorded == []
