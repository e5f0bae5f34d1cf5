"""Hypothesis drives breakers on Redis and compares them with a reference model.

Hypothesis picks random outcomes, clock steps, instances, ``open_until`` and
resets. After every step the stored state must equal the model's, and every
acquire must get the verdict the model predicts.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    rule,
    run_state_machine_as_test,
)

from resilience.breaker import BreakerConfig, CircuitBreaker, Permit
from resilience.errors import BreakerOpenError
from resilience.kvstore import RedisStore

CONFIG = BreakerConfig(
    failure_threshold=3,
    failure_rate_threshold=0.5,
    minimum_calls=4,
    window=10,
    window_buckets=5,
    reset_timeout=30,
    half_open_max_calls=2,
    probe_lease=10,
    state_cache_ttl=0,
)
INSTANCES = 3


@dataclass
class Model:
    """The breaker rules, written plainly, with times in ms."""

    state: str = "closed"
    generation: int = 0
    fails: int = 0
    opened_until: int = 0
    calls: list[tuple[int, bool]] = field(default_factory=list)  # (bucket, ok)
    probes: dict[str, int] = field(default_factory=dict)

    def move(self, state: str, fails: int, opened_until: int) -> None:
        self.state = state
        self.generation += 1
        self.fails = fails
        self.opened_until = opened_until
        self.calls = []
        self.probes = {}

    def acquire(self, now: int, probe_id: str) -> str:
        if self.state == "open":
            if now < self.opened_until:
                return "reject"
            self.move("half_open", self.fails, 0)
        if self.state == "half_open":
            self.probes = {p: end for p, end in self.probes.items() if end > now}
            if len(self.probes) < CONFIG.half_open_max_calls:
                self.probes[probe_id] = now + 10_000
                return "probe"
            return "reject"
        return "allow"

    def report(self, now: int, generation: int, probe_id: str, ok: bool) -> None:
        self.probes.pop(probe_id, None)
        if generation != self.generation:
            return
        if self.state == "half_open":
            if probe_id:
                if ok:
                    self.move("closed", 0, 0)
                else:
                    self.move("open", self.fails + 1, now + 30_000)
            return
        if self.state != "closed":
            return

        bucket = now // 2_000
        self.calls.append((bucket, ok))
        if ok:
            self.fails = 0
            return
        self.fails += 1
        recent = [good for b, good in self.calls if b > bucket - 5]
        failed = recent.count(False)
        if self.fails >= 3 or (len(recent) >= 4 and failed >= 0.5 * len(recent)):
            self.move("open", self.fails, now + 30_000)

    def open_until(self, now: int, target: int) -> None:
        if self.state == "open":
            self.opened_until = max(self.opened_until, target)
        elif target > now:
            self.move("open", self.fails, target)

    def reset(self) -> None:
        self.move("closed", 0, 0)


class BreakerMachine(RuleBasedStateMachine):
    redis_url = ""

    def __init__(self) -> None:
        super().__init__()
        url = self.redis_url
        prefix = f"test:stateful:{uuid.uuid4().hex[:12]}:"
        self.now_ms = 1_700_000_000_000
        self.stores = [
            RedisStore.from_url(url, prefix=prefix, timeout_ms=2000)
            for _ in range(INSTANCES)
        ]
        self.breakers = [
            CircuitBreaker("model", CONFIG, store=store, clock=self.clock)
            for store in self.stores
        ]
        self.model = Model()
        self.pending: list[Permit] = []

    def clock(self) -> float:
        return self.now_ms / 1000

    def teardown(self) -> None:
        self.stores[0].delete("breaker:model")
        for store in self.stores:
            store.close()

    def acquire(self, instance: int) -> Permit | None:
        breaker = self.breakers[instance]
        try:
            permit = breaker.acquire()
        except BreakerOpenError:
            permit = None
        probe_id = permit.probe_id if permit is not None else ""
        expected = self.model.acquire(self.now_ms, probe_id or uuid.uuid4().hex)
        if permit is None:
            assert expected == "reject"
        elif permit.is_probe:
            assert expected == "probe"
        else:
            assert expected == "allow"
        return permit

    def report(self, permit: Permit, ok: bool) -> None:
        if ok:
            permit.success()
            # A pipelined success reaches Redis just after the call returns,
            # so another client may act first. The model is sequential: the
            # step ends once the success's reply has been read.
            store = self.stores[self.breakers.index(permit.breaker)]
            store.collect_replies(wait=True)
        else:
            permit.failure()
        self.model.report(self.now_ms, permit.generation, permit.probe_id, ok)

    # One rule with weighted actions: whole calls are common, operator
    # commands rare, so runs reach the half-open state and the rate rule.
    @rule(
        action=st.sampled_from(
            ["call"] * 8
            + ["start"] * 3
            + ["finish"] * 2
            + ["advance"] * 4
            + ["open_until", "reset"]
        ),
        instance=st.integers(0, INSTANCES - 1),
        ok=st.booleans(),
        seconds=st.sampled_from([0.5, 1.9, 2.0, 5.0, 9.9, 10.0, 29.9, 30.0, 31.0]),
        pick=st.integers(0, 10),
    )
    def act(
        self, action: str, instance: int, ok: bool, seconds: float, pick: int
    ) -> None:
        if action == "call":
            permit = self.acquire(instance)
            if permit is not None:
                self.report(permit, ok)
        elif action == "start":
            permit = self.acquire(instance)
            if permit is not None:
                self.pending.append(permit)
        elif action == "finish" and self.pending:
            self.report(self.pending.pop(pick % len(self.pending)), ok)
        elif action == "advance":
            self.now_ms += round(seconds * 1000)
        elif action == "open_until":
            target = self.now_ms + round((seconds * 3 - 5) * 1000)
            self.breakers[instance].open_until(target / 1000)
            self.model.open_until(self.now_ms, target)
        elif action == "reset":
            self.breakers[instance].reset(actor="hypothesis")
            self.model.reset()

    @invariant()
    def stored_state_matches_model(self) -> None:
        snapshot = self.breakers[0].snapshot()
        assert snapshot.state.value == self.model.state
        assert snapshot.generation == self.model.generation
        assert snapshot.failure_count == self.model.fails
        opened_until_ms = (
            round(snapshot.opened_until.timestamp() * 1000)
            if snapshot.opened_until
            else 0
        )
        assert opened_until_ms == self.model.opened_until


def test_breaker_matches_model(redis_url: str) -> None:
    machine = type("BoundMachine", (BreakerMachine,), {"redis_url": redis_url})
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=80,
            stateful_step_count=60,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
