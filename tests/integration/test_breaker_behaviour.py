"""Breaker behaviour suite, run on Redis (redis-py) and Upstash (REST bridge)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import replace

import pytest

from resilience.breaker import (
    BreakerConfig,
    BreakerState,
    CircuitBreaker,
    Transition,
)
from resilience.errors import (
    BreakerOpenError,
    UpstreamClientError,
    UpstreamServerError,
)
from resilience.kvstore import KeyValueStore
from tests.breaker_fixtures import (
    CountingStore,
    FakeClock,
    clock,
    make_store,
    store,
    store_kind,
    upstash_bridge,
)

__all__ = ["clock", "make_store", "store", "store_kind", "upstash_bridge"]

FAST = BreakerConfig(
    failure_threshold=3,
    reset_timeout=30,
    probe_lease=10,
    failure_rate_threshold=0,
    state_cache_ttl=0,
)

BreakerFactory = Callable[..., CircuitBreaker]


@pytest.fixture
def make_breaker(
    make_store: Callable[..., KeyValueStore], clock: FakeClock
) -> BreakerFactory:
    """Build breakers named "svc", each on its own store client (an instance)."""

    def factory(config: BreakerConfig = FAST, **options: object) -> CircuitBreaker:
        return CircuitBreaker(
            "svc",
            config,
            store=make_store(),
            clock=clock,
            **options,  # type: ignore[arg-type]
        )

    return factory


def fail(breaker: CircuitBreaker, times: int = 1) -> None:
    for _ in range(times):
        breaker.acquire().failure()


def succeed(breaker: CircuitBreaker, times: int = 1) -> None:
    for _ in range(times):
        breaker.acquire().success()


def test_closed_by_default(make_breaker: BreakerFactory) -> None:
    snapshot = make_breaker().snapshot()
    assert snapshot.state is BreakerState.CLOSED
    assert snapshot.failure_count == 0
    assert snapshot.generation == 0
    assert snapshot.opened_until is None


def test_opens_after_consecutive_failures(
    make_breaker: BreakerFactory, clock: FakeClock
) -> None:
    breaker = make_breaker()
    fail(breaker, 2)
    assert breaker.snapshot().state is BreakerState.CLOSED

    fail(breaker)

    snapshot = breaker.snapshot()
    assert snapshot.state is BreakerState.OPEN
    assert snapshot.failure_count == 3
    assert snapshot.generation == 1
    assert snapshot.opened_until is not None
    assert snapshot.opened_until.timestamp() == pytest.approx(clock.now + 30)


def test_success_resets_consecutive_count(make_breaker: BreakerFactory) -> None:
    breaker = make_breaker()
    fail(breaker, 2)
    succeed(breaker)
    fail(breaker, 2)
    assert breaker.snapshot().state is BreakerState.CLOSED
    assert breaker.snapshot().failure_count == 2


def test_open_rejects_with_retry_after(
    make_breaker: BreakerFactory, clock: FakeClock
) -> None:
    breaker = make_breaker()
    fail(breaker, 3)
    clock.advance(10)

    with pytest.raises(BreakerOpenError) as caught:
        breaker.acquire()

    assert caught.value.retry_after == pytest.approx(20)
    assert caught.value.state == "open"
    assert caught.value.service == "svc"


def test_rate_rule_needs_minimum_calls(make_breaker: BreakerFactory) -> None:
    config = BreakerConfig(
        failure_threshold=0,
        failure_rate_threshold=0.5,
        minimum_calls=10,
        window=60,
        state_cache_ttl=0,
    )
    breaker = make_breaker(config)
    for _ in range(4):
        fail(breaker)
        succeed(breaker)
    assert breaker.snapshot().state is BreakerState.CLOSED

    succeed(breaker)
    fail(breaker)

    assert breaker.snapshot().state is BreakerState.OPEN


def test_rate_window_forgets_old_calls(
    make_breaker: BreakerFactory, clock: FakeClock
) -> None:
    config = BreakerConfig(
        failure_threshold=0,
        failure_rate_threshold=0.5,
        minimum_calls=4,
        window=10,
        window_buckets=10,
        state_cache_ttl=0,
    )
    breaker = make_breaker(config)
    fail(breaker, 3)
    clock.advance(11)

    succeed(breaker, 3)
    fail(breaker)

    assert breaker.snapshot().state is BreakerState.CLOSED


def test_cooldown_admits_one_probe(
    make_breaker: BreakerFactory, clock: FakeClock
) -> None:
    breaker = make_breaker()
    other = make_breaker()
    fail(breaker, 3)
    clock.advance(30)

    probe = breaker.acquire()
    with pytest.raises(BreakerOpenError) as caught:
        other.acquire()

    assert probe.is_probe
    assert caught.value.state == "half_open"
    assert breaker.snapshot().state is BreakerState.HALF_OPEN


def test_probe_success_closes(make_breaker: BreakerFactory, clock: FakeClock) -> None:
    breaker = make_breaker()
    fail(breaker, 3)
    clock.advance(30)

    breaker.acquire().success()

    snapshot = breaker.snapshot()
    assert snapshot.state is BreakerState.CLOSED
    assert snapshot.failure_count == 0
    assert snapshot.generation == 3


def test_probe_failure_reopens(make_breaker: BreakerFactory, clock: FakeClock) -> None:
    breaker = make_breaker()
    fail(breaker, 3)
    clock.advance(30)

    breaker.acquire().failure()

    snapshot = breaker.snapshot()
    assert snapshot.state is BreakerState.OPEN
    assert snapshot.generation == 3
    assert snapshot.opened_until is not None
    assert snapshot.opened_until.timestamp() == pytest.approx(clock.now + 30)


def test_half_open_max_calls_bounds_probes(
    make_breaker: BreakerFactory, clock: FakeClock
) -> None:
    config = BreakerConfig(
        failure_threshold=1, half_open_max_calls=2, state_cache_ttl=0
    )
    breakers = [make_breaker(config) for _ in range(4)]
    fail(breakers[0])
    clock.advance(30)

    admitted = 0
    for breaker in breakers:
        try:
            breaker.acquire()
            admitted += 1
        except BreakerOpenError:
            pass

    assert admitted == 2


def test_lost_probe_frees_slot_after_lease(
    make_breaker: BreakerFactory, clock: FakeClock
) -> None:
    """The probe's caller dies, and after the lease another caller may probe."""
    breaker = make_breaker()
    fail(breaker, 3)
    clock.advance(30)
    breaker.acquire()  # GIVEN a probe that never reports

    clock.advance(9)
    with pytest.raises(BreakerOpenError):
        make_breaker().acquire()

    clock.advance(1)
    second = make_breaker().acquire()
    second.success()

    assert second.is_probe
    assert breaker.snapshot().state is BreakerState.CLOSED


def test_cold_start_keeps_count(make_breaker: BreakerFactory) -> None:
    """A new instance reads 4 of 5 failures, and the fifth from anyone opens."""
    config = BreakerConfig(
        failure_threshold=5, failure_rate_threshold=0, state_cache_ttl=0
    )
    fail(make_breaker(config), 4)

    newcomer = make_breaker(config)

    assert newcomer.snapshot().failure_count == 4
    fail(newcomer)
    assert newcomer.snapshot().state is BreakerState.OPEN


def test_construction_writes_nothing(
    make_store: Callable[..., KeyValueStore], clock: FakeClock
) -> None:
    counting = CountingStore(make_store())
    CircuitBreaker("svc", FAST, store=counting, clock=clock)
    assert counting.round_trips == 0


def test_stale_failure_ignored(make_breaker: BreakerFactory, clock: FakeClock) -> None:
    """A call from before the opening fails after a probe closed it."""
    slow_caller = make_breaker()
    late = slow_caller.acquire()  # GIVEN a call started while closed
    other = make_breaker()
    fail(other, 3)
    clock.advance(30)
    other.acquire().success()
    generation = other.snapshot().generation

    clock.advance(10)
    late.failure()

    snapshot = other.snapshot()
    assert snapshot.state is BreakerState.CLOSED
    assert snapshot.failure_count == 0
    assert snapshot.generation == generation


def test_open_until_only_extends(
    make_breaker: BreakerFactory, clock: FakeClock
) -> None:
    breaker = make_breaker()
    opened = breaker.open_until(clock.now + 60)
    shorter = breaker.open_until(clock.now + 10)
    longer = breaker.open_until(clock.now + 90)

    assert opened.state is BreakerState.OPEN
    assert opened.generation == 1
    assert shorter.opened_until == opened.opened_until
    assert longer.opened_until is not None
    assert longer.opened_until.timestamp() == pytest.approx(clock.now + 90)
    assert longer.generation == 1


def test_open_until_past_time_is_noop(
    make_breaker: BreakerFactory, clock: FakeClock
) -> None:
    snapshot = make_breaker().open_until(clock.now - 5)
    assert snapshot.state is BreakerState.CLOSED
    assert snapshot.generation == 0


def test_reset_closes_and_counts_generation(make_breaker: BreakerFactory) -> None:
    breaker = make_breaker()
    fail(breaker, 3)

    snapshot = breaker.reset(actor="ops@example.com")

    assert snapshot.state is BreakerState.CLOSED
    assert snapshot.failure_count == 0
    assert snapshot.generation == 2
    succeed(breaker)


def test_slow_success_counts_as_failure(make_breaker: BreakerFactory) -> None:
    config = BreakerConfig(
        failure_threshold=1, slow_call_duration=0.01, state_cache_ttl=0
    )
    breaker = make_breaker(config)
    permit = breaker.acquire()
    permit.started -= 1  # the call took a second

    permit.success()

    assert breaker.snapshot().state is BreakerState.OPEN


def test_uncounted_error_is_success(make_breaker: BreakerFactory) -> None:
    breaker = make_breaker()
    fail(breaker, 2)

    breaker.acquire().failure(UpstreamClientError("not found", status=404))
    breaker.acquire().failure(ValueError("bad data"))
    breaker.acquire().record_status(404)

    assert breaker.snapshot().failure_count == 0


def test_counted_statuses_and_errors(make_breaker: BreakerFactory) -> None:
    breaker = make_breaker(
        BreakerConfig(failure_threshold=10, failure_rate_threshold=0, state_cache_ttl=0)
    )
    breaker.acquire().record_status(500)
    breaker.acquire().record_status(429)
    breaker.acquire().failure(UpstreamServerError("down", status=503))
    breaker.acquire().failure(TimeoutError())
    breaker.acquire().failure(ConnectionRefusedError())

    assert breaker.snapshot().failure_count == 5


def test_report_twice_counts_once(make_breaker: BreakerFactory) -> None:
    breaker = make_breaker()
    permit = breaker.acquire()
    permit.failure()
    permit.failure()
    assert breaker.snapshot().failure_count == 1


def test_context_manager_reports(make_breaker: BreakerFactory) -> None:
    breaker = make_breaker()
    with pytest.raises(TimeoutError), breaker:
        raise TimeoutError
    with breaker:
        pass
    with pytest.raises(TimeoutError), breaker:
        raise TimeoutError
    assert breaker.snapshot().failure_count == 1


def test_decorator_guards_sync_and_async(make_breaker: BreakerFactory) -> None:
    breaker = make_breaker()

    @breaker
    def flaky() -> str:
        raise ConnectionError("down")

    @breaker
    async def async_flaky() -> str:
        raise TimeoutError

    with pytest.raises(ConnectionError):
        flaky()
    with pytest.raises(TimeoutError):
        asyncio.run(async_flaky())
    with pytest.raises(ConnectionError):
        flaky()
    with pytest.raises(BreakerOpenError):
        flaky()
    assert breaker.snapshot().state is BreakerState.OPEN


def test_async_context_manager(make_breaker: BreakerFactory) -> None:
    breaker = make_breaker()

    async def run() -> None:
        async with breaker:
            pass
        with pytest.raises(TimeoutError):
            async with breaker:
                raise TimeoutError

    asyncio.run(run())
    assert breaker.snapshot().failure_count == 1


def test_listeners_see_each_transition_once(
    make_breaker: BreakerFactory, clock: FakeClock
) -> None:
    seen: list[Transition] = []
    breaker = make_breaker(listeners=[seen.append])
    bystander_seen: list[Transition] = []
    bystander = make_breaker(listeners=[bystander_seen.append])

    fail(breaker, 3)
    clock.advance(30)
    breaker.acquire().success()
    bystander.open_until(clock.now + 5)

    steps = [(t.previous.value, t.state.value, t.generation) for t in seen]
    assert steps == [
        ("closed", "open", 1),
        ("open", "half_open", 2),
        ("half_open", "closed", 3),
    ]
    bystander_steps = [(t.previous.value, t.state.value) for t in bystander_seen]
    assert bystander_steps == [("closed", "open")]
    assert bystander_seen[0].reason == "retry_after"
    assert seen[0].reason == "failures"


def test_round_trips_per_state(
    make_store: Callable[..., KeyValueStore], clock: FakeClock
) -> None:
    counting = CountingStore(make_store())
    config = BreakerConfig(failure_threshold=1, state_cache_ttl=60)
    breaker = CircuitBreaker("svc", config, store=counting, clock=clock)
    breaker.acquire().success()  # the first call learns the state

    counting.round_trips = 0
    for _ in range(10):
        breaker.acquire().success()
    closed = counting.round_trips / 10

    breaker.acquire().failure()
    counting.round_trips = 0
    for _ in range(10):
        with pytest.raises(BreakerOpenError):
            breaker.acquire()
    open_state = counting.round_trips / 10

    clock.advance(30)
    counting.round_trips = 0
    breaker.acquire().success()
    half_open = counting.round_trips

    assert closed == 1.0
    assert open_state == 0.0
    assert half_open == 2


BATCHED = BreakerConfig(
    failure_threshold=3,
    failure_rate_threshold=0,
    state_cache_ttl=60,
    success_flush_interval=60,
)


def window_calls(store: KeyValueStore, redis_url: str) -> int:
    import redis

    raw = redis.Redis.from_url(redis_url)
    fields = raw.hgetall(store.prefix + "breaker:svc")
    raw.close()
    return sum(int(v) for k, v in fields.items() if k.startswith(b"c"))


def test_deferred_successes_skip_round_trips(
    make_store: Callable[..., KeyValueStore], clock: FakeClock, redis_url: str
) -> None:
    counting = CountingStore(make_store())
    breaker = CircuitBreaker("svc", BATCHED, store=counting, clock=clock)
    breaker.acquire().success()  # learns the state: 2 round trips
    counting.round_trips = 0

    succeed(breaker, 10)
    deferred_trips = counting.round_trips
    fail(breaker)

    assert deferred_trips == 0
    assert counting.round_trips == 1
    assert window_calls(counting, redis_url) == 12
    assert breaker.snapshot().failure_count == 1


def test_deferred_successes_end_failure_streak(
    make_breaker: BreakerFactory, clock: FakeClock
) -> None:
    batched = make_breaker(BATCHED)
    batched.acquire().success()
    succeed(batched, 3)  # GIVEN successes held back by one instance
    fail(make_breaker(), 2)

    fail(batched)

    snapshot = batched.snapshot()
    assert snapshot.state is BreakerState.CLOSED
    assert snapshot.failure_count == 1


def test_deferred_successes_flush_after_interval(
    make_store: Callable[..., KeyValueStore], clock: FakeClock, redis_url: str
) -> None:
    config = BreakerConfig(
        failure_rate_threshold=0, state_cache_ttl=60, success_flush_interval=0.05
    )
    counting = CountingStore(make_store())
    breaker = CircuitBreaker("svc", config, store=counting, clock=clock)
    succeed(breaker, 3)
    counting.round_trips = 0

    time.sleep(0.06)
    succeed(breaker)

    assert counting.round_trips == 1
    assert window_calls(counting, redis_url) == 4


CACHED = BreakerConfig(
    failure_threshold=3, failure_rate_threshold=0, state_cache_ttl=60
)


def test_pipelined_success_is_counted_without_waiting(
    make_store: Callable[..., KeyValueStore], clock: FakeClock, redis_url: str
) -> None:
    breaker = CircuitBreaker("svc", CACHED, store=make_store(), clock=clock)
    succeed(breaker, 3)

    # Another client sees every count before this instance read a reply.
    assert window_calls(breaker._resolve_store(), redis_url) == 3


def test_pipelined_reply_brings_state_opened_elsewhere(
    make_breaker: BreakerFactory, clock: FakeClock
) -> None:
    instance = make_breaker(CACHED)
    succeed(instance)  # GIVEN an instance that trusts a closed state for 60 s
    fail(make_breaker(), 3)  # WHEN another instance opens the breaker

    succeed(instance)  # admitted from the cache, and its reply reports open

    # A later decision reads the reply once it has arrived.
    def admitted_until_rejected() -> int:
        for admitted in range(2000):
            try:
                instance.acquire().release()
            except BreakerOpenError:
                return admitted
            time.sleep(0.001)
        return -1

    assert 0 <= admitted_until_rejected() < 2000
    assert instance.last_seen_state == "open"


def test_success_waits_for_reply_when_pipelining_is_off(
    make_breaker: BreakerFactory, clock: FakeClock
) -> None:
    instance = make_breaker(replace(CACHED, pipeline_successes=False))
    succeed(instance)
    fail(make_breaker(), 3)

    succeed(instance)  # its reply, read before returning, reports open

    assert instance.last_seen_state == "open"
    with pytest.raises(BreakerOpenError):
        instance.acquire()


def test_pipelined_success_returns_before_its_reply(redis_url: str) -> None:
    from resilience.kvstore import RedisStore

    handled: list[object] = []

    class Watched(RedisStore):
        def send_script(self, script, keys, args, on_reply):  # type: ignore[no-untyped-def]
            def watched(reply: object, error: Exception | None) -> None:
                handled.append(reply)
                on_reply(reply, error)

            super().send_script(script, keys, args, watched)

    store = Watched.from_url(redis_url, prefix=f"pipelined-{time.time_ns()}:")
    breaker = CircuitBreaker("svc", CACHED, store=store)
    succeed(breaker)  # learns the state
    breaker.snapshot()  # reads every reply still unread
    handled_before = len(handled)

    succeed(breaker)
    returned_before_reply = len(handled) == handled_before

    breaker.snapshot()
    store.delete("breaker:svc")
    store.close()
    assert handled_before == 1
    assert returned_before_reply
    assert len(handled) == 2


def test_pipeline_reconnects_after_idle_connection_closed(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    import redis

    from resilience.kvstore import RedisStore

    name = f"pipeline-{time.time_ns()}"
    store = RedisStore(
        redis.Redis.from_url(redis_url, client_name=name, protocol=2),
        prefix=f"{name}:",
    )
    breaker = CircuitBreaker("svc", CACHED, store=store)
    succeed(breaker, 2)
    breaker.snapshot()  # every reply read: the pipeline connection is idle
    admin = redis.Redis.from_url(redis_url)
    for client in admin.client_list():
        if client["name"] == name:
            admin.client_kill_filter(_id=client["id"])
    time.sleep(0.1)  # an idle spell: the close has reached this side
    caplog.set_level(logging.WARNING, logger="resilience")

    # WHEN a success is reported on the connection the server closed
    succeed(breaker)

    snapshot_calls = window_calls(store, redis_url)
    store.delete("breaker:svc")
    store.close()
    admin.close()
    assert snapshot_calls == 3
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_open_until_is_cut_to_an_hour(
    make_breaker: BreakerFactory, clock: FakeClock
) -> None:
    from resilience.breaker.core import MAX_OPEN_UNTIL_S

    breaker = make_breaker()

    snapshot = breaker.open_until(clock() + 1e12)

    assert snapshot.state is BreakerState.OPEN
    assert snapshot.opened_until is not None
    assert snapshot.opened_until.timestamp() == clock() + MAX_OPEN_UNTIL_S
    with pytest.raises(ValueError, match="finite"):
        breaker.open_until(float("inf"))
    with pytest.raises(ValueError, match="finite"):
        breaker.open_until(float("nan"))
