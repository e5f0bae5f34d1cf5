"""Circuit breaker whose state is shared by every instance through Redis.

States are ``closed``, ``open`` and ``half_open`` (:class:`BreakerState`).
The breaker opens after ``failure_threshold`` consecutive counted failures,
or when the share of failed calls in the last ``window`` seconds reaches
``failure_rate_threshold`` once ``minimum_calls`` were seen. It stays open
for ``reset_timeout`` seconds, then admits at most ``half_open_max_calls``
probes across all instances. A successful probe closes it and a failed one
opens it again. Every transition increments the breaker's ``generation``,
and an outcome reported by a call from an older generation changes nothing.

Each decision and update is one Lua script run atomically on the store
(EVALSHA). See ``docs/breaker.md`` for settings and the policy when the
store is unreachable.

Example::

    from resilience.breaker import get_breaker

    breaker = get_breaker("payments")
    with breaker:
        call_payments()
"""

from __future__ import annotations

from resilience.breaker.config import BreakerConfig, BreakerState, StoreFailurePolicy
from resilience.breaker.core import (
    BreakerSnapshot,
    CircuitBreaker,
    Permit,
    Transition,
    TransitionListener,
)
from resilience.breaker.registry import clear_breakers, default_listeners, get_breaker

__all__ = [
    "BreakerConfig",
    "BreakerSnapshot",
    "BreakerState",
    "CircuitBreaker",
    "Permit",
    "StoreFailurePolicy",
    "Transition",
    "TransitionListener",
    "clear_breakers",
    "default_listeners",
    "get_breaker",
]
