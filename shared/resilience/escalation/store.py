"""SQL of the escalation tables, and the mapping of rows to records.

Every function takes an open connection, so callers decide what runs in one
transaction. Encrypted columns are decrypted here with the given encryptor.
"""

from __future__ import annotations

import json
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from resilience.escalation.crypto import Encryptor
from resilience.escalation.models import EscalationRecord

__all__ = [
    "decrypt_json",
    "encrypt_json",
    "fetch_record",
    "insert_escalation",
    "insert_link",
    "link_hash",
    "row_to_record",
]

Connection = psycopg.Connection[dict[str, Any]]

_SELECT_RECORD = """
    SELECT t.*, o.status AS delivery
    FROM escalation_token t
    LEFT JOIN escalation_outbox o ON o.escalation_id = t.task_run_id
    WHERE t.task_run_id = %s
"""


def encrypt_json(
    encryptor: Encryptor, value: Any, *, escalation_id: str, purpose: str
) -> bytes:
    plaintext = json.dumps(value, separators=(",", ":")).encode()
    return encryptor.encrypt(plaintext, escalation_id=escalation_id, purpose=purpose)


def decrypt_json(
    encryptor: Encryptor, blob: bytes, *, escalation_id: str, purpose: str
) -> Any:
    plaintext = encryptor.decrypt(
        bytes(blob), escalation_id=escalation_id, purpose=purpose
    )
    return json.loads(plaintext)


def insert_escalation(
    connection: Connection,
    encryptor: Encryptor,
    *,
    escalation_id: str,
    org_id: str,
    escalation_type: str,
    data: dict[str, Any],
    reason: str,
    requested_by: str | None,
    approvers: list[str],
    source: dict[str, Any] | None,
    app_url: str,
    expires: int,
) -> bool:
    """Insert a pending escalation; return False when the id already exists."""
    payload = encrypt_json(
        encryptor,
        {"data": data, "reason": reason},
        escalation_id=escalation_id,
        purpose="data",
    )
    row = connection.execute(
        """
        INSERT INTO escalation_token
            (task_run_id, org_id, escalation_type, data, requested_by,
             approvers, source, app_url, expires_at, status)
        VALUES (%s, %s, %s, %s, %s, %s, %s, %s, to_timestamp(%s), 'pending')
        ON CONFLICT (task_run_id) DO NOTHING
        RETURNING id
        """,
        (
            escalation_id,
            org_id,
            escalation_type,
            payload,
            requested_by,
            Jsonb(approvers),
            Jsonb(source) if source is not None else None,
            app_url,
            expires,
        ),
    ).fetchone()
    return row is not None


def insert_link(
    connection: Connection,
    *,
    escalation_id: str,
    approver: str,
    signature_hash: str,
    expires: int,
) -> None:
    connection.execute(
        """
        INSERT INTO escalation_link
            (escalation_id, approver, signature_hash, expires_at)
        VALUES (%s, %s, %s, to_timestamp(%s))
        ON CONFLICT (escalation_id, approver) DO NOTHING
        """,
        (escalation_id, approver, signature_hash, expires),
    )


def link_hash(connection: Connection, escalation_id: str, approver: str) -> str | None:
    """Return the stored signature hash of one approver's link, or None."""
    row = connection.execute(
        "SELECT signature_hash FROM escalation_link "
        "WHERE escalation_id = %s AND approver = %s",
        (escalation_id, approver),
    ).fetchone()
    return str(row["signature_hash"]) if row else None


def fetch_record(
    connection: Connection,
    encryptor: Encryptor,
    escalation_id: str,
    *,
    for_update: bool = False,
) -> EscalationRecord | None:
    query = _SELECT_RECORD + (" FOR UPDATE OF t" if for_update else "")
    row = connection.execute(query, (escalation_id,)).fetchone()
    return row_to_record(row, encryptor) if row else None


def row_to_record(row: dict[str, Any], encryptor: Encryptor) -> EscalationRecord:
    escalation_id = row["task_run_id"]
    payload: dict[str, Any] = {"data": {}, "reason": ""}
    if row["data"] is not None:
        payload = decrypt_json(
            encryptor, row["data"], escalation_id=escalation_id, purpose="data"
        )
    decided_data = None
    if row["decided_data"] is not None:
        decided_data = decrypt_json(
            encryptor,
            row["decided_data"],
            escalation_id=escalation_id,
            purpose="decided_data",
        )
    return EscalationRecord(
        id=escalation_id,
        org_id=row["org_id"],
        escalation_type=row["escalation_type"],
        status=row["status"],
        data=payload["data"],
        request_reason=payload["reason"],
        requested_by=row["requested_by"],
        approvers=list(row["approvers"] or []),
        source=row["source"],
        expires_at=row["expires_at"],
        created_at=row["created_at"],
        decision=row["decision"],
        decision_reason=row["reason"],
        resolved_at=row["resolved_at"],
        resolved_by=row["resolved_by"],
        decided_channel=row["decided_channel"],
        decided_data=decided_data,
        completed_at=row["completed_at"],
        resumed_at=row.get("resumed_at"),
        delivery=row.get("delivery"),
        notify_state=row["notify_state"],
        slack_channel=row["slack_channel"],
        slack_ts=row["slack_ts"],
        has_task_token=row["task_token"] is not None,
    )
