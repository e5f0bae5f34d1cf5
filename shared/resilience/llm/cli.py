"""Operator commands: ``python -m resilience llm spend|prices``.

``spend`` prints the LLM spend of one org (``--org``) or of every org on a
UTC day (``--date``, default today) as JSON, with the budgets that apply.
``prices`` prints the price table in use (``LLM_PRICES_FILE`` or the packaged
``prices.json``) with its version.

Exit status: 0 on success, 1 when PostgreSQL cannot be reached, 2 for
invalid arguments or settings.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from datetime import date
from decimal import Decimal
from typing import Any

from resilience.api import validate_org_id
from resilience.db import get_database
from resilience.errors import ConfigError, StoreUnavailableError, ValidationError
from resilience.llm.config import ChainConfig
from resilience.llm.pricing import default_price_table
from resilience.llm.usage import SpendTotal, daily_spend, list_spend, utc_day

__all__ = ["main"]

EXIT_UNAVAILABLE = 1
EXIT_USAGE = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m resilience llm",
        description="Show LLM spend per org and the price table.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    spend = commands.add_parser(
        "spend", help="print spend per org on a UTC day, with the budgets, as JSON"
    )
    spend.add_argument("--org", help="one org id (default: every org with spend)")
    spend.add_argument(
        "--date", type=_day, help="UTC day as YYYY-MM-DD (default: today, UTC)"
    )
    commands.add_parser("prices", help="print the price table and its version as JSON")
    return parser


def _day(raw: str) -> date:
    try:
        return date.fromisoformat(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid date {raw!r}: use YYYY-MM-DD, for example 2026-12-04"
        ) from None


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; see the module docstring for the exit status."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)

    try:
        if args.command == "prices":
            _print(_prices())
            return 0
        _print(_spend(args.org, args.date or utc_day()))
        return 0
    except (ConfigError, ValidationError) as exc:
        sys.stderr.write(f"{exc}\n")
        return EXIT_USAGE
    except StoreUnavailableError as exc:
        sys.stderr.write(f"PostgreSQL is unavailable: {exc}\n")
        return EXIT_UNAVAILABLE


def _spend(org: str | None, day: date) -> dict[str, Any]:
    config = ChainConfig.from_env()
    database = get_database()
    if org is not None:
        totals = [daily_spend(database, validate_org_id(org, field="--org"), day)]
    else:
        totals = list_spend(database, day)
    return {
        "day": day.isoformat(),
        "budgetUsd": str(config.daily_budget_usd),
        "hardBudgetUsd": str(config.hard_budget_usd)
        if config.hard_budget_usd
        else None,
        "orgs": [_total_json(total, config) for total in totals],
    }


def _total_json(total: SpendTotal, config: ChainConfig) -> dict[str, Any]:
    return {
        "orgId": total.org_id,
        "spentUsd": _plain(total.spent),
        "reservedUsd": _plain(total.reserved),
        "calls": total.calls,
        "unknownCostCalls": total.unknown_cost_calls,
        "overBudget": total.spent > config.daily_budget_usd,
        "alertedAt": total.alerted_at.isoformat() if total.alerted_at else None,
    }


def _prices() -> dict[str, Any]:
    table = default_price_table()
    models: dict[str, list[dict[str, Any]]] = {}
    for name in table.models():
        models[name] = [
            {
                "effectiveFrom": period.effective_from.isoformat(),
                "effectiveTo": period.effective_to.isoformat()
                if period.effective_to
                else None,
                "input": _plain(period.input),
                "cachedInput": _plain(period.cached_input),
                "cacheWrite": _plain(period.cache_write),
                "output": _plain(period.output),
            }
            for period in table.periods(name)
        ]
    return {"version": table.version, "unit": "USD per token", "models": models}


def _plain(amount: Decimal) -> str:
    # Fixed-point text: 0.0000001, never 1E-7.
    return format(amount, "f")


def _print(value: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(value, indent=2) + "\n")
