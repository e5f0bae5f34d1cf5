"""CloudWatch alarm notifications turned into alerts for Slack and PagerDuty.

CloudWatch publishes a JSON document to the alert topic whenever an alarm
changes state, and SNS delivers it to the forwarder as the ``Message`` of a
record. :func:`parse_alarm_notification` reads it and :func:`alert_for_alarm`
decides who hears about it:

==================================== ========== ======== =====
metric                               source     severity page
==================================== ========== ======== =====
BreakerOpened                        breaker    warning  no
BatchFailureRate                     batch      warning  no
EscalationsPendingOver2h             escalation warning  no
LLMTemplateFallback                  llm        critical yes
SpendOverBudget                      llm        critical yes
ApproximateNumberOfMessagesVisible   ops        warning  no
anything else                        ops        warning  no
==================================== ========== ======== =====

``ApproximateNumberOfMessagesVisible`` is the dead-letter queue alarm. A
breaker of a critical service pages on its own when it opens (see
``resilience.breaker``), so the aggregate alarm only goes to Slack. An alarm
that returns to ``OK`` is reported to Slack without a page, and
``INSUFFICIENT_DATA`` is not forwarded.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any, Literal

from resilience.alerts import Alert

__all__ = [
    "AlarmPolicy",
    "CloudWatchAlarm",
    "alert_for_alarm",
    "parse_alarm_notification",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AlarmPolicy:
    """Routing of an alarm's alert: its pattern, its severity and whether it pages."""

    source: str
    severity: Literal["warning", "critical"] = "warning"
    page: bool = False


POLICIES: dict[str, AlarmPolicy] = {
    "BreakerOpened": AlarmPolicy("breaker"),
    "BatchFailureRate": AlarmPolicy("batch"),
    "EscalationsPendingOver2h": AlarmPolicy("escalation"),
    # Users receive template responses instead of model output, or spend keeps
    # growing past the budget, until someone acts, so both page.
    "LLMTemplateFallback": AlarmPolicy("llm", "critical", page=True),
    "SpendOverBudget": AlarmPolicy("llm", "critical", page=True),
    "ApproximateNumberOfMessagesVisible": AlarmPolicy("ops"),
}
DEFAULT_POLICY = AlarmPolicy("ops")


@dataclass(frozen=True)
class CloudWatchAlarm:
    """The fields of a CloudWatch alarm state-change notification that alerts use."""

    name: str
    description: str
    new_state: str
    old_state: str
    reason: str
    state_change_time: str
    region: str
    account_id: str
    alarm_arn: str
    metric_names: tuple[str, ...] = ()
    threshold: float | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def region_code(self) -> str:
        """The region code (``us-east-1``) from the alarm ARN, or empty."""
        parts = self.alarm_arn.split(":")
        return parts[3] if len(parts) > 3 else ""

    @property
    def console_url(self) -> str:
        """Link to the alarm in the CloudWatch console, or empty without a region."""
        if not self.region_code:
            return ""
        return (
            f"https://{self.region_code}.console.aws.amazon.com/cloudwatch/home"
            f"?region={self.region_code}#alarmsV2:alarm/{self.name}"
        )


def parse_alarm_notification(message: str) -> CloudWatchAlarm | None:
    """Parse the ``Message`` of an SNS record as a CloudWatch alarm notification.

    Returns None when the message is not JSON or has no ``AlarmName`` and
    ``NewStateValue``, which is the case for anything other than an alarm.
    """
    try:
        document = json.loads(message)
    except (TypeError, json.JSONDecodeError):
        return None
    if not isinstance(document, dict):
        return None
    if not document.get("AlarmName") or not document.get("NewStateValue"):
        return None

    trigger = document.get("Trigger") or {}
    threshold = trigger.get("Threshold")
    return CloudWatchAlarm(
        name=str(document["AlarmName"]),
        description=str(document.get("AlarmDescription") or ""),
        new_state=str(document["NewStateValue"]),
        old_state=str(document.get("OldStateValue") or ""),
        reason=str(document.get("NewStateReason") or ""),
        state_change_time=str(document.get("StateChangeTime") or ""),
        region=str(document.get("Region") or ""),
        account_id=str(document.get("AWSAccountId") or ""),
        alarm_arn=str(document.get("AlarmArn") or ""),
        metric_names=_metric_names(trigger),
        threshold=float(threshold) if isinstance(threshold, int | float) else None,
        raw=document,
    )


def _metric_names(trigger: dict[str, Any]) -> tuple[str, ...]:
    # A single-metric alarm names its metric in the trigger. A metric math
    # alarm lists each metric it reads under "Metrics".
    if trigger.get("MetricName"):
        return (str(trigger["MetricName"]),)
    names = []
    for query in trigger.get("Metrics") or []:
        metric = ((query or {}).get("MetricStat") or {}).get("Metric") or {}
        if metric.get("MetricName"):
            names.append(str(metric["MetricName"]))
    return tuple(names)


def policy_for(alarm: CloudWatchAlarm) -> AlarmPolicy:
    """Return the policy of the first metric of the alarm that has one."""
    for metric_name in alarm.metric_names:
        if metric_name in POLICIES:
            return POLICIES[metric_name]
    return DEFAULT_POLICY


def alert_for_alarm(alarm: CloudWatchAlarm) -> Alert | None:
    """Build the alert for an alarm state change, or None when none is sent."""
    policy = policy_for(alarm)
    summary = alarm.description or alarm.name
    details: dict[str, Any] = {
        "alarm": alarm.name,
        "state": alarm.new_state,
        "previousState": alarm.old_state,
        "reason": alarm.reason,
        "metrics": list(alarm.metric_names),
        "threshold": alarm.threshold,
        "changedAt": alarm.state_change_time,
        "region": alarm.region_code or alarm.region,
        "account": alarm.account_id,
        "console": alarm.console_url,
    }
    # Slack shows every detail as a line, so empty ones are left out.
    details = {key: value for key, value in details.items() if value}

    if alarm.new_state == "ALARM":
        return Alert(
            title=f"ALARM: {summary}",
            text=alarm.reason or summary,
            severity=policy.severity,
            source=policy.source,
            dedupe_key=f"alarm:{alarm.name}",
            details=details,
            page=policy.page,
        )
    if alarm.new_state == "OK":
        return Alert(
            title=f"Resolved: {summary}",
            text=alarm.reason or summary,
            severity="warning",
            source=policy.source,
            dedupe_key=f"alarm:{alarm.name}:ok",
            details=details,
            page=False,
        )

    logger.info(
        "alarm.not_forwarded", extra={"alarm": alarm.name, "state": alarm.new_state}
    )
    return None
