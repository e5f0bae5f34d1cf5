"""Event sources: SQS event source mappings, schedules and SNS subscriptions.

An :class:`SqsPoller` does what Lambda's event source mapping does for one
SQS event of the template:

- it receives up to ``BatchSize`` messages, waiting up to
  ``MaximumBatchingWindowInSeconds`` to fill a batch, and invokes the
  function with Lambda's SQS event shape;
- with ``ReportBatchItemFailures`` it deletes the messages the function did
  not list in ``batchItemFailures``. Without it, a failed invocation leaves
  every message of the batch in the queue, and so does an invocation that
  raises or times out in either case;
- messages left in the queue become visible again after the visibility
  timeout, and moto moves a message to the DLQ named in the queue's
  RedrivePolicy once it has been received ``maxReceiveCount`` times;
- FIFO queues keep message-group order because SQS hands out no further
  message of a group while one is in flight. The poller makes the failed
  messages of a FIFO batch visible again together, in order.

``retry_visibility_s`` shortens the wait before a failed message is retried
(a local speed-up; in AWS the queue's visibility timeout applies).
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from local.functions import FunctionPool, Invocation
from local.model import ScheduleEvent, SnsEvent, SqsEvent

__all__ = ["SchedulePoller", "SnsPoller", "SqsPoller", "sqs_record"]

logger = logging.getLogger(__name__)

# Long-poll time of one ReceiveMessage call; also how quickly a poller stops.
_WAIT_TIME_S = 1


def sqs_record(message: dict[str, Any], queue_arn: str, region: str) -> dict[str, Any]:
    """Convert a ReceiveMessage message into a Lambda SQS event record."""
    attributes = {}
    for name, attribute in (message.get("MessageAttributes") or {}).items():
        value: dict[str, Any] = {
            "stringListValues": [],
            "binaryListValues": [],
            "dataType": attribute["DataType"],
        }
        if "StringValue" in attribute:
            value["stringValue"] = attribute["StringValue"]
        if "BinaryValue" in attribute:
            value["binaryValue"] = base64.b64encode(attribute["BinaryValue"]).decode()
        attributes[name] = value

    record = {
        "messageId": message["MessageId"],
        "receiptHandle": message["ReceiptHandle"],
        "body": message.get("Body", ""),
        "attributes": dict(message.get("Attributes") or {}),
        "messageAttributes": attributes,
        "md5OfBody": message.get("MD5OfBody", ""),
        "eventSource": "aws:sqs",
        "eventSourceARN": queue_arn,
        "awsRegion": region,
    }
    if "MD5OfMessageAttributes" in message:
        record["md5OfMessageAttributes"] = message["MD5OfMessageAttributes"]
    return record


class _Loop:
    """A daemon thread that runs ``run_once`` until stopped."""

    name = "loop"

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
            except Exception:
                # A poller outlives any one failure, as a mapping does; back off.
                logger.exception("poller.failed name=%s", self.name)
                self._stop.wait(2.0)

    def run_once(self) -> None:
        raise NotImplementedError


class SqsPoller(_Loop):
    """Feed one SQS queue to one function, as an event source mapping would."""

    def __init__(
        self,
        event: SqsEvent,
        pool: FunctionPool,
        sqs: Any,
        queue_url: str,
        *,
        region: str,
        retry_visibility_s: int | None = None,
    ) -> None:
        self.name = f"sqs-{event.function}-{event.event_name}"
        super().__init__()
        self.event = event
        self.pool = pool
        self.sqs = sqs
        self.queue_url = queue_url
        self.region = region
        self.retry_visibility_s = retry_visibility_s
        self.fifo = queue_url.endswith(".fifo")
        attributes = sqs.get_queue_attributes(
            QueueUrl=queue_url, AttributeNames=["VisibilityTimeout"]
        )["Attributes"]
        self.visibility_timeout_s = int(attributes.get("VisibilityTimeout", 30))
        self._pending_returns: list[tuple[float, list[str]]] = []

    def __repr__(self) -> str:
        name = f"{self.event.function}.{self.event.event_name}"
        return f"<SqsPoller {name} {self.queue_url}>"

    def run_once(self) -> None:
        self._release_due_returns()
        messages = self._receive_batch()
        if not messages:
            return
        records = [sqs_record(m, self.event.queue_arn, self.region) for m in messages]
        invocation = self.pool.invoke({"Records": records})
        failed_ids = self._failed_message_ids(invocation, records)

        succeeded = [r for r in records if r["messageId"] not in failed_ids]
        failed = [r for r in records if r["messageId"] in failed_ids]
        self._delete(succeeded)
        self._hand_back(failed)
        logger.info(
            "sqs.batch_done function=%s queue=%s received=%s deleted=%s failed=%s "
            "request_id=%s",
            self.event.function,
            self.queue_url.rsplit("/", 1)[-1],
            len(records),
            len(succeeded),
            len(failed),
            invocation.request_id,
        )

    def _receive_batch(self) -> list[dict[str, Any]]:
        messages = self._receive(self.event.batch_size, _WAIT_TIME_S)
        if not messages or self.event.batching_window_s <= 0:
            return messages
        # Keep filling the batch until it is full or the window has passed.
        window_ends = time.monotonic() + self.event.batching_window_s
        while len(messages) < self.event.batch_size and not self._stop.is_set():
            remaining = window_ends - time.monotonic()
            if remaining <= 0:
                break
            wait = max(0, min(_WAIT_TIME_S, int(remaining)))
            more = self._receive(self.event.batch_size - len(messages), wait)
            messages.extend(more)
            if not more and wait == 0:
                time.sleep(min(remaining, 0.1))
        return messages

    def _receive(self, count: int, wait_s: int) -> list[dict[str, Any]]:
        response = self.sqs.receive_message(
            QueueUrl=self.queue_url,
            MaxNumberOfMessages=max(1, min(count, 10)),
            WaitTimeSeconds=wait_s,
            MessageSystemAttributeNames=["All"],
            MessageAttributeNames=["All"],
        )
        messages: list[dict[str, Any]] = response.get("Messages") or []
        return messages

    def _failed_message_ids(
        self, invocation: Invocation, records: list[dict[str, Any]]
    ) -> set[str]:
        all_ids = {record["messageId"] for record in records}
        if not invocation.ok:
            logger.warning(
                "sqs.batch_failed function=%s request_id=%s error=%s: %s",
                self.event.function,
                invocation.request_id,
                (invocation.error or {}).get("errorType"),
                (invocation.error or {}).get("errorMessage"),
            )
            return all_ids

        result = invocation.result
        if not self.event.report_batch_item_failures or not isinstance(result, dict):
            return set()
        failures = result.get("batchItemFailures") or []
        failed = {str((f or {}).get("itemIdentifier") or "") for f in failures}
        # Lambda treats an empty or unknown identifier as a failure of the batch.
        if not failed <= all_ids:
            logger.error(
                "sqs.invalid_batch_item_failures function=%s identifiers=%s",
                self.event.function,
                sorted(failed - all_ids),
            )
            return all_ids
        self._warn_on_fifo_order(records, failed)
        return failed

    def _warn_on_fifo_order(
        self, records: list[dict[str, Any]], failed: set[str]
    ) -> None:
        # In a FIFO group, a message after a failed one must fail too, or it
        # is processed out of order. Lambda deletes it when the function
        # reports it as done, so the local stack does the same and warns.
        failed_groups: set[str] = set()
        for record in records:
            group = record["attributes"].get("MessageGroupId")
            if group is None:
                continue
            if record["messageId"] in failed:
                failed_groups.add(group)
            elif group in failed_groups:
                logger.warning(
                    "sqs.fifo_order_broken function=%s group=%s message_id=%s: "
                    "reported as done after a failed message of its group",
                    self.event.function,
                    group,
                    record["messageId"],
                )

    def _delete(self, records: list[dict[str, Any]]) -> None:
        for start in range(0, len(records), 10):
            chunk = records[start : start + 10]
            entries = [
                {"Id": str(index), "ReceiptHandle": record["receiptHandle"]}
                for index, record in enumerate(chunk)
            ]
            response = self.sqs.delete_message_batch(
                QueueUrl=self.queue_url, Entries=entries
            )
            for failure in response.get("Failed") or []:
                logger.warning(
                    "sqs.delete_failed queue=%s code=%s message=%s",
                    self.queue_url,
                    failure.get("Code"),
                    failure.get("Message"),
                )

    def _hand_back(self, records: list[dict[str, Any]]) -> None:
        if not records:
            return
        if self.fifo:
            # NOTE: moto 5.2 hands out a later message of a FIFO group first
            # when several messages of the group become visible again by
            # timeout. Making them visible at once, in order, avoids that.
            delay = self.retry_visibility_s
            if delay is None:
                delay = max(self.visibility_timeout_s - 1, 0)
            handles = [record["receiptHandle"] for record in records]
            self._pending_returns.append((time.monotonic() + delay, handles))
            return
        if self.retry_visibility_s is None:
            return
        for record in records:
            self.sqs.change_message_visibility(
                QueueUrl=self.queue_url,
                ReceiptHandle=record["receiptHandle"],
                VisibilityTimeout=self.retry_visibility_s,
            )

    def _release_due_returns(self) -> None:
        now = time.monotonic()
        due = [entry for entry in self._pending_returns if entry[0] <= now]
        self._pending_returns = [e for e in self._pending_returns if e[0] > now]
        for _, handles in due:
            for handle in handles:
                self.sqs.change_message_visibility(
                    QueueUrl=self.queue_url, ReceiptHandle=handle, VisibilityTimeout=0
                )


class SchedulePoller(_Loop):
    """Invoke a function on its ``rate(...)`` schedule with a Scheduled Event."""

    def __init__(
        self,
        event: ScheduleEvent,
        pool: FunctionPool,
        *,
        region: str,
        account_id: str,
        interval_s: float,
    ) -> None:
        self.name = f"schedule-{event.function}-{event.event_name}"
        super().__init__()
        self.event = event
        self.pool = pool
        self.region = region
        self.account_id = account_id
        self.interval_s = interval_s

    def __repr__(self) -> str:
        return f"<SchedulePoller {self.event.function} every {self.interval_s} s>"

    def run_once(self) -> None:
        # EventBridge fires at the end of the first interval, not at creation.
        if self._stop.wait(self.interval_s):
            return
        if self.event.input is not None:
            payload = json.loads(self.event.input)
        else:
            rule = f"{self.event.function}-{self.event.event_name}"
            payload = {
                "version": "0",
                "id": str(uuid.uuid4()),
                "detail-type": "Scheduled Event",
                "source": "aws.events",
                "account": self.account_id,
                "time": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "region": self.region,
                "resources": [
                    f"arn:aws:events:{self.region}:{self.account_id}:rule/{rule}"
                ],
                "detail": {},
            }
        invocation = self.pool.invoke(payload)
        logger.info(
            "schedule.fired function=%s ok=%s request_id=%s",
            self.event.function,
            invocation.ok,
            invocation.request_id,
        )


class SnsPoller(_Loop):
    """Deliver an SNS topic to a function through a local SQS subscription.

    Each message becomes one invocation with Lambda's SNS event shape. As with
    Lambda's asynchronous invocation, a failed message is tried three times.
    """

    max_attempts = 3

    def __init__(self, event: SnsEvent, pool: FunctionPool, sqs: Any, sns: Any) -> None:
        self.name = f"sns-{event.function}-{event.event_name}"
        super().__init__()
        self.event = event
        self.pool = pool
        self.sqs = sqs
        queue_name = f"local-sns-{event.function}-{event.event_name}"
        self.queue_url = sqs.create_queue(
            QueueName=queue_name, Attributes={"VisibilityTimeout": "5"}
        )["QueueUrl"]
        queue_arn = sqs.get_queue_attributes(
            QueueUrl=self.queue_url, AttributeNames=["QueueArn"]
        )["Attributes"]["QueueArn"]
        self.subscription_arn = sns.subscribe(
            TopicArn=event.topic_arn, Protocol="sqs", Endpoint=queue_arn
        )["SubscriptionArn"]

    def run_once(self) -> None:
        response = self.sqs.receive_message(
            QueueUrl=self.queue_url,
            MaxNumberOfMessages=1,
            WaitTimeSeconds=_WAIT_TIME_S,
            MessageSystemAttributeNames=["ApproximateReceiveCount"],
        )
        for message in response.get("Messages") or []:
            envelope = json.loads(message["Body"])
            record = {
                "EventSource": "aws:sns",
                "EventVersion": "1.0",
                "EventSubscriptionArn": self.subscription_arn,
                "Sns": {
                    "Type": envelope.get("Type", "Notification"),
                    "MessageId": envelope.get("MessageId"),
                    "TopicArn": envelope.get("TopicArn"),
                    "Subject": envelope.get("Subject"),
                    "Message": envelope.get("Message"),
                    "Timestamp": envelope.get("Timestamp"),
                    "SignatureVersion": envelope.get("SignatureVersion", "1"),
                    "Signature": envelope.get("Signature", ""),
                    "SigningCertUrl": envelope.get("SigningCertURL", ""),
                    "UnsubscribeUrl": envelope.get("UnsubscribeURL", ""),
                    "MessageAttributes": envelope.get("MessageAttributes") or {},
                },
            }
            invocation = self.pool.invoke({"Records": [record]})
            receive_count = int(message["Attributes"].get("ApproximateReceiveCount", 1))
            if invocation.ok or receive_count >= self.max_attempts:
                self.sqs.delete_message(
                    QueueUrl=self.queue_url, ReceiptHandle=message["ReceiptHandle"]
                )
            logger.info(
                "sns.delivered function=%s ok=%s attempt=%s request_id=%s",
                self.event.function,
                invocation.ok,
                receive_count,
                invocation.request_id,
            )
