"""The fallback chain with the real openai and anthropic SDKs against the local server.

Each test asserts the answer, the provider that gave it, the llm_usage row,
and that the call finished within its deadline, with a generous margin
because exact timings belong to bench/llm_failover.py.
"""

from __future__ import annotations

import json
import time
import uuid
from decimal import Decimal
from typing import Any

import pytest

from local.embedded import free_port
from resilience.db import Database
from resilience.errors import (
    ContentPolicyError,
    ContextWindowExceededError,
    ValidationError,
)
from resilience.llm import CompletionRequest, complete_many, warm_up
from resilience.llm.template import TEMPLATE_ANSWER
from tests.llm_fixtures import (
    FakeLambdaContext,
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
    prompt: str = "What is a circuit breaker?", **fields: Any
) -> CompletionRequest:
    return CompletionRequest(prompt=prompt, run_id=f"req-{uuid.uuid4()}", **fields)


def _timed(chain: Any, request: CompletionRequest, **kwargs: Any) -> tuple[Any, float]:
    started = time.monotonic()
    result = chain.complete(request, **kwargs)
    return result, time.monotonic() - started


def test_healthy_primary_responds(
    make_chain, database: Database, llm: LLMControl
) -> None:
    request = _request()

    result, elapsed = _timed(make_chain(), request)

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
    assert row["total_tokens"] == row["prompt_tokens"] + row["completion_tokens"]
    expected = (
        Decimal("0.00000015") * row["prompt_tokens"]
        + Decimal("0.0000006") * row["completion_tokens"]
    )
    assert row["cost"] == expected
    assert row["price_version"] == "2026-12-01/2024-07-18"
    assert row["degraded"] is False
    assert row["cached"] is False
    assert row["latency_ms"] > 0


@pytest.mark.parametrize(
    ("mode", "options"),
    [
        ("529", {}),
        ("error", {"status": 500}),
        ("error", {"status": 503}),
        ("malformed", {}),
        ("bad_key", {}),
        ("unknown_model", {}),
    ],
)
def test_primary_failure_falls_back(
    make_chain, database: Database, llm: LLMControl, mode: str, options: dict[str, Any]
) -> None:
    llm.fail("openai", mode, **options)
    request = _request()

    result, elapsed = _timed(make_chain(), request)

    assert result.provider == "anthropic"
    assert result.model == "claude-haiku-4-5"
    assert result.degraded is True
    assert "anthropic/claude-haiku-4-5" in result.output
    assert elapsed < 5
    assert len(llm.requests("openai")) == 1
    rows = usage_rows(database, request.run_id)
    assert [row["provider"] for row in rows] == ["anthropic"]
    assert rows[0]["degraded"] is True
    assert rows[0]["attempts"] == 2
    assert rows[0]["cost"] > 0


def test_rate_limit_opens_breaker_for_retry_after(
    make_chain, database: Database, llm: LLMControl
) -> None:
    # GIVEN the primary returns 429 with Retry-After: 7
    llm.fail("openai", "429", retryAfter=7)
    chain = make_chain()

    # WHEN one request fails over
    first, elapsed = _timed(chain, _request())

    # THEN the fallback responds at once, without sleeping 7 s
    assert first.provider == "anthropic"
    assert elapsed < 3
    # AND another instance (fresh breakers, same Redis) skips the primary
    from resilience.breaker import clear_breakers

    clear_breakers()
    second = make_chain().complete(_request("a different prompt"))
    assert second.provider == "anthropic"
    assert len(llm.requests("openai")) == 1
    snapshot = chain.breaker(chain.config.tiers["default"][0]).snapshot()
    assert snapshot.state.value == "open"
    remaining = snapshot.opened_until.timestamp() - time.time()
    assert 4 < remaining <= 7.5
    assert len(usage_rows(database)) == 2


@pytest.mark.parametrize("retry_after", ["inf", 1e12])
def test_absurd_retry_after_capped_at_hour(
    make_chain, database: Database, llm: LLMControl, retry_after: str | float
) -> None:
    # GIVEN the primary returns 429 with a Retry-After no server means
    llm.fail("openai", "429", retryAfter=retry_after)
    chain = make_chain()

    result = chain.complete(_request())

    # THEN the fallback responds, and the primary is shut out for an hour at most
    assert result.provider == "anthropic"
    snapshot = chain.breaker(chain.config.tiers["default"][0]).snapshot()
    if retry_after == "inf":
        assert snapshot.state.value == "closed"  # no usable value: not opened
    else:
        assert snapshot.state.value == "open"
        assert snapshot.opened_until is not None
        remaining = snapshot.opened_until.timestamp() - time.time()
        assert 3500 < remaining <= 3600


def test_hang_costs_one_attempt_timeout(
    make_chain, database: Database, llm: LLMControl
) -> None:
    llm.fail("openai", "hang")
    chain = make_chain(attempt_timeout_s=2.0, deadline_margin_s=0.0)
    request = _request(deadline_s=5.0)

    result, elapsed = _timed(chain, request)

    assert result.provider == "anthropic"
    assert result.degraded is True
    assert 1.9 < elapsed < 3.5
    rows = usage_rows(database, request.run_id)
    assert [row["provider"] for row in rows] == ["anthropic"]


def test_everything_down_returns_template(
    make_chain,
    database: Database,
    llm: LLMControl,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("OPENAI_BASE_URL", f"{closed}/v1")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", closed)
    from resilience.llm.providers import reset_providers

    reset_providers()
    request = _request()

    result, elapsed = _timed(make_chain(), request)

    assert result.ok is True
    assert result.provider == "local"
    assert result.model == "template"
    assert result.output == TEMPLATE_ANSWER
    assert result.degraded is True
    assert elapsed < 5
    rows = usage_rows(database, request.run_id)
    assert len(rows) == 1
    assert rows[0]["provider"] == "local"
    assert rows[0]["degraded"] is True
    assert rows[0]["cost"] == 0
    assert "transient" in rows[0]["reason"]
    metrics = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    names = [
        name["Name"]
        for m in metrics
        for name in m["_aws"]["CloudWatchMetrics"][0]["Metrics"]
    ]
    assert names.count("LLMRequests") == 1
    assert names.count("LLMTemplateFallback") == 1
    assert all(m["_aws"]["CloudWatchMetrics"][0]["Dimensions"] == [[]] for m in metrics)


def test_context_too_long_moves_to_larger_window(
    make_chain, database: Database, llm: LLMControl, monkeypatch: pytest.MonkeyPatch
) -> None:
    tiers = {
        "default": [
            {
                "provider": "openai",
                "model": "gpt-4o-mini",
                "largerWindow": {"provider": "openai", "model": "gpt-4.1-mini"},
            },
            {"provider": "anthropic", "model": "claude-haiku-4-5"},
        ]
    }
    monkeypatch.setenv("LLM_TIERS", json.dumps(tiers))
    llm.fail("openai", "context_length", model="gpt-4o-mini")
    request = _request()

    result = make_chain().complete(request)

    assert result.provider == "openai"
    assert result.model == "gpt-4.1-mini"
    assert result.degraded is False
    assert [r["model"] for r in llm.requests("openai")] == [
        "gpt-4o-mini",
        "gpt-4.1-mini",
    ]
    rows = usage_rows(database, request.run_id)
    assert [row["model"] for row in rows] == ["gpt-4.1-mini"]


def test_context_too_long_without_larger_model_is_returned(
    make_chain, database: Database, llm: LLMControl
) -> None:
    llm.fail("openai", "context_length")
    chain = make_chain()

    with pytest.raises(ContextWindowExceededError, match="context window"):
        chain.complete(_request())

    assert len(llm.requests("openai")) == 1
    assert llm.requests("anthropic") == []
    assert usage_rows(database) == []


def test_content_policy_is_returned_not_retried(
    make_chain, database: Database, llm: LLMControl
) -> None:
    llm.fail("openai", "content_policy")
    chain = make_chain()

    with pytest.raises(ContentPolicyError):
        chain.complete(_request())

    assert len(llm.requests("openai")) == 1
    assert llm.requests("anthropic") == []


def test_lambda_remaining_time_bounds_the_call(
    make_chain, database: Database, llm: LLMControl
) -> None:
    # Both providers hang, so only the Lambda's remaining time ends the call.
    # The SDKs are imported first, as in the handler's init phase, because a
    # cold import of the fallback's SDK alone can take over a second.
    llm.fail("openai", "hang")
    llm.fail("anthropic", "hang")
    preload = warm_up()
    if preload is not None:
        preload.join()
    chain = make_chain(deadline_margin_s=0.5)
    context = FakeLambdaContext(
        aws_request_id=f"lambda-{uuid.uuid4()}", remaining_ms=2000
    )
    request = CompletionRequest(prompt="hello")

    result, elapsed = _timed(chain, request, context=context)

    assert result.provider == "local"
    assert elapsed < 2.0
    rows = usage_rows(database, context.aws_request_id)
    assert [row["provider"] for row in rows] == ["local"]


def test_missing_run_id_is_rejected(make_chain, llm: LLMControl) -> None:
    chain = make_chain()

    with pytest.raises(ValidationError, match="run_id is missing") as caught:
        chain.complete(CompletionRequest(prompt="hello"))

    assert caught.value.field == "run_id"
    assert llm.requests() == []


def test_cache_hit_costs_nothing(
    make_chain, database: Database, llm: LLMControl
) -> None:
    chain = make_chain(cache_ttl_s=3600)
    first = chain.complete(_request("cache me"))

    second = chain.complete(_request("cache me"))

    assert second.cached is True
    assert second.output == first.output
    assert second.provider == "openai"
    assert second.cost == 0
    assert len(llm.requests("openai")) == 1
    rows = usage_rows(database)
    assert [row["cached"] for row in rows] == [False, True]
    assert rows[1]["cost"] == 0
    assert rows[1]["prompt_tokens"] == 0


def test_cache_opt_out_and_template_never_cached(
    make_chain, database: Database, llm: LLMControl
) -> None:
    chain = make_chain(cache_ttl_s=3600)
    chain.complete(_request("no cache", cache=False))
    chain.complete(_request("no cache", cache=False))
    llm.fail("openai", "529")
    llm.fail("anthropic", "529")
    chain.complete(_request("down"))
    llm.reset()

    after = chain.complete(_request("down"))

    assert len(llm.requests("openai")) == 1
    assert after.provider == "openai"
    assert after.cached is False
    assert [row["cached"] for row in usage_rows(database)] == [
        False,
        False,
        False,
        False,
    ]


def test_hedge_asks_next_provider_after_delay(
    make_chain, database: Database, llm: LLMControl
) -> None:
    llm.fail("openai", "slow", delayS=1.5)
    chain = make_chain(hedge_delay_s=0.2)
    request = _request()

    result, elapsed = _timed(chain, request)

    assert result.provider == "anthropic"
    assert elapsed < 1.4
    # The slower call still finishes and its cost is recorded too.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and len(usage_rows(database, request.run_id)) < 2:
        time.sleep(0.1)
    rows = usage_rows(database, request.run_id)
    assert sorted(row["provider"] for row in rows) == ["anthropic", "openai"]
    loser = next(row for row in rows if row["provider"] == "openai")
    assert loser["reason"] == "hedge_lost"
    assert loser["cost"] > 0


def test_complete_many_keeps_order(
    make_chain, database: Database, llm: LLMControl
) -> None:
    chain = make_chain()
    prompts = [f"prompt number {index}" for index in range(6)]
    requests = [_request(prompt) for prompt in prompts]

    results = complete_many(requests, chain=chain, max_concurrency=3)

    assert [result.ok for result in results] == [True] * 6
    for prompt, result in zip(prompts, results, strict=True):
        assert prompt in result.output
    assert len(usage_rows(database)) == 6
