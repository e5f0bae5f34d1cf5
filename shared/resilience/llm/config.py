"""Settings of the fallback chain: tiers, deadlines, cache, budgets.

A tier is an ordered list of (provider, model) steps, cheapest first where
quality allows, ending with the local template answer. ``LLM_TIERS`` is a
JSON object of tier name to steps::

    {"default": [
        {"provider": "openai", "model": "gpt-4o-mini", "timeoutS": 10,
         "largerWindow": {"provider": "openai", "model": "gpt-4.1-mini"}},
        {"provider": "anthropic", "model": "claude-haiku-4-5"},
        {"provider": "local", "model": "template"}]}

A tier that does not end with the template gets it appended. ``largerWindow``
names the model tried when this one reports that the prompt does not fit its
context window.

Settings (environment, read by :meth:`ChainConfig.from_env`; times in seconds):

- ``LLM_TIERS``: the tiers above; default openai gpt-4o-mini, then anthropic
  claude-haiku-4-5, then the template.
- ``LLM_ATTEMPT_TIMEOUT_S`` (6) and ``LLM_ATTEMPT_SHARE`` (0.5): the time
  one provider call may take. A step that has another provider after it in
  its tier gets at most its timeout and at most ``LLM_ATTEMPT_SHARE`` of the
  time left before the deadline, so a hung provider leaves the rest of the
  chain time to answer. The tier's last provider gets at most its timeout
  and at most all the time left (see :meth:`ChainConfig.attempt_timeout`).
- ``LLM_MAX_DEADLINE_S`` (30, API Gateway's integration limit) and
  ``LLM_DEADLINE_MARGIN_S`` (1): the whole call ends by the smallest of the
  request's deadline, the Lambda's remaining time and the maximum, less the
  margin, which is kept for recording usage and shaping the response.
- ``LLM_HEDGE_DELAY_S`` (unset: hedging off): after this long without an
  answer, the next provider is asked too.
- ``LLM_CACHE_TTL_S`` (3600; 0 turns the response cache off).
- ``LLM_BREAKER_FAILURES`` (3) and ``LLM_BREAKER_RESET_S`` (30): the breaker
  of each (provider, model).
- ``DAILY_BUDGET_USD`` (100): spend per org and UTC day above which an alert
  fires once that day.
- ``DAILY_HARD_BUDGET_USD`` (unset: none): spend per org and day at which
  paid calls stop; ``LLM_OVER_BUDGET`` says what happens then: ``refuse``
  (HTTP 429, the default), ``template``, or the name of a cheaper tier.
- ``LLM_MAX_CONCURRENCY`` (4): prompts completed at once by ``complete_many``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from resilience.errors import ConfigError

__all__ = [
    "DEFAULT_TIERS",
    "LOCAL_PROVIDER",
    "PROVIDERS",
    "TEMPLATE_MODEL",
    "ChainConfig",
    "TierStep",
    "parse_tiers",
]

LOCAL_PROVIDER = "local"
TEMPLATE_MODEL = "template"
PROVIDERS = ("openai", "anthropic", LOCAL_PROVIDER)
OVER_BUDGET_ACTIONS = ("refuse", "template")

ENV_TIERS = "LLM_TIERS"
ENV_ATTEMPT_TIMEOUT_S = "LLM_ATTEMPT_TIMEOUT_S"
ENV_ATTEMPT_SHARE = "LLM_ATTEMPT_SHARE"
ENV_MAX_DEADLINE_S = "LLM_MAX_DEADLINE_S"
ENV_DEADLINE_MARGIN_S = "LLM_DEADLINE_MARGIN_S"
ENV_HEDGE_DELAY_S = "LLM_HEDGE_DELAY_S"
ENV_CACHE_TTL_S = "LLM_CACHE_TTL_S"
ENV_BREAKER_FAILURES = "LLM_BREAKER_FAILURES"
ENV_BREAKER_RESET_S = "LLM_BREAKER_RESET_S"
ENV_DAILY_BUDGET = "DAILY_BUDGET_USD"
ENV_HARD_BUDGET = "DAILY_HARD_BUDGET_USD"
ENV_OVER_BUDGET = "LLM_OVER_BUDGET"
ENV_MAX_CONCURRENCY = "LLM_MAX_CONCURRENCY"


@dataclass(frozen=True)
class TierStep:
    """One (provider, model) of a tier, with its own attempt timeout."""

    provider: str
    model: str
    timeout_s: float | None = None
    larger_window: TierStep | None = None

    def __post_init__(self) -> None:
        if self.provider not in PROVIDERS:
            raise ConfigError(
                f"provider must be one of {PROVIDERS}, got {self.provider!r}",
                setting=ENV_TIERS,
            )
        if not self.model:
            raise ConfigError(
                f"model of a {self.provider} step is empty", setting=ENV_TIERS
            )
        if self.timeout_s is not None and self.timeout_s <= 0:
            raise ConfigError(
                f"timeoutS of {self.name} must be positive, got {self.timeout_s}",
                setting=ENV_TIERS,
            )

    @property
    def name(self) -> str:
        """``provider:model``, also the name of the step's breaker."""
        return f"{self.provider}:{self.model}"

    @property
    def is_template(self) -> bool:
        return self.provider == LOCAL_PROVIDER

    @classmethod
    def from_json(cls, raw: Any) -> TierStep:
        if not isinstance(raw, dict):
            raise ConfigError(
                "each tier step must be an object with provider and model, "
                f"got {raw!r}",
                setting=ENV_TIERS,
            )
        larger = raw.get("largerWindow")
        timeout = raw.get("timeoutS")
        return cls(
            provider=str(raw.get("provider", "")),
            model=str(raw.get("model", "")),
            timeout_s=float(timeout) if timeout is not None else None,
            larger_window=cls.from_json(larger) if larger is not None else None,
        )


TEMPLATE_STEP = TierStep(LOCAL_PROVIDER, TEMPLATE_MODEL)
DEFAULT_TIERS: dict[str, tuple[TierStep, ...]] = {
    "default": (
        TierStep("openai", "gpt-4o-mini"),
        TierStep("anthropic", "claude-haiku-4-5"),
        TEMPLATE_STEP,
    ),
    "template": (TEMPLATE_STEP,),
}


def parse_tiers(raw: str) -> dict[str, tuple[TierStep, ...]]:
    """Parse ``LLM_TIERS`` JSON; every tier ends with the template step."""
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"{ENV_TIERS} is not valid JSON ({exc.msg} at position {exc.pos})",
            setting=ENV_TIERS,
        ) from None
    if not isinstance(data, dict) or not data:
        raise ConfigError(
            f'{ENV_TIERS} must be a JSON object like {{"default": [...]}}, got {raw!r}',
            setting=ENV_TIERS,
        )

    tiers: dict[str, tuple[TierStep, ...]] = {"template": (TEMPLATE_STEP,)}
    for name, steps in data.items():
        if not isinstance(steps, list) or not steps:
            raise ConfigError(
                f"tier {name!r} must be a non-empty list of steps", setting=ENV_TIERS
            )
        parsed = [TierStep.from_json(step) for step in steps]
        if not parsed[-1].is_template:
            parsed.append(TEMPLATE_STEP)
        tiers[str(name)] = tuple(parsed)
    return tiers


@dataclass(frozen=True)
class ChainConfig:
    """Settings of the fallback chain (see the module docstring)."""

    tiers: dict[str, tuple[TierStep, ...]] = field(
        default_factory=lambda: dict(DEFAULT_TIERS)
    )
    # NOTE: 6 s fits a few hundred output tokens at the speeds gpt-4o-mini and
    # claude-haiku-4-5 usually reach (an estimate). A longer non-streamed
    # response needs a larger timeoutS on its step, or streaming.
    attempt_timeout_s: float = 6.0
    attempt_share: float = 0.5
    max_deadline_s: float = 30.0
    deadline_margin_s: float = 1.0
    hedge_delay_s: float | None = None
    cache_ttl_s: int = 3600
    breaker_failures: int = 3
    breaker_reset_s: float = 30.0
    daily_budget_usd: Decimal = Decimal("100")
    hard_budget_usd: Decimal | None = None
    over_budget: str = "refuse"
    max_concurrency: int = 4

    def __post_init__(self) -> None:
        if "default" not in self.tiers:
            raise ConfigError(
                f"{ENV_TIERS} must define a tier named 'default'", setting=ENV_TIERS
            )
        _positive(self.attempt_timeout_s, ENV_ATTEMPT_TIMEOUT_S)
        if not 0 < self.attempt_share <= 1:
            raise ConfigError(
                f"{ENV_ATTEMPT_SHARE} must be above 0 and at most 1 (a share of "
                f"the time left), got {self.attempt_share}",
                setting=ENV_ATTEMPT_SHARE,
            )
        _positive(self.max_deadline_s, ENV_MAX_DEADLINE_S)
        _positive(self.breaker_failures, ENV_BREAKER_FAILURES)
        _positive(self.breaker_reset_s, ENV_BREAKER_RESET_S)
        _positive(self.max_concurrency, ENV_MAX_CONCURRENCY)
        if self.deadline_margin_s < 0:
            raise ConfigError(
                f"{ENV_DEADLINE_MARGIN_S} must be 0 or more, "
                f"got {self.deadline_margin_s}",
                setting=ENV_DEADLINE_MARGIN_S,
            )
        if self.hedge_delay_s is not None:
            _positive(self.hedge_delay_s, ENV_HEDGE_DELAY_S)
        if self.cache_ttl_s < 0:
            raise ConfigError(
                f"{ENV_CACHE_TTL_S} must be 0 or more, got {self.cache_ttl_s}",
                setting=ENV_CACHE_TTL_S,
            )
        if (
            self.over_budget not in OVER_BUDGET_ACTIONS
            and self.over_budget not in self.tiers
        ):
            raise ConfigError(
                f"{ENV_OVER_BUDGET} must be 'refuse', 'template' or a tier name "
                f"({sorted(self.tiers)}), got {self.over_budget!r}",
                setting=ENV_OVER_BUDGET,
            )

    def steps(self, tier: str) -> tuple[TierStep, ...]:
        """Return the steps of a tier, or raise ConfigError naming the valid ones."""
        try:
            return self.tiers[tier]
        except KeyError:
            raise ConfigError(
                f"unknown tier {tier!r}: use one of {sorted(self.tiers)} or add it "
                f"to {ENV_TIERS}",
                setting=ENV_TIERS,
            ) from None

    def attempt_timeout(
        self, step: TierStep, remaining_s: float, *, final: bool
    ) -> float:
        """Return the SDK timeout in seconds of an attempt at ``step``.

        ``final`` is True when no other provider step follows ``step``, so
        only the template is left to answer after it.
        """
        configured = step.timeout_s or self.attempt_timeout_s
        available = remaining_s if final else remaining_s * self.attempt_share
        return min(configured, available)

    @classmethod
    def from_env(cls, **overrides: Any) -> ChainConfig:
        """Build the settings from the environment; keyword arguments win."""
        env = os.environ
        values: dict[str, Any] = {
            "attempt_timeout_s": _float(ENV_ATTEMPT_TIMEOUT_S, 6.0),
            "attempt_share": _float(ENV_ATTEMPT_SHARE, 0.5),
            "max_deadline_s": _float(ENV_MAX_DEADLINE_S, 30.0),
            "deadline_margin_s": _float(ENV_DEADLINE_MARGIN_S, 1.0),
            "hedge_delay_s": _float(ENV_HEDGE_DELAY_S, None),
            "cache_ttl_s": int(_float(ENV_CACHE_TTL_S, 3600) or 0),
            "breaker_failures": int(_float(ENV_BREAKER_FAILURES, 3) or 3),
            "breaker_reset_s": _float(ENV_BREAKER_RESET_S, 30.0),
            "daily_budget_usd": _decimal(ENV_DAILY_BUDGET, Decimal("100")),
            "hard_budget_usd": _decimal(ENV_HARD_BUDGET, None),
            "over_budget": env.get(ENV_OVER_BUDGET) or "refuse",
            "max_concurrency": int(_float(ENV_MAX_CONCURRENCY, 4) or 4),
        }
        if env.get(ENV_TIERS):
            values["tiers"] = parse_tiers(env[ENV_TIERS])
        values.update(overrides)
        return cls(**values)


def _positive(value: float, setting: str) -> None:
    if value <= 0:
        raise ConfigError(f"{setting} must be positive, got {value}", setting=setting)


def _float(name: str, default: float | None) -> float | None:
    raw = os.environ.get(name, "")
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(
            f"{name} must be a number, got {raw!r}", setting=name
        ) from None


def _decimal(name: str, default: Decimal | None) -> Decimal | None:
    raw = os.environ.get(name, "")
    if not raw:
        return default
    try:
        value = Decimal(raw)
    except InvalidOperation:
        raise ConfigError(
            f"{name} must be an amount in USD like 100 or 12.50, got {raw!r}",
            setting=name,
        ) from None
    if value < 0:
        raise ConfigError(f"{name} must be 0 or more, got {raw!r}", setting=name)
    return value
