"""Operator commands: ``python -m resilience escalation <command>``.

- ``pending``: list unresolved escalations, oldest first.
- ``show ID``: one escalation's status, decision, delivery and audit trail.
- ``redeliver [ID]``: retry undelivered decisions now (all that are waiting,
  or one escalation's).

Settings come from the environment, as for the handlers (``DATABASE_URL``,
``STATE_MACHINE_ARN``, the encryption and link keys).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from resilience.errors import ResilienceError

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m resilience escalation",
        description="Inspect human escalations and retry undelivered decisions.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    pending = commands.add_parser("pending", help="list unresolved escalations")
    pending.add_argument(
        "--limit", type=int, default=100, help="maximum rows to list (default 100)"
    )
    show = commands.add_parser("show", help="show one escalation and its audit trail")
    show.add_argument("id", help="escalation id (esc-…)")
    redeliver = commands.add_parser(
        "redeliver", help="retry decisions that Step Functions has not accepted"
    )
    redeliver.add_argument(
        "id", nargs="?", help="only this escalation (default: every one that waits)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; return the process exit status."""
    args = _parser().parse_args(argv)
    from resilience.escalation.service import get_service

    try:
        service = get_service()
        if args.command == "pending":
            _print(_pending(service, args.limit))
        elif args.command == "show":
            _print(_show(service, args.id))
        else:
            _print(_redeliver(service, args.id))
    except ResilienceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def _pending(service: Any, limit: int) -> list[dict[str, Any]]:
    with service.database.transaction() as connection:
        rows = connection.execute(
            """
            SELECT t.task_run_id, t.org_id, t.escalation_type, t.status,
                   t.created_at, t.expires_at, t.notify_state,
                   o.status AS delivery, o.attempts, o.last_error
            FROM escalation_token t
            LEFT JOIN escalation_outbox o ON o.escalation_id = t.task_run_id
            WHERE t.completed_at IS NULL
              AND (t.resolved_at IS NULL OR o.status IN ('pending', 'delivering'))
            ORDER BY t.created_at
            LIMIT %s
            """,
            (limit,),
        ).fetchall()
    return [
        {
            "id": row["task_run_id"],
            "orgId": row["org_id"],
            "escalationType": row["escalation_type"],
            "status": row["status"],
            "createdAt": row["created_at"].isoformat(),
            "expiresAt": row["expires_at"].isoformat(),
            "notifyState": row["notify_state"],
            "delivery": row["delivery"],
            "deliveryAttempts": row["attempts"],
            "lastError": row["last_error"],
        }
        for row in rows
    ]


def _show(service: Any, escalation_id: str) -> dict[str, Any]:
    record = service.get(escalation_id)
    with service.database.transaction() as connection:
        audit = connection.execute(
            "SELECT created_at, action, actor, metadata FROM audit_log "
            "WHERE pattern = 'escalation' AND task_id = %s ORDER BY id",
            (escalation_id,),
        ).fetchall()
    shown = record.to_json()
    shown["notifyState"] = record.notify_state
    shown["audit"] = [
        {
            "at": row["created_at"].isoformat(),
            "action": row["action"],
            "actor": row["actor"],
            "metadata": row["metadata"],
        }
        for row in audit
    ]
    return shown


def _redeliver(service: Any, escalation_id: str | None) -> list[dict[str, Any]]:
    if escalation_id:
        with service.database.transaction() as connection:
            # An operator's retry does not wait for the scheduled backoff.
            connection.execute(
                "UPDATE escalation_outbox SET next_attempt_at = now() "
                "WHERE escalation_id = %s",
                (escalation_id,),
            )
        results = [service.deliver(escalation_id)]
    else:
        with service.database.transaction() as connection:
            connection.execute(
                "UPDATE escalation_outbox SET next_attempt_at = now() "
                "WHERE status = 'pending'"
            )
        results = service.deliver_due()
    return [
        {
            "id": result.escalation_id,
            "outcome": result.outcome,
            "delivery": result.delivery,
            "error": result.error,
        }
        for result in results
    ]


def _print(value: Any) -> None:
    print(json.dumps(value, indent=2, default=str))
