"""The local stack and its stores: Redis keys after a run, embedded servers dying.

Each test starts a stack of its own, because it stops the stack or kills its
stores, which the session's ``local_stack`` must not see.
"""

from __future__ import annotations

import json
import os
import signal
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.harness import (
    LocalStackHandle,
    redis_keys,
    run_local_stack,
    run_stack_on_test_servers,
    stack_environment,
    wait_until,
)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

# The supervisor checks every second and PostgreSQL's crash recovery takes
# well under a second on a small cluster. The rest is slack for a loaded
# machine, not a performance target.
RECOVERY_BOUND_S = 30.0


def _call_demo(client: httpx.Client) -> httpx.Response:
    return client.post("/breaker/calls", json={"service": "demo", "path": "/ok"})


def _post_batch(client: httpx.Client) -> httpx.Response:
    batch = {
        "batchId": f"stores-{uuid.uuid4().hex[:8]}",
        "items": [{"id": "a", "data": {"n": 1}}],
    }
    return client.post("/batches", json=batch)


def _both_stores_answer(client: httpx.Client) -> bool:
    """Return whether a Redis-backed and a PostgreSQL-backed request succeed."""
    try:
        breaker = _call_demo(client)
        batch = _post_batch(client)
    except httpx.HTTPError:
        return False
    return breaker.status_code == 200 and batch.status_code == 200


def _process_exists(pid: int) -> bool:
    """Return whether ``pid`` runs. A zombie counts as exited."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    # The state follows the parenthesised command name, which may contain spaces.
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _state(stack: LocalStackHandle) -> dict[str, Any]:
    state_file = stack.log_path.parent / "stack.json"
    state: dict[str, Any] = json.loads(state_file.read_text())
    return state


@pytest.mark.timeout(180)
def test_stack_deletes_its_redis_keys(
    stack_database_url: str, redis_url: str, tmp_path: Path
) -> None:
    with run_stack_on_test_servers(
        tmp_path / "stack", stack_database_url, redis_url
    ) as stack:
        prefix = stack.redis_key_prefix
        assert prefix is not None
        # GIVEN a stack that wrote breaker state and a cached completion
        client = stack.http()
        assert _call_demo(client).status_code == 200
        completion = client.post("/completions", json={"prompt": "Say hi."})
        assert completion.status_code == 200, completion.text
        written = redis_keys(redis_url, prefix)
        assert any(":breaker:demo" in key for key in written), written
        assert any(":llm:cache:" in key for key in written), written

    # WHEN it has stopped, THEN no key under its prefix is left
    assert stack.process.returncode == 0
    assert redis_keys(redis_url, prefix) == []


@pytest.mark.timeout(240)
def test_embedded_stores_restart_after_kill(tmp_path: Path) -> None:
    env = stack_environment(
        DATABASE_URL=None,
        REDIS_URL=None,
        REDIS_KEY_PREFIX=None,
        UPSTASH_REDIS_REST_URL=None,
        UPSTASH_REDIS_URL=None,
    )
    with run_local_stack(tmp_path / "stack", env) as stack:
        client = stack.http()
        embedded = stack.info["embedded"]
        assert sorted(embedded) == ["postgres", "redis"]
        assert _both_stores_answer(client), stack.log_tail()

        # GIVEN the embedded servers that the stack recorded are killed
        killed = {name: int(embedded[name]["pid"]) for name in embedded}
        for pid in killed.values():
            os.kill(pid, signal.SIGKILL)

        # WHEN the supervisor notices and restarts them
        wait_until(
            lambda: _both_stores_answer(client),
            timeout_s=RECOVERY_BOUND_S,
            interval_s=0.5,
            description="stack answers after the kill",
        )

        # THEN they run again on the same ports, under new PIDs in stack.json
        def restarts_recorded() -> dict[str, Any] | None:
            # stack.json is rewritten just after a restart, so it may lag the API.
            current: dict[str, Any] = _state(stack)["embedded"]
            changed = all(current[name]["pid"] != pid for name, pid in killed.items())
            return current if changed else None

        restarted = wait_until(
            restarts_recorded, timeout_s=5, description="new PIDs in stack.json"
        )
        for name, old_pid in killed.items():
            assert restarted[name]["port"] == embedded[name]["port"], restarted
            assert restarted[name]["pid"] != old_pid, restarted
            assert _process_exists(restarted[name]["pid"]), restarted
        log = stack.log_path.read_text(errors="replace")
        for name, old_pid in killed.items():
            port = embedded[name]["port"]
            exited = f"embedded_{name}.exited port={port} pid={old_pid} status=-9"
            assert exited in log, stack.log_tail()
            assert f"embedded_{name}.restarted port={port}" in log, stack.log_tail()

    # AND SIGTERM stops the stack and the restarted servers, with no restart
    assert stack.process.returncode == 0, stack.log_tail()
    for name in killed:
        assert not _process_exists(restarted[name]["pid"]), name
    assert "embedded_supervisor.stopped" in stack.log_path.read_text()
