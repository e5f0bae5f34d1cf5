"""The fallback chain: one deadline, one breaker per (provider, model), then a template.

A call walks its tier's steps in order. Each step is skipped while its
breaker is open, and otherwise gets an attempt timeout that fits inside the
call's deadline and, when another provider follows, leaves that provider a
share of the time (``ChainConfig.attempt_timeout``). Transient,
rate-limited and configuration errors move on to the next step at once, and
a Retry-After opens that step's breaker until then. A context-window error
moves to the step's larger-window model when one is configured. Other
client errors are raised to the caller. When no provider responds in time,
the result is the template answer.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from resilience.db import Database, get_database
from resilience.errors import (
    BudgetExceededError,
    DatabaseUnavailableError,
    ResilienceError,
    ValidationError,
)
from resilience.llm.attempts import MIN_ATTEMPT_S, Attempt, CallState, Outcome
from resilience.llm.cache import CachedAnswer, ResponseCache, cache_key
from resilience.llm.classify import ErrorClass
from resilience.llm.config import ChainConfig, TierStep
from resilience.llm.hedging import run_hedged
from resilience.llm.pricing import PriceTable, default_price_table
from resilience.llm.recording import Recorder
from resilience.llm.types import CompletionRequest, CompletionResult, estimate_tokens
from resilience.llm.usage import release_reservation, reserve_budget, utc_day
from resilience.observability import emit_metric

__all__ = ["MIN_ATTEMPT_S", "LLMChain"]

logger = logging.getLogger(__name__)


class LLMChain:
    """Complete prompts through the configured tiers.

    Collaborators are injected for tests and default to the container's own:
    ``database`` (:func:`resilience.db.get_database`), ``store``
    (:func:`resilience.kvstore.store_from_env`, for the response cache and the
    breakers), ``providers`` (name to adapter, see ``providers.get_provider``)
    and ``breakers`` (step name to breaker, see ``resilience.breaker``).
    """

    def __init__(
        self,
        config: ChainConfig | None = None,
        *,
        database: Database | None = None,
        store: Any = None,
        prices: PriceTable | None = None,
        providers: Callable[[str], Any] | None = None,
        breakers: Callable[[TierStep], Any] | None = None,
    ) -> None:
        self.config = config or ChainConfig.from_env()
        self._database = database
        self._store = store
        self.prices = prices or default_price_table()
        self._providers = providers
        self._breakers = breakers
        self.recorder = Recorder(self)

    def __repr__(self) -> str:
        return (
            f"<LLMChain tiers={sorted(self.config.tiers)} "
            f"hedge_delay_s={self.config.hedge_delay_s}>"
        )

    # ------------------------------------------------------------ collaborators

    @property
    def database(self) -> Database:
        if self._database is None:
            self._database = get_database()
        return self._database

    @property
    def store(self) -> Any:
        if self._store is None:
            from resilience.kvstore import store_from_env

            self._store = store_from_env()
        return self._store

    def provider(self, name: str) -> Any:
        if self._providers is not None:
            return self._providers(name)
        from resilience.llm.providers import get_provider

        return get_provider(name)

    def breaker(self, step: TierStep) -> Any:
        if self._breakers is not None:
            return self._breakers(step)
        from resilience.breaker import BreakerConfig, get_breaker
        from resilience.errors import AuthError, TransientError

        config = BreakerConfig.from_env(
            failure_threshold=self.config.breaker_failures,
            reset_timeout=self.config.breaker_reset_s,
            failure_exceptions=(TransientError, AuthError),
        )
        return get_breaker(step.name, config, store=self._store)

    # ------------------------------------------------------------ the call

    def complete(
        self, request: CompletionRequest, *, context: Any = None
    ) -> CompletionResult:
        """Complete one request within its deadline.

        Raises:
            ValidationError: the request is invalid (the field is named).
            UpstreamClientError: the provider rejected the request itself
                (context window with no larger model, content policy, 4xx).
            BudgetExceededError: the org's hard budget is spent and the
                over-budget action is ``refuse``.
        """
        state, steps = self._begin(request, context)
        emit_metric("LLMRequests")

        key = None
        if state.request.cache and self.config.cache_ttl_s > 0:
            key = cache_key(state.request, steps)
            hit = ResponseCache(self.store, self.config.cache_ttl_s).get(key)
            if hit is not None:
                return self.recorder.cached(state, hit)

        outcome = self._walk(state, list(steps))
        if outcome is None:
            return self.recorder.template(state)

        result = self.recorder.answered(state, outcome)
        if key is not None:
            answer = CachedAnswer(
                result.output, result.provider, result.model, result.degraded
            )
            ResponseCache(self.store, self.config.cache_ttl_s).put(key, answer)
        return result

    def _begin(
        self, request: CompletionRequest, context: Any
    ) -> tuple[CallState, tuple[TierStep, ...]]:
        started = time.monotonic()
        request = request.validated()
        run_id = request.run_id or str(getattr(context, "aws_request_id", "") or "")
        if not run_id:
            raise ValidationError(
                "run_id is missing: pass the Lambda request id "
                "(context.aws_request_id) or a run id of your own",
                field="run_id",
            )
        if request.tier not in self.config.tiers:
            raise ValidationError(
                f"unknown tier {request.tier!r}: use one of "
                f"{sorted(self.config.tiers)}",
                field="tier",
            )
        state = CallState(
            request=request,
            run_id=run_id,
            deadline=started + self._time_budget(request, context),
            started=started,
            day=utc_day(),
        )
        return state, self.config.steps(request.tier)

    def _time_budget(self, request: CompletionRequest, context: Any) -> float:
        """Return the seconds the whole call may take (see ``ChainConfig``)."""
        limits = [self.config.max_deadline_s]
        if request.deadline_s is not None:
            limits.append(request.deadline_s)
        remaining_ms = getattr(context, "get_remaining_time_in_millis", None)
        if callable(remaining_ms):
            limits.append(remaining_ms() / 1000)
        return max(0.0, min(limits) - self.config.deadline_margin_s)

    def _walk(self, state: CallState, queue: list[TierStep]) -> Outcome | None:
        """Try the steps in order; return the successful outcome or None."""
        state.pending_steps = queue
        while queue:
            step = queue.pop(0)
            if step.is_template:
                return None
            if state.remaining() < MIN_ATTEMPT_S:
                logger.warning("llm.deadline_spent", extra=state.log_extra(step))
                state.errors.append(f"{step.name}: not tried, deadline reached")
                return None

            hedge_with = self._hedge_partner(queue)
            if hedge_with is not None:
                outcome, partner_used = run_hedged(self, state, step, hedge_with)
                if partner_used:
                    queue.pop(0)
            else:
                outcome = self._attempt(state, step)
            if outcome.answer is not None:
                return outcome

            switch = self._next_steps(state, outcome, queue)
            if switch is not None:
                queue[:0] = switch
        return None

    def _hedge_partner(self, queue: list[TierStep]) -> TierStep | None:
        if self.config.hedge_delay_s is None or not queue or queue[0].is_template:
            return None
        return queue[0]

    def make_attempt(self, state: CallState, step: TierStep) -> Attempt:
        timeout = self.config.attempt_timeout(
            step, state.remaining(), final=state.is_final(step)
        )
        return Attempt(
            state,
            step,
            provider=lambda: self.provider(step.provider),
            breaker=self.breaker(step),
            timeout_s=max(timeout, MIN_ATTEMPT_S),
            reserve=lambda s: self._reserve(state, s),
            release=lambda amount: self._release(state, amount),
        )

    def _attempt(self, state: CallState, step: TierStep) -> Outcome:
        attempt = self.make_attempt(state, step)
        skipped = attempt.start()
        if skipped is not None:
            state.fell_back = True
            return skipped
        state.attempts += 1
        return attempt.run()

    def _next_steps(
        self, state: CallState, outcome: Outcome, queue: list[TierStep]
    ) -> list[TierStep] | None:
        """Decide what follows a failed or skipped step; raise for caller errors."""
        error_class = outcome.error_class
        if error_class is ErrorClass.CONTEXT_WINDOW:
            if outcome.step.larger_window is not None:
                return [outcome.step.larger_window]
            assert outcome.error is not None
            raise outcome.error
        if error_class in (
            ErrorClass.CONTENT_POLICY,
            ErrorClass.CLIENT_ERROR,
            ErrorClass.NOT_SENT,
        ):
            assert outcome.error is not None
            raise outcome.error

        state.fell_back = True
        if outcome.skipped and outcome.error is None and not state.reserve_budget:
            # Switched to the over-budget tier: walk it instead of the rest.
            queue.clear()
            return list(self.config.steps(self.config.over_budget))
        return None

    # ------------------------------------------------------------ budget

    def max_cost(self, state: CallState, step: TierStep) -> Decimal | None:
        """Return the most an attempt can cost, or None when the price is unknown."""
        price = self.prices.price(step.provider, step.model, state.day)
        if price is None:
            return None
        messages = state.request.messages or []
        prompt_tokens = sum(estimate_tokens(m["content"]) + 4 for m in messages)
        return price.input * prompt_tokens + price.output * state.request.max_tokens

    def _reserve(self, state: CallState, step: TierStep) -> Decimal | None:
        """Reserve the attempt's maximum cost; None when the step must not run."""
        budget = self.config.hard_budget_usd
        if budget is None or not state.reserve_budget:
            return Decimal(0)
        # NOTE: a model without a price reserves nothing, so the hard budget
        # does not limit it. The missing price is alerted when it responds.
        amount = self.max_cost(state, step) or Decimal(0)
        org = state.request.org_id
        try:
            if reserve_budget(self.database, org, state.day, amount, budget):
                return amount
        except DatabaseUnavailableError as exc:
            # Fail open: an unreachable database must not stop every answer.
            logger.warning("llm.budget_unavailable", extra={"error": str(exc)})
            return Decimal(0)

        logger.warning(
            "llm.hard_budget_reached",
            extra=state.log_extra(
                step, budget=str(budget), action=self.config.over_budget
            ),
        )
        action = self.config.over_budget
        if action == "refuse":
            raise BudgetExceededError(
                f"the daily LLM budget of {budget} USD for org {org!r} is spent: "
                "requests resume at 00:00 UTC, or raise DAILY_HARD_BUDGET_USD",
                org_id=org,
                budget=str(budget),
                retry_after=_seconds_to_midnight(),
            )
        state.reserve_budget = False
        state.fell_back = True
        return None

    def _release(self, state: CallState, amount: Decimal) -> None:
        if not amount:
            return
        try:
            release_reservation(self.database, state.request.org_id, state.day, amount)
        except ResilienceError as exc:
            logger.warning("llm.budget_release_failed", extra={"error": str(exc)})


def _seconds_to_midnight() -> float:
    now = time.time()
    return 86400 - (now % 86400)
