"""Breaker settings: states, the store-failure policy and :class:`BreakerConfig`."""

from __future__ import annotations

import enum
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from resilience.errors import ConfigError, TransientError

__all__ = [
    "DEFAULT_FAILURE_STATUS_CODES",
    "BreakerConfig",
    "BreakerState",
    "StoreFailurePolicy",
]


class BreakerState(enum.Enum):
    """State of a circuit breaker."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class StoreFailurePolicy(enum.Enum):
    """Policy of a breaker while its store (Redis or Upstash) is unreachable.

    ``fail_open`` lets calls through, guarded by an in-memory breaker of this
    instance. ``fail_closed`` rejects every call until the store is back.
    """

    FAIL_OPEN = "fail_open"
    FAIL_CLOSED = "fail_closed"


DEFAULT_FAILURE_STATUS_CODES = frozenset({429, *range(500, 600)})


def _default_failure_exceptions() -> tuple[type[BaseException], ...]:
    import httpx

    return (TransientError, TimeoutError, ConnectionError, httpx.TransportError)


# Environment names read by BreakerConfig.from_env, by field.
ENV_NAMES = {
    "failure_threshold": "BREAKER_FAILURE_THRESHOLD",
    "reset_timeout": "BREAKER_RESET_TIMEOUT_S",
    "half_open_max_calls": "BREAKER_HALF_OPEN_MAX_CALLS",
    "failure_rate_threshold": "BREAKER_FAILURE_RATE_THRESHOLD",
    "window": "BREAKER_WINDOW_S",
    "minimum_calls": "BREAKER_MINIMUM_CALLS",
    "slow_call_duration": "BREAKER_SLOW_CALL_S",
    "probe_lease": "BREAKER_PROBE_LEASE_S",
    "state_cache_ttl": "BREAKER_STATE_CACHE_TTL_S",
    "store_failure_policy": "BREAKER_STORE_FAILURE_POLICY",
    "store_retry_interval": "BREAKER_STORE_RETRY_INTERVAL_S",
    "success_flush_interval": "BREAKER_SUCCESS_FLUSH_S",
    "pipeline_successes": "BREAKER_PIPELINE_SUCCESSES",
}

# camelCase keys accepted in the "breaker" object of BREAKER_SERVICES.
JSON_NAMES = {
    "failureThreshold": "failure_threshold",
    "resetTimeoutS": "reset_timeout",
    "halfOpenMaxCalls": "half_open_max_calls",
    "failureRateThreshold": "failure_rate_threshold",
    "windowS": "window",
    "windowBuckets": "window_buckets",
    "minimumCalls": "minimum_calls",
    "slowCallS": "slow_call_duration",
    "probeLeaseS": "probe_lease",
    "stateCacheTtlS": "state_cache_ttl",
    "storeFailurePolicy": "store_failure_policy",
    "storeRetryIntervalS": "store_retry_interval",
    "failureStatusCodes": "failure_status_codes",
    "successFlushS": "success_flush_interval",
    "pipelineSuccesses": "pipeline_successes",
}


@dataclass(frozen=True)
class BreakerConfig:
    """Rules of one breaker. Times are in seconds.

    Attributes:
        failure_threshold: consecutive counted failures that open the breaker
            (0 turns this rule off).
        reset_timeout: how long the breaker stays open before it admits probes.
        half_open_max_calls: probes admitted at once across all instances.
        failure_rate_threshold: share of failed calls in ``window`` (0-1) that
            opens the breaker once ``minimum_calls`` were seen (0 turns it off).
        window: length of the failure-rate window, kept as ``window_buckets``
            time buckets, so it slides in steps of ``window / window_buckets``.
        minimum_calls: calls in the window before the rate rule applies.
        slow_call_duration: a successful call slower than this counts as a
            failure (None turns this rule off).
        probe_lease: time after which an unreported probe frees its slot;
            about twice the call timeout.
        state_cache_ttl: how long this instance trusts the last state it saw,
            so a call in the closed state needs no round trip to acquire.
        store_failure_policy: behaviour while the store is unreachable.
        store_retry_interval: time between attempts to reach a failed store.
        failure_status_codes: HTTP statuses that count as failures.
        failure_exceptions: exception classes that count as failures; any
            other exception is reported as a success because the service
            responded.
        success_flush_interval: when > 0, closed-state successes are counted
            in memory and sent with this instance's next report, at the
            latest this long after the first one (0 sends each at once).
        pipeline_successes: send the report of a closed-state success without
            waiting for its reply, which a later call reads. The count reaches
            the store at once, and the state in the reply one call later.
        listener_timeout: time a call waits for transition listeners (audit
            rows, alerts) before it goes on and leaves them running.
    """

    failure_threshold: int = 5
    reset_timeout: float = 30.0
    half_open_max_calls: int = 1
    failure_rate_threshold: float = 0.5
    window: float = 60.0
    window_buckets: int = 10
    minimum_calls: int = 20
    slow_call_duration: float | None = None
    probe_lease: float = 10.0
    state_cache_ttl: float = 1.0
    store_failure_policy: StoreFailurePolicy = StoreFailurePolicy.FAIL_OPEN
    store_retry_interval: float = 2.0
    failure_status_codes: frozenset[int] = DEFAULT_FAILURE_STATUS_CODES
    failure_exceptions: tuple[type[BaseException], ...] = field(
        default_factory=_default_failure_exceptions
    )
    listener_timeout: float = 1.0
    success_flush_interval: float = 0.0
    pipeline_successes: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.store_failure_policy, str):
            object.__setattr__(
                self, "store_failure_policy", _policy(self.store_failure_policy)
            )
        object.__setattr__(
            self, "failure_status_codes", frozenset(self.failure_status_codes)
        )

        self._check(self.failure_threshold >= 0, "failure_threshold", ">= 0")
        self._check(self.reset_timeout > 0, "reset_timeout", "> 0 seconds")
        self._check(self.half_open_max_calls >= 1, "half_open_max_calls", ">= 1")
        self._check(
            0 <= self.failure_rate_threshold <= 1,
            "failure_rate_threshold",
            "between 0 and 1",
        )
        self._check(self.window > 0, "window", "> 0 seconds")
        self._check(self.window_buckets >= 1, "window_buckets", ">= 1")
        self._check(self.minimum_calls >= 1, "minimum_calls", ">= 1")
        self._check(
            self.slow_call_duration is None or self.slow_call_duration > 0,
            "slow_call_duration",
            "> 0 seconds or None",
        )

        self._check(self.probe_lease > 0, "probe_lease", "> 0 seconds")
        self._check(self.state_cache_ttl >= 0, "state_cache_ttl", ">= 0 seconds")
        self._check(
            self.store_retry_interval >= 0, "store_retry_interval", ">= 0 seconds"
        )
        self._check(self.listener_timeout > 0, "listener_timeout", "> 0 seconds")
        self._check(
            self.success_flush_interval >= 0, "success_flush_interval", ">= 0 seconds"
        )

        self._check(
            isinstance(self.pipeline_successes, bool),
            "pipeline_successes",
            "true or false",
        )

        if self.failure_threshold == 0 and self.failure_rate_threshold == 0:
            raise ConfigError(
                "failure_threshold and failure_rate_threshold are both 0, so the "
                "breaker could never open: set at least one of them",
                setting="failure_threshold",
            )

    def _check(self, condition: bool, name: str, rule: str) -> None:
        if not condition:
            raise ConfigError(
                f"{name} must be {rule}, got {getattr(self, name)!r}", setting=name
            )

    def counts_status(self, status: int) -> bool:
        """Return True when an HTTP response with ``status`` counts as a failure."""
        return status in self.failure_status_codes

    def counts_error(self, error: BaseException | None) -> bool:
        """Return True when ``error`` counts as a failure (None always does)."""
        if error is None:
            return True
        status = getattr(error, "status", None)
        if isinstance(status, int):
            return self.counts_status(status)
        return isinstance(error, self.failure_exceptions)

    @classmethod
    def from_env(cls, **overrides: Any) -> BreakerConfig:
        """Build a config from ``BREAKER_*`` variables; keyword arguments win."""
        values: dict[str, Any] = {}
        for name, env_name in ENV_NAMES.items():
            raw = os.environ.get(env_name)
            if raw:
                values[name] = _parse_field(name, raw, env_name)
        values.update(overrides)
        return cls(**values)

    def with_mapping(self, mapping: Mapping[str, Any], *, source: str) -> BreakerConfig:
        """Return a copy updated from a camelCase JSON object (``source`` names it)."""
        changes: dict[str, Any] = {}
        for key, value in mapping.items():
            name = JSON_NAMES.get(key)
            if name is None:
                raise ConfigError(
                    f"{source}.{key} is not a breaker setting: use one of "
                    f"{', '.join(sorted(JSON_NAMES))}",
                    setting=f"{source}.{key}",
                )
            if name == "failure_status_codes":
                value = frozenset(int(code) for code in value)
            changes[name] = value
        return replace(self, **changes)


def _policy(raw: str) -> StoreFailurePolicy:
    normalized = raw.strip().lower().replace("-", "_")
    aliases = {"open": "fail_open", "closed": "fail_closed"}
    try:
        return StoreFailurePolicy(aliases.get(normalized, normalized))
    except ValueError:
        raise ConfigError(
            f"store_failure_policy must be fail_open or fail_closed, got {raw!r}",
            setting="store_failure_policy",
        ) from None


def _flag(raw: str, env_name: str) -> bool:
    normalized = raw.strip().lower()
    if normalized in ("1", "true", "yes", "on"):
        return True
    if normalized in ("0", "false", "no", "off"):
        return False
    raise ConfigError(
        f"{env_name} must be true or false, got {raw!r}", setting=env_name
    )


def _parse_field(name: str, raw: str, env_name: str) -> Any:
    kinds = {item.name: item.type for item in fields(BreakerConfig)}
    kind = str(kinds[name])
    if kind == "bool":
        return _flag(raw, env_name)
    try:
        if name == "store_failure_policy":
            return _policy(raw)
        if kind == "int":
            return int(raw)
        if name == "slow_call_duration" and raw.lower() in ("none", "off"):
            return None
        return float(raw)
    except ValueError:
        raise ConfigError(
            f"{env_name} must be a number, got {raw!r}", setting=env_name
        ) from None
