"""Operator commands: ``python -m resilience batch <command>``.

- ``show <batchId>``: the batch summary as JSON (what ``GET /batches`` returns).
- ``failed <batchId>``: the failed items, with reason and whether retrying can
  help.
- ``redrive <batchId> [--item ID]``: re-open the failed items and send them to
  the batch-items queue (``--queue-url`` or ``BATCH_ITEMS_QUEUE_URL``);
  completed items are never sent.
- ``redrive-dlq [--fifo]``: move the messages of the batch-items dead-letter
  queue back to the queue once the cause is fixed.

PostgreSQL comes from ``DATABASE_URL`` (or ``DATABASE_URL_SECRET``); SQS from
the usual AWS settings (``AWS_ENDPOINT_URL`` for the local stack).

Exit status: 0 on success, 1 when PostgreSQL or SQS cannot be reached, 2 for
invalid arguments, 3 when ``failed`` finds failed items, or ``show`` or
``redrive`` an unknown batch or item.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from resilience.batch.models import validate_batch_id
from resilience.batch.operations import ENV_QUEUE_URL, list_failed, redrive_batch
from resilience.batch.summary import stored_summary
from resilience.db import get_database
from resilience.errors import (
    NotFoundError,
    PermanentError,
    StoreUnavailableError,
    TransientError,
    ValidationError,
)

__all__ = ["main"]

EXIT_UNAVAILABLE = 1
EXIT_USAGE = 2
EXIT_FOUND_FAILURES = 3


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m resilience batch",
        description="Inspect batches and re-drive failed items.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    show = commands.add_parser("show", help="print a batch summary as JSON")
    show.add_argument("batch_id", metavar="batchId")
    failed = commands.add_parser("failed", help="list the failed items of a batch")
    failed.add_argument("batch_id", metavar="batchId")
    redrive = commands.add_parser(
        "redrive", help="send the failed items of a batch to the queue again"
    )
    redrive.add_argument("batch_id", metavar="batchId")
    redrive.add_argument("--item", help="re-drive only this item id")
    redrive.add_argument(
        "--queue-url",
        default=os.environ.get(ENV_QUEUE_URL),
        help=f"target queue URL (default: {ENV_QUEUE_URL})",
    )
    redrive.add_argument(
        "--actor", help="who re-drives, for the audit row (default: login name)"
    )
    for command in (show, failed, redrive):
        command.add_argument(
            "--org", default="default", help="org id (default: default)"
        )

    dlq = commands.add_parser(
        "redrive-dlq", help="move dead-lettered batch-items messages back"
    )
    dlq.add_argument("--fifo", action="store_true", help="use batch-items.fifo")
    dlq.add_argument(
        "--prefix",
        default=os.environ.get("QUEUE_PREFIX", ""),
        help="queue name prefix of the stack (default: QUEUE_PREFIX)",
    )
    dlq.add_argument("--max-messages", type=int, help="stop after this many")
    dlq.add_argument(
        "--dry-run", action="store_true", help="only report how many are waiting"
    )
    return parser


def main(argv: Sequence[str] | None = None, *, client: Any = None) -> int:
    """Run one command; ``client`` is the boto3 SQS client (default: from env)."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)

    try:
        return _run(args, client)
    except ValidationError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except (StoreUnavailableError, TransientError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except (NotFoundError, PermanentError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_FOUND_FAILURES if isinstance(error, NotFoundError) else EXIT_USAGE


def _run(args: argparse.Namespace, client: Any) -> int:
    if args.command == "redrive-dlq":
        from resilience.queues import redrive, sqs_client

        result = redrive(
            client or sqs_client(),
            "batch-items.fifo" if args.fifo else "batch-items",
            prefix=args.prefix,
            max_messages=args.max_messages,
            dry_run=args.dry_run,
        )
        _print(result.as_dict())
        return 0 if result.failed == 0 else EXIT_UNAVAILABLE

    batch_id = validate_batch_id(args.batch_id)
    if args.command == "show":
        _print(stored_summary(get_database(), batch_id, org_id=args.org))
        return 0
    if args.command == "failed":
        items = list_failed(batch_id, org_id=args.org)
        _print({"batchId": batch_id, "failed": [item.as_dict() for item in items]})
        return EXIT_FOUND_FAILURES if items else 0

    if not args.queue_url:
        raise ValidationError(
            f"no queue to send to: pass --queue-url or set {ENV_QUEUE_URL}",
            field="queueUrl",
        )
    if client is None:
        from resilience.messaging import sqs_client

        client = sqs_client()
    sent = redrive_batch(
        batch_id,
        client=client,
        queue_url=args.queue_url,
        org_id=args.org,
        item_id=args.item,
        actor=args.actor or getpass.getuser(),
    )
    if not sent:
        _check_redrive_target(batch_id, args.org, args.item)
    _print({"batchId": batch_id, "redriven": sent, "queueUrl": args.queue_url})
    return 0


def _check_redrive_target(batch_id: str, org_id: str, item_id: str | None) -> None:
    """Raise NotFoundError when nothing was sent because the target is unknown.

    A batch or item that exists and has no failed item is not an error:
    re-driving completed work does nothing.
    """
    summary = stored_summary(get_database(), batch_id, org_id=org_id)
    if item_id is not None and all(r["id"] != item_id for r in summary["results"]):
        raise NotFoundError(
            f"item {item_id!r} not found in batch {batch_id!r}: check the id "
            "with the 'show' command",
            resource="item",
        )


def _print(value: Any) -> None:
    print(json.dumps(value, indent=2, default=str))
