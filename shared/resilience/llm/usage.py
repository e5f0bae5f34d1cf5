"""Usage rows, daily spend per org, and the soft and hard budgets.

Every completion writes one ``llm_usage`` row: provider answers, cached
answers (cost 0) and template answers (cost 0) alike. The same transaction
adds the cost to ``llm_daily_spend`` (org, UTC day). A cost that is unknown
(no price) is stored as NULL, adds nothing to the spend, and raises an alert
once per model and day.

Hard budget: before each paid attempt the chain reserves the attempt's
maximum cost with one conditional UPDATE (``spent + reserved + amount <=
budget``), so concurrent requests cannot reserve past the budget; recording
the usage settles the reservation with the real cost. Spend can exceed the
budget only by what the calls in flight cost beyond their reservations.

Soft budget (``DAILY_BUDGET_USD``): the first usage row that takes the day's
spend over it sends one alert and one ``SpendOverBudget`` metric per org and
day, decided by an UPDATE of ``alerted_at``, so only one instance sends it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from resilience.audit import write_audit
from resilience.db import Database
from resilience.llm.types import Usage

__all__ = [
    "SpendTotal",
    "UsageRecord",
    "daily_spend",
    "list_spend",
    "record_usage",
    "release_reservation",
    "reserve_budget",
    "utc_day",
]

logger = logging.getLogger(__name__)


def utc_day(now: datetime | None = None) -> date:
    return (now or datetime.now(UTC)).astimezone(UTC).date()


@dataclass(frozen=True)
class UsageRecord:
    """One ``llm_usage`` row, and the reservation it settles."""

    task_run_id: str
    org_id: str
    provider: str
    model: str
    tier: str
    usage: Usage
    cost: Decimal | None
    price_version: str | None
    latency_ms: int
    degraded: bool
    cached: bool
    incomplete: bool = False
    reason: str | None = None
    attempts: int = 0
    reserved: Decimal = Decimal(0)
    day: date | None = None


@dataclass(frozen=True)
class SpendTotal:
    """An org's spend on one UTC day, in USD."""

    org_id: str
    day: date
    spent: Decimal
    reserved: Decimal
    calls: int
    unknown_cost_calls: int
    alerted_at: datetime | None


_INSERT_USAGE = """
    INSERT INTO llm_usage (
        task_run_id, org_id, provider, model, tier, prompt_tokens,
        completion_tokens, total_tokens, cached_input_tokens, cache_write_tokens,
        tokens_estimated, cost, price_version, latency_ms, degraded, cached,
        incomplete, reason, attempts)
    VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s,
        %s, %s)
    RETURNING id
"""

_SETTLE = """
    INSERT INTO llm_daily_spend (org_id, day, spent)
    VALUES (%(org)s, %(day)s, %(cost)s)
    ON CONFLICT (org_id, day) DO UPDATE SET
        spent = llm_daily_spend.spent + EXCLUDED.spent,
        reserved = greatest(llm_daily_spend.reserved - %(reserved)s, 0),
        updated_at = now()
    RETURNING spent
"""

_MARK_ALERTED = """
    UPDATE llm_daily_spend SET alerted_at = now()
    WHERE org_id = %s AND day = %s AND alerted_at IS NULL AND spent > %s
    RETURNING spent
"""


def record_usage(
    database: Database, record: UsageRecord, *, soft_budget: Decimal
) -> tuple[int, Decimal | None]:
    """Insert the usage row and settle the spend in one transaction.

    Returns:
        The row id, and the day's spend when this row took it over
        ``soft_budget`` for the first time that day (else None).
    """
    usage = record.usage
    day = record.day or utc_day()
    with database.transaction() as connection:
        row = connection.execute(
            _INSERT_USAGE,
            (
                record.task_run_id,
                record.org_id,
                record.provider,
                record.model,
                record.tier,
                usage.prompt_tokens,
                usage.output_tokens,
                usage.total_tokens,
                usage.cached_input_tokens,
                usage.cache_write_tokens,
                usage.estimated,
                record.cost,
                record.price_version,
                record.latency_ms,
                record.degraded,
                record.cached,
                record.incomplete,
                record.reason,
                record.attempts,
            ),
        ).fetchone()
        assert row is not None
        usage_id = int(row["id"])

        if not record.cost and not record.reserved:
            return usage_id, None
        connection.execute(
            _SETTLE,
            {
                "org": record.org_id,
                "day": day,
                "cost": record.cost or Decimal(0),
                "reserved": record.reserved,
            },
        )
        crossed = connection.execute(
            _MARK_ALERTED, (record.org_id, day, soft_budget)
        ).fetchone()
        if crossed is None:
            return usage_id, None

        spent = Decimal(crossed["spent"])
        write_audit(
            connection,
            pattern="llm",
            action="spend_over_budget",
            run_id=record.task_run_id,
            org_id=record.org_id,
            actor="system",
            metadata={
                "day": day.isoformat(),
                "spent": str(spent),
                "budget": str(soft_budget),
            },
            dedupe_key=f"llm:spend_over_budget:{record.org_id}:{day.isoformat()}",
        )
    return usage_id, spent


_ENSURE_DAY = """
    INSERT INTO llm_daily_spend (org_id, day) VALUES (%s, %s)
    ON CONFLICT (org_id, day) DO NOTHING
"""

_RESERVE = """
    UPDATE llm_daily_spend
    SET reserved = reserved + %(amount)s, updated_at = now()
    WHERE org_id = %(org)s AND day = %(day)s
      AND spent + reserved + %(amount)s <= %(budget)s
    RETURNING spent, reserved
"""

_RELEASE = """
    UPDATE llm_daily_spend
    SET reserved = greatest(reserved - %s, 0), updated_at = now()
    WHERE org_id = %s AND day = %s
"""


def reserve_budget(
    database: Database, org_id: str, day: date, amount: Decimal, budget: Decimal
) -> bool:
    """Reserve ``amount`` of the day's hard ``budget``; False when it does not fit."""
    with database.transaction() as connection:
        connection.execute(_ENSURE_DAY, (org_id, day))
        row = connection.execute(
            _RESERVE, {"amount": amount, "org": org_id, "day": day, "budget": budget}
        ).fetchone()
    return row is not None


def release_reservation(
    database: Database, org_id: str, day: date, amount: Decimal
) -> None:
    """Give back a reservation whose attempt produced no usage row."""
    if not amount:
        return
    with database.transaction() as connection:
        connection.execute(_RELEASE, (amount, org_id, day))


_SPEND = """
    SELECT
        count(*) AS calls,
        count(*) FILTER (WHERE cost IS NULL) AS unknown_cost_calls,
        coalesce(sum(cost), 0) AS spent_rows
    FROM llm_usage
    WHERE org_id = %s AND created_at >= %s AND created_at < %s + interval '1 day'
"""


def daily_spend(database: Database, org_id: str, day: date) -> SpendTotal:
    """Return an org's spend on a UTC day, with calls and unknown-cost calls."""
    start = _midnight(day)
    with database.transaction() as connection:
        counts: Any = connection.execute(_SPEND, (org_id, start, start)).fetchone()
        totals = connection.execute(
            "SELECT spent, reserved, alerted_at FROM llm_daily_spend "
            "WHERE org_id = %s AND day = %s",
            (org_id, day),
        ).fetchone()
    return SpendTotal(
        org_id=org_id,
        day=day,
        spent=Decimal(totals["spent"]) if totals else Decimal(counts["spent_rows"]),
        reserved=Decimal(totals["reserved"]) if totals else Decimal(0),
        calls=int(counts["calls"]),
        unknown_cost_calls=int(counts["unknown_cost_calls"]),
        alerted_at=totals["alerted_at"] if totals else None,
    )


def list_spend(database: Database, day: date) -> list[SpendTotal]:
    """Return every org's spend on a UTC day, largest first."""
    with database.transaction() as connection:
        rows = connection.execute(
            "SELECT org_id FROM llm_daily_spend WHERE day = %s "
            "UNION SELECT DISTINCT org_id FROM llm_usage "
            "WHERE created_at >= %s AND created_at < %s + interval '1 day'",
            (day, _midnight(day), _midnight(day)),
        ).fetchall()
    totals = [daily_spend(database, row["org_id"], day) for row in rows]
    return sorted(totals, key=lambda total: total.spent, reverse=True)


def _midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)
