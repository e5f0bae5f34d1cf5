"""The JSON summary of a batch, as POST and GET /batches return it."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from resilience.batch.models import ItemResult, ItemStatus, Reason
from resilience.batch.runner import BatchRun
from resilience.batch.store import BatchStore
from resilience.db import Database
from resilience.errors import NotFoundError

__all__ = ["run_summary", "stored_summary"]


def _summary(batch_id: str, results: list[dict[str, Any]]) -> dict[str, Any]:
    statuses = [entry["status"] for entry in results]
    ok_count = statuses.count(ItemStatus.COMPLETED)
    return {
        "ok": ok_count == len(results),
        "batchId": batch_id,
        "total": len(results),
        "okCount": ok_count,
        "failedCount": statuses.count(ItemStatus.FAILED),
        "notStartedCount": statuses.count(ItemStatus.NOT_STARTED),
        "inProgressCount": statuses.count(ItemStatus.IN_PROGRESS),
        "results": results,
    }


def run_summary(batch_id: str, run: BatchRun | Iterable[ItemResult]) -> dict[str, Any]:
    """Return the summary of one run, results in request order."""
    results = run.results if isinstance(run, BatchRun) else list(run)
    return _summary(batch_id, [result.to_dict() for result in results])


def stored_summary(database: Database, batch_id: str, *, org_id: str) -> dict[str, Any]:
    """Return the summary of every stored item of a batch, oldest first.

    Raises:
        NotFoundError: the org has no item in that batch.
    """
    rows = BatchStore(database).summary_rows(batch_id, org_id=org_id)
    if not rows:
        raise NotFoundError(
            f"batch {batch_id!r} not found: no item of it was recorded for this org",
            resource="batch",
        )
    now = datetime.now(UTC)
    results = []
    for row in rows:
        entry: dict[str, Any] = {
            "id": row["item_id"],
            "ok": row["status"] == ItemStatus.COMPLETED,
            "status": row["status"],
            "attempts": row["attempts"],
            "reason": row["reason"],
            "cached": row["status"] == ItemStatus.COMPLETED,
            "output": row["output"],
        }
        if row["status"] == ItemStatus.FAILED:
            entry["retryable"] = bool(row["retryable"])
            entry["error"] = row["error"]
        lease_until = row["lease_until"]
        if row["status"] == ItemStatus.IN_PROGRESS and lease_until is not None:
            entry["leaseUntil"] = lease_until.isoformat()
            if entry["reason"] is None and lease_until <= now:
                # Its worker stopped without recording an outcome; the next
                # delivery takes it over.
                entry["reason"] = str(Reason.LEASE_EXPIRED)
        results.append(entry)
    return _summary(batch_id, results)
