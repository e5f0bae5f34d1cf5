"""Property test of the idempotency rules over random delivery sequences."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import stamina
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resilience.batch import (
    BatchItem,
    BatchRunner,
    BatchSettings,
    ItemContext,
    ItemStatus,
    ProcessorRegistry,
)
from resilience.db import Database

# One delivery is a list of (item id, payload variant); a variant of 2 makes
# the processor fail for good.
DELIVERY = st.lists(
    st.tuples(st.sampled_from(["a", "b", "c", "d"]), st.integers(0, 2)),
    min_size=1,
    max_size=6,
)


@pytest.fixture(autouse=True)
def no_retry_waits() -> Iterator[None]:
    with stamina.set_testing(True, attempts=100, cap=True):
        yield


class Counting:
    name = "counting"
    side_effects = False
    takeover_policy = "retry"
    expected_duration_s = 0.0

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}

    def process(self, context: ItemContext) -> Any:
        self.calls[context.idempotency_key] = (
            self.calls.get(context.idempotency_key, 0) + 1
        )
        if context.data["variant"] == 2:
            raise ValueError("variant 2 always fails")
        return {"key": context.idempotency_key, "variant": context.data["variant"]}


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(deliveries=st.lists(DELIVERY, min_size=1, max_size=4))
def test_keys_run_once_and_never_leak(
    database: Database, deliveries: list[list[tuple[str, int]]]
) -> None:
    batch_id = f"prop-{uuid.uuid4().hex[:10]}"
    processor = Counting()
    registry = ProcessorRegistry()
    registry.register(processor)
    runner = BatchRunner(database, settings=BatchSettings(), registry=registry)
    stored: dict[str, int] = {}  # key -> variant of its first run

    for delivery in deliveries:
        items = [
            BatchItem(batch_id, item_id, {"variant": variant}, "counting")
            for item_id, variant in delivery
        ]
        run = runner.run(items)

        assert len(run.results) == len(items)
        for item, result in zip(items, run.results, strict=True):
            key = f"batch:{batch_id}:item:{item.item_id}"
            variant = item.data["variant"]
            first = stored.setdefault(key, variant)
            if first != variant:
                assert result.reason == "payload_mismatch"
                assert result.output is None
            elif variant == 2:
                assert result.status is ItemStatus.FAILED
                assert result.retryable is False
            else:
                assert result.status is ItemStatus.COMPLETED
                assert result.output == {"key": key, "variant": variant}

    # Each key ran exactly once, however often and with whatever data it came.
    assert processor.calls == dict.fromkeys(stored, 1)
