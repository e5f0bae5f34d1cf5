"""The fallback chain with the real openai and anthropic SDKs against the local server.

Each test asserts the answer, the provider that gave it, the llm_usage row,
and that the call finished within its deadline (with a generous margin:
exact timings belong to bench/llm_failover.py).
"""

from __future__ import annotations

import time
import uuid
from decimal import Decimal

import pytest

from resilience.db import Database
from resilience.llm import CompletionRequest
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


def _request(
    prompt: str = "What is a circuit breaker?", **fields: object
) -> CompletionRequest:
    return CompletionRequest(prompt=prompt, run_id=f"req-{uuid.uuid4()}", **fields)  # type: ignore[arg-type]


def test_healthy_primary_answers(
    make_chain, database: Database, llm: LLMControl
) -> None:
    chain = make_chain()
    request = _request()

    started = time.monotonic()
    result = chain.complete(request)
    elapsed = time.monotonic() - started

    assert result.ok is True
    assert result.provider == "openai"
    assert result.model == "gpt-4o-mini"
    assert result.degraded is False
    assert "openai/gpt-4o-mini" in result.output
    assert elapsed < 5
    rows = usage_rows(database, request.run_id)
    assert len(rows) == 1
    row = rows[0]
    assert row["provider"] == "openai"
    assert row["prompt_tokens"] > 0
    assert row["completion_tokens"] > 0
    expected = (
        Decimal("0.00000015") * row["prompt_tokens"]
        + Decimal("0.0000006") * row["completion_tokens"]
    )
    assert row["cost"] == expected
    assert row["price_version"] == "2026-12-01/2024-07-18"
    assert row["degraded"] is False
    assert row["cached"] is False


def test_primary_529_falls_back(
    make_chain, database: Database, llm: LLMControl
) -> None:
    llm.fail("openai", "529")
    chain = make_chain()
    request = _request()

    result = chain.complete(request)

    assert result.provider == "anthropic"
    assert result.degraded is True
    assert "anthropic/claude-haiku-4-5" in result.output
    rows = usage_rows(database, request.run_id)
    assert [row["provider"] for row in rows] == ["anthropic"]
    assert rows[0]["degraded"] is True
