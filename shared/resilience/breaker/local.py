"""In-memory breaker state: the same rules as the Lua scripts, for one instance.

A breaker uses it while its store is unreachable and the policy is
``fail_open``, so a failing service is still cut off by this instance alone.
Its replies have the shape of the scripts' replies (:class:`Reply`).
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from typing import Any

from resilience.breaker.config import BreakerConfig

__all__ = ["LocalState", "Reply"]


@dataclass(frozen=True)
class Reply:
    """Result of one breaker script. ``previous`` is set when it made a transition."""

    verdict: str
    state: str
    generation: int
    fails: int
    opened_until_ms: int
    previous: str
    retry_ms: int

    @classmethod
    def from_script(cls, raw: Any) -> Reply:
        """Parse "verdict state generation fails opened_until previous retry"."""
        text = raw.decode() if isinstance(raw, bytes) else str(raw)
        verdict, state, generation, fails, opened_until, previous, retry = text.split()
        return cls(
            verdict,
            state,
            int(generation),
            int(fails),
            int(opened_until),
            "" if previous == "-" else previous,
            int(retry),
        )


@dataclass
class LocalState:
    """One breaker's state in this process, guarded by a lock."""

    state: str = "closed"
    generation: int = 0
    fails: int = 0
    opened_until_ms: int = 0
    window: dict[int, list[int]] = field(default_factory=dict)
    probes: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def _reply(self, verdict: str, previous: str = "", retry_ms: int = 0) -> Reply:
        return Reply(
            verdict,
            self.state,
            self.generation,
            self.fails,
            self.opened_until_ms,
            previous,
            max(0, int(retry_ms)),
        )

    def _transition(self, to: str, fails: int, opened_until_ms: int) -> str:
        previous = self.state
        self.state = to
        self.generation += 1
        self.fails = fails
        self.opened_until_ms = opened_until_ms
        self.window.clear()
        self.probes.clear()
        return previous

    def acquire(self, now_ms: int, config: BreakerConfig, probe_id: str) -> Reply:
        with self.lock:
            previous = ""
            if self.state == "open":
                if now_ms < self.opened_until_ms:
                    return self._reply("reject", retry_ms=self.opened_until_ms - now_ms)
                previous = self._transition("half_open", self.fails, 0)
            if self.state == "half_open":
                self.probes = {k: v for k, v in self.probes.items() if v > now_ms}
                if len(self.probes) < config.half_open_max_calls:
                    self.probes[probe_id] = now_ms + round(config.probe_lease * 1000)
                    return self._reply("probe", previous)
                earliest = min(self.probes.values())
                return self._reply("reject", previous, earliest - now_ms)
            return self._reply("allow")

    def report(
        self,
        now_ms: int,
        config: BreakerConfig,
        *,
        ok: bool,
        generation: int,
        probe_id: str,
    ) -> Reply:
        reset_ms = round(config.reset_timeout * 1000)
        with self.lock:
            self.probes.pop(probe_id, None)
            if generation != self.generation:
                return self._reply("stale")

            if self.state == "half_open":
                if not probe_id:
                    return self._reply("ignored")
                if ok:
                    return self._reply("closed", self._transition("closed", 0, 0))
                previous = self._transition("open", self.fails + 1, now_ms + reset_ms)
                return self._reply("opened", previous, reset_ms)
            if self.state != "closed":
                return self._reply("ignored")

            bucket_ms = max(1, math.floor(config.window * 1000 / config.window_buckets))
            bucket = now_ms // bucket_ms
            oldest = bucket - config.window_buckets + 1
            self.window = {b: c for b, c in self.window.items() if b >= oldest}
            counts = self.window.setdefault(bucket, [0, 0])
            counts[0] += 1
            if ok:
                self.fails = 0
                return self._reply("ok")

            counts[1] += 1
            self.fails += 1
            trip = config.failure_threshold > 0 and (
                self.fails >= config.failure_threshold
            )
            if not trip and config.failure_rate_threshold > 0:
                calls = sum(c[0] for c in self.window.values())
                failed = sum(c[1] for c in self.window.values())
                trip = (
                    calls >= config.minimum_calls
                    and failed >= config.failure_rate_threshold * calls
                )
            if trip:
                previous = self._transition("open", self.fails, now_ms + reset_ms)
                return self._reply("opened", previous, reset_ms)
            return self._reply("ok")

    def open_until(self, now_ms: int, target_ms: int) -> Reply:
        with self.lock:
            if self.state == "open":
                if target_ms > self.opened_until_ms:
                    self.opened_until_ms = target_ms
                    return self._reply("extended", retry_ms=target_ms - now_ms)
                return self._reply("unchanged", retry_ms=self.opened_until_ms - now_ms)
            if target_ms <= now_ms:
                return self._reply("unchanged")
            previous = self._transition("open", self.fails, target_ms)
            return self._reply("opened", previous, target_ms - now_ms)

    def reset(self) -> Reply:
        with self.lock:
            return self._reply("reset", self._transition("closed", 0, 0))
