"""Operator commands: ``python -m resilience breaker show|reset <service>``.

``show`` prints the stored state as JSON. ``reset`` closes the breaker,
clears its counters and writes an audit row naming the actor (``--actor``,
default the login name). Both read the store from the environment
(``REDIS_URL`` or the Upstash settings) and the breaker settings of a
registered service from ``BREAKER_SERVICES``.

Exit status: 0 on success, 1 when the store cannot be reached, 2 for
invalid arguments or an unregistered service.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from collections.abc import Sequence
from dataclasses import replace

from resilience.breaker.config import BreakerConfig
from resilience.breaker.core import BreakerSnapshot
from resilience.breaker.registry import get_breaker
from resilience.errors import ConfigError, StoreUnavailableError

__all__ = ["main"]

EXIT_UNAVAILABLE = 1
EXIT_USAGE = 2
LISTENER_TIMEOUT_S = 15.0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m resilience breaker",
        description="Show or reset a circuit breaker shared through Redis.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    show = commands.add_parser("show", help="print the stored state as JSON")
    show.add_argument("service", help="name of a service in BREAKER_SERVICES")
    reset = commands.add_parser(
        "reset", help="close the breaker, clear its counters, write an audit row"
    )
    reset.add_argument("service", help="name of a service in BREAKER_SERVICES")
    reset.add_argument(
        "--actor", help="who resets, recorded in the audit row (default: login name)"
    )
    reset.add_argument(
        "--any-name",
        action="store_true",
        help="allow a breaker name that is not in BREAKER_SERVICES (for example "
        "an LLM provider breaker such as openai:gpt-4o-mini)",
    )
    show.add_argument(
        "--any-name",
        action="store_true",
        help="allow a breaker name that is not in BREAKER_SERVICES",
    )
    return parser


def _as_json(snapshot: BreakerSnapshot) -> str:
    return json.dumps(
        {
            "service": snapshot.name,
            "state": snapshot.state.value,
            "failureCount": snapshot.failure_count,
            "openedUntil": snapshot.opened_until.isoformat()
            if snapshot.opened_until
            else None,
            "generation": snapshot.generation,
        },
        indent=2,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run one breaker command; see the module docstring."""
    from resilience.services import ServiceRegistry

    args = _parser().parse_args(argv)
    try:
        registry = ServiceRegistry.from_env()
    except ConfigError as exc:
        sys.stderr.write(f"invalid BREAKER_SERVICES: {exc}\n")
        return EXIT_USAGE

    service = registry.services.get(args.service)
    if service is None and not args.any_name:
        known = ", ".join(sorted(registry.services)) or "none"
        sys.stderr.write(
            f"service {args.service!r} is not registered in BREAKER_SERVICES "
            f"(registered: {known}); pass --any-name for other breakers\n"
        )
        return EXIT_USAGE

    # A command line exits right after the reset, so it waits for the audit
    # row instead of leaving it to a background thread.
    config = service.breaker if service is not None else BreakerConfig.from_env()
    config = replace(config, listener_timeout=LISTENER_TIMEOUT_S)
    critical = service.critical if service is not None else False
    breaker = get_breaker(args.service, config, critical=critical)
    try:
        if args.command == "reset":
            actor = args.actor or f"cli:{getpass.getuser()}"
            snapshot = breaker.reset(actor=actor)
        else:
            snapshot = breaker.snapshot()
    except StoreUnavailableError as exc:
        sys.stderr.write(f"breaker store unavailable: {exc}\n")
        return EXIT_UNAVAILABLE
    sys.stdout.write(_as_json(snapshot) + "\n")
    return 0
