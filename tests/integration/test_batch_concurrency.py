"""Effectively-once under duplicates: 8 workers, every message delivered twice."""

from __future__ import annotations

import queue
import random
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import stamina

from resilience.batch import BatchRunner, BatchSettings, ProcessorRegistry
from resilience.batch.sqs import process_sqs_event
from resilience.db import Database, DatabaseConfig
from tests.batch_support import (
    CountingDownstream,
    FakeLambdaContext,
    KeyedHttpProcessor,
    sqs_event,
    sqs_record,
)

ITEMS = 1000
WORKERS = 8
BATCH_SIZE = 10


@pytest.fixture(autouse=True)
def no_retry_waits() -> Iterator[None]:
    with stamina.set_testing(True, attempts=100, cap=True):
        yield


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_every_item_completes_once(database: Database) -> None:
    # GIVEN 1,000 items, each sent twice, in random order
    downstream = CountingDownstream().start()
    messages: queue.Queue[dict[str, Any]] = queue.Queue()
    deliveries = [
        sqs_record(
            f"m{n}-{copy}",
            {
                "batchId": "load",
                "item": {"id": f"i{n}", "data": {"n": n}, "processor": "keyed"},
            },
        )
        for n in range(ITEMS)
        for copy in (1, 2)
    ]
    random.Random(7).shuffle(deliveries)
    for record in deliveries:
        messages.put(record)
    acknowledged: list[str] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def worker() -> None:
        registry = ProcessorRegistry()
        registry.register(KeyedHttpProcessor(downstream.url))
        own_database = Database(DatabaseConfig(url=database.config.url))
        runner = BatchRunner(own_database, settings=BatchSettings(), registry=registry)
        try:
            for _ in range(10_000):
                batch = _take(messages)
                if not batch:
                    return
                response = process_sqs_event(
                    sqs_event(*batch), FakeLambdaContext(), runner=runner
                )
                failed = {f["itemIdentifier"] for f in response["batchItemFailures"]}
                for record in batch:
                    if record["messageId"] in failed:
                        # Back on the queue, as after the visibility timeout.
                        messages.put(record)
                    else:
                        with lock:
                            acknowledged.append(record["messageId"])
        except BaseException as error:
            errors.append(error)
        finally:
            own_database.close()

    # WHEN 8 workers drain the queue concurrently
    threads = [threading.Thread(target=worker) for _ in range(WORKERS)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(100)
    finally:
        downstream.stop()

    # THEN every message was acknowledged once and every item had one effect
    assert errors == []
    assert sorted(acknowledged) == sorted(r["messageId"] for r in deliveries)
    keys = {f"batch:load:item:i{n}" for n in range(ITEMS)}
    assert set(downstream.effects) == keys
    assert all(count == 1 for count in downstream.effects.values())
    assert sum(downstream.calls.values()) == ITEMS
    with database.transaction() as conn:
        rows = conn.execute(
            "SELECT status, attempts, count(*) AS n FROM batch_item "
            "WHERE batch_id = 'load' GROUP BY status, attempts"
        ).fetchall()
    assert [(r["status"], r["attempts"], r["n"]) for r in rows] == [
        ("completed", 1, ITEMS)
    ]


def _take(messages: queue.Queue[dict[str, Any]]) -> list[dict[str, Any]]:
    batch: list[dict[str, Any]] = []
    while len(batch) < BATCH_SIZE:
        try:
            batch.append(messages.get(timeout=0.2 if not batch else 0))
        except queue.Empty:
            break
    return batch
