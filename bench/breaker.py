"""Benchmark the circuit breaker against pybreaker and a bare Redis PING.

Measures on one Redis, in one run:

- Redis round trips per guarded call in each state, counted by a redis-py
  connection class that counts every request written to the socket (a
  pipeline is one request).
- Median and p90 time per guarded no-op call in the closed state, for this
  breaker, for pybreaker 1.4 with ``CircuitRedisStorage``, and for a bare
  ``PING``. Ratios are taken against the PING of the same run. By default the
  breaker sends a success's report without waiting for the reply (read by a
  later call); the same call with ``pipeline_successes=False``, which waits,
  is timed too (keys ``awaited_*``). ``closed_successes_counted`` is the share
  of closed-state successes found in Redis's window counts afterwards.
- How many of 20 concurrent callers (separate clients) reach a failing
  service when the cooldown ends (``half_open_max_calls`` = 1).
- The same closed-state call with ``success_flush_interval=0.1``, where
  successes are sent in batches (keys ``batched_*``).

Usage::

    python bench/breaker.py [--redis-url redis://127.0.0.1:6379/0] [--calls 2000]
    python bench/breaker.py --json

Keys are written under a fresh ``bench:<random>:`` prefix and deleted after.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "shared"))

from resilience.breaker import BreakerConfig, CircuitBreaker
from resilience.errors import BreakerOpenError
from resilience.kvstore import RedisStore


class CountingConnection(redis.Connection):
    """A connection that counts requests sent (one per round trip)."""

    requests = 0
    lock = threading.Lock()

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        with CountingConnection.lock:
            CountingConnection.requests += 1
        super().send_packed_command(command, check_health)


def counting_client(url: str) -> redis.Redis:
    pool = redis.ConnectionPool.from_url(
        url, connection_class=CountingConnection, protocol=2
    )
    return redis.Redis(connection_pool=pool)


def count_round_trips(action: Callable[[], object], repeat: int) -> float:
    before = CountingConnection.requests
    for _ in range(repeat):
        action()
    return (CountingConnection.requests - before) / repeat


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[int(len(ordered) * 0.9) - 1]


def time_interleaved(
    subjects: dict[str, Callable[[], object]], calls: int, rounds: int = 20
) -> dict[str, tuple[float, float]]:
    """Time each subject in alternating rounds, so load spikes hit all alike."""
    samples: dict[str, list[float]] = {name: [] for name in subjects}
    per_round = max(1, calls // rounds)
    for action in subjects.values():
        for _ in range(min(200, calls)):
            action()
    for _ in range(rounds):
        for name, action in subjects.items():
            for _ in range(per_round):
                started = time.perf_counter()
                action()
                samples[name].append(time.perf_counter() - started)
    return {name: percentiles(values) for name, values in samples.items()}


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def counted_calls(client: redis.Redis, key: str) -> int:
    """Sum the call counts of every window bucket of a breaker's hash."""
    fields = client.hgetall(key)
    return sum(int(value) for name, value in fields.items() if name.startswith(b"c"))


def setup_ours(
    url: str, prefix: str, timed_config: BreakerConfig | None = None
) -> tuple[Callable[[], None], dict[str, float]]:
    """Return a guarded no-op (with ``timed_config``) and round trips per state."""
    clock = Clock()
    store = RedisStore(counting_client(url), prefix=prefix)
    config = BreakerConfig(failure_threshold=1, reset_timeout=30)
    opener = CircuitBreaker("bench-states", config, store=store, clock=clock)

    def guarded(breaker: CircuitBreaker) -> Callable[[], None]:
        def call() -> None:
            with breaker:
                pass

        return call

    def rejected() -> None:
        with contextlib.suppress(BreakerOpenError):
            opener.acquire()

    guarded(opener)()  # connect, load the scripts, learn the state
    trips = {"closed": count_round_trips(guarded(opener), 1000)}
    opener.snapshot()  # waits for every reply still unread
    counted = counted_calls(store.client, f"{prefix}breaker:bench-states")
    trips["closed_successes_counted"] = counted / 1001
    opener.acquire().failure()
    trips["open"] = count_round_trips(rejected, 1000)
    clock.now += 31
    trips["half_open_probe"] = count_round_trips(guarded(opener), 1)
    store.delete("breaker:bench-states")

    timed = CircuitBreaker("bench", timed_config or BreakerConfig(), store=store)
    return guarded(timed), trips


def setup_batched(url: str, prefix: str) -> tuple[Callable[[], None], float]:
    """Return a guarded no-op whose successes are sent every 0.1 s at most."""
    store = RedisStore(counting_client(url), prefix=prefix)
    config = BreakerConfig(success_flush_interval=0.1)
    breaker = CircuitBreaker("bench-batched", config, store=store)

    def call() -> None:
        with breaker:
            pass

    call()
    return call, count_round_trips(call, 1000)


def setup_pybreaker(url: str, prefix: str) -> tuple[Callable[[], None], float]:
    """Return pybreaker's guarded no-op and its round trips per closed success."""
    import pybreaker

    client = counting_client(url)
    storage = pybreaker.CircuitRedisStorage(
        pybreaker.STATE_CLOSED, client, namespace=f"{prefix}pybreaker"
    )
    breaker = pybreaker.CircuitBreaker(
        fail_max=5, reset_timeout=30, state_storage=storage
    )

    def guarded_noop() -> None:
        breaker.call(lambda: None)

    guarded_noop()
    return guarded_noop, count_round_trips(guarded_noop, 1000)


def probe_herd(url: str, prefix: str, callers: int = 20) -> int:
    """Return how many of ``callers`` concurrent callers get a probe permit."""
    clock = Clock()
    config = BreakerConfig(failure_threshold=1, reset_timeout=30)
    stores = [
        RedisStore.from_url(url, prefix=prefix, timeout_ms=2000) for _ in range(callers)
    ]
    CircuitBreaker("herd", config, store=stores[0], clock=clock).acquire().failure()
    clock.now += 31
    barrier = threading.Barrier(callers)
    admitted = 0
    lock = threading.Lock()

    def call(store: RedisStore) -> None:
        nonlocal admitted
        breaker = CircuitBreaker("herd", config, store=store, clock=clock)
        barrier.wait()
        try:
            permit = breaker.acquire()
        except BreakerOpenError:
            return
        with lock:
            admitted += 1
        permit.failure()  # the service is still failing

    threads = [threading.Thread(target=call, args=(store,)) for store in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stores[0].delete("breaker:herd")
    for store in stores:
        store.close()
    return admitted


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument(
        "--calls", type=int, default=2000, help="timed calls per subject (default 2000)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)

    prefix = f"bench:{uuid.uuid4().hex[:8]}:"
    ping_client = counting_client(args.redis_url)
    ping_client.ping()
    ping_trips = count_round_trips(ping_client.ping, 1000)
    ours, ours_trips = setup_ours(args.redis_url, prefix)
    awaited, awaited_trips = setup_ours(
        args.redis_url, prefix, BreakerConfig(pipeline_successes=False)
    )
    theirs, theirs_trips = setup_pybreaker(args.redis_url, prefix)
    batched, batched_trips = setup_batched(args.redis_url, prefix)
    timings = time_interleaved(
        {
            "ping": ping_client.ping,
            "ours": ours,
            "awaited": awaited,
            "pybreaker": theirs,
            "batched": batched,
        },
        args.calls,
    )
    probes = probe_herd(args.redis_url, prefix)
    cleanup = counting_client(args.redis_url)
    for key in cleanup.scan_iter(f"{prefix}*"):
        cleanup.delete(key)

    ping_median, ping_p90 = timings["ping"]
    median, p90 = timings["ours"]
    theirs_median, theirs_p90 = timings["pybreaker"]
    batched_median, batched_p90 = timings["batched"]
    awaited_median, awaited_p90 = timings["awaited"]
    result = {
        "round_trips_per_closed_success": ours_trips["closed"],
        "round_trips_per_open_rejection": ours_trips["open"],
        "round_trips_per_half_open_probe": ours_trips["half_open_probe"],
        "median_over_ping": median / ping_median,
        "p90_over_ping": p90 / ping_p90,
        "closed_successes_counted": ours_trips["closed_successes_counted"],
        "awaited_round_trips_per_closed_success": awaited_trips["closed"],
        "awaited_median_over_ping": awaited_median / ping_median,
        "awaited_p90_over_ping": awaited_p90 / ping_p90,
        "pybreaker_round_trips_per_closed_success": theirs_trips,
        "pybreaker_median_over_ping": theirs_median / ping_median,
        "pybreaker_p90_over_ping": theirs_p90 / ping_p90,
        "probes_reaching_failing_service": probes,
        "batched_round_trips_per_closed_success": batched_trips,
        "batched_median_over_ping": batched_median / ping_median,
        "ping_median_us": ping_median * 1e6,
        "ping_p90_us": ping_p90 * 1e6,
        "median_us": median * 1e6,
        "p90_us": p90 * 1e6,
        "pybreaker_median_us": theirs_median * 1e6,
        "pybreaker_p90_us": theirs_p90 * 1e6,
        "calls": args.calls,
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return 0

    print(f"Redis {args.redis_url}, {args.calls} timed calls per subject")
    print(
        f"{'subject':<24}{'round trips':>12}{'median us':>11}{'p90 us':>9}{'x PING':>8}"
    )
    rows = [
        ("PING", ping_trips, ping_median, ping_p90),
        ("ours, closed success", ours_trips["closed"], median, p90),
        ("ours, reply awaited", awaited_trips["closed"], awaited_median, awaited_p90),
        ("pybreaker 1.4, closed", theirs_trips, theirs_median, theirs_p90),
        ("ours, flush every 0.1 s", batched_trips, batched_median, batched_p90),
    ]
    for name, trips, row_median, row_p90 in rows:
        ratio = row_median / ping_median
        print(
            f"{name:<24}{trips:>12.3f}{row_median * 1e6:>11.1f}"
            f"{row_p90 * 1e6:>9.1f}{ratio:>8.2f}"
        )
    counted = ours_trips["closed_successes_counted"]
    print(f"closed-state successes counted in Redis: {counted:.1%}")
    print(f"ours, open rejection: {ours_trips['open']:.3f} round trips per call")
    print(f"ours, half-open probe: {ours_trips['half_open_probe']:.0f} round trips")
    print(f"probes reaching a failing service out of 20 callers: {probes}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
