"""Operator commands: failed items, re-drive (moto SQS), escalation outcomes."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import boto3
import pytest
import stamina
from moto import mock_aws

from resilience.batch import (
    BatchItem,
    BatchRunner,
    BatchSettings,
    ItemContext,
    ProcessorRegistry,
    resume_from_escalation,
)
from resilience.batch.cli import main
from resilience.batch.sqs import process_sqs_event
from resilience.db import Database
from resilience.errors import PermanentError
from tests.batch_support import FakeLambdaContext, sqs_event, sqs_record


@pytest.fixture(autouse=True)
def no_retry_waits() -> Iterator[None]:
    with stamina.set_testing(True, attempts=100, cap=True):
        yield


@pytest.fixture
def sqs(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_SQS", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with mock_aws():
        yield boto3.client("sqs", region_name="us-east-1")


class Flaky:
    """Fails for good until ``fixed`` is set, as a bug fixed by a deploy would."""

    name = "flaky"
    side_effects = False
    takeover_policy = "retry"
    expected_duration_s = 0.0

    def __init__(self) -> None:
        self.fixed = False
        self.calls: dict[str, int] = {}

    def process(self, context: ItemContext) -> Any:
        self.calls[context.item_id] = self.calls.get(context.item_id, 0) + 1
        if not self.fixed and context.data.get("bad"):
            raise PermanentError("bug: cannot handle bad items")
        return {"ok": context.item_id}


def _runner(database: Database, processor: Flaky) -> BatchRunner:
    registry = ProcessorRegistry()
    registry.register(processor)
    return BatchRunner(database, settings=BatchSettings(), registry=registry)


def _receive(client: Any, url: str) -> list[dict[str, Any]]:
    return client.receive_message(
        QueueUrl=url, MaxNumberOfMessages=10, MessageAttributeNames=["All"]
    ).get("Messages", [])


def test_failed_lists_items(
    app_env: dict[str, str], database: Database, capsys: pytest.CaptureFixture[str]
) -> None:
    _runner(database, Flaky()).run(
        [
            BatchItem("ops1", "good", {"bad": False}, "flaky"),
            BatchItem("ops1", "bad", {"bad": True}, "flaky"),
        ]
    )
    capsys.readouterr()  # drop the metric lines of the run

    status = main(["failed", "ops1"])

    output = json.loads(capsys.readouterr().out)
    assert status == 3
    assert [item["id"] for item in output["failed"]] == ["bad"]
    assert output["failed"][0]["reason"] == "processor_error"
    assert output["failed"][0]["retryable"] is False


def test_show_unknown_batch(
    app_env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(["show", "nothing-here"])

    assert status == 3
    assert "not found" in capsys.readouterr().err


def test_redrive_sends_only_failed_items(
    app_env: dict[str, str], database: Database, sqs: Any
) -> None:
    # GIVEN a batch with one completed and one finally failed item
    url = sqs.create_queue(QueueName="batch-items")["QueueUrl"]
    processor = Flaky()
    runner = _runner(database, processor)
    runner.run(
        [
            BatchItem("ops2", "good", {"bad": False}, "flaky"),
            BatchItem("ops2", "bad", {"bad": True}, "flaky"),
        ]
    )

    # WHEN the bug is fixed and the batch is re-driven
    processor.fixed = True
    status = main(["redrive", "ops2", "--queue-url", url, "--actor", "ops"], client=sqs)

    # THEN only the failed item is sent, with its stored data
    assert status == 0
    messages = _receive(sqs, url)
    assert len(messages) == 1
    assert json.loads(messages[0]["Body"]) == {
        "batchId": "ops2",
        "item": {"id": "bad", "data": {"bad": True}, "processor": "flaky"},
    }
    assert messages[0]["MessageAttributes"]["orgId"]["StringValue"] == "default"

    # WHEN the consumer processes it
    record = sqs_record(messages[0]["MessageId"], json.loads(messages[0]["Body"]))
    response = process_sqs_event(sqs_event(record), FakeLambdaContext(), runner=runner)

    # THEN it completes, and a second re-drive has nothing to send
    assert response == {"batchItemFailures": []}
    assert processor.calls == {"good": 1, "bad": 2}
    assert main(["redrive", "ops2", "--queue-url", url], client=sqs) == 0
    assert _receive(sqs, url) == []


def test_redriven_numbers_keep_payload_hash(
    app_env: dict[str, str], database: Database, sqs: Any
) -> None:
    # jsonb would store 1e+20 as 100000000000000000000 and -0.0 as 0, and the
    # re-sent data would then hash differently from the stored payload.
    url = sqs.create_queue(QueueName="batch-items")["QueueUrl"]
    processor = Flaky()
    runner = _runner(database, processor)
    data = {"bad": True, "big": 1e20, "negative_zero": -0.0, "tiny": 1.5e-7}
    runner.run([BatchItem("ops-num", "n1", data, "flaky")])

    processor.fixed = True
    assert main(["redrive", "ops-num", "--queue-url", url], client=sqs) == 0
    [message] = _receive(sqs, url)
    record = sqs_record(message["MessageId"], json.loads(message["Body"]))
    response = process_sqs_event(sqs_event(record), FakeLambdaContext(), runner=runner)

    assert response == {"batchItemFailures": []}
    assert processor.calls == {"n1": 2}


def test_redrive_to_fifo_queue_accepts_any_item_id(
    app_env: dict[str, str], database: Database, sqs: Any
) -> None:
    url = sqs.create_queue(
        QueueName="batch-items.fifo", Attributes={"FifoQueue": "true"}
    )["QueueUrl"]
    item_id = "order " + "x" * 200 + " caf\u00e9 #1"
    _runner(database, Flaky()).run(
        [BatchItem("ops-fifo", item_id, {"bad": True, "note": "a, b"}, "flaky")]
    )

    assert main(["redrive", "ops-fifo", "--queue-url", url], client=sqs) == 0

    received = sqs.receive_message(QueueUrl=url, MessageSystemAttributeNames=["All"])
    [message] = received["Messages"]
    # SQS takes 1-128 ASCII letters, digits and punctuation as this id.
    dedup_id = message["Attributes"]["MessageDeduplicationId"]
    assert re.fullmatch(r"[!-~]{1,128}", dedup_id), dedup_id
    assert message["Attributes"]["MessageGroupId"] == "ops-fifo"
    assert message["Body"] == json.dumps(
        {
            "batchId": "ops-fifo",
            "item": {
                "id": item_id,
                "data": {"bad": True, "note": "a, b"},
                "processor": "flaky",
            },
        },
        separators=(",", ":"),
    )


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["redrive", "no-such-batch"], "batch 'no-such-batch' not found"),
        (["redrive", "ops-known", "--item", "nope"], "item 'nope' not found"),
    ],
    ids=["batch", "item"],
)
def test_redrive_of_unknown_target_exits_3(
    app_env: dict[str, str],
    database: Database,
    sqs: Any,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    expected: str,
) -> None:
    url = sqs.create_queue(QueueName="batch-items")["QueueUrl"]
    _runner(database, Flaky()).run([BatchItem("ops-known", "a", {}, "flaky")])

    status = main([*args, "--queue-url", url], client=sqs)

    assert status == 3
    assert expected in capsys.readouterr().err
    assert _receive(sqs, url) == []


def test_redrive_needs_queue_url(
    app_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delenv("BATCH_ITEMS_QUEUE_URL", raising=False)

    status = main(["redrive", "ops3"])

    assert status == 2
    assert "--queue-url" in capsys.readouterr().err


def test_redrive_dlq_moves_messages(
    app_env: dict[str, str], sqs: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    dlq_url = sqs.create_queue(QueueName="batch-items-dlq")["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])[
        "Attributes"
    ]["QueueArn"]
    url = sqs.create_queue(
        QueueName="batch-items",
        Attributes={
            "RedrivePolicy": json.dumps(
                {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": "5"}
            )
        },
    )["QueueUrl"]
    body = json.dumps({"batchId": "ops4", "item": {"id": "i1", "data": {}}})
    sqs.send_message(QueueUrl=dlq_url, MessageBody=body)

    status = main(["redrive-dlq"], client=sqs)

    result = json.loads(capsys.readouterr().out)
    assert status == 0
    assert result["moved"] == 1
    assert [m["Body"] for m in _receive(sqs, url)] == [body]
    assert _receive(sqs, dlq_url) == []


def _escalated(database: Database, key: str) -> None:
    with database.transaction() as conn:
        conn.execute(
            "INSERT INTO batch_item (batch_id, item_id, idempotency_key, status, "
            "attempts, reason, retryable, data, processor, payload_hash) "
            "VALUES ('ops5', 'i1', %s, 'failed', 1, 'escalated', false, "
            "'{\"n\": 1}', 'flaky', 'h')",
            (key,),
        )


def test_approved_escalation_requeues_item(
    app_env: dict[str, str],
    database: Database,
    sqs: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    key = "batch:ops5:item:i1"
    _escalated(database, key)
    url = sqs.create_queue(QueueName="batch-items")["QueueUrl"]
    monkeypatch.setenv("BATCH_ITEMS_QUEUE_URL", url)
    from resilience.messaging import sqs_client

    sqs_client.cache_clear()
    outcome = SimpleNamespace(
        escalation_id="esc-9",
        outcome="approved",
        source={
            "pattern": "batch",
            "batchId": "ops5",
            "itemId": "i1",
            "idempotencyKey": key,
        },
        decided_by="alice",
    )

    try:
        resume_from_escalation(outcome)
        resume_from_escalation(outcome)
    finally:
        sqs_client.cache_clear()

    with database.transaction() as conn:
        row = conn.execute(
            "SELECT reason, retryable FROM batch_item WHERE idempotency_key = %s",
            (key,),
        ).fetchone()
    assert row == {"reason": "escalation_approved", "retryable": True}
    messages = _receive(sqs, url)
    assert len(messages) == 1
    assert json.loads(messages[0]["Body"])["item"]["id"] == "i1"


def test_rejected_escalation_is_final(
    app_env: dict[str, str], database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("BATCH_ITEMS_QUEUE_URL", raising=False)
    key = "batch:ops5:item:i1"
    _escalated(database, key)

    resume_from_escalation(
        SimpleNamespace(
            escalation_id="esc-10",
            outcome="rejected",
            source={"pattern": "batch", "batchId": "ops5", "itemId": "i1"},
            decided_by="bob",
        )
    )

    with database.transaction() as conn:
        row = conn.execute(
            "SELECT reason, retryable FROM batch_item WHERE idempotency_key = %s",
            (key,),
        ).fetchone()
    assert row == {"reason": "escalation_rejected", "retryable": False}
