"""``python -m resilience queues``: queue depths and dead-letter re-drive.

Uses the AWS credentials and region of the environment. For the local stack
of ``make dev``, point it at the moto server (the API port + 1)::

    AWS_ENDPOINT_URL=http://127.0.0.1:3001 AWS_ACCESS_KEY_ID=testing \\
    AWS_SECRET_ACCESS_KEY=testing AWS_DEFAULT_REGION=us-east-1 \\
    python -m resilience queues list
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from resilience.errors import ResilienceError
from resilience.queues.redrive import QUEUE_NAMES, queue_depths, redrive, sqs_client

__all__ = ["main"]

ENV_QUEUE_PREFIX = "QUEUE_PREFIX"


def main(argv: Sequence[str] | None = None, *, client: Any = None) -> int:
    """Run a queues command; returns the process exit status."""
    args = _parser().parse_args(argv)
    sqs = client if client is not None else sqs_client()
    try:
        if args.command == "list":
            depths = queue_depths(sqs, prefix=args.prefix)
            _print([depth.as_dict() for depth in depths])
            return 0

        result = redrive(
            sqs,
            args.queue,
            prefix=args.prefix,
            max_messages=args.max,
            dry_run=args.dry_run,
        )
    except ResilienceError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 1

    _print(result.as_dict())
    return 1 if result.failed else 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m resilience queues",
        description="Show queue depths and move dead-letter messages back.",
    )
    prefix = argparse.ArgumentParser(add_help=False)
    prefix.add_argument(
        "--prefix",
        default=os.environ.get(ENV_QUEUE_PREFIX, ""),
        help="the stack's QueuePrefix, e.g. agent-resilience-dev- "
        f"(default: {ENV_QUEUE_PREFIX} or empty)",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser(
        "list",
        parents=[prefix],
        help="print each queue's visible and in-flight messages and its DLQ depth",
    )
    move = commands.add_parser(
        "redrive",
        parents=[prefix],
        help="move the messages of a queue's DLQ back to the queue",
        description=(
            "Move messages from the dead-letter queue of QUEUE back to QUEUE, "
            "keeping body, attributes and FIFO message group. Exits 1 when a "
            "message could not be moved."
        ),
    )
    move.add_argument("queue", choices=QUEUE_NAMES, help="queue name without prefix")
    move.add_argument(
        "--max", type=_positive_int, help="move at most this many messages"
    )
    move.add_argument(
        "--dry-run",
        action="store_true",
        help="move nothing; print how many messages wait in the DLQ",
    )
    return parser


def _positive_int(raw: str) -> int:
    value = int(raw)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _print(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2) + "\n")
