"""The decision outbox: deliver each winning decision to Step Functions once.

A decision is committed to ``escalation_outbox`` together with the winning
UPDATE. Delivery claims the row with a lease (status ``delivering``), so only
one process calls SendTaskSuccess or SendTaskFailure at a time, and records
the result: ``delivered``; ``gone`` when Step Functions no longer accepts the
token (TaskTimedOut, InvalidToken, TaskDoesNotExist); or back to ``pending``
with a later ``next_attempt_at`` when the call failed in a way that retrying
can fix (throttling, a timeout, a 5xx answer).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from resilience.escalation.crypto import Encryptor
from resilience.escalation.models import ERROR_NAMES
from resilience.escalation.store import Connection, decrypt_json

__all__ = [
    "GONE_ERRORS",
    "claim",
    "deliver_claimed",
    "insert_outbox",
    "record_delivery",
]

logger = logging.getLogger(__name__)

# Step Functions error codes that mean the task no longer waits for a token.
GONE_ERRORS = frozenset({"TaskTimedOut", "InvalidToken", "TaskDoesNotExist"})
LEASE_S = 60
# Seconds before retry n (1-based) of a failed delivery; the last one repeats.
RETRY_DELAYS_S = (5, 30, 120, 600)

_CLAIM = """
    UPDATE escalation_outbox o
    SET status = 'delivering',
        lease_until = now() + make_interval(secs => %(lease)s),
        attempts = o.attempts + 1,
        updated_at = now()
    FROM escalation_token t
    WHERE o.escalation_id = %(id)s
      AND t.task_run_id = o.escalation_id
      AND t.task_token IS NOT NULL
      AND (o.status = 'pending'
           OR (o.status = 'delivering' AND o.lease_until < now()))
    RETURNING o.escalation_id, o.decision, o.payload, o.attempts, t.task_token
"""


def insert_outbox(
    connection: Connection, *, escalation_id: str, decision: str, payload: bytes
) -> None:
    connection.execute(
        """
        INSERT INTO escalation_outbox (escalation_id, decision, payload)
        VALUES (%s, %s, %s)
        """,
        (escalation_id, decision, payload),
    )


def claim(connection: Connection, escalation_id: str) -> dict[str, Any] | None:
    """Lease the undelivered decision of one escalation, or return None.

    None means: nothing to deliver, another process holds the lease, or the
    task token has not arrived yet (the notify handler delivers it then).
    """
    return connection.execute(
        _CLAIM, {"id": escalation_id, "lease": LEASE_S}
    ).fetchone()


def deliver_claimed(
    claimed: dict[str, Any], *, encryptor: Encryptor, stepfunctions: Any
) -> tuple[str, str | None]:
    """Send a claimed decision to Step Functions.

    Returns:
        ``("delivered", None)``, ``("gone", code)`` or ``("pending", error)``.
    """
    escalation_id = claimed["escalation_id"]
    task_token = encryptor.decrypt(
        bytes(claimed["task_token"]),
        escalation_id=escalation_id,
        purpose="task_token",
    ).decode()
    payload = decrypt_json(
        encryptor, claimed["payload"], escalation_id=escalation_id, purpose="outbox"
    )

    try:
        if claimed["decision"] == "approve":
            stepfunctions.send_task_success(
                taskToken=task_token, output=json.dumps(payload)
            )
        else:
            stepfunctions.send_task_failure(
                taskToken=task_token,
                error=ERROR_NAMES[claimed["decision"]],
                # Step Functions limits the cause to 32768 characters.
                cause=json.dumps(payload)[:32768],
            )
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "ClientError")
        if code in GONE_ERRORS:
            logger.info(
                "escalation.delivery_gone",
                extra={"escalation_id": escalation_id, "code": code},
            )
            return "gone", code
        logger.warning(
            "escalation.delivery_failed",
            extra={"escalation_id": escalation_id, "code": code},
        )
        return "pending", code
    except BotoCoreError as exc:
        logger.warning(
            "escalation.delivery_failed",
            extra={"escalation_id": escalation_id, "error": type(exc).__name__},
        )
        return "pending", type(exc).__name__

    logger.info("escalation.delivered", extra={"escalation_id": escalation_id})
    return "delivered", None


def record_delivery(
    connection: Connection,
    escalation_id: str,
    *,
    status: str,
    error: str | None,
    attempts: int,
) -> None:
    """Store the result of one delivery attempt and release the lease."""
    delay = RETRY_DELAYS_S[min(attempts, len(RETRY_DELAYS_S)) - 1]
    connection.execute(
        """
        UPDATE escalation_outbox
        SET status = %(status)s,
            last_error = %(error)s,
            lease_until = NULL,
            delivered_at = CASE WHEN %(status)s = 'delivered' THEN now() END,
            next_attempt_at = now() + make_interval(secs => %(delay)s),
            updated_at = now()
        WHERE escalation_id = %(id)s
        """,
        {"status": status, "error": error, "delay": delay, "id": escalation_id},
    )
