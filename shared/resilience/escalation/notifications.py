"""The notify step: store the task token, then tell the approvers once.

The state machine's waiting state sends ``{taskToken, executionName, input}``
to the notify queue. :func:`store_task_token` commits the encrypted token
before anything is posted, so a click that arrives right after the Slack
message always finds the row. :func:`notify` claims the notification with a
conditional UPDATE, so a redelivered notify message posts nothing twice.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

from resilience.audit import write_audit
from resilience.errors import ResilienceError
from resilience.escalation.models import EscalationRecord
from resilience.escalation.service import EscalationService
from resilience.escalation.slack import SlackClient
from resilience.escalation.store import fetch_record

__all__ = [
    "decision_blocks",
    "notify",
    "outcome_blocks",
    "store_task_token",
]

logger = logging.getLogger(__name__)

# A claim older than this is taken to belong to a crashed notifier.
STALE_CLAIM_S = 300

_CLAIM = """
    UPDATE escalation_token
    SET notify_state = 'posting', notify_claimed_at = now(), updated_at = now()
    WHERE task_run_id = %(id)s
      AND resolved_at IS NULL
      AND (notify_state = 'pending'
           OR (notify_state IN ('posting', 'failed')
               AND notify_claimed_at < now() - make_interval(secs => %(stale)s)))
    RETURNING task_run_id
"""


def store_task_token(
    service: EscalationService,
    *,
    execution_name: str,
    task_token: str,
    execution_input: dict[str, Any],
) -> bool:
    """Store the task token of a waiting execution; return False if already stored.

    An execution started without :func:`start_escalation` (straight through
    StartExecution) gets its row here, from the execution input.
    """
    record = _existing_or_created(service, execution_name, execution_input)
    token_hash = hashlib.sha256(task_token.encode()).hexdigest()
    encrypted = service.encryptor.encrypt(
        task_token.encode(), escalation_id=execution_name, purpose="task_token"
    )
    with service.database.transaction() as connection:
        row = connection.execute(
            """
            UPDATE escalation_token
            SET token = %s, task_token = %s, updated_at = now(),
                notify_state = CASE WHEN notify_state = 'waiting' THEN 'pending'
                                    ELSE notify_state END
            WHERE task_run_id = %s AND token IS DISTINCT FROM %s
            RETURNING task_run_id
            """,
            (token_hash, encrypted, execution_name, token_hash),
        ).fetchone()
        if row is not None:
            write_audit(
                connection,
                pattern="escalation",
                action="escalation.task_token_stored",
                task_id=execution_name,
                org_id=record.org_id,
                dedupe_key=f"escalation:{execution_name}:token:{token_hash[:16]}",
            )
    return row is not None


def _existing_or_created(
    service: EscalationService, escalation_id: str, execution_input: dict[str, Any]
) -> EscalationRecord:
    with service.database.transaction() as connection:
        record = fetch_record(connection, service.encryptor, escalation_id)
    if record is not None:
        return record
    service.register_started_elsewhere(escalation_id, execution_input)
    return service.get(escalation_id)


def notify(service: EscalationService, slack: SlackClient, escalation_id: str) -> str:
    """Post the escalation's notification once; return the notify state.

    States: ``posted`` (Web API, updatable), ``posted_webhook``, ``skipped``
    (Slack not configured), ``failed`` (retried by the reminder), or the
    current state when another process has the claim or it was done.
    """
    with service.database.transaction() as connection:
        claimed = connection.execute(
            _CLAIM, {"id": escalation_id, "stale": STALE_CLAIM_S}
        ).fetchone()
    record = service.get(escalation_id)
    if claimed is None:
        return record.notify_state

    if not slack.configured:
        return _set_state(service, escalation_id, "skipped")
    text, blocks = decision_blocks(record, include_buttons=slack.can_update)
    try:
        posted = slack.post(text, blocks)
    except ResilienceError as exc:
        logger.warning(
            "escalation.notify_failed",
            extra={"escalation_id": escalation_id, "error": str(exc)},
        )
        return _set_state(service, escalation_id, "failed", error=str(exc))

    if posted is None:
        return _set_state(service, escalation_id, "posted_webhook")
    return _set_state(
        service, escalation_id, "posted", channel=posted.channel, ts=posted.ts
    )


def _set_state(
    service: EscalationService,
    escalation_id: str,
    state: str,
    *,
    error: str | None = None,
    channel: str | None = None,
    ts: str | None = None,
) -> str:
    with service.database.transaction() as connection:
        connection.execute(
            """
            UPDATE escalation_token
            SET notify_state = %s, notify_error = %s,
                slack_channel = COALESCE(%s, slack_channel),
                slack_ts = COALESCE(%s, slack_ts), updated_at = now()
            WHERE task_run_id = %s
            """,
            (state, error, channel, ts, escalation_id),
        )
        write_audit(
            connection,
            pattern="escalation",
            action=f"escalation.notify_{state}",
            task_id=escalation_id,
            metadata={"error": error},
        )
    logger.info(
        "escalation.notify_done", extra={"escalation_id": escalation_id, "state": state}
    )
    return state


def decision_blocks(
    record: EscalationRecord, *, include_buttons: bool
) -> tuple[str, list[dict[str, Any]]]:
    """Return the text and Block Kit blocks of a pending escalation's message.

    The message shows the type, reason, requester and expiry but not the data,
    which only the approval page shows. Links are bound to approvers, so they
    are never posted to a shared channel.
    """
    text = f"Approval needed ({record.escalation_type}): {record.request_reason[:300]}"
    details = (
        f"*Escalation* `{record.id}`\n"
        f"*Requested by* {record.requested_by or 'an agent'}"
        f"\n*Expires* <!date^{int(record.expires_at.timestamp())}"
        f"^{{date_short_pretty}} {{time}}|{record.expires_at.isoformat()}>"
    )
    blocks: list[dict[str, Any]] = [
        {"type": "section", "text": {"type": "mrkdwn", "text": text}},
        {"type": "section", "text": {"type": "mrkdwn", "text": details}},
    ]
    if include_buttons:
        blocks.append(
            {
                "type": "actions",
                "block_id": "escalation_decision",
                "elements": [
                    _button("Approve", "approve", record.id, "primary"),
                    _button("Reject", "reject", record.id, "danger"),
                ],
            }
        )
    else:
        blocks.append(
            {
                "type": "context",
                "elements": [
                    {
                        "type": "mrkdwn",
                        "text": "Approvers decide through their own approval links.",
                    }
                ],
            }
        )
    return text, blocks


def _button(label: str, action: str, escalation_id: str, style: str) -> dict[str, Any]:
    return {
        "type": "button",
        "text": {"type": "plain_text", "text": label},
        "action_id": action,
        "value": escalation_id,
        "style": style,
    }


def outcome_blocks(record: EscalationRecord) -> tuple[str, list[dict[str, Any]]]:
    """Return the message that replaces the notification: outcome, no buttons."""
    who = record.resolved_by or "the system"
    if record.status == "expired":
        text = f"Escalation {record.id} expired: nobody decided in time."
    else:
        text = f"Escalation {record.id} was {record.status} by {who}."
    if record.decision_reason:
        text += f" Reason: {record.decision_reason[:300]}"
    return text, [{"type": "section", "text": {"type": "mrkdwn", "text": text}}]
