"""PostgreSQL statements of the batch pattern (table ``batch_item``).

A run makes one claim statement for all its items and, for processors without
side effects, one completion statement, so the number of statements does not
grow with the batch. Items of processors with side effects are marked started
before their call and recorded as each completes.

Every write after the claim is fenced by ``lease_owner``: a worker whose lease
was taken over cannot overwrite the new owner's result.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any, NamedTuple

import psycopg
from psycopg.rows import tuple_row

from resilience.batch.models import batch_key_range
from resilience.db import Database

__all__ = ["BatchStore", "ClaimRequest", "ClaimRow", "Completion"]

logger = logging.getLogger(__name__)

# The claim. Each row's fields arrive as an array in one jsonb document and
# its data in a second, json document, read side by side. jsonb reads a field
# directly, where json parses the row again for every field read. data is
# read as json, not jsonb, so that it is stored as the exact text written
# here (see batch_item.data in schema.sql). ON CONFLICT takes over a row only
# when the payload hash matches and the row is free: a retryable failure, or
# in progress with an expired lease. Rows are inserted in key order so that
# concurrent claims of overlapping batches take row locks in the same order
# and rarely deadlock. The order is byte order ("C"), the column's own
# collation, which is cheap to sort. The outer SELECT reads the table as it
# was before this statement, which returns the stored state of every key
# that was not claimed. That lookup is a lateral index probe (LIMIT 1 keeps
# the planner from turning it into a scan of the table) that runs only for
# unclaimed keys, so a batch of new items reads nothing back, however large
# the table.
_CLAIM = """
WITH input AS (
    SELECT f->>0 AS batch_id, f->>1 AS item_id, f->>2 AS idempotency_key,
        f->>3 AS payload_hash, f->>4 AS processor, f->>5 AS org_id,
        CASE WHEN json_typeof(data) <> 'null' THEN data END AS data
    FROM ROWS FROM (
        jsonb_array_elements(%(fields)s::jsonb),
        json_array_elements(%(data)s::json)
    ) AS e(f, data)
),
claimed AS (
    INSERT INTO batch_item AS b (
        batch_id, item_id, idempotency_key, payload_hash, data, processor,
        org_id, status, attempts, lease_until, lease_owner, updated_at
    )
    SELECT batch_id, item_id, idempotency_key, payload_hash, data, processor,
        org_id, 'in_progress', 1,
        now() + make_interval(secs => %(lease_s)s), %(owner)s, now()
    FROM input
    ORDER BY idempotency_key COLLATE "C"
    ON CONFLICT (idempotency_key) DO UPDATE
    SET status = 'in_progress',
        attempts = b.attempts + 1,
        lease_until = EXCLUDED.lease_until,
        lease_owner = EXCLUDED.lease_owner,
        success = NULL,
        retryable = NULL,
        reason = NULL,
        error = NULL,
        updated_at = now()
    WHERE b.payload_hash = EXCLUDED.payload_hash
      AND ((b.status = 'failed' AND b.retryable)
           OR (b.status = 'in_progress' AND b.lease_until <= now()))
    RETURNING b.id, b.idempotency_key, b.attempts,
        b.started_at IS NOT NULL AS taken_over
)
SELECT i.idempotency_key,
       c.id AS row_id,
       c.attempts AS claimed_attempts,
       coalesce(c.taken_over, false) AS taken_over,
       s.status, s.payload_hash, s.attempts, s.reason, s.error,
       s.retryable,
       CASE WHEN c.idempotency_key IS NULL THEN s.output END AS output
FROM input i
LEFT JOIN claimed c ON c.idempotency_key = i.idempotency_key
LEFT JOIN LATERAL (
    SELECT * FROM batch_item x
    WHERE x.idempotency_key = i.idempotency_key AND c.idempotency_key IS NULL
    LIMIT 1
) s ON true
"""

_MARK_STARTED = """
UPDATE batch_item SET started_at = now(), updated_at = now()
WHERE idempotency_key = %s AND lease_owner = %s AND status = 'in_progress'
RETURNING idempotency_key
"""

# Records outcomes. A "release" (status in_progress) hands an item back
# unstarted: its lease ends now and the attempt reserved by the claim is
# returned. started_at is cleared when the outcome of the call is known and
# kept when the item is handed back after a call of unknown outcome.
# Rows are found by the ids the claim returned. The lease check is written
# as a CASE on purpose: PostgreSQL cannot estimate it and assumes it keeps
# half the rows. Written as two equalities, it is estimated to keep about
# one row, and the planner then puts batch_item on the outer side of a nested
# loop and reads the outcomes once per row of the table. The check sits on
# the updated row itself: when another worker takes the row over while this
# statement waits for its lock, PostgreSQL re-checks it on the new version
# and skips the row.
_COMPLETE = """
UPDATE batch_item AS b
SET status = u.status,
    success = u.success,
    attempts = u.attempts,
    reason = u.reason,
    error = u.error,
    retryable = u.retryable,
    output = u.output,
    lease_until = CASE WHEN u.status = 'in_progress' THEN now() ELSE NULL END,
    started_at = CASE WHEN u.keep_started THEN b.started_at ELSE NULL END,
    completed_at = CASE WHEN u.status = 'completed' THEN now() ELSE NULL END,
    updated_at = now()
FROM (
    SELECT (e->>0)::bigint AS id, e->>1 AS status,
        (e->>2)::boolean AS success, (e->>3)::int AS attempts,
        e->>4 AS reason, e->>5 AS error, (e->>6)::boolean AS retryable,
        nullif(e->7, 'null') AS output, (e->>8)::boolean AS keep_started
    FROM jsonb_array_elements(%(outcomes)s::jsonb) AS e
) AS u
WHERE b.id = u.id
  AND CASE WHEN b.status = 'in_progress' THEN b.lease_owner = %(owner)s
           ELSE false END
RETURNING b.id
"""

_SUMMARY = """
SELECT item_id, idempotency_key, status, success, attempts, reason, error,
       retryable, output, processor, data, lease_until, started_at,
       created_at, updated_at
FROM batch_item
WHERE idempotency_key COLLATE "C" >= %(first_key)s
  AND idempotency_key COLLATE "C" < %(end_key)s
  AND batch_id = %(batch_id)s AND org_id = %(org_id)s
ORDER BY id
"""


class ClaimRequest(NamedTuple):
    """One key to claim. The claim statement reads the fields by position."""

    batch_id: str
    item_id: str
    key: str
    payload_hash: str
    processor: str
    org_id: str
    # Last, because it travels in its own document.
    data: Any


class ClaimRow(NamedTuple):
    """Result row of the claim statement for one key, in its column order.

    ``row_id`` is the id of the row this run claimed, None when it did not.
    """

    key: str
    row_id: int | None
    claimed_attempts: int | None
    taken_over: bool
    status: str | None
    payload_hash: str | None
    attempts: int | None
    reason: str | None
    error: str | None
    retryable: bool | None
    output: Any

    @property
    def claimed(self) -> bool:
        return self.row_id is not None


class Completion(NamedTuple):
    """Outcome of one item to record (status ``in_progress`` hands it back).

    ``row_id`` is the id the claim returned. The completion statement reads
    the fields by position.
    """

    row_id: int
    status: str
    success: bool | None
    attempts: int
    reason: str | None
    error: str | None
    retryable: bool | None
    output: Any
    keep_started: bool = False


class BatchStore:
    """The batch statements on one :class:`~resilience.db.Database`."""

    def __init__(self, database: Database) -> None:
        self.database = database

    def __repr__(self) -> str:
        return f"<BatchStore {self.database!r}>"

    def claim(
        self,
        requests: Sequence[ClaimRequest],
        *,
        owner: str,
        lease_s: float,
        connection: psycopg.Connection[Any] | None = None,
    ) -> dict[str, ClaimRow]:
        """Claim every free key in one statement; return the state of each key."""
        params = {
            "fields": _json([request[:-1] for request in requests]),
            "data": _json([request.data for request in requests]),
            "lease_s": float(lease_s),
            "owner": owner,
        }
        if connection is not None:
            rows = _claim_rows(connection, params)
        else:
            with self.database.transaction() as conn:
                rows = _claim_rows(conn, params)
        return {row.key: row for row in rows}

    def mark_started(self, key: str, *, owner: str) -> bool:
        """Record that a side-effecting call is about to start; False: lease lost."""
        with self.database.transaction() as conn:
            row = conn.execute(_MARK_STARTED, (key, owner)).fetchone()
        return row is not None

    def complete(self, completions: Sequence[Completion], *, owner: str) -> set[int]:
        """Record outcomes in one statement and return the row ids still owned."""
        if not completions:
            return set()
        with self.database.transaction() as conn:
            return self.complete_in(conn, completions, owner=owner)

    def complete_in(
        self,
        connection: psycopg.Connection[Any],
        completions: Sequence[Completion],
        *,
        owner: str,
    ) -> set[int]:
        """Record outcomes in the caller's transaction (see :meth:`complete`)."""
        params = {"outcomes": _json(completions), "owner": owner}
        cursor = connection.cursor(row_factory=tuple_row)
        return {row[0] for row in cursor.execute(_COMPLETE, params).fetchall()}

    def summary_rows(self, batch_id: str, *, org_id: str) -> list[dict[str, Any]]:
        with self.database.transaction() as conn:
            return conn.execute(
                _SUMMARY, {**batch_key_range(batch_id), "org_id": org_id}
            ).fetchall()


def _json(rows: Sequence[Any]) -> str:
    # One JSON document per statement: the standard library's C encoder
    # writes it faster than psycopg adapts one array per column.
    return json.dumps(rows, separators=(",", ":"), allow_nan=False)


def _claim_rows(
    connection: psycopg.Connection[Any], params: dict[str, Any]
) -> list[ClaimRow]:
    # Plain tuples, fetched at once: a dict per row, or a cursor read row by
    # row, costs more than the rest of the row's handling.
    cursor = connection.cursor(row_factory=tuple_row)
    return [ClaimRow._make(row) for row in cursor.execute(_CLAIM, params).fetchall()]
