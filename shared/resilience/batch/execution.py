"""One item's calls: retries with backoff inside the time left, and outcomes.

Attempts count every call made for the item (a processor that retries inside
reports its own calls in ``context.extra["calls"]``), so retries do not
multiply across layers. A breaker that rejects the call fails the item at once
as retryable and spends no attempt.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any

import stamina

from resilience.api import storable_text
from resilience.batch.config import BatchSettings
from resilience.batch.models import Reason
from resilience.batch.processors import ItemContext, Processor
from resilience.batch.timing import TimeBudget
from resilience.errors import (
    BreakerOpenError,
    PermanentError,
    RateLimitedError,
    StoreUnavailableError,
    TransientError,
    UpstreamClientError,
    UpstreamConnectionError,
    UpstreamServerError,
    UpstreamTimeoutError,
    ValidationError,
)

__all__ = ["CallOutcome", "DegradedAnswerError", "classify_error", "run_item"]

logger = logging.getLogger(__name__)


class DegradedAnswerError(TransientError):
    """The LLM chain answered only with its template; worth retrying later."""


@dataclass(slots=True)
class CallOutcome:
    ok: bool
    calls: int
    output: Any = None
    reason: str | None = None
    error: str | None = None
    retryable: bool = False


_REASONS: list[tuple[type[BaseException], Reason]] = [
    (BreakerOpenError, Reason.BREAKER_OPEN),
    (UpstreamTimeoutError, Reason.TIMEOUT),
    (UpstreamConnectionError, Reason.CONNECTION_ERROR),
    (RateLimitedError, Reason.RATE_LIMITED),
    (UpstreamServerError, Reason.SERVER_ERROR),
    (DegradedAnswerError, Reason.DEGRADED),
    (StoreUnavailableError, Reason.TRANSIENT_ERROR),
    (TransientError, Reason.TRANSIENT_ERROR),
    (UpstreamClientError, Reason.CLIENT_ERROR),
    (ValidationError, Reason.VALIDATION_ERROR),
    (PermanentError, Reason.PROCESSOR_ERROR),
]


def classify_error(error: BaseException) -> tuple[Reason, bool]:
    """Return the reason code of a failed call and whether retrying can help.

    Errors outside the project's tree are retryable only when they carry
    ``retryable = True``; an unknown exception is most often a bug, which a
    retry would repeat.
    """
    retryable = _optional_attribute(error, "retryable")
    for error_type, reason in _REASONS:
        if isinstance(error, error_type):
            return reason, bool(retryable)
    if retryable is True:
        return Reason.TRANSIENT_ERROR, True
    return Reason.PROCESSOR_ERROR, False


def _optional_attribute(error: BaseException, name: str) -> Any:
    """Read an attribute a processor's exception may have, or None.

    The attribute can be a property of the processor's own code, and an
    error while reading it must fail only the item, not the run.
    """
    try:
        return getattr(error, name, None)
    except Exception:
        return None


def _error_text(error: BaseException) -> str:
    # A downstream's message may carry any text, and it is stored. Reading it
    # runs the exception's own code, which can fail too.
    try:
        message = str(error)
    except Exception:  # losing the message must not lose the item's outcome
        message = "(the exception's message could not be read)"
    text = storable_text(message) or type(error).__name__
    return f"{type(error).__name__}: {text}"[:1000]


class _Calls:
    """Calls made so far for one item in this run."""

    def __init__(self) -> None:
        self.count = 0


def run_item(
    processor: Processor,
    context: ItemContext,
    *,
    budget: TimeBudget,
    settings: BatchSettings,
    estimate_s: float,
) -> CallOutcome:
    """Call the processor, retrying retryable failures while time and attempts last.

    ``context`` is the first call's; each retry gets a copy with the next
    attempt number and an empty ``extra``. The first call is made outside
    stamina, so that items which succeed at once cost nothing extra. Its
    failure is re-raised as stamina's first attempt, so every wait comes from
    stamina. Stamina's test mode (``stamina.set_testing``) removes the waits.
    """
    calls = _Calls()
    try:
        output = _call(processor, context, calls)
        return CallOutcome(ok=True, calls=calls.count, output=output)
    except Exception as error:  # every failure is an item outcome
        first_error: Exception | None = error
        if _should_retry(error, calls, budget, settings, estimate_s) is False:
            return _failed(error, calls)

    try:
        for attempt in stamina.retry_context(
            on=lambda exc: _should_retry(exc, calls, budget, settings, estimate_s),
            attempts=settings.max_attempts,
            timeout=None,
            wait_initial=settings.backoff_initial_s,
            wait_max=settings.backoff_max_s,
            wait_jitter=settings.backoff_jitter_s,
            wait_exp_base=settings.backoff_factor,
        ):
            with attempt:
                if first_error is not None:
                    pending, first_error = first_error, None
                    raise pending
                retry = replace(
                    context, attempt=context.attempt + calls.count, extra={}
                )
                output = _call(processor, retry, calls)
        return CallOutcome(ok=True, calls=calls.count, output=output)
    except Exception as error:
        return _failed(error, calls)


def _call(processor: Processor, context: ItemContext, calls: _Calls) -> Any:
    try:
        output = processor.process(context)
    except BreakerOpenError:
        # Rejected by the breaker without a call: no attempt spent.
        raise
    except Exception:
        calls.count += _reported_calls(context)
        raise
    calls.count += _reported_calls(context)
    return output


# Maximum calls one try may report. Attempts are stored as a PostgreSQL
# integer, so a processor reporting billions would overflow it and fail the
# record of the whole run.
MAX_REPORTED_CALLS = 1000


def _reported_calls(context: ItemContext) -> int:
    reported = context.extra.get("calls", 1)
    if not isinstance(reported, int) or reported < 1:
        return 1
    return min(reported, MAX_REPORTED_CALLS)


def _should_retry(
    error: BaseException,
    calls: _Calls,
    budget: TimeBudget,
    settings: BatchSettings,
    estimate_s: float,
) -> bool | float:
    """Return False to stop, True to retry with backoff, or a wait in seconds."""
    reason, retryable = classify_error(error)
    if not retryable or reason is Reason.BREAKER_OPEN:
        return False
    if calls.count >= settings.max_attempts:
        return False

    wait_s = min(
        settings.backoff_max_s,
        settings.backoff_initial_s * settings.backoff_factor ** max(0, calls.count - 1),
    )
    wait_s += settings.backoff_jitter_s
    retry_after = _optional_attribute(error, "retry_after")
    if isinstance(retry_after, int | float) and retry_after > 0:
        wait_s = float(retry_after)

    spare_s = budget.remaining_s() - settings.time_reserve_ms / 1000.0
    if spare_s < wait_s + estimate_s:
        logger.info(
            "batch.retry_skipped_no_time",
            extra={"spare_s": round(spare_s, 3), "wait_s": round(wait_s, 3)},
        )
        return False
    if isinstance(retry_after, int | float) and retry_after > 0:
        return float(retry_after)
    return True


def _failed(error: BaseException, calls: _Calls) -> CallOutcome:
    reason, retryable = classify_error(error)
    return CallOutcome(
        ok=False,
        calls=calls.count,
        reason=str(reason),
        error=_error_text(error),
        retryable=retryable,
    )
