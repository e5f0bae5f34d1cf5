"""Settings of the batch runner, read once from the environment.

Explicit arguments win over the environment. Times are in seconds unless the
name says otherwise.

=================================  =========  ===================================
environment variable               default    meaning
=================================  =========  ===================================
``BATCH_MAX_ATTEMPTS``             3          calls per item per delivery
``BATCH_BACKOFF_INITIAL_S``        0.1        first retry wait
``BATCH_BACKOFF_MAX_S``            2.0        longest retry wait
``BATCH_BACKOFF_FACTOR``           2          growth of the wait per retry
``BATCH_BACKOFF_JITTER_S``         0.1        random extra wait, at most this
``BATCH_LEASE_GRACE_S``            10         lease = time left + this grace
``BATCH_LEASE_MIN_S``              10         shortest lease (0 or no time left)
``BATCH_LEASE_MAX_S``              900        longest lease (Lambda's ceiling)
``BATCH_NO_CONTEXT_BUDGET_S``      60         time budget without a Lambda context
``BATCH_TIME_RESERVE_MS``          1000       kept free to record results
``BATCH_SYNC_LIMIT``               100        max items of one ``POST /batches``
``BATCH_RAISE_ON_ALL_FAILED``      false      raise when every SQS record failed
``BATCH_DEFAULT_PROCESSOR``        echo       processor of items that name none
``BATCH_PROCESSORS``               {}         JSON: name to import path/options
=================================  =========  ===================================
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

from resilience.errors import ConfigError

__all__ = ["BatchSettings", "compute_lease_seconds"]


def _env(name: str) -> str | None:
    value = os.environ.get(name, "").strip()
    return value or None


def _float_env(name: str, default: float) -> float:
    raw = _env(name)
    if raw is None:
        return default
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(
            f"{name} must be a number, got {raw!r}", setting=name
        ) from None


def _bool_env(name: str, default: bool) -> bool:
    raw = _env(name)
    if raw is None:
        return default
    if raw.lower() in {"1", "true", "yes"}:
        return True
    if raw.lower() in {"0", "false", "no"}:
        return False
    raise ConfigError(f"{name} must be true or false, got {raw!r}", setting=name)


def _json_env(name: str) -> dict[str, Any]:
    raw = _env(name)
    if raw is None:
        return {}
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"{name} must be a JSON object, got invalid JSON ({exc.msg})", setting=name
        ) from None
    if not isinstance(value, dict):
        raise ConfigError(f"{name} must be a JSON object", setting=name)
    return value


@dataclass(frozen=True)
class BatchSettings:
    """Retry, lease and time-budget settings of :class:`BatchRunner`."""

    max_attempts: int = 3
    backoff_initial_s: float = 0.1
    backoff_max_s: float = 2.0
    backoff_factor: float = 2.0
    backoff_jitter_s: float = 0.1
    lease_grace_s: float = 10.0
    lease_min_s: float = 10.0
    lease_max_s: float = 900.0
    no_context_budget_s: float = 60.0
    time_reserve_ms: int = 1000
    sync_limit: int = 100
    raise_on_all_failed: bool = False
    default_processor: str = "echo"
    processors: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        checks = [
            ("BATCH_MAX_ATTEMPTS", self.max_attempts >= 1, "at least 1"),
            ("BATCH_BACKOFF_INITIAL_S", self.backoff_initial_s >= 0, "0 or more"),
            ("BATCH_BACKOFF_MAX_S", self.backoff_max_s >= 0, "0 or more"),
            ("BATCH_BACKOFF_FACTOR", self.backoff_factor >= 1, "at least 1"),
            ("BATCH_BACKOFF_JITTER_S", self.backoff_jitter_s >= 0, "0 or more"),
            ("BATCH_LEASE_GRACE_S", self.lease_grace_s >= 0, "0 or more"),
            ("BATCH_LEASE_MIN_S", self.lease_min_s > 0, "more than 0"),
            (
                "BATCH_LEASE_MAX_S",
                self.lease_max_s >= self.lease_min_s,
                "at least BATCH_LEASE_MIN_S",
            ),
            ("BATCH_NO_CONTEXT_BUDGET_S", self.no_context_budget_s > 0, "more than 0"),
            ("BATCH_TIME_RESERVE_MS", self.time_reserve_ms >= 0, "0 or more"),
            ("BATCH_SYNC_LIMIT", self.sync_limit >= 1, "at least 1"),
        ]
        for setting, valid, rule in checks:
            if not valid:
                raise ConfigError(f"{setting} must be {rule}", setting=setting)

    @classmethod
    def from_env(cls, **overrides: Any) -> BatchSettings:
        """Build settings from the environment; keyword arguments win."""
        values: dict[str, Any] = {
            "max_attempts": int(_float_env("BATCH_MAX_ATTEMPTS", 3)),
            "backoff_initial_s": _float_env("BATCH_BACKOFF_INITIAL_S", 0.1),
            "backoff_max_s": _float_env("BATCH_BACKOFF_MAX_S", 2.0),
            "backoff_factor": _float_env("BATCH_BACKOFF_FACTOR", 2.0),
            "backoff_jitter_s": _float_env("BATCH_BACKOFF_JITTER_S", 0.1),
            "lease_grace_s": _float_env("BATCH_LEASE_GRACE_S", 10.0),
            "lease_min_s": _float_env("BATCH_LEASE_MIN_S", 10.0),
            "lease_max_s": _float_env("BATCH_LEASE_MAX_S", 900.0),
            "no_context_budget_s": _float_env("BATCH_NO_CONTEXT_BUDGET_S", 60.0),
            "time_reserve_ms": int(_float_env("BATCH_TIME_RESERVE_MS", 1000)),
            "sync_limit": int(_float_env("BATCH_SYNC_LIMIT", 100)),
            "raise_on_all_failed": _bool_env("BATCH_RAISE_ON_ALL_FAILED", False),
            "default_processor": _env("BATCH_DEFAULT_PROCESSOR") or "echo",
            "processors": _json_env("BATCH_PROCESSORS"),
        }
        values.update(overrides)
        return cls(**values)


def compute_lease_seconds(remaining_s: float | None, settings: BatchSettings) -> float:
    """Return the lease for a claim made with ``remaining_s`` seconds left.

    The lease covers the time the invocation may still run plus a grace, so a
    live worker keeps its items and a dead one's items free up soon after its
    timeout. The result is always finite and within [lease_min_s, lease_max_s]:
    no Lambda context uses the no-context budget, and 0, a negative value, NaN
    or infinity fall back to the bounds.
    """
    if remaining_s is None:
        remaining_s = settings.no_context_budget_s
    if remaining_s != remaining_s:  # NaN
        remaining_s = 0.0
    lease = max(0.0, remaining_s) + settings.lease_grace_s
    return min(settings.lease_max_s, max(settings.lease_min_s, lease))
