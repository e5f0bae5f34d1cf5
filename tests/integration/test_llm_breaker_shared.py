"""A provider's breaker is shared through Redis: a new process skips an open one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

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

pytestmark = pytest.mark.timeout(90)

ROOT = Path(__file__).resolve().parents[2]

# Sends 100 requests through a chain built from the environment and prints
# the providers that responded, as a fresh Lambda instance would.
CHILD = """
import json, sys, uuid
from resilience.llm import CompletionRequest, LLMChain
chain = LLMChain()
providers = []
for index in range(100):
    request = CompletionRequest(
        prompt=f"fresh process {index}", run_id=f"child-{uuid.uuid4()}"
    )
    providers.append(chain.complete(request).provider)
print(json.dumps(providers))
"""


def test_new_process_skips_open_breaker(
    make_chain, database: Database, llm: LLMControl, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN the primary failed until its breaker opened
    monkeypatch.setenv("LLM_BREAKER_FAILURES", "3")
    monkeypatch.setenv("LLM_BREAKER_RESET_S", "8")
    llm.fail("openai", "error", status=503)
    chain = make_chain()
    for _ in range(3):
        chain.complete(CompletionRequest(prompt="fail", run_id=f"req-{uuid.uuid4()}"))
    snapshot = chain.breaker(chain.config.tiers["default"][0]).snapshot()
    assert snapshot.state.value == "open"
    opened_until = snapshot.opened_until.timestamp()
    llm.fail("openai", "ok")

    # WHEN a new process sends 100 requests
    completed = subprocess.run(
        [sys.executable, "-c", CHILD],
        env={**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'shared'}"},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    providers = json.loads(completed.stdout.strip().splitlines()[-1])

    # THEN none reaches the primary before the cooldown ends
    assert len(providers) == 100
    early = [r for r in llm.requests("openai") if r["at"] < opened_until]
    assert len(early) == 3
    assert providers.count("anthropic") + providers.count("openai") == 100
    assert providers.count("openai") == len(llm.requests("openai")) - 3
    assert len(usage_rows(database)) == 103

    # AND after the cooldown a probe reaches the primary, which responds again
    time.sleep(max(0.0, opened_until - time.time()) + 0.2)
    after = make_chain().complete(CompletionRequest(prompt="probe", run_id="probe-1"))
    assert after.provider == "openai"
