"""Queue depths and dead-letter re-drive, against moto's in-process SQS."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.config import Config
from moto import mock_aws

from resilience.__main__ import main as resilience_main
from resilience.errors import NotFoundError, UpstreamConnectionError
from resilience.queues import QUEUE_NAMES, queue_depths, redrive
from resilience.queues.cli import main as queues_main

PREFIX = "test-"


@pytest.fixture
def sqs(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with mock_aws():
        client = boto3.client("sqs", region_name="us-east-1")
        for name in QUEUE_NAMES:
            _create_queue_pair(client, PREFIX + name)
        yield client


def _create_queue_pair(client: Any, name: str) -> None:
    fifo = name.endswith(".fifo")
    fifo_attributes = {"FifoQueue": "true"} if fifo else {}
    dead_letter_name = name.removesuffix(".fifo") + "-dlq" + (".fifo" if fifo else "")
    dead_letter_url = client.create_queue(
        QueueName=dead_letter_name, Attributes=fifo_attributes
    )["QueueUrl"]
    dead_letter_arn = client.get_queue_attributes(
        QueueUrl=dead_letter_url, AttributeNames=["QueueArn"]
    )["Attributes"]["QueueArn"]
    policy = {"deadLetterTargetArn": dead_letter_arn, "maxReceiveCount": 5}
    client.create_queue(
        QueueName=name,
        Attributes={**fifo_attributes, "RedrivePolicy": json.dumps(policy)},
    )


def _url(client: Any, name: str) -> str:
    return str(client.get_queue_url(QueueName=name)["QueueUrl"])


def _send_dead_letters(client: Any, dead_letter_name: str, count: int) -> None:
    url = _url(client, dead_letter_name)
    fifo = dead_letter_name.endswith(".fifo")
    for index in range(count):
        extra: dict[str, Any] = {}
        if fifo:
            extra = {
                "MessageGroupId": f"batch-{index % 2}",
                "MessageDeduplicationId": f"dedupe-{index}",
            }
        client.send_message(
            QueueUrl=url,
            MessageBody=json.dumps({"batchId": "b1", "item": {"id": str(index)}}),
            MessageAttributes={
                "orgId": {"DataType": "String", "StringValue": "acme"},
                "replyTo": {"DataType": "String", "StringValue": "replies"},
            },
            **extra,
        )


def _receive_all(client: Any, name: str) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    url = _url(client, name)
    while True:
        batch = client.receive_message(
            QueueUrl=url,
            MaxNumberOfMessages=10,
            MessageAttributeNames=["All"],
            MessageSystemAttributeNames=["MessageGroupId"],
        ).get("Messages", [])
        if not batch:
            return messages
        messages.extend(batch)


def test_redrive_moves_every_message_back(sqs: Any) -> None:
    _send_dead_letters(sqs, "test-batch-items-dlq", 13)

    result = redrive(sqs, "batch-items", prefix=PREFIX, wait_time_s=0)

    assert result.moved == 13
    assert result.failed == 0
    assert result.queue == "test-batch-items"
    assert result.dead_letter_queue == "test-batch-items-dlq"
    assert _receive_all(sqs, "test-batch-items-dlq") == []
    moved = _receive_all(sqs, "test-batch-items")
    assert len(moved) == 13
    assert sorted(json.loads(m["Body"])["item"]["id"] for m in moved) == sorted(
        str(index) for index in range(13)
    )


def test_redrive_splits_large_messages(sqs: Any) -> None:
    # Together the five bodies pass the limit of one SendMessageBatch call.
    url = _url(sqs, "test-batch-items-dlq")
    for index in range(5):
        body = {"batchId": "b1", "item": {"id": str(index), "data": "x" * 300_000}}
        sqs.send_message(QueueUrl=url, MessageBody=json.dumps(body))

    result = redrive(sqs, "batch-items", prefix=PREFIX, wait_time_s=0)

    assert result.moved == 5
    assert result.failed == 0
    assert _receive_all(sqs, "test-batch-items-dlq") == []
    assert len(_receive_all(sqs, "test-batch-items")) == 5


def test_redrive_keeps_message_attributes(sqs: Any) -> None:
    _send_dead_letters(sqs, "test-completions-dlq", 1)

    redrive(sqs, "completions", prefix=PREFIX, wait_time_s=0)

    (message,) = _receive_all(sqs, "test-completions")
    attributes = message["MessageAttributes"]
    assert attributes["orgId"]["StringValue"] == "acme"
    assert attributes["replyTo"]["StringValue"] == "replies"


def test_redrive_fifo_keeps_message_group(sqs: Any) -> None:
    _send_dead_letters(sqs, "test-batch-items-dlq.fifo", 4)

    result = redrive(sqs, "batch-items.fifo", prefix=PREFIX, wait_time_s=0)

    moved = _receive_all(sqs, "test-batch-items.fifo")
    groups = sorted(m["Attributes"]["MessageGroupId"] for m in moved)
    assert result.moved == 4
    assert groups == ["batch-0", "batch-0", "batch-1", "batch-1"]


def test_redrive_stops_at_max_messages(sqs: Any) -> None:
    _send_dead_letters(sqs, "test-breaker-calls-dlq", 12)

    result = redrive(sqs, "breaker-calls", prefix=PREFIX, max_messages=3, wait_time_s=0)

    assert result.moved == 3
    assert len(_receive_all(sqs, "test-breaker-calls")) == 3


def test_dry_run_moves_nothing(sqs: Any) -> None:
    _send_dead_letters(sqs, "test-escalation-notify-dlq", 2)

    result = redrive(sqs, "escalation-notify", prefix=PREFIX, dry_run=True)

    assert result.dry_run is True
    assert result.moved == 0
    assert result.waiting == 2
    assert _receive_all(sqs, "test-escalation-notify") == []


def test_redrive_unknown_queue_names_prefix(sqs: Any) -> None:
    with pytest.raises(NotFoundError, match="check the name and --prefix") as caught:
        redrive(sqs, "batch-items", prefix="other-", wait_time_s=0)

    assert caught.value.resource == "queue"


def test_redrive_without_dead_letter_queue(sqs: Any) -> None:
    sqs.create_queue(QueueName="test-plain")

    with pytest.raises(NotFoundError, match="has no dead-letter queue") as caught:
        redrive(sqs, "plain", prefix=PREFIX, wait_time_s=0)

    assert caught.value.resource == "dead-letter queue"


def test_unreachable_endpoint_raises_connection_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    # Port 1 on the loopback interface: nothing listens, the connect fails fast.
    client = boto3.client(
        "sqs",
        region_name="us-east-1",
        endpoint_url="http://127.0.0.1:1",
        config=Config(retries={"max_attempts": 1}, connect_timeout=1),
    )

    with pytest.raises(UpstreamConnectionError, match="cannot reach SQS"):
        redrive(client, "batch-items", wait_time_s=0)


def test_queue_depths_include_dead_letters(sqs: Any) -> None:
    _send_dead_letters(sqs, "test-escalation-resume-dlq", 3)
    sqs.send_message(QueueUrl=_url(sqs, "test-escalation-resume"), MessageBody="{}")

    depths = {depth.name: depth for depth in queue_depths(sqs, prefix=PREFIX)}

    assert set(depths) == {PREFIX + name for name in QUEUE_NAMES}
    resume = depths["test-escalation-resume"]
    assert resume.visible == 1
    assert resume.in_flight == 0
    assert resume.dead_letter_queue == "test-escalation-resume-dlq"
    assert resume.dead_letter_visible == 3


def test_cli_redrive_prints_result(
    sqs: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    _send_dead_letters(sqs, "test-escalation-requests-dlq", 2)

    code = queues_main(
        ["redrive", "escalation-requests", "--prefix", PREFIX], client=sqs
    )

    output = json.loads(capsys.readouterr().out)
    assert code == 0
    assert output == {
        "queue": "test-escalation-requests",
        "deadLetterQueue": "test-escalation-requests-dlq",
        "moved": 2,
        "failed": 0,
        "dryRun": False,
    }


def test_cli_list_reads_prefix_from_env(
    sqs: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("QUEUE_PREFIX", PREFIX)

    code = queues_main(["list"], client=sqs)

    output = json.loads(capsys.readouterr().out)
    assert code == 0
    assert [row["queue"] for row in output] == [PREFIX + name for name in QUEUE_NAMES]


def test_cli_unknown_queue_exits_1(
    sqs: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    code = queues_main(["redrive", "completions", "--prefix", "nope-"], client=sqs)

    assert code == 1
    assert "queue 'nope-completions' not found" in capsys.readouterr().err


def test_dispatcher_rejects_unlisted_queue(capsys: pytest.CaptureFixture[str]) -> None:
    code = resilience_main(["queues", "redrive", "payments"])

    assert code == 2
    assert "invalid choice: 'payments'" in capsys.readouterr().err
