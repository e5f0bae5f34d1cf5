"""send_reply writes replies that fit a queue with a 256 KiB message limit."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws

from resilience.messaging import send_reply, sqs_client

# SQS's maximum message size for many years, and still a common setting.
SQS_MAX_MESSAGE_BYTES = 262_144


@pytest.fixture
def reply_queue(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, str]]:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with mock_aws():
        sqs_client.cache_clear()
        client = boto3.client("sqs", region_name="us-east-1")
        yield client, client.create_queue(QueueName="replies")["QueueUrl"]
    sqs_client.cache_clear()


def test_reply_with_largest_data_fits_sqs(reply_queue: tuple[Any, str]) -> None:
    client, queue_url = reply_queue
    # An approved escalation's reply: 199,999 bytes of compact JSON data with
    # many separators, and 16 KB of source.
    data = {"n": [0] * 99_996}
    source = {"pattern": "test", "note": "x" * 16_000}
    result = {"id": "esc-1", "outcome": "approved", "data": data, "source": source}
    record = {
        "messageId": "m-1",
        "messageAttributes": {
            "replyTo": {"stringValue": "replies", "dataType": "String"}
        },
    }

    assert send_reply(record, result) is True

    [message] = client.receive_message(QueueUrl=queue_url)["Messages"]
    assert len(message["Body"].encode()) <= SQS_MAX_MESSAGE_BYTES
    assert json.loads(message["Body"]) == result
