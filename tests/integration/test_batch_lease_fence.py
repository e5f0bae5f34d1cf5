"""The lease fence holds when a take-over commits during a completion."""

from __future__ import annotations

import threading
import time

from resilience.batch import idempotency_key, payload_hash
from resilience.batch.store import BatchStore, ClaimRequest, Completion
from resilience.db import Database

KEY = idempotency_key("fence", "a")


def _request() -> ClaimRequest:
    data = {"n": 1}
    return ClaimRequest(
        batch_id="fence",
        item_id="a",
        key=KEY,
        payload_hash=payload_hash(data, processor="p", org_id="default"),
        data=data,
        processor="p",
        org_id="default",
    )


def _row_locks_waiting(database: Database) -> int:
    with database.transaction() as conn:
        found = conn.execute(
            "SELECT count(*) AS n FROM pg_stat_activity "
            "WHERE datname = current_database() AND wait_event_type = 'Lock'"
        ).fetchone()
    assert found is not None
    return int(found["n"])


def test_late_completion_skips_takeover(database: Database) -> None:
    # Each worker has its own connection, as two Lambda instances would.
    old_worker = Database(database.config)
    observer = Database(database.config)
    store = BatchStore(database)
    old_store = BatchStore(old_worker)
    first = old_store.claim([_request()], owner="old", lease_s=0.01)
    row_id = first[KEY].row_id
    assert row_id is not None
    time.sleep(0.05)

    finished: list[set[str]] = []
    # The new owner takes the expired lease over in a transaction that stays
    # open, so the old owner's completion reads the row as still its own and
    # then waits for the row lock.
    with database.transaction() as takeover:
        rows = store.claim([_request()], owner="new", lease_s=60, connection=takeover)
        assert rows[KEY].claimed
        late = Completion(row_id, "completed", True, 1, None, None, None, {"v": "old"})
        worker = threading.Thread(
            target=lambda: finished.append(old_store.complete([late], owner="old"))
        )
        worker.start()
        deadline = time.monotonic() + 10
        while _row_locks_waiting(observer) == 0:
            assert time.monotonic() < deadline, "the completion never waited"
            time.sleep(0.01)
    worker.join(timeout=10)
    old_worker.close()
    observer.close()

    assert finished == [set()]
    with database.transaction() as conn:
        stored = conn.execute(
            "SELECT status, lease_owner, output, attempts FROM batch_item "
            "WHERE idempotency_key = %s",
            (KEY,),
        ).fetchone()
    assert stored == {
        "status": "in_progress",
        "lease_owner": "new",
        "output": None,
        "attempts": 2,
    }
