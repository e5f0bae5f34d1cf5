"""Batch rules without servers: leases, keys, hashes, error reasons, retries."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator
from typing import Any

import pytest
import stamina

from resilience.batch import (
    BatchSettings,
    DegradedAnswerError,
    ItemContext,
    TimeBudget,
    classify_error,
    compute_lease_seconds,
    idempotency_key,
    payload_hash,
)
from resilience.batch.builtin import downstream_idempotency_key
from resilience.batch.execution import run_item
from resilience.batch.models import (
    FINAL_REASONS,
    RETRYABLE_REASONS,
    validate_batch_id,
    validate_item_id,
)
from resilience.batch.processors import ProcessorRegistry
from resilience.errors import (
    AuthError,
    BreakerOpenError,
    ConfigError,
    DatabaseUnavailableError,
    PermanentError,
    RateLimitedError,
    RedisUnavailableError,
    TransientError,
    UpstreamClientError,
    UpstreamConnectionError,
    UpstreamServerError,
    UpstreamTimeoutError,
    ValidationError,
)
from tests.batch_support import FakeClock, FakeLambdaContext

SETTINGS = BatchSettings()


@pytest.fixture(autouse=True)
def no_retry_waits() -> Iterator[None]:
    with stamina.set_testing(True, attempts=100, cap=True):
        yield


# ------------------------------------------------------------ leases


@pytest.mark.parametrize(
    "remaining_s", [0.0, -5.0, None, math.nan, math.inf, -math.inf]
)
def test_lease_always_finite(remaining_s: float | None) -> None:
    """Zero, negative, missing or odd remaining times give a finite lease."""
    lease = compute_lease_seconds(remaining_s, SETTINGS)

    assert math.isfinite(lease)
    assert SETTINGS.lease_min_s <= lease <= SETTINGS.lease_max_s


def test_lease_follows_time_left() -> None:
    assert compute_lease_seconds(3.0, SETTINGS) == 13.0
    assert compute_lease_seconds(0.0, SETTINGS) == 10.0
    assert compute_lease_seconds(5000.0, SETTINGS) == 900.0
    assert compute_lease_seconds(None, SETTINGS) == 70.0


def test_lease_of_c1_ends_before_redelivery() -> None:
    """A 3 s Lambda's lease ends before a 30 s visibility timeout."""
    assert compute_lease_seconds(3.0, SETTINGS) < 31.0


@pytest.mark.parametrize("raw", [None, 0, -100, "soon", True])
def test_context_without_time_means_none_left(raw: object) -> None:
    budget = TimeBudget(FakeLambdaContext(raw=raw))

    assert budget.remaining_s() == 0.0
    assert budget.raw_remaining_s() == 0.0


def test_budget_without_context_counts_down() -> None:
    clock = FakeClock()
    budget = TimeBudget(None, budget_s=60, clock=clock)
    clock.advance(15)

    assert budget.remaining_s() == 45
    assert budget.raw_remaining_s() is None


@pytest.mark.parametrize(
    ("overrides", "setting"),
    [
        ({"max_attempts": 0}, "BATCH_MAX_ATTEMPTS"),
        ({"lease_min_s": 0}, "BATCH_LEASE_MIN_S"),
        ({"lease_min_s": 20, "lease_max_s": 10}, "BATCH_LEASE_MAX_S"),
        ({"backoff_factor": 0.5}, "BATCH_BACKOFF_FACTOR"),
        ({"sync_limit": 0}, "BATCH_SYNC_LIMIT"),
    ],
)
def test_invalid_settings_name_the_variable(
    overrides: dict[str, Any], setting: str
) -> None:
    with pytest.raises(ConfigError, match=setting) as raised:
        BatchSettings(**overrides)

    assert raised.value.setting == setting


def test_settings_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATCH_MAX_ATTEMPTS", "5")
    monkeypatch.setenv("BATCH_RAISE_ON_ALL_FAILED", "true")
    monkeypatch.setenv("BATCH_PROCESSORS", '{"x": {"builtin": "echo"}}')

    settings = BatchSettings.from_env(sync_limit=7)

    assert settings.max_attempts == 5
    assert settings.raise_on_all_failed is True
    assert settings.processors == {"x": {"builtin": "echo"}}
    assert settings.sync_limit == 7


def test_settings_reject_bad_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATCH_PROCESSORS", "{oops")

    with pytest.raises(ConfigError, match="BATCH_PROCESSORS must be a JSON object"):
        BatchSettings.from_env()


# ------------------------------------------------------------ keys and hashes


@pytest.mark.parametrize("raw", [None, "", "   "])
def test_missing_item_id_is_none(raw: object) -> None:
    assert validate_item_id(raw) is None


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (7, "id must be a string, got 7"),
        (True, "id must be a string, got true"),
        (["i1"], 'id must be a string, got ["i1"]'),
        ("x" * 513, "id has 513 characters; the maximum is 512"),
    ],
    ids=["number", "boolean", "list", "too-long"],
)
def test_invalid_item_id_raises(raw: object, expected: str) -> None:
    with pytest.raises(ValidationError) as caught:
        validate_item_id(raw)

    assert expected in str(caught.value)
    assert caught.value.field == "id"


@pytest.mark.parametrize("raw", ["a\x00b", "\ud800", "ok\udfff"])
def test_unstorable_item_id_raises(raw: str) -> None:
    with pytest.raises(ValidationError) as caught:
        validate_item_id(raw)

    assert caught.value.field == "id"


def test_long_batch_id_cut_in_message() -> None:
    with pytest.raises(ValidationError) as caught:
        validate_batch_id("b:" + "x" * 100_000)

    assert caught.value.field == "batchId"
    assert len(str(caught.value)) < 300


def test_key_format() -> None:
    assert idempotency_key("b1", "i1") == "batch:b1:item:i1"


def test_hash_depends_on_data_org_and_processor() -> None:
    base = payload_hash({"a": 1, "b": 2}, processor="echo", org_id="o1")

    assert payload_hash({"b": 2, "a": 1}, processor="echo", org_id="o1") == base
    assert payload_hash({"a": 1, "b": 3}, processor="echo", org_id="o1") != base
    assert payload_hash({"a": 1, "b": 2}, processor="llm", org_id="o1") != base
    assert payload_hash({"a": 1, "b": 2}, processor="echo", org_id="o2") != base


@pytest.mark.parametrize(
    "data",
    [
        None,
        "text",
        [1, 2.5, -0.0, 1e20, 10**30, True, None],
        {"b": {"z": [], "y": {}}, "a": 'é"\\\n\u2028', "ü": 1},
        {1: "int key"},
        ("a", "tuple"),
    ],
)
def test_hash_text_is_stable(data: Any) -> None:
    # Stored rows keep the hash, so it must stay the SHA-256 of the item
    # object written with sorted keys, compact separators and raw UTF-8.
    item = {"org": "o1", "processor": "echo", "data": data}
    canonical = json.dumps(
        item, sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    expected = hashlib.sha256(canonical.encode()).hexdigest()

    assert payload_hash(data, processor="echo", org_id="o1") == expected


def test_hash_names_circular_data() -> None:
    data: list[Any] = []
    data.append(data)

    with pytest.raises(ValidationError, match="Circular reference"):
        payload_hash(data, processor="echo", org_id="o1")


@pytest.mark.parametrize("data", [{"x": math.nan}, {"x": object()}])
def test_hash_rejects_non_json(data: Any) -> None:
    with pytest.raises(ValidationError, match="item data must be JSON"):
        payload_hash(data, processor="echo", org_id="o1")


@pytest.mark.parametrize(
    ("data", "org_id", "field"),
    [
        ({"note": "a\x00"}, "o1", "data.note"),
        ({"list": ["ok", "\\\x00"]}, "o1", "data.list[1]"),
        ({1: "\x00"}, "o1", "data.1"),
        (("\ud800",), "o1", "data[0]"),
        ({}, "o\x00", "orgId"),
        ({}, "o\udfff", "orgId"),
    ],
)
def test_hash_rejects_unstorable_text(data: Any, org_id: str, field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        payload_hash(data, processor="echo", org_id=org_id)

    assert caught.value.field == field


@pytest.mark.parametrize("text", ["\\u0000", "\\u0000\\u0000", "a\\\\u0000"])
def test_hash_accepts_escaped_nul_text(text: str) -> None:
    assert len(payload_hash({"note": text}, processor="echo", org_id="o1")) == 64


# ------------------------------------------------------------ reasons


@pytest.mark.parametrize(
    ("error", "reason", "retryable"),
    [
        (BreakerOpenError("svc", 5.0), "breaker_open", True),
        (UpstreamTimeoutError("slow"), "timeout", True),
        (UpstreamConnectionError("down"), "connection_error", True),
        (RateLimitedError("429", retry_after=2.0), "rate_limited", True),
        (UpstreamServerError("503", status=503), "server_error", True),
        (DegradedAnswerError("template"), "degraded", True),
        (RedisUnavailableError("redis"), "transient_error", True),
        (DatabaseUnavailableError("pg"), "transient_error", True),
        (TransientError("later"), "transient_error", True),
        (UpstreamClientError("400", status=400), "client_error", False),
        (AuthError("401"), "processor_error", False),
        (ValidationError("bad", field="x"), "validation_error", False),
        (PermanentError("no"), "processor_error", False),
        (KeyError("bug"), "processor_error", False),
    ],
)
def test_errors_map_to_reasons(
    error: BaseException, reason: str, retryable: bool
) -> None:
    assert classify_error(error) == (reason, retryable)


def test_reason_sets_partition() -> None:
    assert not RETRYABLE_REASONS & FINAL_REASONS
    assert "missing item id" in FINAL_REASONS
    assert "payload_mismatch" in FINAL_REASONS
    assert "lease_expired" in RETRYABLE_REASONS


# ------------------------------------------------------------ retries


class Scripted:
    """A processor that raises the scripted errors, then returns "done"."""

    name = "scripted"
    side_effects = False
    takeover_policy = "retry"
    expected_duration_s = 0.0

    def __init__(self, *errors: BaseException, calls_per_try: int = 1) -> None:
        self.errors = list(errors)
        self.calls_per_try = calls_per_try
        self.tries = 0
        self.attempts: list[int] = []
        self.extras_seen: list[dict[str, Any]] = []

    def process(self, context: ItemContext) -> Any:
        self.tries += 1
        self.attempts.append(context.attempt)
        self.extras_seen.append(dict(context.extra))
        context.extra["calls"] = self.calls_per_try
        if self.errors:
            raise self.errors.pop(0)
        return "done"


def _run(processor: Scripted, budget: TimeBudget | None = None, **settings: Any) -> Any:
    context = ItemContext(
        batch_id="b1",
        item_id="i1",
        data={},
        idempotency_key="batch:b1:item:i1",
        attempt=1,
        org_id="default",
        remaining_s=lambda: 10.0,
    )
    return run_item(
        processor,
        context,
        budget=budget or TimeBudget(None, budget_s=60),
        settings=BatchSettings(**settings),
        estimate_s=0.0,
    )


def test_transient_then_success() -> None:
    processor = Scripted(UpstreamServerError("503"), UpstreamTimeoutError("slow"))

    outcome = _run(processor)

    assert outcome.ok is True
    assert outcome.calls == 3
    assert outcome.output == "done"


def test_retry_context_attempt_and_extra() -> None:
    processor = Scripted(UpstreamServerError("503"), calls_per_try=2)

    outcome = _run(processor, max_attempts=5)

    assert outcome.ok is True
    # The first try made calls 1 and 2, so the second try starts at 3.
    assert processor.attempts == [1, 3]
    assert processor.extras_seen == [{}, {}]


def test_attempts_capped_at_three() -> None:
    processor = Scripted(*[UpstreamServerError("503") for _ in range(5)])

    outcome = _run(processor)

    assert outcome.ok is False
    assert outcome.calls == 3
    assert processor.tries == 3
    assert outcome.reason == "server_error"
    assert outcome.retryable is True


def test_inner_calls_count_against_attempts() -> None:
    """A processor that already made 2 calls per try gets no third try."""
    processor = Scripted(
        *[UpstreamServerError("503") for _ in range(5)], calls_per_try=2
    )

    outcome = _run(processor)

    assert processor.tries == 2
    assert outcome.calls == 4


def test_final_error_not_retried() -> None:
    processor = Scripted(UpstreamClientError("404", status=404))

    outcome = _run(processor)

    assert processor.tries == 1
    assert outcome.reason == "client_error"
    assert outcome.retryable is False


def test_breaker_open_spends_no_attempt() -> None:
    processor = Scripted(BreakerOpenError("svc", 30.0))

    outcome = _run(processor)

    assert processor.tries == 1
    assert outcome.calls == 0
    assert outcome.reason == "breaker_open"
    assert outcome.retryable is True


def test_no_retry_without_time() -> None:
    clock = FakeClock()
    budget = TimeBudget(FakeLambdaContext(remaining_ms=1200, clock=clock))
    processor = Scripted(UpstreamServerError("503"))

    outcome = _run(processor, budget)

    assert processor.tries == 1
    assert outcome.ok is False


def test_retry_after_longer_than_time_left_stops() -> None:
    processor = Scripted(RateLimitedError("429", retry_after=120.0))

    outcome = _run(processor)

    assert processor.tries == 1
    assert outcome.reason == "rate_limited"


# ------------------------------------------------------------ processors


def test_unknown_processor_rejected() -> None:
    with pytest.raises(ValidationError, match="unknown processor 'nope'") as raised:
        ProcessorRegistry().get("nope")

    assert raised.value.field == "processor"


def test_processor_loaded_by_import_path() -> None:
    registry = ProcessorRegistry(
        {"mine": {"import": "resilience.batch.processors:EchoProcessor"}}
    )

    processor = registry.get("mine")

    assert processor.name == "mine"
    assert processor.side_effects is False


def test_builtin_options_in_camel_case() -> None:
    registry = ProcessorRegistry(
        {
            "refunds": {
                "builtin": "service",
                "options": {"service": "payments", "takeoverPolicy": "escalate"},
            }
        }
    )

    processor = registry.get("refunds")

    assert processor.side_effects is True
    assert processor.takeover_policy == "escalate"


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"import": "no_such_module_x:thing"}, "cannot import"),
        ({"import": "resilience.batch"}, "must look like"),
        ({"import": "resilience.batch.models:MAX_ITEM_ID_LENGTH"}, "lacks name"),
        ({"builtin": "teleport"}, "builtin must be one of"),
        ({"builtin": "service", "options": {"takeoverPolicy": "pray"}}, "retry"),
        ("echo", "must be an object"),
    ],
)
def test_bad_processor_config(entry: Any, message: str) -> None:
    registry = ProcessorRegistry({"x": entry})

    with pytest.raises(ConfigError, match=message):
        registry.get("x")


@pytest.mark.parametrize(
    "key",
    ["batch:b:item:é", "batch:b:item:" + "x" * 300, "batch:b:item:a\tb"],
)
def test_downstream_key_hashes_unsendable(key: str) -> None:
    sent = downstream_idempotency_key(key)

    assert sent.startswith("batch-sha256:")
    assert len(sent) == len("batch-sha256:") + 64
    assert sent == downstream_idempotency_key(key)


def test_downstream_key_keeps_plain_key() -> None:
    assert downstream_idempotency_key("batch:b1:item:i1") == "batch:b1:item:i1"


def test_registry_refuses_incomplete_processor() -> None:
    class NoEstimate:
        name = "no-estimate"
        side_effects = False
        takeover_policy = "retry"

        def process(self, context: ItemContext) -> Any:
            return None

    with pytest.raises(ConfigError, match="expected_duration_s"):
        ProcessorRegistry().register(NoEstimate())  # type: ignore[arg-type]
