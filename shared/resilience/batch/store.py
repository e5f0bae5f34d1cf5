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

from resilience.db import Database

__all__ = ["BatchStore", "ClaimRequest", "ClaimRow", "Completion"]

logger = logging.getLogger(__name__)

# The claim. The rows are read as json, not jsonb, so that each item's data
# is stored as the exact text written here (see batch_item.data in
# schema.sql). ON CONFLICT takes over a row only when the payload hash matches
# and the row is free: a retryable failure, or in progress with an expired
# lease. Rows are inserted in key order so that concurrent claims of
# overlapping batches take row locks in the same order and rarely deadlock.
# The outer SELECT reads the table as it was before this statement, which
# returns the stored state of every key that was not claimed. That lookup is
# a lateral index probe that runs only for unclaimed keys, so a batch of new
# items reads nothing back, however large the table.
_CLAIM = """
WITH input AS (
    SELECT e->>0 AS batch_id, e->>1 AS item_id, e->>2 AS idempotency_key,
        e->>3 AS payload_hash,
        CASE WHEN json_typeof(e->4) <> 'null' THEN e->4 END AS data,
        e->>5 AS processor, e->>6 AS org_id
    FROM json_array_elements(%(items)s::json) AS e
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
    ORDER BY idempotency_key
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
    RETURNING b.idempotency_key, b.attempts, b.started_at IS NOT NULL AS taken_over
)
SELECT i.idempotency_key,
       c.idempotency_key IS NOT NULL AS claimed,
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
# The lateral probe finds each row through the unique index. The lease check
# sits on the updated row itself. When another worker takes the row over
# while this statement waits for its lock, PostgreSQL re-checks the updated
# row's conditions on the new version and skips it. It does not re-check
# conditions on the probe.
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
    SELECT e->>0 AS idempotency_key, e->>1 AS status,
        (e->>2)::boolean AS success, (e->>3)::int AS attempts,
        e->>4 AS reason, e->>5 AS error, (e->>6)::boolean AS retryable,
        nullif(e->7, 'null') AS output, (e->>8)::boolean AS keep_started
    FROM jsonb_array_elements(%(items)s::jsonb) AS e
) AS u
CROSS JOIN LATERAL (
    SELECT x.id FROM batch_item x
    WHERE x.idempotency_key = u.idempotency_key
    LIMIT 1
) AS found
WHERE b.id = found.id
  AND b.lease_owner = %(owner)s
  AND b.status = 'in_progress'
RETURNING b.idempotency_key
"""

_SUMMARY = """
SELECT item_id, idempotency_key, status, success, attempts, reason, error,
       retryable, output, processor, data, lease_until, started_at,
       created_at, updated_at
FROM batch_item
WHERE batch_id = %s AND org_id = %s
ORDER BY id
"""


class ClaimRequest(NamedTuple):
    """One key to claim. The claim statement reads the fields by position."""

    batch_id: str
    item_id: str
    key: str
    payload_hash: str
    data: Any
    processor: str
    org_id: str


class ClaimRow(NamedTuple):
    """Result row of the claim statement for one key, in its column order."""

    key: str
    claimed: bool
    claimed_attempts: int | None
    taken_over: bool
    status: str | None
    payload_hash: str | None
    attempts: int | None
    reason: str | None
    error: str | None
    retryable: bool | None
    output: Any


class Completion(NamedTuple):
    """Outcome of one item to record (status ``in_progress`` hands it back).

    The completion statement reads the fields by position.
    """

    key: str
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
            "items": _json(requests),
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

    def complete(self, completions: Sequence[Completion], *, owner: str) -> set[str]:
        """Record outcomes in one statement; return the keys still owned."""
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
    ) -> set[str]:
        params = {"items": _json(completions), "owner": owner}
        rows = connection.execute(_COMPLETE, params).fetchall()
        return {row["idempotency_key"] for row in rows}

    def summary_rows(self, batch_id: str, *, org_id: str) -> list[dict[str, Any]]:
        with self.database.transaction() as conn:
            return conn.execute(_SUMMARY, (batch_id, org_id)).fetchall()


def _json(rows: Sequence[tuple[Any, ...]]) -> str:
    # One JSON document per statement, with each row as an array that the
    # statement reads by position. The standard library's C encoder writes a
    # tuple as an array, which beats adapting one array per column. Arrays
    # also parse faster in PostgreSQL than objects that repeat field names.
    return json.dumps(rows, separators=(",", ":"), allow_nan=False)


def _claim_rows(
    connection: psycopg.Connection[Any], params: dict[str, Any]
) -> list[ClaimRow]:
    # Plain tuples: building a dict per row costs more than the rest of the
    # row's handling.
    cursor = connection.cursor(row_factory=tuple_row)
    return [ClaimRow._make(row) for row in cursor.execute(_CLAIM, params)]
