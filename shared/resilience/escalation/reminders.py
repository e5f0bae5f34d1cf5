"""The scheduled sweep: reminders, failed notifications, undelivered decisions.

Run every 15 minutes by the reminder function. It emits
``EscalationsPendingOver2h`` (the count, 0 included, so the alarm always receives data),
reminds approvers of each escalation pending longer than
``ESCALATION_REMINDER_AFTER_S`` at most once per that period, retries failed
notifications, and retries decisions that Step Functions has not accepted,
alerting once for each decision still undelivered after three attempts.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Literal

from resilience.errors import ResilienceError
from resilience.escalation.notifications import decision_blocks, notify
from resilience.escalation.service import EscalationService
from resilience.escalation.slack import SlackClient
from resilience.observability import emit_metric

__all__ = ["SweepReport", "sweep"]

logger = logging.getLogger(__name__)

ALERT_AFTER_ATTEMPTS = 3


@dataclass
class SweepReport:
    """Counts of one sweep, returned by the reminder handler."""

    pending_over_threshold: int = 0
    reminded: list[str] = field(default_factory=list)
    renotified: list[str] = field(default_factory=list)
    redelivered: list[str] = field(default_factory=list)
    alerted: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "pendingOverThreshold": self.pending_over_threshold,
            "reminded": self.reminded,
            "renotified": self.renotified,
            "redelivered": self.redelivered,
            "alerted": self.alerted,
        }


def sweep(service: EscalationService, slack: SlackClient) -> SweepReport:
    """Run one reminder sweep (see the module docstring)."""
    report = SweepReport()
    after_s = service.config.reminder_after_s

    with service.database.transaction() as connection:
        overdue = connection.execute(
            """
            SELECT task_run_id, reminded_at FROM escalation_token
            WHERE resolved_at IS NULL AND expires_at > now()
              AND created_at < now() - make_interval(secs => %s)
            ORDER BY created_at
            """,
            (after_s,),
        ).fetchall()
        failed = connection.execute(
            """
            SELECT task_run_id FROM escalation_token
            WHERE resolved_at IS NULL AND expires_at > now()
              AND notify_state IN ('failed', 'posting')
            """
        ).fetchall()

    report.pending_over_threshold = len(overdue)
    emit_metric("EscalationsPendingOver2h", len(overdue))

    for row in failed:
        state = notify(service, slack, row["task_run_id"])
        if state in ("posted", "posted_webhook"):
            report.renotified.append(row["task_run_id"])

    for row in overdue:
        if _remind(service, slack, row["task_run_id"], after_s):
            report.reminded.append(row["task_run_id"])

    for result in service.deliver_due():
        if result.delivery == "delivered":
            report.redelivered.append(result.escalation_id)
    report.alerted = _alert_undelivered(service)
    logger.info("escalation.sweep_done", extra=report.to_json())
    return report


def _remind(
    service: EscalationService, slack: SlackClient, escalation_id: str, after_s: int
) -> bool:
    # Claim the reminder first, so two overlapping sweeps send one reminder.
    with service.database.transaction() as connection:
        claimed = connection.execute(
            """
            UPDATE escalation_token SET reminded_at = now(), updated_at = now()
            WHERE task_run_id = %s
              AND (reminded_at IS NULL
                   OR reminded_at < now() - make_interval(secs => %s))
            RETURNING task_run_id
            """,
            (escalation_id, after_s),
        ).fetchone()
    if claimed is None:
        return False

    record = service.get(escalation_id)
    text, blocks = decision_blocks(record, include_buttons=slack.can_update)
    text = f"Reminder: still pending. {text}"
    blocks[0]["text"]["text"] = text
    try:
        if slack.configured:
            slack.post(text, blocks, thread_ts=record.slack_ts)
        else:
            _alert(
                title=f"Escalation {escalation_id} is still pending",
                text=text,
                dedupe_key=f"escalation:{escalation_id}:reminder",
            )
    except ResilienceError as exc:
        logger.warning(
            "escalation.reminder_failed",
            extra={"escalation_id": escalation_id, "error": str(exc)},
        )
        return False
    return True


def _alert_undelivered(service: EscalationService) -> list[str]:
    with service.database.transaction() as connection:
        rows = connection.execute(
            """
            UPDATE escalation_outbox SET alerted_at = now(), updated_at = now()
            WHERE status IN ('pending', 'delivering') AND attempts >= %s
              AND alerted_at IS NULL
            RETURNING escalation_id, attempts, last_error
            """,
            (ALERT_AFTER_ATTEMPTS,),
        ).fetchall()
    for row in rows:
        _alert(
            title=f"Escalation decision undelivered: {row['escalation_id']}",
            text=(
                f"Step Functions has not accepted the decision after "
                f"{row['attempts']} attempts (last error: {row['last_error']}). "
                "Retry with `python -m resilience escalation redeliver`."
            ),
            dedupe_key=f"escalation:{row['escalation_id']}:undelivered",
            severity="critical",
        )
    return [row["escalation_id"] for row in rows]


def _alert(
    *,
    title: str,
    text: str,
    dedupe_key: str,
    severity: Literal["warning", "critical"] = "warning",
) -> None:
    try:
        from resilience.alerts import Alert, send_alert
    except ImportError:
        logger.warning("escalation.alert_unavailable", extra={"title": title})
        return
    send_alert(
        Alert(
            title=title,
            text=text,
            severity=severity,
            source="escalation",
            dedupe_key=dedupe_key,
            # A decision that never reaches the workflow needs a person now.
            page=severity == "critical",
        )
    )
