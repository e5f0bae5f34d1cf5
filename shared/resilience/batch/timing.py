"""The time an invocation has left, from the Lambda context or a budget."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Protocol

__all__ = ["LambdaContextLike", "TimeBudget"]


class LambdaContextLike(Protocol):
    def get_remaining_time_in_millis(self) -> int | None: ...


class TimeBudget:
    """Seconds left for this run.

    With a Lambda context, the context's remaining time is the source (a
    remaining time of None, 0 or less counts as no time left). Without one,
    the run gets ``budget_s`` seconds from its creation, measured on ``clock``.
    """

    def __init__(
        self,
        context: LambdaContextLike | None = None,
        *,
        budget_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._context = context
        self._clock = clock
        self._deadline = clock() + budget_s

    def __repr__(self) -> str:
        return f"<TimeBudget remaining_s={self.remaining_s():.3f}>"

    @property
    def has_context(self) -> bool:
        return self._context is not None

    def remaining_s(self) -> float:
        if self._context is not None:
            getter = getattr(self._context, "get_remaining_time_in_millis", None)
            millis = getter() if getter is not None else None
            if millis is None or isinstance(millis, bool):
                return 0.0
            try:
                seconds = float(millis) / 1000.0
            except (TypeError, ValueError):
                return 0.0
            return max(0.0, seconds) if math.isfinite(seconds) else 0.0
        return self._deadline - self._clock()

    def raw_remaining_s(self) -> float | None:
        """Return the remaining time for the lease (None: no context)."""
        if self._context is None:
            return None
        return self.remaining_s()

    def now(self) -> float:
        """Return a monotonic reading that advances as the remaining time falls."""
        if self._context is not None:
            return -self.remaining_s()
        return self._clock()
