"""Concurrent callers on separate store clients, and the PostgreSQL records."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable

import httpx
import pytest

from resilience.breaker import BreakerConfig, BreakerState, CircuitBreaker
from resilience.breaker.listeners import PostgresRecorder, transition_dedupe_key
from resilience.db import Database
from resilience.errors import BreakerOpenError
from resilience.kvstore import KeyValueStore
from tests.breaker_fixtures import (
    Downstream,
    FakeClock,
    clock,
    downstream,
    make_store,
    store_kind,
    upstash_bridge,
)

__all__ = ["clock", "downstream", "make_store", "store_kind", "upstash_bridge"]


def audit_actions(database: Database, service: str) -> list[str]:
    with database.transaction() as connection:
        rows = connection.execute(
            "SELECT action FROM audit_log WHERE pattern = 'breaker' AND task_id = %s "
            "ORDER BY id",
            (service,),
        ).fetchall()
    return [row["action"] for row in rows]


def wait_for_rows(database: Database, service: str, count: int) -> list[str]:
    # Listeners finish on their own thread; give them a moment.
    deadline = time.monotonic() + 5
    actions = audit_actions(database, service)
    while len(actions) < count and time.monotonic() < deadline:
        time.sleep(0.05)
        actions = audit_actions(database, service)
    return actions


@pytest.mark.timeout(60)
def test_probe_herd_admits_one(
    make_store: Callable[..., KeyValueStore],
    clock: FakeClock,
    database: Database,
    downstream: Downstream,
) -> None:
    """20 callers at cooldown end: one probe reaches the failing service."""
    config = BreakerConfig(failure_threshold=5, reset_timeout=30)
    recorder = PostgresRecorder(database)
    opener = CircuitBreaker("payments", config, store=make_store(), clock=clock)
    for _ in range(5):
        opener.acquire().failure()
    clock.advance(31)  # GIVEN the cooldown ended 1 s ago
    downstream.status = 500
    callers = [
        CircuitBreaker(
            "payments", config, store=make_store(), clock=clock, listeners=[recorder]
        )
        for _ in range(20)
    ]
    barrier = threading.Barrier(len(callers))
    rejected: list[BreakerOpenError] = []
    lock = threading.Lock()

    def call(breaker: CircuitBreaker) -> None:
        barrier.wait()
        try:
            permit = breaker.acquire()
        except BreakerOpenError as exc:
            with lock:
                rejected.append(exc)
            return
        response = httpx.get(f"{downstream.url}/charge", timeout=5)
        permit.record_status(response.status_code)

    threads = [threading.Thread(target=call, args=(b,)) for b in callers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(downstream.requests) == 1
    assert len(rejected) == 19
    actions = wait_for_rows(database, "payments", 2)
    assert actions.count("breaker.open_to_half_open") == 1
    assert actions.count("breaker.half_open_to_open") == 1
    assert len(actions) == 2
    with database.transaction() as connection:
        row = connection.execute(
            "SELECT state, generation FROM circuit_breaker_state "
            "WHERE service_name = 'payments'"
        ).fetchone()
    assert row == {"state": "open", "generation": 3}


def run_interleaved(
    make_store: Callable[..., KeyValueStore],
    clock: FakeClock,
    *,
    fails: Callable[[int], bool],
    total: int = 1000,
    ordered: bool = True,
) -> tuple[int | None, CircuitBreaker]:
    """Make ``total`` calls from 4 instances; return the calls made before opening.

    Instances acquire permits concurrently. With ``ordered``, each call
    reports its outcome only after the call before it reported, so the store
    receives the outcomes in call order. Without it, the outcomes arrive in
    the order the threads finish.
    """
    config = BreakerConfig(
        failure_threshold=5,
        failure_rate_threshold=0.5,
        minimum_calls=20,
        window=60,
    )
    instances = [
        CircuitBreaker("llm", config, store=make_store(), clock=clock) for _ in range(4)
    ]
    counter = itertools.count()
    lock = threading.Lock()
    turn = threading.Condition()
    next_report = 0
    admitted = 0
    opened_after: list[int] = []

    def wait_for_turn(index: int) -> None:
        if ordered:
            with turn:
                turn.wait_for(lambda: next_report == index)

    def end_turn() -> None:
        nonlocal next_report
        with turn:
            next_report += 1
            turn.notify_all()

    def worker(breaker: CircuitBreaker) -> None:
        nonlocal admitted
        while True:
            with lock:
                index = next(counter)
                clock.advance(0.05)  # 1,000 calls take 50 s
            if index >= total:
                return
            try:
                permit = breaker.acquire()
            except BreakerOpenError:
                with lock:
                    opened_after.append(admitted)
                wait_for_turn(index)
                end_turn()
                return
            with lock:
                admitted += 1
            wait_for_turn(index)
            if fails(index):
                permit.failure()
            else:
                permit.success()
            end_turn()

    threads = [threading.Thread(target=worker, args=(b,)) for b in instances]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return (min(opened_after) if opened_after else None), instances[0]


@pytest.mark.timeout(60)
def test_alternating_failures_open_within_40(
    make_store: Callable[..., KeyValueStore], clock: FakeClock
) -> None:
    """50 % failures across 4 instances open the breaker within 40 calls.

    The outcomes reach the store alternating, as the calls were made. A 50 %
    rate is exactly the threshold, so with outcomes in thread-finishing order
    the opening depends on scheduling: one success reported ahead of a failure
    keeps every failure report just under 50 % until the order evens out.
    """
    calls_before_open, breaker = run_interleaved(
        make_store, clock, fails=lambda index: index % 2 == 1
    )

    assert calls_before_open is not None
    assert calls_before_open <= 40
    assert breaker.snapshot().state is BreakerState.OPEN


@pytest.mark.timeout(60)
def test_unordered_two_thirds_failures_open(
    make_store: Callable[..., KeyValueStore], clock: FakeClock
) -> None:
    """Outcomes in thread-finishing order still open a clearly failing breaker."""
    calls_before_open, breaker = run_interleaved(
        make_store, clock, fails=lambda index: index % 3 != 0, ordered=False
    )

    assert calls_before_open is not None
    assert calls_before_open <= 40
    assert breaker.snapshot().state is BreakerState.OPEN


@pytest.mark.timeout(60)
def test_ten_percent_failures_stay_closed(
    make_store: Callable[..., KeyValueStore], clock: FakeClock
) -> None:
    """10 % failures over 1,000 calls leave the breaker closed."""
    calls_before_open, breaker = run_interleaved(
        make_store, clock, fails=lambda index: index % 10 == 9, ordered=False
    )

    snapshot = breaker.snapshot()
    assert calls_before_open is None
    assert snapshot.state is BreakerState.CLOSED
    assert snapshot.generation == 0


def test_transition_rows_deduplicated(
    make_store: Callable[..., KeyValueStore], clock: FakeClock, database: Database
) -> None:
    recorder = PostgresRecorder(database)
    seen: list[object] = []
    breaker = CircuitBreaker(
        "dup",
        BreakerConfig(failure_threshold=1),
        store=make_store(),
        clock=clock,
        listeners=[recorder, seen.append],
    )
    breaker.acquire().failure()
    transition = seen[0]

    recorder(transition)  # type: ignore[arg-type]  # a retried write

    with database.transaction() as connection:
        rows = connection.execute(
            "SELECT dedupe_key, metadata FROM audit_log WHERE task_id = 'dup'"
        ).fetchall()
    assert len(rows) == 1
    assert rows[0]["dedupe_key"] == transition_dedupe_key("dup", 1)
    assert rows[0]["metadata"]["reason"] == "failures"


def test_reset_row_names_actor(
    make_store: Callable[..., KeyValueStore], clock: FakeClock, database: Database
) -> None:
    breaker = CircuitBreaker(
        "ops",
        BreakerConfig(failure_threshold=1),
        store=make_store(),
        clock=clock,
        listeners=[PostgresRecorder(database)],
    )
    breaker.acquire().failure()

    breaker.reset(actor="alice")

    with database.transaction() as connection:
        row = connection.execute(
            "SELECT action, actor, metadata FROM audit_log "
            "WHERE task_id = 'ops' ORDER BY id DESC LIMIT 1"
        ).fetchone()
        state = connection.execute(
            "SELECT state, generation, consecutive_fails FROM circuit_breaker_state "
            "WHERE service_name = 'ops'"
        ).fetchone()
    assert row is not None
    assert row["action"] == "breaker.open_to_closed"
    assert row["actor"] == "alice"
    assert row["metadata"]["reason"] == "manual_reset"
    assert state == {"state": "closed", "generation": 2, "consecutive_fails": 0}
