"""Single use under concurrency: one decision wins, one Step Functions call."""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from resilience.db import Database, DatabaseConfig
from resilience.errors import GoneError
from resilience.escalation.models import Decision, EscalationResolvedError
from resilience.escalation.service import EscalationService, get_service
from tests.escalation_support import (
    Harness,
    audit_actions,
    count_task_calls,
    harness_for_test,
    moto_session,
)

pytestmark = pytest.mark.timeout(60)

APPROVERS = ["alice@example.com", "bob@example.com"]


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    yield from moto_session()


@pytest.fixture
def harness(
    app_env: dict[str, str], moto_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Harness]:
    yield from harness_for_test(moto_endpoint, monkeypatch)


def start(harness: Harness) -> dict[str, Any]:
    started = harness.start(
        {
            "data": {"deploy": "v2"},
            "reason": "production deploy",
            "approvers": APPROVERS,
        }
    )
    harness.pump_notify()
    return started


def test_fifty_concurrent_posts_one_winner(
    harness: Harness, database: Database
) -> None:
    """50 approve and reject POSTs from two approvers: one wins, 49 get 409."""
    started = start(harness)
    urls = started["approvalUrls"]
    calls = count_task_calls()
    barrier = threading.Barrier(50)

    def post(index: int) -> dict[str, Any]:
        approver = APPROVERS[index % 2]
        body = (
            {"decision": "approve"}
            if index % 2 == 0
            else {"decision": "reject", "reason": f"attempt {index}"}
        )
        barrier.wait()
        return harness.post_json(urls[approver], body)

    with ThreadPoolExecutor(max_workers=50) as pool:
        answers = list(pool.map(post, range(50)))

    statuses = Counter(answer["statusCode"] for answer in answers)
    assert statuses == {200: 1, 409: 49}
    winner = json.loads(next(a["body"] for a in answers if a["statusCode"] == 200))
    losers = [json.loads(a["body"]) for a in answers if a["statusCode"] == 409]
    assert {loser["decidedBy"] for loser in losers} == {winner["decidedBy"]}
    assert {loser["outcome"] for loser in losers} == {winner["outcome"]}
    assert len(calls) == 1
    assert harness.stack.execution_status(started["id"]) == "SUCCEEDED"
    actions = Counter(audit_actions(database, started["id"]))
    assert actions["escalation.decided"] == 1
    assert actions["escalation.decision_refused"] == 49


def test_parallel_connections_one_winner(harness: Harness, database_url: str) -> None:
    """Three clicks within moments, on separate connections like separate Lambdas."""
    started = start(harness)
    shared = get_service()
    calls = count_task_calls()
    clicks = [
        Decision(kind="approve", actor=APPROVERS[0], channel="link"),
        Decision(kind="approve", actor=APPROVERS[0], channel="link"),  # double click
        Decision(kind="reject", actor=APPROVERS[1], channel="link", reason="no"),
    ] * 4
    services = [
        EscalationService(
            config=shared.config,
            database=Database(DatabaseConfig(url=database_url)),
            encryptor=shared.encryptor,
            signer=shared.signer,
            stepfunctions=shared.stepfunctions,
        )
        for _ in clicks
    ]
    barrier = threading.Barrier(len(clicks))

    def click(index: int) -> str:
        barrier.wait()
        try:
            services[index].decide(started["id"], clicks[index])
        except EscalationResolvedError as exc:
            return f"refused:{exc.decided_by}"
        except GoneError:
            return "gone"
        return "won"

    with ThreadPoolExecutor(max_workers=len(clicks)) as pool:
        results = list(pool.map(click, range(len(clicks))))
    for service in services:
        service.database.close()

    assert results.count("won") == 1
    refused = [r for r in results if r.startswith("refused:")]
    assert len(refused) == len(clicks) - 1
    assert len(set(refused)) == 1
    assert len(calls) == 1
    assert harness.stack.execution_status(started["id"]) == "SUCCEEDED"
