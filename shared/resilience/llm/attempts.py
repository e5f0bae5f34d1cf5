"""One attempt at one (provider, model): breaker permit, budget, call, outcome.

An attempt never raises a provider error: it returns an :class:`Outcome`
holding the answer or the translated error, so the chain (and hedging, which
runs two attempts at once) decides what to do next in one place.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from typing import Any

from resilience.errors import BreakerOpenError, ResilienceError
from resilience.llm.classify import ErrorClass, error_class_of
from resilience.llm.config import TierStep
from resilience.llm.types import CompletionRequest, ProviderAnswer, Usage

__all__ = ["MIN_ATTEMPT_S", "Attempt", "CallState", "Outcome"]

logger = logging.getLogger(__name__)

# Below this much time left, no provider is called: the template answer is used.
MIN_ATTEMPT_S = 0.05


@dataclass
class CallState:
    """Everything one ``complete`` call carries from step to step."""

    request: CompletionRequest
    run_id: str
    deadline: float
    started: float
    day: date
    attempts: int = 0
    fell_back: bool = False
    reserve_budget: bool = True
    errors: list[str] = field(default_factory=list)
    # Steps not tried yet, the list the chain walks (shared, not a copy).
    pending_steps: list[TierStep] = field(default_factory=list)

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def is_final(self, step: TierStep) -> bool:
        """Return True when no provider step other than ``step`` is pending."""
        return not any(
            other is not step and not other.is_template for other in self.pending_steps
        )

    def log_extra(self, step: TierStep, **more: Any) -> dict[str, Any]:
        return {
            "provider": step.provider,
            "model": step.model,
            "attempt": self.attempts,
            "request_id": self.run_id,
            "org_id": self.request.org_id,
            **more,
        }


@dataclass
class Outcome:
    """The result of one attempt: an answer, or an error and its class."""

    step: TierStep
    answer: ProviderAnswer | None = None
    error: ResilienceError | None = None
    error_class: ErrorClass | None = None
    latency_ms: int = 0
    reserved: Decimal = Decimal(0)
    skipped: bool = False
    # Usage reported by a stream before it failed, if any.
    usage_seen: Usage | None = None


class Attempt:
    """Run one provider call under its breaker, budget reservation and timeout.

    ``start`` returns None when the call may go ahead, or the outcome of a
    step skipped before any call (breaker open, over the hard budget).
    ``run`` makes the call and reports its outcome to the breaker. The budget
    callbacks reserve and release the attempt's maximum cost, and raise
    ``BudgetExceededError`` themselves when the request must be rejected.
    """

    def __init__(
        self,
        state: CallState,
        step: TierStep,
        *,
        provider: Callable[[], Any],
        breaker: Any,
        timeout_s: float,
        reserve: Callable[[TierStep], Decimal | None],
        release: Callable[[Decimal], None],
    ) -> None:
        self.state = state
        self.step = step
        self._provider_factory = provider
        self._provider: Any = None
        self.breaker = breaker
        self.timeout_s = timeout_s
        self._reserve = reserve
        self._release = release
        self.permit: Any = None
        self.reserved = Decimal(0)

    @property
    def provider(self) -> Any:
        """The step's adapter, built on first use so a skipped step costs nothing."""
        if self._provider is None:
            self._provider = self._provider_factory()
        return self._provider

    def start(self) -> Outcome | None:
        """Take a budget reservation and a breaker permit; None means go ahead."""
        state, step = self.state, self.step

        # The reservation comes first: when it raises BudgetExceededError, no
        # permit (possibly a half-open probe slot) is left unreported.
        reserved = self._reserve(step)
        if reserved is None:
            state.errors.append(f"{step.name}: over the hard budget")
            return Outcome(step, skipped=True)

        try:
            self.permit = self.breaker.acquire()
        except BreakerOpenError as exc:
            self._release(reserved)
            logger.info(
                "provider.skipped",
                extra=state.log_extra(
                    step, reason="breaker_open", retry_after=exc.retry_after
                ),
            )
            state.errors.append(
                f"{step.name}: breaker open, retry in {exc.retry_after:.0f} s"
            )
            return Outcome(step, skipped=True, error=exc)

        self.reserved = reserved
        return None

    def call_timeout(self) -> float:
        """Return the attempt's timeout, cut to the time left before the deadline.

        Call it after ``provider`` is built: building a client imports its SDK,
        which can take seconds on a cold start.
        """
        return max(min(self.timeout_s, self.state.remaining()), MIN_ATTEMPT_S)

    def run(self) -> Outcome:
        step, request = self.step, self.state.request
        assert request.messages is not None
        started = time.monotonic()
        provider = self.provider
        try:
            answer = provider.complete(
                step.model,
                request.messages,
                max_tokens=request.max_tokens,
                timeout_s=self.call_timeout(),
                temperature=request.temperature,
            )
        except ResilienceError as error:
            latency_ms = round((time.monotonic() - started) * 1000)
            return self.failed(error, latency_ms)

        self.permit.success()
        latency_ms = round((time.monotonic() - started) * 1000)
        return Outcome(
            step, answer=answer, latency_ms=latency_ms, reserved=self.reserved
        )

    def failed(self, error: ResilienceError, latency_ms: int) -> Outcome:
        """Report a failed call to the breaker and give back its reservation."""
        state, step = self.state, self.step
        error_class = error_class_of(error)
        self._release(self.reserved)

        if error_class in (
            ErrorClass.TRANSIENT,
            ErrorClass.RATE_LIMITED,
            ErrorClass.CONFIG_ERROR,
        ):
            self.permit.failure(error)
        elif error_class is ErrorClass.NOT_SENT:
            # The provider never saw the request, so the permit is not
            # reported: a closed breaker counts nothing, and a half-open
            # probe slot is freed when its lease ends.
            pass
        else:
            # The provider worked; the request itself was the problem.
            self.permit.success()
        retry_after = getattr(error, "retry_after", None)
        if error_class is ErrorClass.RATE_LIMITED and retry_after:
            self.breaker.open_until(time.time() + retry_after)

        log = logger.error if error_class is ErrorClass.CONFIG_ERROR else logger.warning
        log(
            "provider.failed",
            extra=state.log_extra(
                step,
                error_class=str(error_class),
                error=type(error).__name__,
                status=getattr(error, "status", None),
                retry_after=retry_after,
                latency_ms=latency_ms,
            ),
        )
        state.errors.append(f"{step.name}: {error_class}")
        return Outcome(
            step, error=error, error_class=error_class, latency_ms=latency_ms
        )
