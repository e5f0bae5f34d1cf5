"""A hanging primary leaves the fallback time, with the default settings.

A non-final attempt gets at most ``LLM_ATTEMPT_SHARE`` of the time left, so
a primary that accepts the connection and never responds costs seconds, not
the whole deadline. The bounds are generous because exact timings belong to
bench/llm_failover.py.
"""

from __future__ import annotations

import time
import uuid

import pytest

from resilience.db import Database
from resilience.llm import CompletionRequest, warm_up
from tests.llm_fixtures import (
    LLMControl,
    llm,
    llm_env,
    llm_server,
    make_chain,
    usage_rows,
)

__all__ = ["llm", "llm_env", "llm_server", "make_chain"]

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(autouse=True)
def preloaded_sdks(llm_env: dict[str, str]) -> None:
    # As in the handler's init phase: importing the anthropic SDK on first
    # use takes seconds on a loaded machine, which is not what is measured.
    preload = warm_up()
    if preload is not None:
        preload.join()


def test_hang_with_deadline_uses_fallback(
    make_chain, database: Database, llm: LLMControl
) -> None:
    # Deadline 5 s less the 1 s margin leaves 4 s: the primary gets half.
    llm.fail("openai", "hang")
    request = CompletionRequest(
        prompt="hello", run_id=f"req-{uuid.uuid4()}", deadline_s=5.0, cache=False
    )

    started = time.monotonic()
    result = make_chain().complete(request)
    elapsed = time.monotonic() - started

    assert result.provider == "anthropic"
    assert result.degraded is True
    assert result.reason == "openai:gpt-4o-mini: transient"
    assert 1.9 < elapsed < 3.5
    rows = usage_rows(database, request.run_id)
    assert [row["provider"] for row in rows] == ["anthropic"]


def test_hang_without_deadline_costs_attempt_timeout(
    make_chain, database: Database, llm: LLMControl
) -> None:
    # No request deadline: the default attempt timeout (6 s) bounds the hang.
    llm.fail("openai", "hang")
    request = CompletionRequest(prompt="hello", run_id=f"req-{uuid.uuid4()}")

    started = time.monotonic()
    result = make_chain().complete(request)
    elapsed = time.monotonic() - started

    assert result.provider == "anthropic"
    assert 5.9 < elapsed < 8.0


def test_final_provider_gets_all_time_left(
    make_chain, database: Database, llm: LLMControl
) -> None:
    # The last provider of the tier is not held back for the template: a slow
    # anthropic answer after 3 s still arrives inside a 5 s deadline.
    llm.fail("openai", "error", status=503)
    llm.fail("anthropic", "slow", delayS=3.0)
    request = CompletionRequest(
        prompt="hello", run_id=f"req-{uuid.uuid4()}", deadline_s=5.0
    )

    result = make_chain().complete(request)

    assert result.provider == "anthropic"
    assert result.reason == "openai:gpt-4o-mini: transient"
