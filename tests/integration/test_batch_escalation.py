"""A take-over escalated to a person, on moto's Step Functions, and resumed."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
import stamina

from resilience.batch import (
    BatchItem,
    BatchRunner,
    BatchSettings,
    ItemContext,
    ItemStatus,
    ProcessorRegistry,
)
from resilience.batch.sqs import process_sqs_event
from resilience.db import Database
from tests.batch_support import (
    CountingDownstream,
    FakeLambdaContext,
    KeyedHttpProcessor,
    sqs_event,
    sqs_record,
)
from tests.escalation_support import Harness, harness_for_test, moto_session

pytestmark = pytest.mark.timeout(60)


class Killed(BaseException):
    """Ends a run the way SIGKILL would: nothing after the raise is recorded."""


@pytest.fixture(autouse=True)
def no_retry_waits() -> Iterator[None]:
    with stamina.set_testing(True, attempts=100, cap=True):
        yield


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    yield from moto_session()


@pytest.fixture
def harness(
    app_env: dict[str, str], moto_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Harness]:
    yield from harness_for_test(moto_endpoint, monkeypatch)


def _runner(database: Database, processor: Any) -> BatchRunner:
    registry = ProcessorRegistry()
    registry.register(processor)
    return BatchRunner(database, settings=BatchSettings(), registry=registry)


def test_takeover_escalated_then_approved_runs_once_more(
    harness: Harness, database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    from resilience.messaging import sqs_client

    downstream = CountingDownstream().start()
    sqs = boto3.client("sqs", endpoint_url=harness.stack.endpoint)
    queue_url = sqs.create_queue(QueueName="batch-items-escalation")["QueueUrl"]
    monkeypatch.setenv("BATCH_ITEMS_QUEUE_URL", queue_url)
    sqs_client.cache_clear()
    key = "batch:esc1:item:i1"
    item = BatchItem("esc1", "i1", {"amount": 5}, "keyed")

    class DiesAfterCall(KeyedHttpProcessor):
        def process(self, context: ItemContext) -> Any:
            super().process(context)
            raise Killed

    try:
        # GIVEN a worker that died after its call, and a lease that has ended
        with pytest.raises(Killed):
            _runner(
                database, DiesAfterCall(downstream.url, takeover_policy="escalate")
            ).run([item])
        with database.transaction() as conn:
            conn.execute(
                "UPDATE batch_item SET lease_until = now() - interval '1 second'"
            )

        # WHEN another worker takes it over under the escalate policy
        processor = KeyedHttpProcessor(downstream.url, takeover_policy="escalate")
        escalated = _runner(database, processor).run([item]).results[0]

        # THEN it is not run but escalated, with a link for the approver
        assert escalated.status is ItemStatus.FAILED
        assert escalated.reason == "escalated"
        assert escalated.output["approvalUrl"].startswith("https://approvals.test/")
        assert downstream.calls[key] == 1
        assert len(harness.pump_notify()) == 1

        # WHEN a person approves and the resume step runs
        answer = harness.submit_form(
            escalated.output["approvalUrl"], {"decision": "approve"}
        )
        assert answer["statusCode"] == 200, answer["body"]
        assert len(harness.pump_resume()) == 1

        # THEN the item is back on the queue and completes once more
        messages = sqs.receive_message(
            QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1
        ).get("Messages", [])
        assert len(messages) == 1
        record = sqs_record(messages[0]["MessageId"], json.loads(messages[0]["Body"]))
        response = process_sqs_event(
            sqs_event(record), FakeLambdaContext(), runner=_runner(database, processor)
        )
    finally:
        downstream.stop()
        sqs_client.cache_clear()

    assert response == {"batchItemFailures": []}
    with database.transaction() as conn:
        row = conn.execute(
            "SELECT status, attempts FROM batch_item WHERE idempotency_key = %s",
            (key,),
        ).fetchone()
    assert row == {"status": "completed", "attempts": 2}
    assert downstream.calls[key] == 2
    assert downstream.effects[key] == 1
