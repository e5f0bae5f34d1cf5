"""Plans of the batch statements that the table's size must not change.

A completion plan that scans batch_item on the outer side of a nested loop
reads all the outcomes again for every row it finds: for a batch of 1,000
that is a million comparisons, about 200 ms instead of 5. Lookups by batch
must find their rows through the key index, the only index besides the
primary key.
"""

from __future__ import annotations

import json
from typing import Any

from resilience.batch import idempotency_key, payload_hash
from resilience.batch.models import batch_key_range
from resilience.batch.operations import _FAILED
from resilience.batch.store import (
    _COMPLETE,
    _SUMMARY,
    BatchStore,
    ClaimRequest,
    Completion,
)
from resilience.db import Database

BATCH_SIZE = 1000


def _requests(batch_id: str) -> list[ClaimRequest]:
    return [
        ClaimRequest(
            batch_id=batch_id,
            item_id=f"i{n}",
            key=idempotency_key(batch_id, f"i{n}"),
            payload_hash=payload_hash({"n": n}, processor="p", org_id="default"),
            processor="p",
            org_id="default",
            data={"n": n},
        )
        for n in range(BATCH_SIZE)
    ]


def _outcomes_read_per_row(plan: dict[str, Any]) -> bool:
    """True when a nested loop has the outcomes (a function scan) inside."""
    children = plan.get("Plans", [])
    if plan["Node Type"] == "Nested Loop" and len(children) == 2:
        inner = children[1]
        if inner["Node Type"] == "Function Scan" or (
            inner["Node Type"] == "Materialize"
            and inner["Plans"][0]["Node Type"] == "Function Scan"
        ):
            return True
    return any(_outcomes_read_per_row(child) for child in children)


def test_completion_plan_reads_outcomes_once(database: Database) -> None:
    store = BatchStore(database)
    # A few thousand rows with no statistics is where the planner used to
    # guess that the lease check leaves one row.
    for batch in range(3):
        store.claim(_requests(f"plan-{batch}"), owner="old", lease_s=60)
    rows = store.claim(_requests("plan-new"), owner="new", lease_s=60)
    completions = [
        Completion(row.row_id, "completed", True, 1, None, None, None, {"n": 1})
        for row in rows.values()
        if row.row_id is not None
    ]
    assert len(completions) == BATCH_SIZE

    with database.transaction() as conn:
        explained = conn.execute(
            "EXPLAIN (FORMAT JSON) " + _COMPLETE,
            {"outcomes": json.dumps(completions), "owner": "new"},
        ).fetchone()
    assert explained is not None
    plan = next(iter(explained.values()))[0]["Plan"]
    assert not _outcomes_read_per_row(plan), plan

    assert len(store.complete(completions, owner="new")) == BATCH_SIZE


def _index_names(plan: dict[str, Any]) -> set[str]:
    names = {plan["Index Name"]} if "Index Name" in plan else set()
    for child in plan.get("Plans", []):
        names |= _index_names(child)
    return names


def test_batch_lookups_read_the_key_range(database: Database) -> None:
    store = BatchStore(database)
    for batch in range(3):
        store.claim(_requests(f"range-{batch}"), owner="w", lease_s=60)
    params = {**batch_key_range("range-1"), "org_id": "default"}
    for statement in (_SUMMARY, _FAILED):
        with database.transaction() as conn:
            # With sequential scans priced out, a plan without an index scan
            # means no index can serve the lookup.
            conn.execute("SET LOCAL enable_seqscan = off")
            explained = conn.execute(
                "EXPLAIN (FORMAT JSON) " + statement, params
            ).fetchone()
        assert explained is not None
        plan = next(iter(explained.values()))[0]["Plan"]
        assert _index_names(plan) == {"batch_item_idempotency_key_key"}, plan

    rows = store.summary_rows("range-1", org_id="default")
    assert sorted(row["item_id"] for row in rows) == sorted(
        f"i{n}" for n in range(BATCH_SIZE)
    )
