"""Benchmark: the batch runner against a per-item lookup-then-insert loop.

Both sides record 10,000 items with a no-op processor on the same PostgreSQL
in one run, in alternating rounds of one runner batch each, after one
untimed round that warms every connection. The baseline is
what an ORM does per item: look the key up, then insert the result, each
statement committed on its own. The runner claims a whole batch in one
statement and records it in one more. A second baseline does the runner's
work item by item (look up, insert the claim, update the outcome, each
committed on its own) and is reported beside the first.

Also counted: statements per batch (each transaction's ``SET LOCAL`` included)
for batches of 10 and 1,000 items, without and with side effects.

Usage::

    python bench/batches.py [--items 10000] [--batch-size 1000] [--json]
        [--database-url postgresql://...]

Without ``--database-url`` (or ``DATABASE_URL``) an embedded PostgreSQL is
started. It runs with ``fsync=off`` (set on its command line), which makes
each commit of the per-item loops nearly free. Its ratios are therefore lower
than on a server that flushes its commits. The report prints the setting. A
scratch database is created and dropped on the server.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "shared")]

import psycopg  # noqa: E402
from psycopg import sql  # noqa: E402
from psycopg.types.json import Jsonb  # noqa: E402

from local.embedded import EmbeddedPostgres  # noqa: E402
from resilience.batch import (  # noqa: E402
    BatchItem,
    BatchRunner,
    BatchSettings,
    ItemContext,
    ProcessorRegistry,
    idempotency_key,
    payload_hash,
)
from resilience.batch.processors import TakeoverPolicy  # noqa: E402
from resilience.db import Database, DatabaseConfig, apply_schema  # noqa: E402

TARGET_RATIO = 15.0


class NoOp:
    name = "noop"
    side_effects = False
    takeover_policy: TakeoverPolicy = "retry"
    expected_duration_s = 0.0

    def process(self, context: ItemContext) -> Any:
        return None


class NoOpWithSideEffects(NoOp):
    name = "noop-effects"
    side_effects = True


class _CountingConnection:
    def __init__(self, connection: Any, owner: CountingDatabase) -> None:
        self._connection = connection
        self._owner = owner

    def execute(self, *args: Any, **kwargs: Any) -> Any:
        self._owner.statements += 1
        return self._connection.execute(*args, **kwargs)

    def cursor(self, *args: Any, **kwargs: Any) -> Any:
        return _CountingConnection(
            self._connection.cursor(*args, **kwargs), self._owner
        )

    def __getattr__(self, name: str) -> Any:
        return getattr(self._connection, name)


class CountingDatabase(Database):
    """Counts every statement, the ``SET LOCAL`` of each transaction included."""

    def __init__(self, config: DatabaseConfig) -> None:
        super().__init__(config)
        self.statements = 0

    @contextmanager
    def transaction(self, *, statement_timeout_ms: int | None = None) -> Iterator[Any]:
        with super().transaction(statement_timeout_ms=statement_timeout_ms) as conn:
            self.statements += 1
            yield _CountingConnection(conn, self)


def naive_round(
    conn: psycopg.Connection[Any], batch_id: str, start: int, stop: int, *, claim: bool
) -> float:
    """Look each key up, then insert its result; autocommit, as an ORM would.

    With ``claim``, insert an in-progress row first and update it with the
    outcome afterwards, which is the work the runner does.
    """
    processor = NoOp()
    started = time.perf_counter()
    for n in range(start, stop):
        item_id = f"i{n}"
        key = idempotency_key(batch_id, item_id)
        data = {"n": n}
        found = conn.execute(
            "SELECT status, output FROM batch_item WHERE idempotency_key = %s",
            (key,),
        ).fetchone()
        if found is not None:
            continue
        digest = payload_hash(data, processor="noop", org_id="default")
        status = "in_progress" if claim else "completed"
        output = None if claim else processor.process(None)  # type: ignore[arg-type]
        conn.execute(
            "INSERT INTO batch_item (batch_id, item_id, idempotency_key, status, "
            "attempts, output, payload_hash, data) "
            "VALUES (%s, %s, %s, %s, 1, %s, %s, %s)",
            (batch_id, item_id, key, status, Jsonb(output), digest, Jsonb(data)),
        )
        if claim:
            output = processor.process(None)  # type: ignore[arg-type]
            conn.execute(
                "UPDATE batch_item SET status = 'completed', success = true, "
                "output = %s, updated_at = now() WHERE idempotency_key = %s",
                (Jsonb(output), key),
            )
    return time.perf_counter() - started


def _runner(database: Database) -> BatchRunner:
    registry = ProcessorRegistry()
    registry.register(NoOp())
    registry.register(NoOpWithSideEffects())
    return BatchRunner(database, settings=BatchSettings(), registry=registry)


def _items(batch_id: str, start: int, stop: int, processor: str) -> list[BatchItem]:
    return [
        BatchItem(batch_id, f"i{n}", {"n": n}, processor) for n in range(start, stop)
    ]


def measure(url: str, count: int, batch_size: int) -> dict[str, float]:
    """Time the three subjects in alternating rounds of ``batch_size`` items.

    Alternating spreads load spikes from other programs over all subjects
    alike, which matters on a shared machine. An untimed first round warms
    each subject's connection: PostgreSQL loads the table's catalog entries
    into a connection on its first statements.
    """
    totals = {"naive": 0.0, "claim": 0.0, "runner": 0.0}
    database = Database(DatabaseConfig(url=url))
    runner = _runner(database)
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            for start in range(-batch_size, count, batch_size):
                stop = min(count, start + batch_size)
                # Each round starts with no garbage from the others, so a
                # full collection of one subject's objects never lands in
                # another subject's time.
                gc.collect()
                naive_s = naive_round(conn, "naive", start, stop, claim=False)
                gc.collect()
                claim_s = naive_round(conn, "naive-claim", start, stop, claim=True)
                gc.collect()
                started = time.perf_counter()
                run = runner.run(_items("runner", start, stop, "noop"))
                runner_s = time.perf_counter() - started
                if run.completed != stop - start:
                    raise RuntimeError(f"batch {start}-{stop} did not complete")
                if start >= 0:
                    totals["naive"] += naive_s
                    totals["claim"] += claim_s
                    totals["runner"] += runner_s
    finally:
        database.close()
    return totals


def statements_per_batch(url: str, size: int, processor: str) -> int:
    database = CountingDatabase(DatabaseConfig(url=url))
    try:
        _runner(database).run(_items(f"count-{processor}-{size}", 0, size, processor))
        return database.statements
    finally:
        database.close()


@contextmanager
def scratch_database(server_url: str | None) -> Iterator[str]:
    embedded = None
    if not server_url:
        embedded = EmbeddedPostgres().start()
        server_url = embedded.url
    name = f"ar_bench_{uuid.uuid4().hex[:10]}"
    try:
        with psycopg.connect(server_url, autocommit=True) as admin:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        url = psycopg.conninfo.make_conninfo(server_url, dbname=name)
        database = Database(DatabaseConfig(url=url, statement_timeout_ms=60_000))
        apply_schema(database)
        database.close()
        try:
            yield url
        finally:
            with psycopg.connect(server_url, autocommit=True) as admin:
                admin.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                        sql.Identifier(name)
                    )
                )
    finally:
        if embedded is not None:
            embedded.close()


def server_facts(url: str) -> dict[str, str]:
    with psycopg.connect(url) as conn:
        version = conn.execute("SHOW server_version").fetchone()
        fsync = conn.execute("SHOW fsync").fetchone()
        sync_commit = conn.execute("SHOW synchronous_commit").fetchone()
    return {
        "server_version": str(version[0]) if version else "?",
        "fsync": str(fsync[0]) if fsync else "?",
        "synchronous_commit": str(sync_commit[0]) if sync_commit else "?",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=10_000, help="items per side")
    parser.add_argument(
        "--batch-size", type=int, default=1000, help="items per runner batch"
    )
    parser.add_argument(
        "--database-url",
        default=os.environ.get("DATABASE_URL"),
        help="PostgreSQL server URL (default: DATABASE_URL, else embedded)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)

    # The metric lines of every run would drown the report.
    os.environ.setdefault("POWERTOOLS_METRICS_DISABLED", "true")
    with scratch_database(args.database_url) as url:
        facts = server_facts(url)
        totals = measure(url, args.items, args.batch_size)
        naive_s, claim_s, runner_s = totals["naive"], totals["claim"], totals["runner"]
        counts = {
            str(size): statements_per_batch(url, size, "noop") for size in (10, 1000)
        }
        counts_effects = {
            str(size): statements_per_batch(url, size, "noop-effects")
            for size in (10, 1000)
        }

    ratio = naive_s / runner_s
    result = {
        "items": args.items,
        "batch_size": args.batch_size,
        "naive_seconds": round(naive_s, 3),
        "runner_seconds": round(runner_s, 3),
        "naive_items_per_second": round(args.items / naive_s),
        "claim_then_update_seconds": round(claim_s, 3),
        "throughput_ratio_vs_claim_then_update": round(claim_s / runner_s, 1),
        "runner_items_per_second": round(args.items / runner_s),
        "throughput_ratio_vs_naive": round(ratio, 1),
        "target_ratio": TARGET_RATIO,
        "meets_target": ratio >= TARGET_RATIO,
        "statements_per_batch": counts,
        "statements_per_batch_side_effects": counts_effects,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        **facts,
    }
    if args.json:
        print(json.dumps(result))
        return 0

    print(f"items: {args.items} (runner batches of {args.batch_size})")
    print(
        f"naive lookup+insert loop: {naive_s:.2f} s "
        f"({result['naive_items_per_second']} items/s)"
    )
    print(
        f"claim-then-update loop:   {claim_s:.2f} s "
        f"({round(args.items / claim_s)} items/s)"
    )
    print(
        f"batch runner:             {runner_s:.2f} s "
        f"({result['runner_items_per_second']} items/s)"
    )
    print(f"throughput ratio: {ratio:.1f}x (target {TARGET_RATIO:.0f}x)")
    print(f"ratio vs claim-then-update: {claim_s / runner_s:.1f}x")
    print(f"statements per batch, no side effects: {counts}")
    print(f"statements per batch, side effects:    {counts_effects}")
    print(
        f"PostgreSQL {facts['server_version']}, fsync={facts['fsync']}, "
        f"synchronous_commit={facts['synchronous_commit']}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
