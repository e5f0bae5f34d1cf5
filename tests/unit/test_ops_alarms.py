"""Parsing CloudWatch alarm notifications and choosing where their alerts go."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from resilience.alarms import (
    alert_for_alarm,
    parse_alarm_notification,
    policy_for,
)

EVENTS = Path(__file__).resolve().parents[1] / "events" / "ops"


def _message(event_file: str) -> str:
    event: dict[str, Any] = json.loads((EVENTS / event_file).read_text())
    return str(event["Records"][0]["Sns"]["Message"])


def test_parse_single_metric_alarm() -> None:
    alarm = parse_alarm_notification(_message("breaker_opened_alarm.json"))

    assert alarm is not None
    assert alarm.name == "agent-resilience-dev-BreakerOpenedAlarm-1A2B3C4D5E6F"
    assert alarm.new_state == "ALARM"
    assert alarm.old_state == "OK"
    assert alarm.metric_names == ("BreakerOpened",)
    assert alarm.threshold == 1.0
    assert alarm.region_code == "us-east-1"
    assert alarm.console_url == (
        "https://us-east-1.console.aws.amazon.com/cloudwatch/home?region=us-east-1"
        "#alarmsV2:alarm/agent-resilience-dev-BreakerOpenedAlarm-1A2B3C4D5E6F"
    )


def test_parse_metric_math_alarm_lists_metrics() -> None:
    alarm = parse_alarm_notification(_message("template_fallback_alarm.json"))

    assert alarm is not None
    assert alarm.metric_names == ("LLMTemplateFallback", "LLMRequests")
    assert alarm.threshold == 10.0


@pytest.mark.parametrize(
    "message",
    [
        "agent-resilience-dev was deployed",
        "[1, 2]",
        '{"AlarmName": "x"}',
        '{"NewStateValue": "ALARM"}',
        "",
    ],
)
def test_parse_rejects_non_alarm_messages(message: str) -> None:
    assert parse_alarm_notification(message) is None


@pytest.mark.parametrize(
    ("event_file", "source", "severity", "page"),
    [
        ("breaker_opened_alarm.json", "breaker", "warning", False),
        ("template_fallback_alarm.json", "llm", "critical", True),
        ("dead_letter_alarm.json", "ops", "warning", False),
    ],
)
def test_alarm_alert_routing(
    event_file: str, source: str, severity: str, page: bool
) -> None:
    alarm = parse_alarm_notification(_message(event_file))
    assert alarm is not None

    alert = alert_for_alarm(alarm)

    assert alert is not None
    assert alert.source == source
    assert alert.severity == severity
    assert alert.page is page
    assert alert.dedupe_key == f"alarm:{alarm.name}"
    assert alert.title == f"ALARM: {alarm.description}"
    assert alert.text == alarm.reason


def test_resolved_alarm_never_pages() -> None:
    alarm = parse_alarm_notification(_message("spend_ok.json"))
    assert alarm is not None

    alert = alert_for_alarm(alarm)

    assert policy_for(alarm).page is True
    assert alert is not None
    assert alert.page is False
    assert alert.title == "Resolved: An org's LLM spend today is over the daily budget."
    assert alert.dedupe_key == f"alarm:{alarm.name}:ok"


def test_insufficient_data_is_not_forwarded() -> None:
    alarm = parse_alarm_notification(_message("batch_failure_insufficient_data.json"))
    assert alarm is not None

    assert alert_for_alarm(alarm) is None


def test_alert_details_leave_out_empty_values() -> None:
    document = json.loads(_message("breaker_opened_alarm.json"))
    del document["AlarmArn"]
    alarm = parse_alarm_notification(json.dumps(document))
    assert alarm is not None

    alert = alert_for_alarm(alarm)

    assert alert is not None
    assert "console" not in alert.details
    assert alert.details["region"] == "US East (N. Virginia)"
    assert alert.details["metrics"] == ["BreakerOpened"]
