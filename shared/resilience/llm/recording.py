"""Turn the end of a call into a result, a usage row, metrics and alerts.

Every path through the chain ends here exactly once: a provider answer, a
cache hit (cost 0), the template answer (cost 0), an incomplete stream, or
the losing call of a hedge. A usage row that cannot be written is logged
(``llm.usage_write_failed``) and the answer is still returned.
"""

from __future__ import annotations

import logging
import time
from decimal import Decimal
from typing import TYPE_CHECKING

import psycopg

from resilience.errors import ResilienceError
from resilience.llm.attempts import CallState, Outcome
from resilience.llm.cache import CachedAnswer
from resilience.llm.config import LOCAL_PROVIDER, TEMPLATE_MODEL
from resilience.llm.template import template_answer
from resilience.llm.types import CompletionResult, Usage
from resilience.llm.usage import UsageRecord, record_usage
from resilience.observability import MetricUnit, emit_metric

if TYPE_CHECKING:
    from resilience.llm.chain import LLMChain

__all__ = ["Recorder"]

logger = logging.getLogger(__name__)


class Recorder:
    """Build results and write their usage rows for one chain."""

    def __init__(self, chain: LLMChain) -> None:
        self.chain = chain
        # Unknown prices already alerted by this container: (model, day).
        self._alerted: set[tuple[str, str]] = set()

    def answered(
        self,
        state: CallState,
        outcome: Outcome,
        *,
        incomplete: bool = False,
        reason: str | None = None,
        text: str | None = None,
        usage: Usage | None = None,
    ) -> CompletionResult:
        """Record a provider's answer (complete, or a stream cut short)."""
        assert outcome.answer is not None or text is not None
        step = outcome.step
        output = text if text is not None else outcome.answer.text  # type: ignore[union-attr]
        usage = usage or (outcome.answer.usage if outcome.answer else Usage())
        price = self.chain.prices.price(step.provider, step.model, state.day)
        cost = price.cost(usage) if price is not None else None
        if reason is None and state.fell_back:
            # Why the earlier steps did not answer, e.g. "openai:gpt-4o-mini:
            # transient" or "...: breaker open, retry in 27 s".
            reason = "; ".join(state.errors) or None
        result = CompletionResult(
            ok=True,
            output=output,
            provider=step.provider,
            model=step.model,
            degraded=state.fell_back,
            cached=False,
            incomplete=incomplete,
            reason=reason,
            usage=usage,
            cost=cost,
            latency_ms=self._elapsed_ms(state),
            attempts=state.attempts,
            price_version=price.version if price is not None else None,
        )
        self._write(state, result, reserved=outcome.reserved)
        if price is None:
            self._alert_unknown_price(state, step.provider, step.model)
        logger.info(
            "llm.answered",
            extra=state.log_extra(
                step,
                degraded=result.degraded,
                incomplete=incomplete,
                latency_ms=result.latency_ms,
                errors=state.errors,
            ),
        )
        return result

    def cached(self, state: CallState, hit: CachedAnswer) -> CompletionResult:
        """Record a cache hit: no provider call, cost 0."""
        result = CompletionResult(
            ok=True,
            output=hit.output,
            provider=hit.provider,
            model=hit.model,
            degraded=hit.degraded,
            cached=True,
            cost=Decimal(0),
            latency_ms=self._elapsed_ms(state),
            price_version=self.chain.prices.version,
        )
        self._write(state, result)
        logger.info(
            "llm.cache_hit",
            extra={
                "request_id": state.run_id,
                "provider": hit.provider,
                "model": hit.model,
            },
        )
        return result

    def template(self, state: CallState) -> CompletionResult:
        """Record the template answer: every provider failed or was skipped."""
        price = self.chain.prices.price(LOCAL_PROVIDER, TEMPLATE_MODEL, state.day)
        result = CompletionResult(
            ok=True,
            output=template_answer(),
            provider=LOCAL_PROVIDER,
            model=TEMPLATE_MODEL,
            degraded=True,
            cached=False,
            reason="; ".join(state.errors) or None,
            cost=Decimal(0),
            latency_ms=self._elapsed_ms(state),
            attempts=state.attempts,
            price_version=price.version
            if price is not None
            else self.chain.prices.version,
        )
        self._write(state, result)
        emit_metric("LLMTemplateFallback")
        logger.warning(
            "llm.template_answer",
            extra={
                "request_id": state.run_id,
                "org_id": state.request.org_id,
                "attempts": state.attempts,
                "errors": state.errors,
            },
        )
        return result

    def hedge_loser(self, state: CallState, outcome: Outcome) -> None:
        """Record the cost of a hedged call that answered after the winner."""
        assert outcome.answer is not None
        step = outcome.step
        price = self.chain.prices.price(step.provider, step.model, state.day)
        usage = outcome.answer.usage
        result = CompletionResult(
            ok=True,
            output="",
            provider=step.provider,
            model=step.model,
            degraded=False,
            cached=False,
            reason="hedge_lost",
            usage=usage,
            cost=price.cost(usage) if price is not None else None,
            latency_ms=outcome.latency_ms,
            price_version=price.version if price is not None else None,
        )
        self._write(state, result, reserved=outcome.reserved)

    # ------------------------------------------------------------ internals

    @staticmethod
    def _elapsed_ms(state: CallState) -> int:
        return round((time.monotonic() - state.started) * 1000)

    def _write(
        self,
        state: CallState,
        result: CompletionResult,
        *,
        reserved: Decimal = Decimal(0),
    ) -> None:
        chain = self.chain
        record = UsageRecord(
            task_run_id=state.run_id,
            org_id=state.request.org_id,
            provider=result.provider,
            model=result.model,
            tier=state.request.tier,
            usage=result.usage,
            cost=result.cost,
            price_version=result.price_version,
            latency_ms=result.latency_ms,
            degraded=result.degraded,
            cached=result.cached,
            incomplete=result.incomplete,
            reason=result.reason,
            attempts=result.attempts,
            reserved=reserved,
            day=state.day,
        )
        try:
            _, crossed = record_usage(
                chain.database, record, soft_budget=chain.config.daily_budget_usd
            )
        except (ResilienceError, psycopg.Error) as exc:
            # The answer is worth more to the caller than its usage row.
            logger.error(
                "llm.usage_write_failed",
                extra={"request_id": state.run_id, "error": str(exc)},
            )
            emit_metric("LLMUsageWriteFailed")
            return
        if crossed is not None:
            self._alert_over_budget(state, crossed)

    def _alert_over_budget(self, state: CallState, spent: Decimal) -> None:
        from resilience.alerts import Alert, send_alert

        org, budget = state.request.org_id, self.chain.config.daily_budget_usd
        emit_metric("SpendOverBudget", 1, MetricUnit.Count)
        logger.warning(
            "llm.spend_over_budget",
            extra={"org_id": org, "spent": str(spent), "budget": str(budget)},
        )
        send_alert(
            Alert(
                title=f"LLM spend over budget for org {org}",
                text=f"Spend today (UTC) is {spent:.2f} USD, over the daily budget "
                f"of {budget} USD (DAILY_BUDGET_USD).",
                severity="warning",
                source="llm",
                dedupe_key=f"llm:spend_over_budget:{org}:{state.day.isoformat()}",
                details={"orgId": org, "spent": str(spent), "budget": str(budget)},
            )
        )

    def _alert_unknown_price(self, state: CallState, provider: str, model: str) -> None:
        from resilience.alerts import Alert, send_alert

        marker = (f"{provider}:{model}", state.day.isoformat())
        logger.error(
            "llm.price_unknown",
            extra={"provider": provider, "model": model, "request_id": state.run_id},
        )
        if marker in self._alerted:
            return
        self._alerted.add(marker)
        send_alert(
            Alert(
                title=f"No price for LLM model {provider}:{model}",
                text=f"{provider}:{model} answered but has no price in the price "
                f"table (version {self.chain.prices.version}), so its usage rows "
                "have cost NULL. Add it to prices.json or LLM_PRICES_FILE.",
                severity="warning",
                source="llm",
                dedupe_key=f"llm:price_unknown:{provider}:{model}",
                details={"provider": provider, "model": model},
            )
        )
