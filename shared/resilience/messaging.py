"""SQS helpers shared by the handlers: org id and reply queues.

A message may carry two attributes besides its body:

- ``orgId`` (String): the org the work is for, ``default`` when absent.
- ``replyTo`` (String): a queue name or URL; the handler sends the result there.
"""

from __future__ import annotations

import json
import logging
from functools import cache
from typing import Any

from resilience.api import MAX_FIELD_CHARS, bound_message, validate_org_id
from resilience.observability import emit_metric

__all__ = [
    "message_attribute",
    "org_id_from_record",
    "reply_rejected",
    "send_reply",
    "sqs_client",
]

logger = logging.getLogger(__name__)


def message_attribute(record: dict[str, Any], name: str) -> str | None:
    """Return a String message attribute of an SQS record, or None."""
    attributes = record.get("messageAttributes") or {}
    attribute = attributes.get(name) or {}
    value = attribute.get("stringValue") or attribute.get("StringValue")
    return str(value) if value is not None else None


def org_id_from_record(record: dict[str, Any]) -> str:
    return validate_org_id(message_attribute(record, "orgId"), field="orgId attribute")


@cache
def sqs_client() -> Any:
    """Return one boto3 SQS client per container (endpoint from AWS_ENDPOINT_URL)."""
    import boto3

    return boto3.client("sqs")


def send_reply(record: dict[str, Any], result: dict[str, Any]) -> bool:
    """Send ``result`` to the queue named by the record's ``replyTo`` attribute.

    The work is done by the time a reply is sent, so a reply that cannot be
    sent (a queue that does not exist, no permission, SQS unreachable) is
    logged and counted, and the message is not handed back: delivering it
    again would repeat the work, not the reply.

    Returns:
        True when a reply was sent, False when the record asked for none or
        the reply could not be sent.
    """
    reply_to = message_attribute(record, "replyTo")
    if not reply_to:
        return False

    from botocore.exceptions import BotoCoreError, ClientError

    try:
        client = sqs_client()
        if reply_to.startswith(("https://", "http://")):
            queue_url = reply_to
        else:
            queue_url = client.get_queue_url(QueueName=reply_to)["QueueUrl"]
        client.send_message(
            QueueUrl=queue_url,
            # Compact, so that a reply with the largest accepted data still
            # fits in 256 KiB: ", " would add a byte per separator.
            MessageBody=json.dumps(result, default=str, separators=(",", ":")),
            MessageAttributes={
                "inReplyTo": {"DataType": "String", "StringValue": record["messageId"]}
            },
        )
    except (BotoCoreError, ClientError) as exc:
        logger.error(
            "sqs.reply_failed",
            extra={
                "message_id": record.get("messageId"),
                "reply_to": reply_to[:MAX_FIELD_CHARS],
                "error": f"{type(exc).__name__}: {bound_message(str(exc))}",
            },
        )
        emit_metric("ReplyFailed", 1)
        return False
    logger.info(
        "sqs.reply_sent",
        extra={"message_id": record.get("messageId"), "reply_to": reply_to},
    )
    return True


def reply_rejected(
    record: dict[str, Any], error: Exception, *, event: str
) -> dict[str, Any]:
    """Log a message whose input is invalid, reply to it and return the reply.

    Bad input stays bad, so the message gets one reply and is dropped rather
    than retried until the DLQ. The message and field are bounded like an
    HTTP error, because both may quote the input.
    """
    field = str(getattr(error, "field", None) or "body")[:MAX_FIELD_CHARS]
    message = bound_message(str(error))
    logger.error(
        event,
        extra={"message_id": record.get("messageId"), "field": field, "error": message},
    )
    outcome = {"ok": False, "error": "validation_error", "message": message}
    send_reply(record, {**outcome, "field": field})
    return outcome
