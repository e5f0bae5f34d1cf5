"""The resume step: record each execution's outcome and hand it to its source.

The state machine sends ``{escalationId, outcome, data?, source, orgId}`` to
the resume queue when it ends. :func:`record_outcome` stores the outcome the
workflow really reached (an expiry overrides a decision that was never
delivered), updates the Slack message, and calls the resumer registered for
``source["pattern"]`` once per escalation.

Resumers are functions ``resume(outcome: EscalationOutcome) -> None`` named
by import path, ``"module:function"``. Built in: ``batch`` (completes the
batch item named by ``source`` with the approved data, when the batch package
provides ``resume_from_escalation``). ``ESCALATION_RESUMERS`` adds or replaces
entries.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from resilience.audit import write_audit
from resilience.errors import ResilienceError, ValidationError
from resilience.escalation.models import OUTCOMES, EscalationRecord
from resilience.escalation.notifications import outcome_blocks
from resilience.escalation.service import EscalationService
from resilience.escalation.slack import SlackClient

__all__ = [
    "BUILT_IN_RESUMERS",
    "EscalationOutcome",
    "load_resumer",
    "record_outcome",
]

logger = logging.getLogger(__name__)

BUILT_IN_RESUMERS = {"batch": "resilience.batch:resume_from_escalation"}


@dataclass(frozen=True)
class EscalationOutcome:
    """Final outcome passed to a resumer, with the data when approved."""

    escalation_id: str
    outcome: str
    org_id: str
    data: dict[str, Any] | None
    source: dict[str, Any] | None
    decided_by: str | None
    reason: str | None


def record_outcome(
    service: EscalationService, slack: SlackClient | None, message: dict[str, Any]
) -> tuple[EscalationOutcome, bool]:
    """Store the final outcome and resume the source work.

    Returns:
        The outcome, and False when its source was already resumed (a
        redelivered message), in which case nothing is resumed again.
    """
    escalation_id = message.get("escalationId")
    outcome = message.get("outcome")
    if not isinstance(escalation_id, str) or outcome not in OUTCOMES:
        raise ValidationError(
            f"resume message needs escalationId and an outcome in {OUTCOMES}, "
            f"got {escalation_id!r} and {outcome!r}",
            field="outcome",
        )

    first = _store_outcome(service, escalation_id, outcome)
    record = service.get(escalation_id)
    data = _approved_data(record, message) if outcome == "approved" else None
    result = EscalationOutcome(
        escalation_id=escalation_id,
        outcome=outcome,
        org_id=record.org_id,
        data=data,
        source=record.source,
        decided_by=record.resolved_by,
        reason=record.decision_reason,
    )
    if first and slack is not None and record.slack_ts and record.slack_channel:
        text, blocks = outcome_blocks(record)
        try:
            slack.update(record.slack_channel, record.slack_ts, text, blocks)
        except ResilienceError as exc:
            logger.warning(
                "escalation.slack_update_failed",
                extra={"escalation_id": escalation_id, "error": str(exc)},
            )

    # The resumed marker is written only after the resumer returns, so a
    # resumer that raised runs again when the message is redelivered.
    resumed_key = f"escalation:{escalation_id}:resumed"
    with service.database.transaction() as connection:
        done = connection.execute(
            "SELECT 1 FROM audit_log WHERE dedupe_key = %s", (resumed_key,)
        ).fetchone()
    if done is not None:
        logger.info(
            "escalation.outcome_repeated", extra={"escalation_id": escalation_id}
        )
        return result, False

    _dispatch(service, result)
    with service.database.transaction() as connection:
        connection.execute(
            "UPDATE escalation_token SET resumed_at = now(), updated_at = now() "
            "WHERE task_run_id = %s",
            (escalation_id,),
        )
        write_audit(
            connection,
            pattern="escalation",
            action="escalation.resumed",
            task_id=escalation_id,
            org_id=record.org_id,
            metadata={
                "outcome": outcome,
                "pattern": (record.source or {}).get("pattern"),
            },
            dedupe_key=resumed_key,
        )
    return result, True


def _approved_data(record: EscalationRecord, message: dict[str, Any]) -> dict[str, Any]:
    """Return the data as approved, which the decision stored in PostgreSQL.

    Messages from executions of an earlier state machine carry the same data
    themselves.
    """
    if record.decided_data is not None:
        return record.decided_data
    carried = message.get("data")
    if isinstance(carried, dict):
        return carried
    raise ValidationError(
        f"escalation {record.id} was approved but no approved data is stored. "
        "Check escalation_token.decided_data before redriving this message",
        field="data",
    )


def _store_outcome(
    service: EscalationService, escalation_id: str, outcome: str
) -> bool:
    with service.database.transaction() as connection:
        if outcome == "expired":
            # The workflow timed out, so any decision recorded here was never
            # delivered: the expiry is the real outcome.
            connection.execute(
                """
                UPDATE escalation_token
                SET status = 'expired', resolved_at = now(), resolved_by = 'system',
                    decided_channel = 'timeout', decision = NULL,
                    decided_data = NULL, updated_at = now()
                WHERE task_run_id = %s AND completed_at IS NULL
                """,
                (escalation_id,),
            )
            connection.execute(
                "UPDATE escalation_outbox SET status = 'superseded', "
                "updated_at = now() WHERE escalation_id = %s AND status <> 'delivered'",
                (escalation_id,),
            )
        else:
            connection.execute(
                "UPDATE escalation_outbox SET status = 'delivered', "
                "delivered_at = COALESCE(delivered_at, now()), updated_at = now() "
                "WHERE escalation_id = %s",
                (escalation_id,),
            )
        row = connection.execute(
            """
            UPDATE escalation_token SET completed_at = now(), updated_at = now()
            WHERE task_run_id = %s AND completed_at IS NULL
            RETURNING org_id
            """,
            (escalation_id,),
        ).fetchone()
        if row is None:
            return False
        write_audit(
            connection,
            pattern="escalation",
            action=f"escalation.{outcome}",
            task_id=escalation_id,
            org_id=row["org_id"],
            actor="stepfunctions",
            dedupe_key=f"escalation:{escalation_id}:completed",
        )
    return True


def _dispatch(service: EscalationService, outcome: EscalationOutcome) -> None:
    pattern = (outcome.source or {}).get("pattern")
    if not pattern:
        return
    resumers = {**BUILT_IN_RESUMERS, **service.config.resumers}
    path = resumers.get(pattern)
    if path is None:
        logger.info(
            "escalation.no_resumer",
            extra={"escalation_id": outcome.escalation_id, "pattern": pattern},
        )
        return
    resumer = load_resumer(path)
    if resumer is None:
        return
    resumer(outcome)
    logger.info(
        "escalation.resumed",
        extra={"escalation_id": outcome.escalation_id, "pattern": pattern},
    )


def load_resumer(path: str) -> Callable[[EscalationOutcome], Any] | None:
    """Import ``"module:function"``; return None when the module lacks it."""
    module_name, _, attribute = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        logger.warning("escalation.resumer_missing", extra={"resumer": path})
        return None
    resumer = getattr(module, attribute, None)
    if resumer is None:
        logger.warning("escalation.resumer_missing", extra={"resumer": path})
    return resumer
