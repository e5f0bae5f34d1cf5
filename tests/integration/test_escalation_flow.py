"""Escalations end to end on moto's Step Functions and a real PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from resilience.db import Database
from resilience.escalation.crypto import encryptor_from_env
from resilience.escalation.service import reset_service
from tests.escalation_support import (
    RESUMED,
    Harness,
    create_stack,
    escalation_env,
    moto_endpoint,  # noqa: F401
)

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def harness(
    app_env: dict[str, str], moto_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Harness]:
    stack = create_stack(moto_endpoint)
    for key, value in escalation_env(stack).items():
        monkeypatch.setenv(key, value)
    reset_service()
    encryptor_from_env.cache_clear()
    RESUMED.clear()
    yield Harness(stack)
    reset_service()


def test_approve_resumes_with_edited_data(harness: Harness, database: Database) -> None:
    started = harness.start(
        {
            "data": {"refund": 120},
            "reason": "refund above limit",
            "source": {"pattern": "test", "itemId": "i1"},
        }
    )
    assert started["status"] == "pending"
    harness.pump_notify()

    answer = harness.submit_form(
        started["approvalUrl"], {"decision": "approve", "data": '{"refund": 100}'}
    )

    assert answer["statusCode"] == 200, answer["body"]
    assert harness.stack.execution_status(started["id"]) == "SUCCEEDED"
    harness.pump_resume()
    assert [r.data for r in RESUMED] == [{"refund": 100}]
    assert harness.status(started["id"])["status"] == "approved"
