"""Spend per org: soft budget alerts, the hard budget under a race, unknown prices."""

from __future__ import annotations

import json
import threading
import uuid
from decimal import Decimal
from typing import Any

import pytest

from resilience.db import Database
from resilience.errors import BudgetExceededError
from resilience.llm import CompletionRequest
from resilience.llm.usage import daily_spend, utc_day
from tests.llm_fixtures import (
    LLMControl,
    SlackRecorder,
    llm,
    llm_env,
    llm_server,
    make_chain,
    slack,
    usage_rows,
)

__all__ = ["llm", "llm_env", "llm_server", "make_chain", "slack"]

pytestmark = pytest.mark.timeout(60)

# gpt-4o-mini output is 6e-7 USD per token, so 16,000 output tokens cost
# 0.0096 USD: about the 0.01 USD per request of the budget race.
COMPLETION_TOKENS = 16_000


def _request(org_id: str = "acme", **fields: Any) -> CompletionRequest:
    return CompletionRequest(
        prompt=f"budget prompt {uuid.uuid4()}",
        run_id=f"req-{uuid.uuid4()}",
        org_id=org_id,
        **fields,
    )


def _set_spent(database: Database, org_id: str, spent: str) -> None:
    with database.transaction() as connection:
        connection.execute(
            "INSERT INTO llm_daily_spend (org_id, day, spent) VALUES (%s, %s, %s)",
            (org_id, utc_day(), Decimal(spent)),
        )


def _race(chains: list[Any]) -> tuple[list[Any], list[BudgetExceededError]]:
    """Run one request per chain at once; each chain has its own connection."""
    results: list[Any] = []
    errors: list[BudgetExceededError] = []
    lock = threading.Lock()
    barrier = threading.Barrier(len(chains))

    def worker(chain: Any) -> None:
        barrier.wait()
        try:
            result = chain.complete(_request(max_tokens=COMPLETION_TOKENS))
            with lock:
                results.append(result)
        except BudgetExceededError as error:
            with lock:
                errors.append(error)

    threads = [threading.Thread(target=worker, args=(chain,)) for chain in chains]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results, errors


def test_hard_budget_race_refuses_past_limit(
    make_chain, database: Database, llm: LLMControl
) -> None:
    # GIVEN a hard budget of 1.00 USD with 0.98 already spent today
    llm.fail("openai", "ok", completionTokens=COMPLETION_TOKENS)
    _set_spent(database, "acme", "0.98")
    settings = {"hard_budget_usd": Decimal("1.00"), "over_budget": "refuse"}
    chains = [make_chain(**settings) for _ in range(20)]

    # WHEN 20 instances each send a request of about 0.01 USD at once
    results, errors = _race(chains)

    # THEN spend ends at most at the budget and the rest are refused
    total = daily_spend(database, "acme", utc_day())
    assert total.spent <= Decimal("1.00")
    assert total.reserved == 0
    assert len(results) == 2
    assert len(errors) == 18
    assert all(error.retry_after > 0 for error in errors)
    assert "budget of 1.00 USD" in str(errors[0])
    assert len(llm.requests("openai")) == 2
    assert llm.requests("anthropic") == []
    assert len(usage_rows(database)) == 2


def test_hard_budget_degrades_to_template(
    make_chain, database: Database, llm: LLMControl
) -> None:
    llm.fail("openai", "ok", completionTokens=COMPLETION_TOKENS)
    _set_spent(database, "acme", "0.98")
    settings = {"hard_budget_usd": Decimal("1.00"), "over_budget": "template"}
    chains = [make_chain(**settings) for _ in range(20)]

    results, errors = _race(chains)

    assert errors == []
    providers = sorted(result.provider for result in results)
    assert providers == ["local"] * 18 + ["openai"] * 2
    assert all(result.degraded for result in results if result.provider == "local")
    total = daily_spend(database, "acme", utc_day())
    assert total.spent <= Decimal("1.00")
    assert len(usage_rows(database)) == 20


def test_hard_budget_is_per_org(
    make_chain, database: Database, llm: LLMControl
) -> None:
    _set_spent(database, "acme", "5")
    chain = make_chain(hard_budget_usd=Decimal("1.00"))

    result = chain.complete(_request(org_id="other"))

    assert result.provider == "openai"
    with pytest.raises(BudgetExceededError, match="org 'acme'"):
        chain.complete(_request(org_id="acme"))


def test_soft_budget_alerts_once_per_day(
    make_chain, database: Database, llm: LLMControl, slack: SlackRecorder
) -> None:
    chain = make_chain(daily_budget_usd=Decimal("0.000001"))

    for _ in range(3):
        chain.complete(_request())

    over_budget = [text for text in slack.texts() if "over budget" in text]
    assert len(over_budget) == 1
    assert "acme" in over_budget[0]
    with database.transaction() as connection:
        audits = connection.execute(
            "SELECT * FROM audit_log WHERE action = 'spend_over_budget'"
        ).fetchall()
    assert len(audits) == 1
    assert audits[0]["org_id"] == "acme"
    total = daily_spend(database, "acme", utc_day())
    assert total.alerted_at is not None
    assert total.calls == 3


def test_unknown_price_stores_null_and_alerts(
    make_chain,
    database: Database,
    llm: LLMControl,
    slack: SlackRecorder,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tiers = {"default": [{"provider": "openai", "model": "gpt-unpriced-1"}]}
    monkeypatch.setenv("LLM_TIERS", json.dumps(tiers))
    request = _request()

    result = make_chain().complete(request)

    assert result.provider == "openai"
    assert result.model == "gpt-unpriced-1"
    assert result.cost is None
    rows = usage_rows(database, request.run_id)
    assert len(rows) == 1
    assert rows[0]["cost"] is None
    assert rows[0]["price_version"] is None
    assert rows[0]["prompt_tokens"] > 0
    alerts = [text for text in slack.texts() if "gpt-unpriced-1" in text]
    assert len(alerts) == 1
    total = daily_spend(database, "acme", utc_day())
    assert total.unknown_cost_calls == 1
