"""The store goes away: calls go on under the policy, and state resumes after."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import replace

import pytest

from local.embedded import EmbeddedRedis, free_port
from resilience.breaker import (
    BreakerConfig,
    BreakerState,
    CircuitBreaker,
    StoreFailurePolicy,
    clear_breakers,
    get_breaker,
)
from resilience.errors import BreakerOpenError, RedisUnavailableError
from resilience.kvstore import RedisStore, Script, UpstashStore, reset_store_cache
from tests.upstash_bridge import UpstashBridge

TIMEOUT_MS = 200
# A decision waits for at most one store timeout; the rest is slack for a
# loaded test machine, not a performance target.
DECISION_BOUND_S = 1.0

CONFIG = BreakerConfig(
    failure_threshold=3, failure_rate_threshold=0, store_retry_interval=0
)


def outage_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage() == "breaker.store_unavailable"]


def timed_call(breaker: CircuitBreaker, ok: bool = True) -> float:
    started = time.monotonic()
    permit = breaker.acquire()
    if ok:
        permit.success()
    else:
        permit.failure()
    return time.monotonic() - started


@pytest.fixture
def redis_server() -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis().start()
    try:
        yield server
    finally:
        server.close()


@pytest.mark.timeout(60)
def test_redis_stopped_mid_run(
    redis_server: EmbeddedRedis,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    store = RedisStore.from_url(redis_server.url, timeout_ms=TIMEOUT_MS)
    breaker = CircuitBreaker("redis-down", CONFIG, store=store)
    timed_call(breaker)
    caplog.set_level(logging.WARNING, logger="resilience.breaker")

    redis_server.stop()  # WHEN Redis dies mid-run
    durations = [timed_call(breaker) for _ in range(5)]

    assert max(durations) < DECISION_BOUND_S
    assert len(outage_warnings(caplog)) == 1
    assert "BreakerStoreUnavailable" in capsys.readouterr().out

    # The in-memory breaker still cuts off a failing service.
    for _ in range(3):
        timed_call(breaker, ok=False)
    with pytest.raises(BreakerOpenError):
        breaker.acquire()

    redis_server.start()  # THEN Redis returns and the shared state is used again
    other = CircuitBreaker("redis-down", CONFIG, store=store)
    for _ in range(3):
        timed_call(other, ok=False)
    snapshot = breaker.snapshot()
    assert snapshot.state is BreakerState.OPEN
    assert snapshot.failure_count == 3
    assert len(outage_warnings(caplog)) == 1


COUNT = Script("return redis.call('INCR', KEYS[1])", name="count")

# Busy for longer than the store's timeout, so its reply comes too late.
SLOW = Script(
    "local start = redis.call('TIME') "
    "repeat local now = redis.call('TIME') "
    "until (now[1] - start[1]) * 1000000 + now[2] - start[2] > 400000 "
    "return 'late'",
    name="slow",
)


def slow_store(server: EmbeddedRedis) -> RedisStore:
    """Return a store on ``server`` where SLOW is loaded, so EVALSHA runs it at once."""
    import redis

    raw = redis.Redis.from_url(server.url)
    raw.script_load(SLOW.source)
    raw.close()
    return RedisStore.from_url(server.url, timeout_ms=TIMEOUT_MS)


@pytest.mark.timeout(60)
def test_reply_too_late_is_reported_lost(redis_server: EmbeddedRedis) -> None:
    store = slow_store(redis_server)
    errors: list[Exception | None] = []
    store.send_script(SLOW, [], [], lambda _reply, error: errors.append(error))

    # WHEN a command must wait for the replies before its own (it may time
    # out too while the script still blocks Redis)
    with contextlib.suppress(RedisUnavailableError):
        store.get("k")

    assert len(errors) == 1
    assert isinstance(errors[0], RedisUnavailableError)
    assert "lost" in str(errors[0])
    time.sleep(0.5)  # THEN the store responds again on a new connection
    assert store.ping() is True
    store.close()


@pytest.mark.timeout(60)
def test_lost_success_reply_turns_into_policy(
    redis_server: EmbeddedRedis,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    store = slow_store(redis_server)
    config = replace(CONFIG, state_cache_ttl=60, store_retry_interval=60)
    breaker = CircuitBreaker("reply-lost", config, store=store)
    timed_call(breaker)
    capsys.readouterr()
    caplog.set_level(logging.WARNING, logger="resilience")
    store.send_script(SLOW, [], [], lambda _reply, _error: None)

    # GIVEN successes reported behind a reply that will not come in time
    for _ in range(3):
        breaker.acquire().success()
    # WHEN failures, which wait for every earlier reply, are reported
    durations = [timed_call(breaker, ok=False) for _ in range(2)]

    assert max(durations) < DECISION_BOUND_S
    assert len(outage_warnings(caplog)) == 1
    # One metric for the lost replies and one for the failure's own attempt.
    assert capsys.readouterr().out.count('"BreakerStoreUnavailable": 1') == 2
    lost = [r for r in caplog.records if r.getMessage() == "kvstore.replies_lost"]
    assert len(lost) == 1
    # The slow script and three successes, and the first call's success
    # when its reply had not been read yet.
    assert lost[0].unread in (4, 5)  # type: ignore[attr-defined]
    assert lost[0].keys == [store.prefix + "breaker:reply-lost"]  # type: ignore[attr-defined]
    assert lost[0].scripts == ["breaker_report", "slow"]  # type: ignore[attr-defined]
    assert breaker.last_seen_state == "closed"  # the in-memory breaker decides
    store.close()


@pytest.mark.timeout(60)
def test_stalled_redis_costs_one_timeout(redis_server: EmbeddedRedis) -> None:
    store = slow_store(redis_server)
    store.send_script(SLOW, [], [], lambda _reply, _error: None)

    # WHEN a command must wait for a reply that does not come in time, it
    # fails with that wait instead of sending itself and waiting again
    with pytest.raises(RedisUnavailableError, match="timed out on earlier commands"):
        store.get("k")
    time.sleep(0.5)
    store.close()


@pytest.mark.timeout(60)
def test_full_pipeline_on_stalled_redis_costs_one_timeout(
    redis_server: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    import resilience.kvstore as kvstore

    monkeypatch.setattr(kvstore, "MAX_UNREAD_REPLIES", 1)
    store = slow_store(redis_server)
    pool = store.client.connection_pool
    connections: list[object] = []
    lend = pool.get_connection
    monkeypatch.setattr(pool, "get_connection", lambda: connections.append(1) or lend())
    store.send_script(SLOW, [], [], lambda _reply, _error: None)

    # WHEN the next send must first wait for a reply that does not come
    with pytest.raises(RedisUnavailableError, match="Timeout"):
        store.send_script(COUNT, ["counter"], [], lambda _reply, _error: None)

    # THEN it fails with that wait, without a new connection's handshake
    assert len(connections) == 1
    time.sleep(0.5)
    store.close()


def test_close_reads_replies_on_their_way(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = RedisStore.from_url(redis_url, prefix=f"close-{time.time_ns()}:")
    replies: list[object] = []
    caplog.set_level(logging.WARNING, logger="resilience")
    for _ in range(3):
        store.send_script(COUNT, ["counter"], [], lambda r, _e: replies.append(r))

    store.close()

    assert replies == [1, 2, 3]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    cleanup = RedisStore.from_url(redis_url, prefix=store.prefix)
    cleanup.delete("counter")
    cleanup.close()


def test_fail_closed_rejects_while_store_away() -> None:
    store = RedisStore.from_url(
        f"redis://127.0.0.1:{free_port()}/0", timeout_ms=TIMEOUT_MS
    )
    config = BreakerConfig(store_failure_policy=StoreFailurePolicy.FAIL_CLOSED)
    breaker = CircuitBreaker("closed-policy", config, store=store)

    with pytest.raises(BreakerOpenError) as caught:
        breaker.acquire()

    assert caught.value.state == "store_unavailable"
    assert caught.value.retry_after == config.store_retry_interval


def test_policy_from_env_string() -> None:
    config = BreakerConfig.from_env(store_failure_policy="fail-closed")
    assert config.store_failure_policy is StoreFailurePolicy.FAIL_CLOSED


def test_construction_succeeds_without_store(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("REDIS_URL", "UPSTASH_REDIS_REST_URL", "UPSTASH_REDIS_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("REDIS_SECRET", raising=False)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    reset_store_cache()
    clear_breakers()

    breaker = get_breaker("unconfigured")
    breaker.acquire().success()

    with pytest.raises(RedisUnavailableError, match="unconfigured"):
        breaker.snapshot()
    clear_breakers()


def test_dead_redis_url_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    monkeypatch.delenv("DATABASE_URL", raising=False)
    reset_store_cache()
    clear_breakers()
    try:
        breaker = get_breaker("dead-url")
        duration = timed_call(breaker)
    finally:
        reset_store_cache()
        clear_breakers()
    assert duration < DECISION_BOUND_S


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", ["error", "html_error", "hang"])
def test_upstash_outage_then_resume(
    redis_url: str,
    redis_key_prefix: str,
    mode: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    bridge = UpstashBridge(redis_url).start()
    store = UpstashStore.from_settings(
        bridge.url, bridge.token, prefix=redis_key_prefix, timeout_ms=TIMEOUT_MS
    )
    breaker = CircuitBreaker("upstash-down", CONFIG, store=store)
    try:
        for _ in range(3):
            timed_call(breaker, ok=False)
        assert breaker.snapshot().state is BreakerState.OPEN
        caplog.set_level(logging.WARNING, logger="resilience.breaker")

        bridge.set_mode(mode)  # WHEN Upstash responds with 500 or not at all
        fresh = CircuitBreaker("upstash-down", CONFIG, store=store)
        durations = [timed_call(fresh) for _ in range(3)]

        bridge.set_mode("ok")  # THEN the stored state (open) applies again
        with pytest.raises(BreakerOpenError):
            fresh.acquire()
    finally:
        bridge.stop()

    assert max(durations) < DECISION_BOUND_S
    assert len(outage_warnings(caplog)) == 1


def test_postgres_down_does_not_fail_call(
    redis_url: str,
    redis_key_prefix: str,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from resilience.breaker.listeners import PostgresRecorder
    from resilience.db import Database, DatabaseConfig

    dead = Database(
        DatabaseConfig(
            url=f"postgresql://postgres@127.0.0.1:{free_port()}/postgres",
            connect_timeout_s=1,
        )
    )
    store = RedisStore.from_url(redis_url, prefix=redis_key_prefix)
    breaker = CircuitBreaker(
        "pg-down",
        BreakerConfig(failure_threshold=1),
        store=store,
        listeners=[PostgresRecorder(dead)],
    )

    started = time.monotonic()
    breaker.acquire().failure()
    elapsed = time.monotonic() - started

    assert elapsed < DECISION_BOUND_S + breaker.config.listener_timeout
    assert breaker.snapshot().state is BreakerState.OPEN
    assert any(r.getMessage() == "breaker.record_failed" for r in caplog.records)
    assert "BreakerRecordFailed" in capsys.readouterr().out


@pytest.mark.timeout(30)
def test_postgres_hanging_delays_call_at_most_listener_timeout(
    redis_url: str, redis_key_prefix: str
) -> None:
    import socket

    from resilience.breaker.listeners import PostgresRecorder
    from resilience.db import Database, DatabaseConfig

    # A socket that accepts connections into its backlog and never speaks.
    silent = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    port = silent.getsockname()[1]
    hanging = Database(
        DatabaseConfig(url=f"postgresql://postgres@127.0.0.1:{port}/postgres")
    )
    store = RedisStore.from_url(redis_url, prefix=redis_key_prefix)
    config = BreakerConfig(failure_threshold=1, listener_timeout=0.3)
    breaker = CircuitBreaker(
        "pg-hang", config, store=store, listeners=[PostgresRecorder(hanging)]
    )

    try:
        started = time.monotonic()
        breaker.acquire().failure()
        elapsed = time.monotonic() - started
    finally:
        silent.close()

    # The call waited for the hanging recorder, and only listener_timeout long.
    assert elapsed >= config.listener_timeout
    assert elapsed < DECISION_BOUND_S
    assert breaker.snapshot().state is BreakerState.OPEN
