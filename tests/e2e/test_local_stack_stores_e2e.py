"""The local stack and its stores: Redis keys after a run.

Each test starts a stack of its own, because it stops the stack, which the
session's ``local_stack`` must not see.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.e2e.harness import redis_keys, run_stack_on_test_servers

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _call_demo(client: httpx.Client) -> httpx.Response:
    return client.post("/breaker/calls", json={"service": "demo", "path": "/ok"})


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
