"""Operator commands: ``python -m resilience <pattern> <command> [options]``.

Each pattern keeps its commands in ``resilience.<pattern>.cli`` with a
``main(argv) -> int`` function. This module only picks the pattern and passes
the remaining arguments on. ``db`` is handled here because the schema belongs
to no single pattern::

    python -m resilience breaker --help
    python -m resilience db migrate

Exit status: whatever the pattern's command returns, or 2 for an unknown
pattern or invalid arguments.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

import psycopg
from psycopg.conninfo import conninfo_to_dict

from resilience.db import Database, DatabaseConfig, apply_schema
from resilience.errors import ConfigError, DatabaseUnavailableError

__all__ = ["PATTERNS", "main"]

# Pattern name to the package whose ``cli`` module runs its commands.
PATTERNS: dict[str, str] = {
    "batch": "resilience.batch",
    "breaker": "resilience.breaker",
    "escalation": "resilience.escalation",
    "llm": "resilience.llm",
    "queues": "resilience.queues",
}

_SUMMARIES = {
    "batch": "show a batch and its failed items, re-drive them or the DLQ",
    "breaker": "show and reset circuit breakers",
    "db": "apply schema.sql to the database (migrate)",
    "escalation": "list pending escalations, show one, re-deliver decisions",
    "llm": "show LLM spend per org and the price table",
    "queues": "show queue depths and re-drive dead-letter queues",
}

EXIT_USAGE = 2


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command named by ``argv`` (default ``sys.argv[1:]``)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        stream = sys.stdout if args else sys.stderr
        stream.write(_usage())
        return 0 if args else EXIT_USAGE

    pattern, rest = args[0], args[1:]
    if pattern == "db":
        return _run(_db_main, rest)
    if pattern not in PATTERNS:
        valid = ", ".join(sorted([*PATTERNS, "db"]))
        sys.stderr.write(
            f"unknown pattern {pattern!r}: expected one of {valid}\n"
            "run `python -m resilience --help` for what each one does\n"
        )
        return EXIT_USAGE

    module_name = f"{PATTERNS[pattern]}.cli"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        # A missing cli module or package means the commands are absent. Any
        # other missing module is a broken install, so it propagates.
        if exc.name not in (module_name, PATTERNS[pattern]):
            raise
        sys.stderr.write(f"{pattern} commands not found: no module {module_name}\n")
        return EXIT_USAGE
    return _run(module.main, rest)


def _run(command: Callable[[list[str]], object], argv: list[str]) -> int:
    # argparse raises SystemExit on --help and on invalid arguments. Turning
    # that into a return value keeps main() callable from tests.
    try:
        result = command(argv)
    except SystemExit as exc:
        return _exit_code(exc.code)
    return _exit_code(result)


def _exit_code(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    sys.stderr.write(f"{code}\n")
    return 1


def _usage() -> str:
    lines = [
        "usage: python -m resilience <pattern> <command> [options]",
        "",
        "patterns:",
    ]
    for name in sorted(_SUMMARIES):
        lines.append(f"  {name:<12} {_SUMMARIES[name]}")
    lines += ["", "`python -m resilience <pattern> --help` lists its commands.", ""]
    return "\n".join(lines)


def _db_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m resilience db", description="Database maintenance."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    migrate = commands.add_parser(
        "migrate",
        help="apply schema.sql (creates missing tables, columns and indexes)",
        description=(
            "Apply schema.sql in one transaction. The schema only adds what is "
            "missing, so running it again changes nothing."
        ),
    )
    migrate.add_argument(
        "--database-url",
        help="libpq connection string or URI (default: DATABASE_URL, or the "
        "secret named by DATABASE_URL_SECRET)",
    )
    args = parser.parse_args(argv)
    return _migrate(args.database_url)


def _migrate(database_url: str | None) -> int:
    try:
        config = (
            DatabaseConfig(url=database_url)
            if database_url
            else DatabaseConfig.from_env()
        )
    except ConfigError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return EXIT_USAGE

    database = Database(config)
    try:
        apply_schema(database)
    except DatabaseUnavailableError as exc:
        sys.stderr.write(f"error: failed to apply schema.sql: {exc}\n")
        return 1
    finally:
        database.close()

    sys.stdout.write(f"schema applied to {_describe(config.url)}\n")
    return 0


def _describe(url: str) -> str:
    # Name the database and host without echoing a password from the URL.
    try:
        parts = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "the configured database"
    host = parts.get("host") or "localhost"
    port = parts.get("port") or "5432"
    return f"database {parts.get('dbname') or '(default)'} on {host}:{port}"


if __name__ == "__main__":
    sys.exit(main())
