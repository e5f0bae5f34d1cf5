"""One breaker per name per container, with the default listeners attached."""

from __future__ import annotations

import os
import threading

from resilience.breaker.config import BreakerConfig
from resilience.breaker.core import CircuitBreaker, TransitionListener
from resilience.breaker.listeners import OpeningNotifier, PostgresRecorder
from resilience.kvstore import KeyValueStore

__all__ = ["clear_breakers", "default_listeners", "get_breaker"]

_breakers: dict[str, CircuitBreaker] = {}
_lock = threading.Lock()
_recorder: PostgresRecorder | None = None


def default_listeners(*, critical: bool = False) -> list[TransitionListener]:
    """Return the PostgreSQL recorder (when a database is configured) and alerts."""
    global _recorder
    listeners: list[TransitionListener] = []
    if os.environ.get("DATABASE_URL") or os.environ.get("DATABASE_URL_SECRET"):
        # One recorder, so every breaker of the container shares one connection.
        if _recorder is None:
            _recorder = PostgresRecorder()
        listeners.append(_recorder)
    listeners.append(OpeningNotifier(critical=critical))
    return listeners


def get_breaker(
    name: str,
    config: BreakerConfig | None = None,
    *,
    critical: bool = False,
    store: KeyValueStore | None = None,
) -> CircuitBreaker:
    """Return the container's breaker for ``name``, creating it on first use.

    A later call with a different ``config`` replaces the cached breaker, so
    that a changed setting takes effect; the shared state in the store stays.
    """
    with _lock:
        breaker = _breakers.get(name)
        requested = config or (breaker.config if breaker else BreakerConfig.from_env())
        if (
            breaker is None
            or breaker.config != requested
            or (store is not None and breaker._store is not store)
        ):
            breaker = CircuitBreaker(
                name,
                requested,
                store=store,
                listeners=default_listeners(critical=critical),
            )
            _breakers[name] = breaker
        return breaker


def clear_breakers() -> None:
    """Forget every cached breaker (tests, or after the environment changed)."""
    global _recorder
    with _lock:
        _breakers.clear()
        if _recorder is not None and _recorder.database is not None:
            _recorder.database.close()
        _recorder = None
