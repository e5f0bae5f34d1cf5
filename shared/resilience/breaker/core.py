"""The circuit breaker: permits, state on a shared store, transitions.

Round trips to the store per guarded call (measured by ``bench/breaker.py``):

- closed: 1 (the report). ``acquire`` decides from the state this instance
  saw last when that state is closed and younger than ``state_cache_ttl``.
  After a quiet spell the first call costs 2. With ``pipeline_successes``
  (the default) the caller does not wait for the report of a success: the
  Redis store reads its reply later, and the state it carries is taken in
  then.
- open: 0 while the last state seen is open, younger than
  ``state_cache_ttl`` and inside its cooldown, otherwise 1.
- half_open: 1 to acquire a probe (or be rejected) and 1 to report it.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import logging
import math
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from resilience.breaker import scripts
from resilience.breaker.config import BreakerConfig, BreakerState, StoreFailurePolicy
from resilience.breaker.local import LocalState, Reply
from resilience.errors import BreakerOpenError, RedisUnavailableError
from resilience.kvstore import KeyValueStore, Script, store_from_env
from resilience.observability import emit_metric
from resilience.retry_after import MAX_RETRY_AFTER_S

__all__ = [
    "BreakerSnapshot",
    "CircuitBreaker",
    "Permit",
    "Transition",
    "TransitionListener",
]

logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

# Maximum opening that open_until sets, the same bound as a parsed Retry-After.
MAX_OPEN_UNTIL_S = int(MAX_RETRY_AFTER_S)

# Transition reasons by (previous state, new state).
_REASONS = {
    ("open", "half_open"): "reset_timeout_elapsed",
    ("half_open", "closed"): "probe_succeeded",
    ("half_open", "open"): "probe_failed",
    ("closed", "open"): "failures",
}


_EVENTS = {
    BreakerState.OPEN: "breaker.opened",
    BreakerState.HALF_OPEN: "breaker.half_opened",
    BreakerState.CLOSED: "breaker.closed",
}


def _datetime_ms(epoch_ms: int) -> datetime | None:
    return datetime.fromtimestamp(epoch_ms / 1000, UTC) if epoch_ms > 0 else None


@dataclass(frozen=True)
class BreakerSnapshot:
    """State of a breaker as stored, at the time it was read."""

    name: str
    state: BreakerState
    failure_count: int
    opened_until: datetime | None
    generation: int


@dataclass(frozen=True)
class Transition:
    """A change of state, reported once, by the instance that made it.

    ``local`` is True for transitions of this instance's in-memory state
    while the store is unreachable. Those have generations of their own.
    """

    name: str
    previous: BreakerState
    state: BreakerState
    generation: int
    failure_count: int
    opened_until: datetime | None
    reason: str
    actor: str | None
    local: bool
    at: datetime


TransitionListener = Callable[[Transition], None]


@dataclass
class _Seen:
    state: str
    generation: int
    fails: int
    opened_until_ms: int
    seen_at: float


class Permit:
    """Permission for one call, whose outcome is reported once (success or failure)."""

    def __init__(
        self,
        breaker: CircuitBreaker,
        *,
        generation: int,
        probe_id: str = "",
        local: bool = False,
    ) -> None:
        self.breaker = breaker
        self.generation = generation
        self.probe_id = probe_id
        self.local = local
        self.started = time.monotonic()
        self._reported = False
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        kind = "probe" if self.probe_id else "call"
        return (
            f"<Permit {self.breaker.name!r} {kind} generation={self.generation} "
            f"local={self.local} reported={self._reported}>"
        )

    @property
    def is_probe(self) -> bool:
        return bool(self.probe_id)

    def _claim(self) -> bool:
        with self._lock:
            if self._reported:
                logger.debug(
                    "breaker.permit_reported_twice", extra={"permit": repr(self)}
                )
                return False
            self._reported = True
            return True

    def success(self) -> None:
        """Report success, or a failure when slower than ``slow_call_duration``."""
        if not self._claim():
            return
        slow_after = self.breaker.config.slow_call_duration
        elapsed = time.monotonic() - self.started
        if slow_after is not None and elapsed > slow_after:
            self.breaker._report(self, ok=False, reason="slow_call")
            return
        self.breaker._report(self, ok=True)

    def failure(self, error: BaseException | None = None) -> None:
        """Report a failure, or a success when the config does not count ``error``."""
        if not self.breaker.config.counts_error(error):
            self.success()
            return
        if self._claim():
            self.breaker._report(self, ok=False)

    def release(self) -> None:
        """Give the permit back without reporting an outcome.

        For a call that never reached the service, such as a request the
        HTTP client rejected before sending. A probe's slot stays taken until
        its ``probe_lease`` ends.
        """
        self._claim()

    def record_status(self, status: int) -> None:
        """Report an HTTP response: a failure when its status counts, else a success."""
        if self.breaker.config.counts_status(status):
            self.failure()
        else:
            self.success()


class CircuitBreaker:
    """A circuit breaker whose state lives in a store shared by every instance.

    Use it as ``permit = breaker.acquire()`` then ``permit.success()`` or
    ``permit.failure(error)``, as a context manager (``with breaker:``,
    ``async with breaker:``) or as a decorator (``@breaker``). Construction
    touches no store: the store is resolved on the first call, and while it
    cannot be reached the ``store_failure_policy`` decides.
    """

    def __init__(
        self,
        name: str,
        config: BreakerConfig | None = None,
        *,
        store: KeyValueStore | None = None,
        listeners: Iterable[TransitionListener] = (),
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.name = name
        self.config = config or BreakerConfig()
        self._store = store
        self._listeners = list(listeners)
        self._clock = clock
        self._keys = scripts.breaker_keys(name)
        self._report_settings = " ".join(
            str(value)
            for value in (
                self.config.failure_threshold,
                _ms(self.config.window),
                self.config.window_buckets,
                self.config.minimum_calls,
                self.config.failure_rate_threshold,
                _ms(self.config.reset_timeout),
            )
        )
        self._seen: _Seen | None = None
        self._local = LocalState()
        self._pending_successes = 0
        self._pending_generation = -1
        self._flush_due = 0.0
        self._outage = False
        self._retry_store_at = 0.0
        self._lock = threading.Lock()
        self._permits: contextvars.ContextVar[tuple[Permit, ...]] = (
            contextvars.ContextVar(f"breaker_permits_{name}", default=())
        )

    def __repr__(self) -> str:
        seen = self._seen
        state = seen.state if seen else "unknown"
        generation = seen.generation if seen else "?"
        return (
            f"<CircuitBreaker {self.name!r} state={state} generation={generation} "
            f"store_available={not self._outage}>"
        )

    @property
    def last_seen_state(self) -> str | None:
        """State this instance decides by, None before its first decision.

        While the store is unreachable this is the in-memory breaker's state,
        because that state admits or rejects calls, not the stored state seen
        before the outage. Otherwise it is the state of the last round trip.
        """
        if self._outage:
            return self._local.state
        seen = self._seen
        return seen.state if seen is not None else None

    def add_listener(self, listener: TransitionListener) -> None:
        """Call ``listener`` with every :class:`Transition` this instance makes."""
        self._listeners.append(listener)

    # ----------------------------------------------------------- decisions

    def acquire(self) -> Permit:
        """Return a permit for one call.

        Raises:
            BreakerOpenError: the breaker is open, all probe slots are taken,
                or the store is unreachable under ``fail_closed``.
        """
        self._collect_replies()
        now_ms = self._now_ms()
        cached = self._permit_from_seen(now_ms)
        if cached is not None:
            return cached

        probe_id = uuid.uuid4().hex
        config = self.config
        reply = self._run(
            scripts.ACQUIRE,
            [now_ms, config.half_open_max_calls, _ms(config.probe_lease), probe_id],
        )
        if reply is None:
            return self._acquire_local(now_ms, probe_id)

        self._remember(reply)
        self._announce(reply)
        return self._permit_for(reply, probe_id, local=False)

    def _permit_from_seen(self, now_ms: int) -> Permit | None:
        seen = self._seen
        if self._outage or seen is None:
            return None
        if time.monotonic() - seen.seen_at > self.config.state_cache_ttl:
            return None
        if seen.state == "closed":
            return Permit(self, generation=seen.generation)
        if seen.state == "open" and now_ms < seen.opened_until_ms:
            retry_after = (seen.opened_until_ms - now_ms) / 1000
            raise BreakerOpenError(self.name, retry_after, "open")
        return None

    def _acquire_local(self, now_ms: int, probe_id: str) -> Permit:
        if self.config.store_failure_policy is StoreFailurePolicy.FAIL_CLOSED:
            raise BreakerOpenError(
                self.name, self.config.store_retry_interval, "store_unavailable"
            )
        reply = self._local.acquire(now_ms, self.config, probe_id)
        self._announce(reply, local=True)
        return self._permit_for(reply, probe_id, local=True)

    def _permit_for(self, reply: Reply, probe_id: str, *, local: bool) -> Permit:
        if reply.verdict == "reject":
            raise BreakerOpenError(self.name, reply.retry_ms / 1000, reply.state)
        return Permit(
            self,
            generation=reply.generation,
            probe_id=probe_id if reply.verdict == "probe" else "",
            local=local,
        )

    def _defer_success(self, permit: Permit) -> bool:
        """Count a closed-state success locally; True when no report is due yet.

        Only with ``success_flush_interval`` > 0, and only while the state
        seen last is closed with no failures counted, in the permit's
        generation. The count travels with the next report of this instance.
        """
        seen = self._seen
        interval = self.config.success_flush_interval
        if (
            interval <= 0
            or permit.is_probe
            or seen is None
            or seen.state != "closed"
            or seen.fails != 0
            or seen.generation != permit.generation
        ):
            return False
        now = time.monotonic()
        with self._lock:
            if self._pending_generation != permit.generation:
                self._pending_successes = 0
                self._pending_generation = permit.generation
            if self._pending_successes == 0:
                self._flush_due = now + interval
            if now < self._flush_due:
                self._pending_successes += 1
                return True
        return False

    def _take_pending(self, generation: int) -> int:
        with self._lock:
            pending = self._pending_successes
            self._pending_successes = 0
            same_generation = self._pending_generation == generation
        return pending if same_generation else 0

    def _report(self, permit: Permit, *, ok: bool, reason: str = "") -> None:
        now_ms = self._now_ms()
        config = self.config
        if not permit.local:
            if ok and self._defer_success(permit):
                return
            args: list[Any] = [
                now_ms,
                1 if ok else 0,
                permit.generation,
                permit.probe_id,
                self._report_settings,
                self._take_pending(permit.generation),
            ]
            # A success outside a probe never makes a transition, so nothing
            # waits for its reply. Failures and probes may make one, which
            # this instance must announce before the caller goes on.
            if ok and not permit.is_probe and config.pipeline_successes:
                if self._send_report(args):
                    return
            else:
                reply = self._run(scripts.REPORT, args)
                if reply is not None:
                    self._remember(reply)
                    self._announce(reply, reason=reason or None)
                    return
            # The store went away during the call: count the outcome locally
            # so the in-memory breaker learns from it.
            permit = Permit(self, generation=self._local.generation, local=True)

        reply = self._local.report(
            now_ms,
            config,
            ok=ok,
            generation=permit.generation,
            probe_id=permit.probe_id,
        )
        self._announce(reply, local=True, reason=reason or None)

    # ----------------------------------------------------------- commands

    def open_until(self, epoch_seconds: float) -> BreakerSnapshot:
        """Open the breaker until ``epoch_seconds``, never shortening an opening.

        The opening ends at most ``MAX_OPEN_UNTIL_S`` from now, so a wrong
        time (a server's Retry-After of years) cannot shut a service out
        until someone resets the breaker.

        Raises:
            ValueError: ``epoch_seconds`` is not a finite number.
        """
        if not math.isfinite(epoch_seconds):
            raise ValueError(f"epoch_seconds must be finite, got {epoch_seconds!r}")
        now_ms = self._now_ms()
        latest_ms = now_ms + MAX_OPEN_UNTIL_S * 1000
        target_ms = min(int(epoch_seconds * 1000), latest_ms)
        reply = self._run(scripts.OPEN_UNTIL, [now_ms, target_ms])
        if reply is None:
            reply = self._local.open_until(now_ms, target_ms)
            self._announce(reply, local=True, reason="retry_after")
        else:
            self._remember(reply)
            self._announce(reply, reason="retry_after")
        return self._snapshot_of(reply)

    def snapshot(self) -> BreakerSnapshot:
        """Read the stored state (one round trip).

        Raises:
            RedisUnavailableError: the store cannot be reached.
        """
        reply = self._run(scripts.SNAPSHOT, [self._now_ms()], required=True)
        assert reply is not None
        return self._snapshot_of(reply)

    def reset(self, actor: str) -> BreakerSnapshot:
        """Close the breaker and clear its counters, recording ``actor``.

        Raises:
            RedisUnavailableError: the store cannot be reached.
        """
        reply = self._run(scripts.RESET, [self._now_ms()], required=True)
        assert reply is not None
        self._remember(reply)
        self._announce(reply, reason="manual_reset", actor=actor)
        return self._snapshot_of(reply)

    def _snapshot_of(self, reply: Reply) -> BreakerSnapshot:
        return BreakerSnapshot(
            name=self.name,
            state=BreakerState(reply.state),
            failure_count=reply.fails,
            opened_until=_datetime_ms(reply.opened_until_ms),
            generation=reply.generation,
        )

    # ----------------------------------------------------------- store

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    def _resolve_store(self) -> KeyValueStore:
        if self._store is None:
            self._store = store_from_env()
        return self._store

    def _run(
        self, script: Script, args: list[Any], *, required: bool = False
    ) -> Reply | None:
        """Run ``script`` on the store; return None while the store is away."""
        if not required and time.monotonic() < self._retry_store_at:
            return None
        try:
            reply = Reply.from_script(
                self._resolve_store().run_script(script, self._keys, args)
            )
        except Exception as exc:
            # The boundary of the guarded call: a store failure of any kind
            # (unreachable, misconfigured, malformed reply) turns into the
            # store-failure policy, never into an error of the caller's call.
            self._store_failed(exc)
            if required:
                raise RedisUnavailableError(
                    f"breaker store for {self.name!r} is unavailable: {exc}"
                ) from exc
            return None
        self._store_recovered()
        return reply

    def _send_report(self, args: list[Any]) -> bool:
        """Send a report and return before its reply; False when the store is away."""
        if time.monotonic() < self._retry_store_at:
            return False
        sent_at = time.monotonic()
        try:
            self._resolve_store().send_script(
                scripts.REPORT,
                self._keys,
                args,
                functools.partial(self._take_sent_reply, sent_at),
            )
        except Exception as exc:
            self._store_failed(exc)
            return False
        return True

    def _take_sent_reply(
        self, sent_at: float, raw: Any, error: Exception | None
    ) -> None:
        """Learn the state from the reply of a report sent at ``sent_at``."""
        if error is not None:
            # The success it reported may not have been counted; the next
            # call meets the store-failure policy. One lost connection loses
            # many replies, which make one failure, not one each.
            if not self._outage:
                self._store_failed(error)
            return
        try:
            reply = Reply.from_script(raw)
        except Exception as exc:
            self._store_failed(exc)
            return
        self._remember(reply, seen_at=sent_at)
        self._announce(reply)

    def _collect_replies(self) -> None:
        store = self._store
        if store is None or self._outage:
            return
        try:
            store.collect_replies()
        except Exception as exc:
            self._store_failed(exc)

    def _store_failed(self, error: Exception) -> None:
        with self._lock:
            first = not self._outage
            self._outage = True
            self._retry_store_at = time.monotonic() + self.config.store_retry_interval
        emit_metric("BreakerStoreUnavailable", 1, service=self.name)
        if first:
            logger.warning(
                "breaker.store_unavailable",
                extra={
                    "service": self.name,
                    "error": f"{type(error).__name__}: {error}",
                    "policy": self.config.store_failure_policy.value,
                },
            )

    def _store_recovered(self) -> None:
        if not self._outage:
            return
        with self._lock:
            self._outage = False
            self._retry_store_at = 0.0
            self._local = LocalState()
        logger.info("breaker.store_recovered", extra={"service": self.name})

    def _remember(self, reply: Reply, *, seen_at: float | None = None) -> None:
        """Keep the state of ``reply``; ``seen_at`` is when its script was sent."""
        if seen_at is None:
            seen_at = time.monotonic()
        elif self._seen is not None and self._seen.seen_at > seen_at:
            return  # an older reply read late must not replace a newer state
        self._seen = _Seen(
            reply.state,
            reply.generation,
            reply.fails,
            reply.opened_until_ms,
            seen_at,
        )

    # ----------------------------------------------------------- transitions

    def _announce(
        self,
        reply: Reply,
        *,
        local: bool = False,
        reason: str | None = None,
        actor: str | None = None,
    ) -> None:
        if not reply.previous:
            return
        transition = Transition(
            name=self.name,
            previous=BreakerState(reply.previous),
            state=BreakerState(reply.state),
            generation=reply.generation,
            failure_count=reply.fails,
            opened_until=_datetime_ms(reply.opened_until_ms),
            reason=reason or _REASONS.get((reply.previous, reply.state), reply.verdict),
            actor=actor,
            local=local,
            at=datetime.fromtimestamp(self._clock(), UTC),
        )
        level = (
            logging.WARNING if transition.state is BreakerState.OPEN else logging.INFO
        )
        logger.log(
            level,
            _EVENTS[transition.state],
            extra={
                "service": self.name,
                "previous": transition.previous.value,
                "state": transition.state.value,
                "generation": transition.generation,
                "reason": transition.reason,
                "local": local,
            },
        )
        self._dispatch(transition)

    def _dispatch(self, transition: Transition) -> None:
        listeners = list(self._listeners)
        if not listeners:
            return
        # Listeners write to PostgreSQL and send alerts. They run on a thread,
        # so a slow or unreachable target delays the call by at most
        # listener_timeout while the thread finishes in the background.
        worker = threading.Thread(
            target=_run_listeners,
            args=(transition, listeners),
            name=f"breaker-listeners-{self.name}",
            daemon=True,
        )
        worker.start()
        worker.join(self.config.listener_timeout)
        if worker.is_alive():
            logger.warning(
                "breaker.listeners_slow",
                extra={"service": self.name, "timeout_s": self.config.listener_timeout},
            )

    # ----------------------------------------------------------- sugar

    def __enter__(self) -> Permit:
        permit = self.acquire()
        self._permits.set((*self._permits.get(), permit))
        return permit

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        stack = self._permits.get()
        permit = stack[-1]
        self._permits.set(stack[:-1])
        _finish(permit, exc)

    async def __aenter__(self) -> Permit:
        permit = await asyncio.to_thread(self.acquire)
        self._permits.set((*self._permits.get(), permit))
        return permit

    async def __aexit__(
        self, exc_type: Any, exc: BaseException | None, tb: Any
    ) -> None:
        stack = self._permits.get()
        permit = stack[-1]
        self._permits.set(stack[:-1])
        await asyncio.to_thread(_finish, permit, exc)

    def __call__(self, func: F) -> F:
        """Guard ``func`` (sync or async) with this breaker."""
        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                async with self:
                    return await func(*args, **kwargs)

            return async_wrapper  # type: ignore[return-value]

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with self:
                return func(*args, **kwargs)

        return wrapper  # type: ignore[return-value]


def _finish(permit: Permit, error: BaseException | None) -> None:
    if error is None:
        permit.success()
    elif isinstance(error, Exception):
        permit.failure(error)
    # A BaseException (cancellation, interpreter exit) reports nothing, and
    # a probe's lease frees its slot when it ends.


def _run_listeners(transition: Transition, listeners: list[TransitionListener]) -> None:
    for listener in listeners:
        try:
            listener(transition)
        except Exception:
            logger.exception(
                "breaker.listener_failed",
                extra={"service": transition.name, "listener": repr(listener)},
            )


def _ms(seconds: float) -> int:
    return round(seconds * 1000)
