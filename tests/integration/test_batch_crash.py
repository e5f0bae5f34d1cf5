"""Crashes: a worker killed mid-item, and PostgreSQL stopped mid-batch."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import stamina

from local.embedded import EmbeddedPostgres
from resilience.batch import (
    BatchItem,
    BatchRunner,
    BatchSettings,
    ItemContext,
    ItemStatus,
    ProcessorRegistry,
)
from resilience.batch.sqs import process_sqs_event
from resilience.db import Database, DatabaseConfig, apply_schema
from tests.batch_support import (
    CountingDownstream,
    FakeLambdaContext,
    KeyedHttpProcessor,
    sqs_event,
    sqs_record,
)

ROOT = Path(__file__).resolve().parents[2]

# Leases of a few seconds, so that the tests wait for real expiry.
SHORT_LEASES = {"lease_grace_s": 0.5, "lease_min_s": 1.0, "time_reserve_ms": 200}

CHILD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from resilience.batch import BatchItem, BatchRunner, BatchSettings
    from resilience.batch import ProcessorRegistry
    from resilience.db import Database, DatabaseConfig
    from tests.batch_support import FakeLambdaContext, KeyedHttpProcessor

    database_url, downstream_url, marker = sys.argv[1:4]

    class CallThenHang(KeyedHttpProcessor):
        def process(self, context):
            answer = super().process(context)
            Path(marker).write_text("called")
            time.sleep(60)
            return answer

    registry = ProcessorRegistry()
    registry.register(CallThenHang(downstream_url))
    runner = BatchRunner(
        Database(DatabaseConfig(url=database_url)),
        settings=BatchSettings(lease_grace_s=0.5, lease_min_s=1.0, time_reserve_ms=200),
        registry=registry,
    )
    runner.run(
        [BatchItem("c1", "i1", {"n": 1}, "keyed")],
        context=FakeLambdaContext(remaining_ms=3000),
    )
    """
)


@pytest.fixture(autouse=True)
def no_retry_waits() -> Iterator[None]:
    with stamina.set_testing(True, attempts=100, cap=True):
        yield


@pytest.fixture
def downstream() -> Iterator[CountingDownstream]:
    server = CountingDownstream().start()
    try:
        yield server
    finally:
        server.stop()


def _runner(database: Database, downstream_url: str, **settings: Any) -> BatchRunner:
    registry = ProcessorRegistry()
    registry.register(KeyedHttpProcessor(downstream_url))
    return BatchRunner(
        database, settings=BatchSettings(**SHORT_LEASES, **settings), registry=registry
    )


def _lease_left_s(database: Database, key: str) -> float:
    with database.transaction() as conn:
        found = conn.execute(
            "SELECT extract(epoch FROM lease_until - now()) AS s FROM batch_item "
            "WHERE idempotency_key = %s",
            (key,),
        ).fetchone()
    assert found is not None
    return float(found["s"])


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_sigkilled_worker_item_runs_once_more(
    database: Database, downstream: CountingDownstream, tmp_path: Path
) -> None:
    # GIVEN a worker process killed with SIGKILL after its downstream call
    marker = tmp_path / "called"
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'shared'}"}
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, database.config.url, downstream.url, str(marker)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 30
    while not marker.exists():
        assert child.poll() is None, child.stderr.read() if child.stderr else ""
        assert time.monotonic() < deadline, "the worker never made its call"
        time.sleep(0.02)
    child.send_signal(signal.SIGKILL)
    child.wait(10)
    if child.stderr:
        child.stderr.close()

    # WHEN a duplicate arrives before the lease ends
    runner = _runner(database, downstream.url)
    key = "batch:c1:item:i1"
    assert _lease_left_s(database, key) > 0
    early = runner.run(
        [BatchItem("c1", "i1", {"n": 1}, "keyed")],
        context=FakeLambdaContext(remaining_ms=3000),
    )

    # THEN it is handed back without a call
    assert early.results[0].status is ItemStatus.IN_PROGRESS
    assert early.results[0].handed_back is True
    assert downstream.calls[key] == 1

    # WHEN it arrives again after the lease
    time.sleep(max(0.0, _lease_left_s(database, key)) + 0.2)
    late = runner.run(
        [BatchItem("c1", "i1", {"n": 1}, "keyed")],
        context=FakeLambdaContext(remaining_ms=3000),
    )

    # THEN it runs once more, completes with attempts 2, and the effect stays one
    assert late.results[0].status is ItemStatus.COMPLETED
    assert late.results[0].attempts == 2
    assert downstream.calls[key] == 2
    assert downstream.effects[key] == 1


@pytest.fixture
def own_postgres() -> Iterator[EmbeddedPostgres]:
    server = EmbeddedPostgres().start()
    try:
        yield server
    finally:
        server.close()


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_postgres_stopped_mid_batch(
    own_postgres: EmbeddedPostgres, downstream: CountingDownstream
) -> None:
    database = Database(DatabaseConfig(url=own_postgres.url, connect_timeout_s=1))
    apply_schema(database)

    # GIVEN a processor that stops PostgreSQL right after the call of i4
    class StopsPostgres(KeyedHttpProcessor):
        def process(self, context: ItemContext) -> Any:
            answer = super().process(context)
            if context.item_id == "i4":
                own_postgres.stop()
            return answer

    registry = ProcessorRegistry()
    registry.register(StopsPostgres(downstream.url))
    runner = BatchRunner(
        database, settings=BatchSettings(**SHORT_LEASES), registry=registry
    )
    records = [
        sqs_record(
            f"m{n}",
            {
                "batchId": "pg",
                "item": {"id": f"i{n}", "data": {"n": n}, "processor": "keyed"},
            },
        )
        for n in range(10)
    ]

    # WHEN the batch runs
    response = process_sqs_event(
        sqs_event(*records), FakeLambdaContext(remaining_ms=3000), runner=runner
    )

    # THEN the items not recorded go back to the queue, i5-i9 uncalled
    handed_back = [f["itemIdentifier"] for f in response["batchItemFailures"]]
    assert handed_back == [f"m{n}" for n in range(4, 10)]
    assert sum(downstream.calls.values()) == 5

    # WHEN PostgreSQL returns and the messages come back after their leases
    own_postgres.start()
    time.sleep(3.8)
    second = process_sqs_event(
        sqs_event(*records[4:]),
        FakeLambdaContext(remaining_ms=3000),
        runner=_runner(database, downstream.url),
    )

    # THEN every item is completed once, with one effect each
    assert second == {"batchItemFailures": []}
    assert set(downstream.effects) == {f"batch:pg:item:i{n}" for n in range(10)}
    assert all(count == 1 for count in downstream.effects.values())
    with database.transaction() as conn:
        rows = conn.execute(
            "SELECT item_id, status, attempts FROM batch_item ORDER BY item_id"
        ).fetchall()
    assert [r["status"] for r in rows] == ["completed"] * 10
    assert all(1 <= r["attempts"] <= 2 for r in rows)
    database.close()
