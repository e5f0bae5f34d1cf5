"""Queue depths and dead-letter re-drive over the SQS API (boto3).

botocore errors are translated here: a missing queue is a
:class:`~resilience.errors.NotFoundError`, an unreachable endpoint an
:class:`~resilience.errors.UpstreamConnectionError`, and any other SQS error a
:class:`~resilience.errors.PermanentError` naming the SQS error code.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from resilience.errors import (
    NotFoundError,
    PermanentError,
    UpstreamConnectionError,
)

__all__ = [
    "QUEUE_NAMES",
    "QueueDepth",
    "RedriveResult",
    "queue_depths",
    "redrive",
    "sqs_client",
]

logger = logging.getLogger(__name__)

# The queues of template.yaml, without the stack's QueuePrefix.
QUEUE_NAMES = (
    "breaker-calls",
    "batch-items",
    "batch-items.fifo",
    "completions",
    "escalation-requests",
    "escalation-notify",
    "escalation-resume",
)

# SQS returns and accepts at most 10 messages per call.
_BATCH_SIZE = 10

# SQS limits the whole SendMessageBatch request, bodies and attributes
# together, to the maximum size of one message. 256 KiB was that maximum for
# years, so it is the budget per call. A single larger message, which a queue
# may allow, is sent on its own.
_BATCH_MAX_BYTES = 262_144

# A received DLQ message stays hidden this long. If the re-drive stops before
# deleting it, the message reappears in the DLQ after this time.
_RECEIVE_VISIBILITY_S = 60


@dataclass(frozen=True)
class QueueDepth:
    """Approximate message counts of one queue and of its dead-letter queue."""

    name: str
    visible: int
    in_flight: int
    dead_letter_queue: str | None
    dead_letter_visible: int | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "queue": self.name,
            "visible": self.visible,
            "inFlight": self.in_flight,
            "deadLetterQueue": self.dead_letter_queue,
            "deadLetterVisible": self.dead_letter_visible,
        }


@dataclass(frozen=True)
class RedriveResult:
    """Outcome of one re-drive: messages moved, and messages that failed to move."""

    queue: str
    dead_letter_queue: str
    moved: int
    failed: int
    dry_run: bool
    waiting: int | None = None

    def as_dict(self) -> dict[str, Any]:
        result: dict[str, Any] = {
            "queue": self.queue,
            "deadLetterQueue": self.dead_letter_queue,
            "moved": self.moved,
            "failed": self.failed,
            "dryRun": self.dry_run,
        }
        if self.waiting is not None:
            result["waiting"] = self.waiting
        return result


def sqs_client() -> Any:
    """Create a boto3 SQS client from the environment (``AWS_ENDPOINT_URL`` too)."""
    import boto3

    return boto3.client("sqs")


def queue_depths(
    client: Any, *, prefix: str = "", names: Sequence[str] = QUEUE_NAMES
) -> list[QueueDepth]:
    """Return the approximate depth of each queue and its dead-letter queue."""
    depths = []
    for name in names:
        full_name = prefix + name
        with _sqs_errors(full_name):
            url = client.get_queue_url(QueueName=full_name)["QueueUrl"]
            attributes = _attributes(client, url)
            dead_letter_name = _dead_letter_name(attributes)
            dead_letter_visible = None
            if dead_letter_name:
                dead_letter_url = client.get_queue_url(QueueName=dead_letter_name)
                dead_letter_attributes = _attributes(
                    client, dead_letter_url["QueueUrl"]
                )
                dead_letter_visible = int(
                    dead_letter_attributes["ApproximateNumberOfMessages"]
                )
        depths.append(
            QueueDepth(
                name=full_name,
                visible=int(attributes["ApproximateNumberOfMessages"]),
                in_flight=int(attributes["ApproximateNumberOfMessagesNotVisible"]),
                dead_letter_queue=dead_letter_name,
                dead_letter_visible=dead_letter_visible,
            )
        )
    return depths


def redrive(
    client: Any,
    queue: str,
    *,
    prefix: str = "",
    max_messages: int | None = None,
    dry_run: bool = False,
    wait_time_s: int = 1,
) -> RedriveResult:
    """Move messages from the dead-letter queue of ``queue`` back to ``queue``.

    Each message keeps its body and message attributes. FIFO messages keep
    their message group, and get a deduplication id derived from the DLQ
    message id, so a repeated re-drive of the same message within SQS's
    5-minute deduplication interval is dropped instead of duplicated. A
    message is deleted from the DLQ only after SQS accepted it on ``queue``.

    Stops when the DLQ returns no message (each receive waits up to
    ``wait_time_s``) or after ``max_messages``. With ``dry_run`` nothing moves
    and ``waiting`` reports the DLQ's approximate depth.

    Raises:
        NotFoundError: the queue does not exist or has no dead-letter queue.
        UpstreamConnectionError: the SQS endpoint cannot be reached.
        PermanentError: SQS rejected a request (the message names its code).
    """
    name = prefix + queue
    with _sqs_errors(name):
        queue_url = client.get_queue_url(QueueName=name)["QueueUrl"]
        attributes = _attributes(client, queue_url)
        dead_letter_name = _dead_letter_name(attributes)
        if not dead_letter_name:
            raise NotFoundError(
                f"queue {name!r} has no dead-letter queue (no RedrivePolicy)",
                resource="dead-letter queue",
            )
        dead_letter_url = client.get_queue_url(QueueName=dead_letter_name)["QueueUrl"]

        if dry_run:
            waiting = _attributes(client, dead_letter_url)[
                "ApproximateNumberOfMessages"
            ]
            return RedriveResult(name, dead_letter_name, 0, 0, True, int(waiting))

        fifo = name.endswith(".fifo")
        moved = failed = 0
        while max_messages is None or moved + failed < max_messages:
            limit = _BATCH_SIZE
            if max_messages is not None:
                limit = min(limit, max_messages - moved - failed)
            messages = client.receive_message(
                QueueUrl=dead_letter_url,
                MaxNumberOfMessages=limit,
                WaitTimeSeconds=wait_time_s,
                VisibilityTimeout=_RECEIVE_VISIBILITY_S,
                MessageAttributeNames=["All"],
                MessageSystemAttributeNames=["MessageGroupId"],
            ).get("Messages", [])
            if not messages:
                break
            sent, not_sent = _move(client, queue_url, dead_letter_url, messages, fifo)
            moved += sent
            failed += not_sent

    logger.info(
        "queue.redriven",
        extra={
            "queue": name,
            "dead_letter_queue": dead_letter_name,
            "moved": moved,
            "failed": failed,
        },
    )
    return RedriveResult(name, dead_letter_name, moved, failed, False)


def _move(
    client: Any,
    queue_url: str,
    dead_letter_url: str,
    messages: list[dict[str, Any]],
    fifo: bool,
) -> tuple[int, int]:
    entries = [
        _send_entry(str(index), message, fifo) for index, message in enumerate(messages)
    ]
    sent = 0
    for chunk in _chunks_within_request_limit(entries):
        sent += _send_chunk(client, queue_url, dead_letter_url, messages, chunk)
    return sent, len(messages) - sent


def _chunks_within_request_limit(
    entries: list[dict[str, Any]],
) -> Iterator[list[dict[str, Any]]]:
    chunk: list[dict[str, Any]] = []
    chunk_bytes = 0
    for entry in entries:
        size = _entry_bytes(entry)
        if chunk and chunk_bytes + size > _BATCH_MAX_BYTES:
            yield chunk
            chunk, chunk_bytes = [], 0
        chunk.append(entry)
        chunk_bytes += size
    if chunk:
        yield chunk


def _entry_bytes(entry: dict[str, Any]) -> int:
    """Return the size SQS counts for an entry: body, attribute names and values."""
    size = len(entry["MessageBody"].encode())
    for name, value in (entry.get("MessageAttributes") or {}).items():
        size += len(name.encode()) + len(value["DataType"].encode())
        if "StringValue" in value:
            size += len(value["StringValue"].encode())
        if "BinaryValue" in value:
            size += len(value["BinaryValue"])
    return size


def _send_chunk(
    client: Any,
    queue_url: str,
    dead_letter_url: str,
    messages: list[dict[str, Any]],
    entries: list[dict[str, Any]],
) -> int:
    """Send ``entries`` and delete the accepted ones from the DLQ; return how many."""
    response = client.send_message_batch(QueueUrl=queue_url, Entries=entries)

    for failure in response.get("Failed", []):
        logger.warning(
            "queue.redrive_failed",
            extra={
                "message_id": messages[int(failure["Id"])]["MessageId"],
                "code": failure.get("Code"),
                "error": failure.get("Message"),
            },
        )
    sent_ids = [entry["Id"] for entry in response.get("Successful", [])]
    if sent_ids:
        client.delete_message_batch(
            QueueUrl=dead_letter_url,
            Entries=[
                {
                    "Id": entry_id,
                    "ReceiptHandle": messages[int(entry_id)]["ReceiptHandle"],
                }
                for entry_id in sent_ids
            ],
        )
    return len(sent_ids)


def _send_entry(entry_id: str, message: dict[str, Any], fifo: bool) -> dict[str, Any]:
    entry: dict[str, Any] = {"Id": entry_id, "MessageBody": message["Body"]}
    attributes = _message_attributes(message.get("MessageAttributes") or {})
    if attributes:
        entry["MessageAttributes"] = attributes
    if fifo:
        system = message.get("Attributes") or {}
        entry["MessageGroupId"] = system.get("MessageGroupId") or "redrive"
        digest = hashlib.sha256(f"redrive:{message['MessageId']}".encode())
        entry["MessageDeduplicationId"] = digest.hexdigest()
    return entry


def _message_attributes(received: dict[str, Any]) -> dict[str, Any]:
    # ReceiveMessage can also return StringListValues and BinaryListValues,
    # which SQS reserves and does not implement, so only the data type and
    # the value are copied.
    attributes = {}
    for name, value in received.items():
        kept = {"DataType": value["DataType"]}
        for key in ("StringValue", "BinaryValue"):
            if key in value:
                kept[key] = value[key]
        attributes[name] = kept
    return attributes


def _attributes(client: Any, queue_url: str) -> dict[str, str]:
    response = client.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["All"])
    attributes: dict[str, str] = response.get("Attributes", {})
    return attributes


def _dead_letter_name(attributes: dict[str, str]) -> str | None:
    policy = attributes.get("RedrivePolicy")
    if not policy:
        return None
    target_arn = str(json.loads(policy)["deadLetterTargetArn"])
    return target_arn.rsplit(":", 1)[-1]


@contextmanager
def _sqs_errors(queue: str) -> Iterator[None]:
    from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError

    try:
        yield
    except ClientError as exc:
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        if "NonExistentQueue" in code or "QueueDoesNotExist" in code:
            raise NotFoundError(
                f"queue {queue!r} not found: check the name and --prefix "
                "(the stack's QueuePrefix)",
                resource="queue",
            ) from exc
        raise PermanentError(
            f"SQS rejected the request for {queue!r}: {code}: {error.get('Message')}",
            service="sqs",
        ) from exc
    except EndpointConnectionError as exc:
        raise UpstreamConnectionError(
            f"cannot reach SQS for {queue!r}: {exc}", service="sqs"
        ) from exc
    except BotoCoreError as exc:
        raise PermanentError(
            f"SQS request for {queue!r} failed: {exc}", service="sqs"
        ) from exc
