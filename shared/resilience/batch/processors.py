"""Processors: the work done for one item, and how they are found by name.

A processor is any object with ``name``, ``side_effects``,
``takeover_policy`` and ``process(context) -> output``. It raises errors from
:mod:`resilience.errors`: a retryable one (``retryable = True``) is retried
and then handed back, any other fails the item for good.

Processors are found by name. Built in: ``echo`` (returns the data, for demos
and tests), ``service`` (calls a registered service through its breaker) and
``llm`` (completes a prompt through the fallback chain). Others are registered
in ``BATCH_PROCESSORS`` as ``{"name": {"import": "package.module:factory",
"options": {...}}}``. An item can only name a registered processor, never an
import path, so a request cannot load arbitrary code.
"""

from __future__ import annotations

import importlib
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from resilience.errors import (
    ConfigError,
    PermanentError,
    TransientError,
    ValidationError,
)

__all__ = [
    "BUILTIN_PROCESSORS",
    "EchoProcessor",
    "ItemContext",
    "Processor",
    "ProcessorRegistry",
    "TakeoverPolicy",
    "load_processor",
]

TakeoverPolicy = Literal["retry", "escalate"]


@dataclass(slots=True)
class ItemContext:
    """Input of one processor call.

    ``attempt`` counts calls for this item across deliveries, starting at 1.
    ``remaining_s`` returns the seconds this call may use (the run's time left
    minus the reserve for recording results); pass it on as the downstream
    deadline. Pass ``idempotency_key`` to any downstream that
    accepts one, so that a repeated call has no second effect.
    """

    batch_id: str
    item_id: str
    data: Any
    idempotency_key: str
    attempt: int
    org_id: str
    remaining_s: Callable[[], float]
    run_id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Processor(Protocol):
    """The work for one item.

    ``side_effects`` is True when a call changes something outside this
    service: such items are recorded as they start and as they complete, and
    ``takeover_policy`` decides what happens to an item whose worker died
    mid-call (``retry`` it, or ``escalate`` it to a person).
    ``expected_duration_s`` is the estimate used before the first call to
    decide whether the item can still finish in the time left.
    """

    name: str
    side_effects: bool
    takeover_policy: TakeoverPolicy
    expected_duration_s: float

    def process(self, context: ItemContext) -> Any: ...


class EchoProcessor:
    """Return the item's data; for demos and tests.

    Data ``{"fail": "transient"}`` or ``{"fail": "permanent"}`` makes the call
    fail that way, and ``{"sleepMs": n}`` makes it take ``n`` milliseconds, so
    that failures and slow items can be shown without a downstream service.
    """

    side_effects = False
    takeover_policy: TakeoverPolicy = "retry"
    expected_duration_s = 0.0

    def __init__(self, name: str = "echo", **options: Any) -> None:
        if options:
            raise ConfigError(
                f"processor {name!r} takes no options, got {sorted(options)}",
                setting="BATCH_PROCESSORS",
            )
        self.name = name

    def __repr__(self) -> str:
        return f"<EchoProcessor name={self.name!r}>"

    def process(self, context: ItemContext) -> Any:
        data = context.data
        if isinstance(data, dict):
            sleep_ms = data.get("sleepMs")
            if isinstance(sleep_ms, int | float) and sleep_ms > 0:
                # min() before the division, because an int past the float
                # range (1e309 and up) raises OverflowError in float().
                time.sleep(min(sleep_ms, 60_000) / 1000.0)
            failure = data.get("fail")
            if failure == "transient":
                raise TransientError("echo item asked to fail (transient)")
            if failure == "permanent":
                raise PermanentError("echo item asked to fail (permanent)")
        return data


def _service_processor(name: str, **options: Any) -> Processor:
    from resilience.batch.builtin import ServiceProcessor

    return ServiceProcessor(name, **options)


def _llm_processor(name: str, **options: Any) -> Processor:
    from resilience.batch.builtin import LLMProcessor

    return LLMProcessor(name, **options)


BUILTIN_PROCESSORS: dict[str, Callable[..., Processor]] = {
    "echo": EchoProcessor,
    "service": _service_processor,
    "llm": _llm_processor,
}


def load_processor(import_path: str, name: str, options: dict[str, Any]) -> Processor:
    """Import ``package.module:attribute`` and build a processor from it.

    The attribute is a class or factory called as ``factory(name, **options)``,
    or a ready processor object when ``options`` is empty.
    """
    module_name, _, attribute = import_path.partition(":")
    if not module_name or not attribute:
        raise ConfigError(
            f"processor {name!r}: import path must look like "
            f"'package.module:attribute', got {import_path!r}",
            setting="BATCH_PROCESSORS",
        )
    try:
        target = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(
            f"processor {name!r}: cannot import {import_path!r}: {exc}",
            setting="BATCH_PROCESSORS",
        ) from exc

    processor = target(name, **options) if callable(target) else target
    if not isinstance(processor, Processor):
        raise ConfigError(
            f"processor {name!r} from {import_path!r} lacks name, side_effects, "
            "takeover_policy, expected_duration_s or process()",
            setting="BATCH_PROCESSORS",
        )
    return processor


def _snake_case_keys(name: str, options: object) -> dict[str, Any]:
    """Turn JSON option names (``acceptDegraded``) into keyword names."""
    if not isinstance(options, dict):
        raise ConfigError(
            f"BATCH_PROCESSORS[{name!r}].options must be an object",
            setting="BATCH_PROCESSORS",
        )
    return {
        re.sub(r"(?<!^)(?=[A-Z])", "_", str(k)).lower(): v for k, v in options.items()
    }


class ProcessorRegistry:
    """Processors by name: the built-ins plus those configured or registered."""

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        self._config = dict(config or {})
        self._instances: dict[str, Processor] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<ProcessorRegistry names={sorted(self.names())}>"

    def names(self) -> set[str]:
        return set(BUILTIN_PROCESSORS) | set(self._config) | set(self._instances)

    def register(self, processor: Processor) -> None:
        """Add a processor object under its ``name`` (replaces any other).

        Raises:
            ConfigError: the object lacks an attribute the runner reads, which
                would otherwise fail a run after its items were claimed.
        """
        if not isinstance(processor, Processor):
            raise ConfigError(
                f"processor {getattr(processor, 'name', processor)!r} is missing "
                "name, side_effects, takeover_policy, expected_duration_s or "
                "process(): the runner reads all five",
                setting="processor",
            )
        with self._lock:
            self._instances[processor.name] = processor

    def get(self, name: str) -> Processor:
        """Return the processor called ``name``, built on first use.

        Raises:
            ValidationError: no processor has that name (field ``processor``).
            ConfigError: the configured import path or options are invalid.
        """
        with self._lock:
            if name in self._instances:
                return self._instances[name]
            processor = self._build(name)
            self._instances[name] = processor
            return processor

    def _build(self, name: str) -> Processor:
        entry = self._config.get(name)
        if entry is None:
            factory = BUILTIN_PROCESSORS.get(name)
            if factory is None:
                raise ValidationError(
                    f"unknown processor {name!r}: use one of "
                    f"{sorted(self.names())} or register it in BATCH_PROCESSORS",
                    field="processor",
                )
            return factory(name)

        if not isinstance(entry, dict):
            raise ConfigError(
                f"BATCH_PROCESSORS[{name!r}] must be an object with 'import' "
                "or 'builtin' and optional 'options'",
                setting="BATCH_PROCESSORS",
            )
        options = _snake_case_keys(name, entry.get("options") or {})
        if "builtin" in entry:
            factory = BUILTIN_PROCESSORS.get(str(entry["builtin"]))
            if factory is None:
                raise ConfigError(
                    f"BATCH_PROCESSORS[{name!r}].builtin must be one of "
                    f"{sorted(BUILTIN_PROCESSORS)}, got {entry['builtin']!r}",
                    setting="BATCH_PROCESSORS",
                )
            return factory(name, **options)
        return load_processor(str(entry.get("import", "")), name, options)
