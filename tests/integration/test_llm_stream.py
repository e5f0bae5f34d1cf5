"""Streamed completions: fallback before the first text, incomplete results after."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest

from resilience.db import Database
from resilience.llm import CompletionRequest, CompletionStream
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

PROMPT = "Explain in a few words why a stream can break halfway through"


def _stream(chain: Any, **fields: Any) -> tuple[CompletionStream, list[str], float]:
    request = CompletionRequest(prompt=PROMPT, run_id=f"req-{uuid.uuid4()}", **fields)
    started = time.monotonic()
    stream = CompletionStream(chain, request)
    pieces = list(stream)
    return stream, pieces, time.monotonic() - started


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_stream_healthy_records_usage_once(
    make_chain, database: Database, llm: LLMControl, monkeypatch, provider: str
) -> None:
    if provider == "anthropic":
        llm.fail("openai", "529")
    stream, pieces, elapsed = _stream(make_chain())

    result = stream.result
    assert result is not None
    assert result.provider == provider
    assert result.incomplete is False
    assert "".join(pieces) == result.output
    assert len(pieces) > 1
    assert result.usage.output_tokens > 0
    assert result.usage.estimated is False
    assert elapsed < 5
    rows = usage_rows(database)
    assert [row["provider"] for row in rows] == [provider]
    assert rows[0]["incomplete"] is False
    assert rows[0]["completion_tokens"] == result.usage.output_tokens


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_overload_event_first_falls_back(
    make_chain, database: Database, llm: LLMControl, monkeypatch, provider: str
) -> None:
    # GIVEN the primary returns 200 text/event-stream whose first event is an
    # overloaded error
    if provider == "anthropic":
        monkeypatch.setenv(
            "LLM_TIERS",
            '{"default": [{"provider": "anthropic", "model": "claude-haiku-4-5"},'
            ' {"provider": "openai", "model": "gpt-4o-mini"}]}',
        )
    llm.fail(provider, "error_event_first")
    fallback = "anthropic" if provider == "openai" else "openai"

    stream, pieces, elapsed = _stream(make_chain())

    # THEN nothing from the primary reaches the caller, and the fallback responds
    result = stream.result
    assert result is not None
    assert result.provider == fallback
    assert result.degraded is True
    assert result.incomplete is False
    text = "".join(pieces)
    assert f"from {provider}/" not in text
    assert f"from {fallback}/" in text
    assert elapsed < 3
    rows = usage_rows(database)
    assert [row["provider"] for row in rows] == [fallback]


@pytest.mark.parametrize("mode", ["error_event_after", "broken_stream"])
@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_failure_after_text_is_incomplete(
    make_chain,
    database: Database,
    llm: LLMControl,
    monkeypatch,
    mode: str,
    provider: str,
) -> None:
    if provider == "anthropic":
        llm.fail("openai", "529")
    llm.fail(provider, mode, model="*" if provider == "openai" else "claude-haiku-4-5")

    stream, pieces, _ = _stream(make_chain())

    result = stream.result
    assert result is not None
    assert result.incomplete is True
    assert result.provider == provider
    assert result.output == "".join(pieces)
    assert len(pieces) == 2
    assert result.reason is not None
    assert result.reason.startswith("stream_interrupted: transient")
    assert result.usage.estimated is True
    rows = usage_rows(database)
    assert len(rows) == 1
    assert rows[0]["incomplete"] is True
    assert rows[0]["tokens_estimated"] is True
    assert rows[0]["reason"] == result.reason
    assert rows[0]["cost"] > 0
    other = "anthropic" if provider == "openai" else None
    if other:
        assert llm.requests(other) == []


def test_broken_before_text_falls_back(
    make_chain, database: Database, llm: LLMControl
) -> None:
    llm.fail("openai", "broken_stream", afterChunks=0)

    stream, pieces, _ = _stream(make_chain())

    result = stream.result
    assert result is not None
    assert result.provider == "anthropic"
    assert result.incomplete is False
    assert "from anthropic/" in "".join(pieces)
    assert [row["provider"] for row in usage_rows(database)] == ["anthropic"]


def test_slow_stream_past_deadline_is_incomplete(
    make_chain, database: Database, llm: LLMControl
) -> None:
    llm.fail("openai", "slow_stream", chunkDelayS=0.6)

    stream, pieces, elapsed = _stream(make_chain(deadline_margin_s=0.0), deadline_s=1.5)

    result = stream.result
    assert result is not None
    assert result.incomplete is True
    assert result.reason == "stream_interrupted: transient"
    assert 0 < len(pieces) < 5
    assert elapsed < 3
    assert len(usage_rows(database)) == 1


def test_stream_everything_down_yields_template(
    make_chain, database: Database, llm: LLMControl
) -> None:
    llm.fail("openai", "error_event_first")
    llm.fail("anthropic", "529")

    stream, pieces, _ = _stream(make_chain())

    result = stream.result
    assert result is not None
    assert result.provider == "local"
    assert pieces == [result.output]
    assert [row["provider"] for row in usage_rows(database)] == ["local"]
