"""Versioned price table: cost of a call from its token partitions.

The table ships with the package as ``prices.json``: per ``provider:model``, a
list of price periods with ``effectiveFrom`` / ``effectiveTo`` dates (UTC,
``effectiveTo`` exclusive, null for open-ended) and USD prices per token for
``input``, ``cachedInput`` (prompt-cache reads), ``cacheWrite`` and
``output``. ``LLM_PRICES_FILE`` names another file of the same shape.

A model without a price for the day of the call has an unknown cost: the
usage row stores NULL and an alert fires, never 0. The price version stored
with each row is ``{table version}/{effectiveFrom}`` of the period used.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Any

from resilience.errors import ConfigError
from resilience.llm.types import Usage

__all__ = ["ModelPrice", "PriceTable", "default_price_table"]

ENV_PRICES_FILE = "LLM_PRICES_FILE"
PRICES_PATH = Path(__file__).resolve().parent / "prices.json"


@dataclass(frozen=True)
class ModelPrice:
    """USD prices per token of one model during one period."""

    model: str
    effective_from: date
    effective_to: date | None
    input: Decimal
    cached_input: Decimal
    cache_write: Decimal
    output: Decimal
    context_window: int | None
    version: str

    def cost(self, usage: Usage) -> Decimal:
        """Return the cost of ``usage`` in USD."""
        return (
            self.input * usage.input_tokens
            + self.cached_input * usage.cached_input_tokens
            + self.cache_write * usage.cache_write_tokens
            + self.output * usage.output_tokens
        )

    def covers(self, day: date) -> bool:
        after_start = self.effective_from <= day
        before_end = self.effective_to is None or day < self.effective_to
        return after_start and before_end


class PriceTable:
    """Every price period of every model, looked up by ``provider:model`` and day."""

    def __init__(self, version: str, prices: dict[str, list[ModelPrice]]) -> None:
        self.version = version
        self._prices = prices

    def __repr__(self) -> str:
        return f"<PriceTable version={self.version} models={len(self._prices)}>"

    def models(self) -> list[str]:
        return sorted(self._prices)

    def periods(self, model: str) -> list[ModelPrice]:
        return list(self._prices.get(model, []))

    def price(
        self, provider: str, model: str, day: date | None = None
    ) -> ModelPrice | None:
        """Return the price of a model on ``day`` (default today, UTC), or None."""
        day = day or _utc_today()
        for period in self._prices.get(f"{provider}:{model}", []):
            if period.covers(day):
                return period
        return None

    @classmethod
    def from_json(cls, data: dict[str, Any], *, source: str = "prices") -> PriceTable:
        version = str(data.get("version") or "")
        models = data.get("models")
        if not version or not isinstance(models, dict):
            raise ConfigError(
                f"{source} must be an object with 'version' and 'models'",
                setting=ENV_PRICES_FILE,
            )
        prices = {
            name: [_period(name, raw, version, source) for raw in periods]
            for name, periods in models.items()
        }
        return cls(version, prices)


def _period(model: str, raw: dict[str, Any], version: str, source: str) -> ModelPrice:
    try:
        window = raw.get("contextWindow")
        return ModelPrice(
            model=model,
            effective_from=date.fromisoformat(raw["effectiveFrom"]),
            effective_to=(
                date.fromisoformat(raw["effectiveTo"])
                if raw.get("effectiveTo")
                else None
            ),
            input=Decimal(raw["input"]),
            cached_input=Decimal(raw.get("cachedInput", raw["input"])),
            cache_write=Decimal(raw.get("cacheWrite", raw["input"])),
            output=Decimal(raw["output"]),
            context_window=int(window) if window else None,
            version=f"{version}/{raw['effectiveFrom']}",
        )
    except (KeyError, TypeError, ValueError, ArithmeticError) as exc:
        raise ConfigError(
            f"{source}: invalid price period for {model!r} ({exc!r}): each needs "
            "effectiveFrom (YYYY-MM-DD), input and output as decimal strings",
            setting=ENV_PRICES_FILE,
        ) from None


def _utc_today() -> date:
    from datetime import UTC, datetime

    return datetime.now(UTC).date()


@cache
def default_price_table() -> PriceTable:
    """Load the table from ``LLM_PRICES_FILE`` or the packaged ``prices.json``, once."""
    path = Path(os.environ.get(ENV_PRICES_FILE) or PRICES_PATH)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(
            f"cannot read the price table {path}: {exc}", setting=ENV_PRICES_FILE
        ) from exc
    return PriceTable.from_json(data, source=str(path))
