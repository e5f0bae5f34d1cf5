"""AuditLog rows: one per mutation of any pattern.

A row with a ``dedupe_key`` is written at most once, so a retried write of
the same event (a redelivered message, a second instance reporting the same
breaker transition) is a no-op.
"""

from __future__ import annotations

import logging
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from resilience.db import Database

__all__ = ["AuditEntry", "record_audit", "write_audit"]

logger = logging.getLogger(__name__)

AuditEntry = dict[str, Any]

_INSERT = """
    INSERT INTO audit_log
        (pattern, action, task_id, run_id, org_id, actor, metadata, dedupe_key)
    VALUES (%s, %s, %s, %s, %s, %s, %s, %s)
    ON CONFLICT (dedupe_key) WHERE dedupe_key IS NOT NULL DO NOTHING
    RETURNING id
"""


def write_audit(
    connection: psycopg.Connection[Any],
    *,
    pattern: str,
    action: str,
    task_id: str | None = None,
    run_id: str | None = None,
    org_id: str | None = None,
    actor: str | None = None,
    metadata: dict[str, Any] | None = None,
    dedupe_key: str | None = None,
) -> bool:
    """Insert an audit row inside the caller's transaction.

    Returns:
        True when the row was written, False when ``dedupe_key`` already existed.
    """
    row = connection.execute(
        _INSERT,
        (
            pattern,
            action,
            task_id,
            run_id,
            org_id,
            actor,
            Jsonb(metadata or {}),
            dedupe_key,
        ),
    ).fetchone()
    return row is not None


def record_audit(database: Database, **fields: Any) -> bool:
    """Write one audit row in a transaction of its own (see :func:`write_audit`)."""
    with database.transaction() as connection:
        return write_audit(connection, **fields)
