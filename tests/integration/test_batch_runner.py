"""The batch runner on real PostgreSQL: cache, leases, conflicts, time budget."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import stamina

from local.embedded import free_port
from resilience.api import MAX_MESSAGE_CHARS
from resilience.batch import (
    BatchItem,
    BatchRunner,
    BatchSettings,
    ItemContext,
    ItemStatus,
    ProcessorRegistry,
)
from resilience.batch import runner as runner_module
from resilience.batch.store import BatchStore
from resilience.db import Database, DatabaseConfig
from resilience.errors import (
    DatabaseUnavailableError,
    IdempotencyConflictError,
    PermanentError,
    TransientError,
    ValidationError,
)
from tests.batch_support import (
    ClockProcessor,
    CountingDatabase,
    CountingDownstream,
    FakeClock,
    FakeLambdaContext,
    KeyedHttpProcessor,
)


@pytest.fixture(autouse=True)
def no_retry_waits() -> Iterator[None]:
    with stamina.set_testing(True, attempts=100, cap=True):
        yield


class Killed(BaseException):
    """Ends a run the way SIGKILL would: nothing after the raise is recorded."""


class Recording:
    """Counts calls per item; raises Killed for the items named in ``kill``."""

    side_effects = False
    takeover_policy = "retry"
    expected_duration_s = 0.0

    def __init__(self, name: str = "recording", kill: set[str] | None = None) -> None:
        self.name = name
        self.kill = kill or set()
        self.calls: dict[str, int] = {}

    def process(self, context: ItemContext) -> Any:
        self.calls[context.item_id] = self.calls.get(context.item_id, 0) + 1
        if context.item_id in self.kill:
            raise Killed
        return {"done": context.item_id, "attempt": context.attempt}


def make_runner(database: Database, *processors: Any, **settings: Any) -> BatchRunner:
    registry = ProcessorRegistry()
    for processor in processors:
        registry.register(processor)
    return BatchRunner(database, settings=BatchSettings(**settings), registry=registry)


def items(batch_id: str, *ids: Any, processor: str = "recording", data: Any = None):
    return [
        BatchItem(batch_id, item_id, data if data is not None else {"n": i}, processor)
        for i, item_id in enumerate(ids)
    ]


def row(database: Database, key: str) -> dict[str, Any]:
    with database.transaction() as conn:
        found = conn.execute(
            "SELECT *, extract(epoch FROM lease_until - now()) AS lease_left_s "
            "FROM batch_item WHERE idempotency_key = %s",
            (key,),
        ).fetchone()
    assert found is not None, key
    return found


def shift_time(database: Database, seconds: float) -> None:
    """Move every lease back, as if ``seconds`` had passed."""
    with database.transaction() as conn:
        conn.execute(
            "UPDATE batch_item "
            "SET lease_until = lease_until - make_interval(secs => %s)",
            (seconds,),
        )


def test_completed_item_served_from_cache(database: Database) -> None:
    processor = Recording()
    runner = make_runner(database, processor)

    first = runner.run(items("b0", "i1", "i2"))
    second = runner.run(items("b0", "i1", "i2"))

    assert [r.status for r in first.results] == [ItemStatus.COMPLETED] * 2
    assert [r.cached for r in second.results] == [True, True]
    assert second.results[0].output == {"done": "i1", "attempt": 1}
    assert processor.calls == {"i1": 1, "i2": 1}


def test_killed_item_taken_over_after_lease(database: Database) -> None:
    """An item killed after its claim completes on a delivery after the lease."""
    # GIVEN a 3 s Lambda killed while running i1 of b1
    killer = Recording(kill={"i1"})
    with pytest.raises(Killed):
        make_runner(database, killer).run(
            items("b1", "i1"), context=FakeLambdaContext(remaining_ms=3000)
        )
    stored = row(database, "batch:b1:item:i1")
    assert stored["status"] == "in_progress"
    assert stored["attempts"] == 1
    assert stored["lease_left_s"] < 31

    # WHEN the message comes back before the lease ends
    processor = Recording()
    runner = make_runner(database, processor)
    early = runner.run(items("b1", "i1"), context=FakeLambdaContext(remaining_ms=3000))

    # THEN it is handed back without running
    assert early.results[0].status is ItemStatus.IN_PROGRESS
    assert early.results[0].handed_back is True
    assert processor.calls == {}

    # WHEN it comes back 31 s later (visibility timeout 30 s)
    shift_time(database, 31)
    late = runner.run(items("b1", "i1"), context=FakeLambdaContext(remaining_ms=3000))

    # THEN it is reclaimed and completes on its second attempt
    assert late.results[0].status is ItemStatus.COMPLETED
    assert late.results[0].attempts == 2
    assert row(database, "batch:b1:item:i1")["attempts"] == 2
    assert processor.calls == {"i1": 1}


@pytest.mark.parametrize("raw", [0, None, -250])
def test_no_time_left_refuses_then_reclaims(database: Database, raw: object) -> None:
    """With no time left nothing starts, and a later delivery runs the item."""
    processor = Recording()
    runner = make_runner(database, processor)

    rejected = runner.run(items("b2", "i1"), context=FakeLambdaContext(raw=raw))
    later = runner.run(items("b2", "i1"), context=FakeLambdaContext(remaining_ms=5000))

    assert rejected.results[0].status is ItemStatus.NOT_STARTED
    assert rejected.results[0].handed_back is True
    assert later.results[0].status is ItemStatus.COMPLETED
    assert later.results[0].attempts == 1
    assert processor.calls == {"i1": 1}


def test_claim_with_zero_time_has_finite_lease(database: Database) -> None:
    """A claim made with 0 s left has a short lease that expires."""
    killer = Recording(kill={"i1"})
    runner = make_runner(database, killer, time_reserve_ms=0)

    with pytest.raises(Killed):
        runner.run(items("b3", "i1"), context=FakeLambdaContext(raw=0))

    stored = row(database, "batch:b3:item:i1")
    assert 0 < stored["lease_left_s"] <= 10.5
    shift_time(database, 11)
    processor = Recording()
    again = make_runner(database, processor).run(items("b3", "i1"))
    assert again.results[0].status is ItemStatus.COMPLETED
    assert again.results[0].attempts == 2


def test_rejected_items_logged_once_per_run(
    database: Database, caplog: pytest.LogCaptureFixture
) -> None:
    runner = make_runner(database, Recording())

    runner.run(items("b30", "ok", None, 7, "x" * 600))

    [line] = [r for r in caplog.records if r.getMessage() == "batch.items_rejected"]
    assert line.count == 3  # type: ignore[attr-defined]
    named = line.items  # type: ignore[attr-defined]
    assert [entry["item_id"] for entry in named[:2]] == ["null", "7"]
    assert [entry["reason"] for entry in named] == [
        "missing item id",
        "invalid_item",
        "invalid_item",
    ]
    assert "id must be a string" in named[1]["error"]


def test_missing_ids_rejected_one_by_one(database: Database) -> None:
    """Null, absent and empty ids fail on their own and share no key."""
    processor = Recording()
    runner = make_runner(database, processor)
    batch = [
        BatchItem("b4", None, {"v": 1}, "recording"),
        BatchItem("b4", item_id=None, data={"v": 2}, processor="recording"),
        BatchItem("b4", "", {"v": 3}, "recording"),
        BatchItem("b4", "ok", {"v": 4}, "recording"),
    ]

    run = runner.run(batch)
    rerun = runner.run(batch)

    for result in run.results[:3] + rerun.results[:3]:
        assert result.status is ItemStatus.FAILED
        assert result.reason == "missing item id"
        assert result.retryable is False
        assert result.cached is False
        assert result.output is None
    assert run.results[3].status is ItemStatus.COMPLETED
    assert processor.calls == {"ok": 1}
    with database.transaction() as conn:
        keys = conn.execute("SELECT idempotency_key FROM batch_item").fetchall()
    assert [k["idempotency_key"] for k in keys] == ["batch:b4:item:ok"]


def test_changed_payload_is_conflict(database: Database) -> None:
    """New data under used ids is a conflict: nothing re-runs, no old output."""
    processor = Recording()
    runner = make_runner(database, processor)
    runner.run(items("b5", "i1", data={"prompt": "summarise A", "budget_usd": 1}))

    changed = runner.run(items("b5", "i1", data={"budget_usd": 5}))

    result = changed.results[0]
    assert result.status is ItemStatus.FAILED
    assert result.reason == "payload_mismatch"
    assert result.retryable is False
    assert result.output is None
    assert result.ok is False
    assert processor.calls == {"i1": 1}
    stored = row(database, "batch:b5:item:i1")
    assert stored["status"] == "completed"
    assert stored["data"] == {"prompt": "summarise A", "budget_usd": 1}


def test_conflict_raises_and_claims_nothing(database: Database) -> None:
    """With raise_on_conflict the request is rejected before anything runs."""
    processor = Recording()
    runner = make_runner(database, processor)
    runner.run(items("b5", "i1", data={"budget_usd": 1}))

    with pytest.raises(IdempotencyConflictError, match="batch:b5:item:i1"):
        runner.run(
            [
                BatchItem("b5", "new", {"x": 1}, "recording"),
                BatchItem("b5", "i1", {"budget_usd": 5}, "recording"),
            ],
            raise_on_conflict=True,
        )

    assert processor.calls == {"i1": 1}
    with database.transaction() as conn:
        count = conn.execute(
            "SELECT count(*) AS n FROM batch_item WHERE item_id = 'new'"
        ).fetchone()
    assert count is not None
    assert count["n"] == 0


def test_other_org_same_ids_is_conflict(database: Database) -> None:
    runner = make_runner(database, Recording())
    runner.run([BatchItem("b6", "i1", {"a": 1}, "recording", org_id="acme")])

    other = runner.run([BatchItem("b6", "i1", {"a": 1}, "recording", org_id="evil")])

    assert other.results[0].reason == "payload_mismatch"
    assert other.results[0].output is None


def test_duplicate_in_flight_runs_once(database: Database) -> None:
    """The same item in two concurrent runs executes once."""
    entered, release = threading.Event(), threading.Event()

    class Blocking(Recording):
        def process(self, context: ItemContext) -> Any:
            entered.set()
            assert release.wait(10)
            return super().process(context)

    blocking = Blocking()
    first_results: list[Any] = []
    other_database = Database(DatabaseConfig(url=database.config.url))
    worker = threading.Thread(
        target=lambda: first_results.append(
            make_runner(other_database, blocking).run(items("b7", "i1"))
        )
    )
    worker.start()
    assert entered.wait(10)

    duplicate = make_runner(database, blocking).run(items("b7", "i1"))
    release.set()
    worker.join(10)
    other_database.close()
    redelivered = make_runner(database, blocking).run(items("b7", "i1"))

    assert duplicate.results[0].status is ItemStatus.IN_PROGRESS
    assert duplicate.results[0].handed_back is True
    assert first_results[0].results[0].status is ItemStatus.COMPLETED
    assert redelivered.results[0].cached is True
    assert redelivered.results[0].output == {"done": "i1", "attempt": 1}
    assert blocking.calls == {"i1": 1}


def test_items_that_cannot_finish_not_started(database: Database) -> None:
    """Ten 2 s items in 15 s: those that cannot finish are not started."""
    clock = FakeClock()
    processor = ClockProcessor(clock, 2.0)
    runner = make_runner(database, processor)
    batch = items("b8", *[f"i{n}" for n in range(10)], processor="clock")

    run = runner.run(batch, context=FakeLambdaContext(15_000, clock))

    statuses = [r.status for r in run.results]
    assert statuses == [ItemStatus.COMPLETED] * 7 + [ItemStatus.NOT_STARTED] * 3
    assert clock.now - 1000.0 <= 15.0 - 1.0
    assert all(processor.calls[f"i{n}"] == 1 for n in range(7))
    assert all(f"i{n}" not in processor.calls for n in range(7, 10))

    redelivered = runner.run(batch, context=FakeLambdaContext(15_000, clock))

    assert [r.cached for r in redelivered.results[:7]] == [True] * 7
    assert all(r.ok for r in redelivered.results)
    assert all(processor.calls[f"i{n}"] == 1 for n in range(10))
    assert [r.attempts for r in redelivered.results] == [1] * 10


def test_statements_do_not_grow_with_batch_size(database: Database) -> None:
    counts = []
    for size in (10, 1000):
        counting = CountingDatabase(DatabaseConfig(url=database.config.url))
        runner = make_runner(counting, Recording())
        runner.run(items(f"size{size}", *[f"i{n}" for n in range(size)]))
        counts.append(counting.statements)
        counting.close()

    assert counts[0] == counts[1]
    assert counts[0] <= 8


def test_side_effects_recorded_as_they_happen(database: Database) -> None:
    downstream = CountingDownstream().start()
    try:
        counting = CountingDatabase(DatabaseConfig(url=database.config.url))
        runner = make_runner(counting, KeyedHttpProcessor(downstream.url))
        run = runner.run(items("side", "i1", "i2", "i3", processor="keyed"))
        counting.close()
    finally:
        downstream.stop()

    assert all(r.ok for r in run.results)
    # claim (with its commit setting) + (started, completed) per item + audit,
    # each with its SET LOCAL
    assert counting.statements == 3 + 3 * 4 + 2
    assert downstream.effects == {f"batch:side:item:i{n}": 1 for n in (1, 2, 3)}


def test_escalate_policy_after_takeover(database: Database) -> None:
    """A side-effecting item whose worker died mid-call goes to a person."""
    downstream = CountingDownstream().start()
    escalations: list[dict[str, Any]] = []

    class Started:
        id = "esc-1"
        approval_url = "http://127.0.0.1/approvals/esc-1"

    def escalate(**kwargs: Any) -> Started:
        escalations.append(kwargs)
        return Started()

    class DiesAfterCall(KeyedHttpProcessor):
        def process(self, context: ItemContext) -> Any:
            super().process(context)
            raise Killed

    try:
        with pytest.raises(Killed):
            make_runner(
                database, DiesAfterCall(downstream.url, takeover_policy="escalate")
            ).run(items("b9", "i1", processor="keyed"))
        shift_time(database, 600)
        registry = ProcessorRegistry()
        registry.register(
            KeyedHttpProcessor(downstream.url, takeover_policy="escalate")
        )
        runner = BatchRunner(
            database, settings=BatchSettings(), registry=registry, escalate=escalate
        )
        run = runner.run(items("b9", "i1", processor="keyed"))
    finally:
        downstream.stop()

    result = run.results[0]
    assert result.status is ItemStatus.FAILED
    assert result.reason == "escalated"
    assert result.output == {
        "escalationId": "esc-1",
        "approvalUrl": "http://127.0.0.1/approvals/esc-1",
    }
    assert downstream.calls["batch:b9:item:i1"] == 1
    assert escalations[0]["source"] == {
        "pattern": "batch",
        "batchId": "b9",
        "itemId": "i1",
        "idempotencyKey": "batch:b9:item:i1",
    }


def test_audit_row_with_counts(database: Database) -> None:
    runner = make_runner(database, Recording())

    run = runner.run(
        [
            BatchItem("b10", "i1", {}, "recording"),
            BatchItem("b10", "", {}, "recording"),
        ]
    )

    with database.transaction() as conn:
        audit = conn.execute(
            "SELECT * FROM audit_log WHERE pattern = 'batch' AND task_id = 'b10'"
        ).fetchall()
    assert len(audit) == 1
    assert audit[0]["action"] == "batch.run_completed"
    assert audit[0]["run_id"] == run.run_id
    assert audit[0]["metadata"] == {
        "total": 2,
        "completed": 1,
        "failed": 1,
        "handedBack": 0,
    }


def test_repeated_id_in_one_run(database: Database) -> None:
    """A repeated id shares the first outcome, or is compared with the stored row."""
    processor = Recording()
    runner = make_runner(database, processor)
    runner.run([BatchItem("b11", "i1", {"v": 0}, "recording")])

    run = runner.run(
        [
            BatchItem("b11", "i1", {"v": 1}, "recording"),
            BatchItem("b11", "i1", {"v": 0}, "recording"),
            BatchItem("b11", "i2", {"v": 0}, "recording"),
            BatchItem("b11", "i2", {"v": 0}, "recording"),
            BatchItem("b11", "i2", {"v": 1}, "recording"),
        ]
    )

    reasons = [r.reason for r in run.results]
    assert reasons == ["payload_mismatch", None, None, None, "payload_mismatch"]
    assert run.results[1].cached is True
    assert run.results[3].cached is True
    assert run.results[3].output == run.results[2].output
    assert processor.calls == {"i1": 1, "i2": 1}


@pytest.mark.parametrize(
    ("item_id", "data", "field"),
    [
        ("nul-data", {"note": "a\x00b"}, "data.note"),
        ("nul-key", {"a\x00": 1}, "data key 'a\\x00'"),
        ("surrogate-data", {"note": "\ud800"}, "data.note"),
        ("n\x00id", {"n": 1}, "id contains the NUL character"),
        ("s\ud800", {"n": 1}, "id contains a lone UTF-16 surrogate"),
    ],
)
def test_unstorable_text_fails_item_alone(
    database: Database, item_id: str, data: Any, field: str
) -> None:
    """PostgreSQL cannot store NUL and UTF-8 cannot encode a lone surrogate."""
    processor = Recording()
    runner = make_runner(database, processor)

    run = runner.run(
        [
            BatchItem("b20", "ok", {"n": 0}, "recording"),
            BatchItem("b20", item_id, data, "recording"),
        ]
    )

    ok, bad = run.results
    assert ok.status is ItemStatus.COMPLETED
    assert bad.status is ItemStatus.FAILED
    assert bad.reason == "invalid_item"
    assert bad.retryable is False
    assert field in (bad.error or "")
    assert processor.calls == {"ok": 1}


class Returning:
    """Returns the output in the item's data, or raises with its ``raise``."""

    name = "returning"
    side_effects = False
    takeover_policy = "retry"
    expected_duration_s = 0.0

    def __init__(self, outputs: dict[str, Any]) -> None:
        self.outputs = outputs

    def process(self, context: ItemContext) -> Any:
        output = self.outputs[context.item_id]
        if isinstance(output, Exception):
            raise output
        return output


def nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth):
        value = {"deep": value}
    return value


def nested_tuple(depth: int) -> tuple[Any, ...]:
    value: tuple[Any, ...] = ()
    for _ in range(depth):
        value = (value,)
    return value


@pytest.mark.parametrize(
    "output",
    [
        "a\x00b",
        {"k": ["\ud800"]},
        10**5000,
        nested(600),
        nested(5000),
        nested_tuple(1490),
        {1: "a"},
    ],
    ids=["nul", "lone-surrogate", "huge-int", "deep", "deeper", "tuples", "number-key"],
)
def test_unstorable_output_fails_item_alone(database: Database, output: Any) -> None:
    runner = make_runner(database, Returning({"ok": {"v": 1}, "bad": output}))

    run = runner.run(
        [
            BatchItem("b22", "ok", {"n": 0}, "returning"),
            BatchItem("b22", "bad", {"n": 1}, "returning"),
        ]
    )

    ok, bad = run.results
    assert ok.status is ItemStatus.COMPLETED
    assert row(database, "batch:b22:item:ok")["output"] == {"v": 1}
    assert bad.status is ItemStatus.FAILED
    assert bad.reason == "processor_error"
    assert "cannot be stored" in (bad.error or "")
    assert len(bad.error or "") <= MAX_MESSAGE_CHARS + len(" … ")
    assert row(database, "batch:b22:item:bad")["status"] == "failed"


def test_error_text_with_nul_is_stored(database: Database) -> None:
    failure = PermanentError("downstream said \x00 and \udc80")
    runner = make_runner(database, Returning({"bad": failure}))

    run = runner.run([BatchItem("b23", "bad", {"n": 1}, "returning")])

    [bad] = run.results
    assert bad.reason == "processor_error"
    stored = row(database, "batch:b23:item:bad")["error"]
    assert stored == "PermanentError: downstream said \\x00 and \\udc80"
    assert bad.error == stored


def test_escaped_nul_text_is_stored(database: Database) -> None:
    """A backslash followed by "u0000" is ordinary text, not a NUL."""
    runner = make_runner(database, Recording())

    run = runner.run([BatchItem("b21", "i1", {"note": "\\u0000"}, "recording")])

    assert run.results[0].status is ItemStatus.COMPLETED
    assert row(database, "batch:b21:item:i1")["data"] == {"note": "\\u0000"}


def test_invalid_batch_and_org_ids_fail_alone(database: Database) -> None:
    """Batch "a:item:b" with item "c" would share a key with "a" and "b:item:c"."""
    processor = Recording()
    runner = make_runner(database, processor)

    run = runner.run(
        [
            BatchItem("a", "b:item:c", {"n": 0}, "recording"),
            BatchItem("a:item:b", "c", {"n": 1}, "recording"),
            BatchItem("b\x00", "i1", {"n": 2}, "recording"),
            BatchItem("b22", "i2", {"n": 3}, "recording", org_id="o\x00"),
            BatchItem("a:item:b", "d", {"n": 4}, "recording"),
        ]
    )

    reasons = [r.reason for r in run.results]
    assert reasons == [None] + ["invalid_item"] * 4
    assert "batchId must be" in (run.results[1].error or "")
    assert "orgId must be" in (run.results[3].error or "")
    assert processor.calls == {"b:item:c": 1}
    with database.transaction() as conn:
        keys = conn.execute("SELECT idempotency_key FROM batch_item").fetchall()
        audited = conn.execute(
            "SELECT task_id FROM audit_log WHERE pattern = 'batch'"
        ).fetchall()
    assert [k["idempotency_key"] for k in keys] == ["batch:a:item:b:item:c"]
    assert [a["task_id"] for a in audited] == ["a"]


def nested_list(depth: int) -> Any:
    data: Any = []
    for _ in range(depth - 1):
        data = [data]
    return data


def test_deeply_nested_data_fails_alone(database: Database) -> None:
    processor = Recording()
    runner = make_runner(database, processor)

    run = runner.run(
        [
            BatchItem("b23", "ok", {"n": 0}, "recording"),
            BatchItem("b23", "deep", {"tree": nested_list(5_000)}, "recording"),
        ]
    )

    ok, bad = run.results
    assert ok.status is ItemStatus.COMPLETED
    assert bad.status is ItemStatus.FAILED
    assert bad.reason == "invalid_item"
    assert bad.retryable is False
    assert "data is nested too deeply" in (bad.error or "")
    assert processor.calls == {"ok": 1}


@pytest.mark.parametrize("org_id", [None, ""])
def test_absent_org_id_is_default(database: Database, org_id: Any) -> None:
    """An absent org id means the default org, as on the HTTP path."""
    processor = Recording()
    runner = make_runner(database, processor)

    run = runner.run([BatchItem("b24", "i1", {"n": 0}, "recording", org_id=org_id)])

    result = run.results[0]
    assert result.status is ItemStatus.COMPLETED
    assert result.item.org_id == "default"
    assert row(database, "batch:b24:item:i1")["org_id"] == "default"
    with database.transaction() as conn:
        audited = conn.execute(
            "SELECT org_id FROM audit_log WHERE pattern = 'batch' AND task_id = 'b24'"
        ).fetchall()
    assert [a["org_id"] for a in audited] == ["default"]


def test_fifo_group_stops_after_item_failed_before_running(
    database: Database,
) -> None:
    processor = Recording()
    runner = make_runner(database, processor)

    run = runner.run(
        [
            BatchItem("f1", None, {"n": 0}, "recording", group_id="g1"),
            BatchItem("f1", "x2", {"n": 1}, "recording", group_id="g1"),
            BatchItem("f1", "y1", {"n": 2}, "recording", group_id="g2"),
        ],
        fifo=True,
    )

    missing, later, other = run.results
    assert missing.reason == "missing item id"
    assert later.status is ItemStatus.NOT_STARTED
    assert later.reason == "group_failed"
    assert other.status is ItemStatus.COMPLETED
    assert processor.calls == {"y1": 1}


def test_fifo_group_waits_for_item_held_elsewhere(database: Database) -> None:
    # GIVEN x1 of group g1 claimed by a worker that died mid-item
    killer = make_runner(database, Recording(kill={"x1"}))
    with pytest.raises(Killed):
        killer.run([BatchItem("f2", "x1", {"n": 0}, "recording", group_id="g1")])

    # WHEN the group arrives again before that lease ends
    processor = Recording()
    run = make_runner(database, processor).run(
        [
            BatchItem("f2", "x1", {"n": 0}, "recording", group_id="g1"),
            BatchItem("f2", "x2", {"n": 1}, "recording", group_id="g1"),
        ],
        fifo=True,
    )

    # THEN neither runs: x2 must not overtake x1
    leased_elsewhere, later = run.results
    assert leased_elsewhere.reason == "in_progress_elsewhere"
    assert later.status is ItemStatus.NOT_STARTED
    assert later.reason == "group_failed"
    assert processor.calls == {}


def test_failed_record_hands_items_back(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The audit row fails inside the record transaction, as it would if
    # PostgreSQL went away between the two statements.
    audit_calls: list[dict[str, Any]] = []

    def write_audit(connection: Any, **fields: Any) -> bool:
        audit_calls.append(fields)
        if len(audit_calls) == 1:
            raise DatabaseUnavailableError("connection lost")
        return real_write_audit(connection, **fields)

    real_write_audit = runner_module.write_audit
    monkeypatch.setattr(runner_module, "write_audit", write_audit)
    processor = Recording()
    runner = make_runner(database, processor)

    run = runner.run(items("b11", "i1", "i2"))

    # Nothing was stored, so both items come back to be delivered again.
    assert [(r.reason, r.retryable) for r in run.results] == [
        ("database_unavailable", True),
        ("database_unavailable", True),
    ]
    with database.transaction() as conn:
        rows = conn.execute(
            "SELECT status FROM batch_item WHERE batch_id = 'b11'"
        ).fetchall()
        audit = conn.execute(
            "SELECT metadata FROM audit_log WHERE task_id = 'b11'"
        ).fetchall()
    assert [row["status"] for row in rows] == ["in_progress", "in_progress"]
    # The audit row was tried once more on its own, with the items handed back.
    assert [row["metadata"] for row in audit] == [
        {"total": 2, "completed": 0, "failed": 2, "handedBack": 2}
    ]


def test_unreachable_database_one_try_per_step(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Nothing listens on the port, so the claim fails, and the audit row of
    # the run is the only other write: one attempt each, not a retry that
    # would spend a second connect timeout.
    unreachable = Database(
        DatabaseConfig(
            url=f"postgresql://postgres@127.0.0.1:{free_port()}/test",
            connect_timeout_s=1,
        )
    )
    runner = make_runner(unreachable, Recording())

    with caplog.at_level("INFO"):
        run = runner.run(items("b12", "i1"))

    assert [(r.reason, r.retryable) for r in run.results] == [
        ("database_unavailable", True)
    ]
    messages = [record.getMessage() for record in caplog.records]
    assert messages.count("db.connecting") == 2
    assert messages.count("batch.audit_failed") == 1


@pytest.mark.parametrize(
    ("step", "rollback"),
    [
        ("claim", psycopg.errors.DeadlockDetected),
        ("complete_in", psycopg.errors.DeadlockDetected),
        ("claim", psycopg.errors.SerializationFailure),
    ],
)
def test_rolled_back_transaction_runs_again(
    database: Database,
    monkeypatch: pytest.MonkeyPatch,
    step: str,
    rollback: type[Exception],
) -> None:
    # PostgreSQL rolls one transaction of a deadlock (or a serialization
    # conflict) back. The runner runs that transaction again instead of
    # handing every item back.
    real = getattr(BatchStore, step)
    calls: list[str] = []

    def deadlock_once(self: BatchStore, *args: Any, **kwargs: Any) -> Any:
        calls.append(step)
        if len(calls) == 1:
            raise rollback("rolled back")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(BatchStore, step, deadlock_once)
    runner = make_runner(database, Recording())

    run = runner.run(items(f"b13-{step}-{rollback.__name__}", "i1", "i2"))

    assert calls == [step, step]
    assert [(r.status, r.attempts) for r in run.results] == [
        (ItemStatus.COMPLETED, 1),
        (ItemStatus.COMPLETED, 1),
    ]


def test_unusable_ids_fail_alone(database: Database) -> None:
    runner = make_runner(database, Recording())

    run = runner.run(
        [
            BatchItem("b14", "good", {"x": 1}, "recording"),
            BatchItem(["not", "a", "batch id"], "i1", {}, "recording"),  # type: ignore[arg-type]
            BatchItem("b14", "org", {}, "recording", org_id={"a": 1}),  # type: ignore[arg-type]
        ]
    )

    assert [(r.status, r.reason) for r in run.results] == [
        (ItemStatus.COMPLETED, None),
        (ItemStatus.FAILED, "invalid_item"),
        (ItemStatus.FAILED, "invalid_item"),
    ]
    with database.transaction() as conn:
        stored = conn.execute(
            "SELECT status FROM batch_item WHERE batch_id = 'b14'"
        ).fetchall()
    assert stored == [{"status": "completed"}]


def test_unstorable_run_id_rejected(database: Database) -> None:
    runner = make_runner(database, Recording())

    with pytest.raises(ValidationError) as caught:
        runner.run(items("b15", "i1"), run_id="req\x00id")

    assert caught.value.field == "run_id"
    with database.transaction() as conn:
        stored = conn.execute(
            "SELECT count(*) AS n FROM batch_item WHERE batch_id = 'b15'"
        ).fetchone()
    assert stored == {"n": 0}


class _UnreadableError(Exception):
    def __str__(self) -> str:
        raise AttributeError("no message")


class _BadRetryAfter(TransientError):
    @property
    def retry_after(self) -> float:
        raise RuntimeError("no retry_after")


class _BadRetryable(Exception):
    @property
    def retryable(self) -> bool:
        raise RuntimeError("no retryable")


class _Misbehaving(Recording):
    """Fails with exceptions whose attributes raise, or over-reports calls."""

    def process(self, context: ItemContext) -> Any:
        if context.item_id == "unreadable":
            raise _UnreadableError()
        if context.item_id == "bad-retry-after":
            raise _BadRetryAfter("busy")
        if context.item_id == "bad-retryable":
            raise _BadRetryable("odd")
        context.extra["calls"] = 2**31
        return "done"


def test_misbehaving_processor_fails_alone(database: Database) -> None:
    runner = make_runner(database, Recording(), _Misbehaving("misbehaving"))

    run = runner.run(
        [
            BatchItem("b16", "good", {}, "recording"),
            BatchItem("b16", "unreadable", {}, "misbehaving"),
            BatchItem("b16", "many-calls", {}, "misbehaving"),
            BatchItem("b16", "bad-processor", {}, ["not", "a", "name"]),  # type: ignore[arg-type]
            BatchItem("b16", "bad-retry-after", {}, "misbehaving"),
            BatchItem("b16", "bad-retryable", {}, "misbehaving"),
        ]
    )

    assert [(r.status, r.reason, r.attempts) for r in run.results] == [
        (ItemStatus.COMPLETED, None, 1),
        (ItemStatus.FAILED, "processor_error", 1),
        (ItemStatus.COMPLETED, None, 1000),
        (ItemStatus.FAILED, "invalid_item", 0),
        # Retried with backoff, as a TransientError without a usable hint.
        (ItemStatus.FAILED, "transient_error", 3),
        (ItemStatus.FAILED, "processor_error", 1),
    ]
    assert "could not be read" in (run.results[1].error or "")
    assert "processor must be a processor name" in (run.results[3].error or "")
