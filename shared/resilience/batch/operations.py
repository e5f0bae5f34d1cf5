"""Operator actions: list failed items, re-drive them, resume escalated items.

Re-driving sends a failed item's stored data back to the batch-items queue
after marking the row retryable, so that its next delivery runs it again even
when its failure was final (the operator fixed the cause). Completed items are
never selected. An item that completes in the meantime returns its stored
result on its next delivery, so a re-drive never runs a completed item.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from typing import Any

from resilience.audit import write_audit
from resilience.batch.models import Reason, batch_key_range, idempotency_key
from resilience.db import Database, get_database

__all__ = [
    "ENV_QUEUE_URL",
    "FailedItem",
    "list_failed",
    "redrive_batch",
    "resume_from_escalation",
]

logger = logging.getLogger(__name__)

ENV_QUEUE_URL = "BATCH_ITEMS_QUEUE_URL"

_FAILED = """
SELECT item_id, idempotency_key, reason, error, retryable, attempts, processor,
       data, updated_at
FROM batch_item
WHERE idempotency_key COLLATE "C" >= %(first_key)s
  AND idempotency_key COLLATE "C" < %(end_key)s
  AND batch_id = %(batch_id)s AND org_id = %(org_id)s AND status = 'failed'
ORDER BY id
"""

# Only rows still failed are re-opened, so a concurrent completion wins.
_REOPEN = """
UPDATE batch_item
SET retryable = true, started_at = NULL, updated_at = now()
WHERE idempotency_key COLLATE "C" >= %(first_key)s
  AND idempotency_key COLLATE "C" < %(end_key)s
  AND batch_id = %(batch_id)s AND org_id = %(org_id)s AND status = 'failed'
  AND (%(item_id)s::text IS NULL OR item_id = %(item_id)s)
RETURNING item_id, data, processor
"""

_RESOLVE_ESCALATED = """
UPDATE batch_item
SET reason = %s, retryable = %s, started_at = NULL, updated_at = now()
WHERE idempotency_key = %s AND status = 'failed' AND reason = 'escalated'
RETURNING batch_id, item_id, org_id, data, processor
"""


@dataclass(frozen=True)
class FailedItem:
    item_id: str
    reason: str | None
    error: str | None
    retryable: bool
    attempts: int
    updated_at: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.item_id,
            "reason": self.reason,
            "error": self.error,
            "retryable": self.retryable,
            "attempts": self.attempts,
            "updatedAt": self.updated_at,
        }


def list_failed(
    batch_id: str, *, org_id: str = "default", database: Database | None = None
) -> list[FailedItem]:
    """Return the failed items of a batch, oldest first."""
    database = database or get_database()
    with database.transaction() as conn:
        rows = conn.execute(
            _FAILED, {**batch_key_range(batch_id), "org_id": org_id}
        ).fetchall()
    return [
        FailedItem(
            item_id=row["item_id"],
            reason=row["reason"],
            error=row["error"],
            retryable=bool(row["retryable"]),
            attempts=row["attempts"],
            updated_at=row["updated_at"].isoformat(),
        )
        for row in rows
    ]


def redrive_batch(
    batch_id: str,
    *,
    client: Any,
    queue_url: str,
    org_id: str = "default",
    item_id: str | None = None,
    actor: str | None = None,
    database: Database | None = None,
) -> list[str]:
    """Re-open the failed items of a batch and send each to the queue.

    Returns:
        The ids of the items sent.
    """
    database = database or get_database()
    with database.transaction() as conn:
        rows = conn.execute(
            _REOPEN,
            {**batch_key_range(batch_id), "org_id": org_id, "item_id": item_id},
        ).fetchall()
        write_audit(
            conn,
            pattern="batch",
            action="batch.redriven",
            task_id=batch_id,
            org_id=org_id,
            actor=actor,
            metadata={"items": [row["item_id"] for row in rows]},
        )

    fifo = queue_url.endswith(".fifo")
    sent: list[str] = []
    for row in rows:
        _send_item(client, queue_url, batch_id, row, org_id, fifo)
        sent.append(row["item_id"])
    logger.info("batch.redriven", extra={"batch_id": batch_id, "items": len(sent)})
    return sent


def _send_item(
    client: Any,
    queue_url: str,
    batch_id: str,
    row: dict[str, Any],
    org_id: str,
    fifo: bool,
) -> None:
    item: dict[str, Any] = {"id": row["item_id"], "data": row["data"]}
    if row.get("processor"):
        item["processor"] = row["processor"]
    message: dict[str, Any] = {
        "QueueUrl": queue_url,
        # Compact, as the item's data was accepted up to the queue's maximum
        # message size, and ", " would add a byte per separator.
        "MessageBody": json.dumps(
            {"batchId": batch_id, "item": item}, separators=(",", ":")
        ),
        "MessageAttributes": {"orgId": {"DataType": "String", "StringValue": org_id}},
    }
    if fifo:
        # One group per batch keeps a batch's items in order. The time in the
        # deduplication id lets a later re-drive of the same item through.
        # SQS accepts at most 128 ASCII letters, digits and punctuation there,
        # and an item id may contain any text, so the key is hashed.
        key = idempotency_key(batch_id, row["item_id"])
        digest = hashlib.sha256(key.encode()).hexdigest()
        message["MessageGroupId"] = batch_id
        message["MessageDeduplicationId"] = f"{digest}:{time.time_ns()}"
    client.send_message(**message)


def resume_from_escalation(outcome: Any) -> None:
    """Apply a person's decision on an item escalated after a take-over.

    Approved: the item becomes retryable and, when ``BATCH_ITEMS_QUEUE_URL``
    is set, is sent to the queue to run again under the same idempotency key.
    Rejected, expired or cancelled: the item stays failed for good, with the
    outcome as its reason.
    """
    source = getattr(outcome, "source", None) or {}
    key = source.get("idempotencyKey")
    if not key and source.get("batchId") and source.get("itemId"):
        key = idempotency_key(str(source["batchId"]), str(source["itemId"]))
    if not key:
        logger.warning(
            "batch.resume_without_item",
            extra={"escalation_id": getattr(outcome, "escalation_id", None)},
        )
        return

    decision = str(getattr(outcome, "outcome", ""))
    approved = decision == "approved"
    reason = {
        "approved": Reason.ESCALATION_APPROVED,
        "rejected": Reason.ESCALATION_REJECTED,
        "expired": Reason.ESCALATION_EXPIRED,
    }.get(decision, Reason.ESCALATION_CANCELLED)

    database = get_database()
    with database.transaction() as conn:
        row = conn.execute(_RESOLVE_ESCALATED, (str(reason), approved, key)).fetchone()
        if row is not None:
            write_audit(
                conn,
                pattern="batch",
                action="batch.escalation_resolved",
                task_id=row["batch_id"],
                org_id=row["org_id"],
                actor=getattr(outcome, "decided_by", None),
                metadata={"itemId": row["item_id"], "outcome": decision},
                dedupe_key=f"batch:escalation:{getattr(outcome, 'escalation_id', key)}",
            )
    if row is None:
        logger.info("batch.resume_ignored", extra={"key": key, "outcome": decision})
        return

    queue_url = os.environ.get(ENV_QUEUE_URL, "")
    if approved and queue_url:
        from resilience.messaging import sqs_client

        _send_item(
            sqs_client(),
            queue_url,
            row["batch_id"],
            row,
            row["org_id"],
            queue_url.endswith(".fifo"),
        )
    logger.info("batch.escalation_resolved", extra={"key": key, "outcome": decision})
