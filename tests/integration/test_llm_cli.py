"""``python -m resilience llm spend|prices`` against the test database."""

from __future__ import annotations

import json
import uuid
from decimal import Decimal

import pytest

from resilience.db import Database
from resilience.llm import CompletionRequest
from resilience.llm.cli import main
from tests.llm_fixtures import LLMControl, llm, llm_env, llm_server, make_chain

__all__ = ["llm", "llm_env", "llm_server", "make_chain"]

pytestmark = pytest.mark.timeout(60)


def test_spend_lists_orgs_with_totals(
    make_chain, database: Database, llm: LLMControl, capsys: pytest.CaptureFixture[str]
) -> None:
    chain = make_chain()
    for org_id in ("acme", "acme", "globex"):
        chain.complete(
            CompletionRequest(prompt="hi", org_id=org_id, run_id=f"r-{uuid.uuid4()}")
        )
    # The calls printed their metrics (EMF lines) to stdout already.
    capsys.readouterr()

    status = main(["spend"])

    assert status == 0
    output = json.loads(capsys.readouterr().out)
    orgs = {org["orgId"]: org for org in output["orgs"]}
    assert sorted(orgs) == ["acme", "globex"]
    assert orgs["acme"]["calls"] == 2
    assert Decimal(orgs["acme"]["spentUsd"]) > Decimal(orgs["globex"]["spentUsd"]) > 0
    assert output["budgetUsd"] == "100"


def test_spend_for_one_org_and_day(
    llm_env: dict[str, str], database: Database, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(["spend", "--org", "nobody", "--date", "2026-01-02"])

    assert status == 0
    output = json.loads(capsys.readouterr().out)
    assert output["day"] == "2026-01-02"
    assert output["orgs"][0]["spentUsd"] == "0"
    assert output["orgs"][0]["calls"] == 0


def test_prices_prints_version(capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["prices"])

    assert status == 0
    output = json.loads(capsys.readouterr().out)
    assert output["version"] == "2026-12-01"
    assert output["models"]["openai:gpt-4o-mini"][0]["cachedInput"] == "0.000000075"


def test_bad_org_is_usage_error(
    llm_env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(["spend", "--org", "no spaces allowed"])

    assert status == 2
    assert "--org" in capsys.readouterr().err
