"""SQS: one item per message, and partial batch responses for Lambda.

A ``batch-items`` message body is ``{"batchId": "...", "item": {"id": "...",
"data": {...}, "processor": "..."}}`` (``processor`` optional). Any other
field makes the message invalid. The handler returns ``{"batchItemFailures":
[{"itemIdentifier": "<messageId>"}]}`` naming only the messages to deliver
again, so SQS deletes the rest. Lambda treats an identifier that is empty or
not in the event as a failure of the whole batch, so
:func:`build_partial_response` never emits one.

Final failures (invalid message, missing item id, payload conflict, 4xx) are
reported too: their messages return and, after the queue's
``maxReceiveCount``, end in the dead-letter queue, where an operator can
inspect them. A later delivery of a failed item returns the stored result
without running it again.

FIFO queues (records with ``MessageGroupId``): after a failure the rest of that
message group is handed back unstarted, while other groups go on. Items run
one at a time, so items of one group never run concurrently.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from aws_lambda_powertools.utilities.batch import (
    BatchProcessor,
    EventType,
    SqsFifoPartialProcessor,
    process_partial_response,
)
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

from resilience.api import parse_json_object, reject_unknown_fields
from resilience.batch.models import (
    ITEM_FIELDS,
    BatchItem,
    ItemResult,
    ItemStatus,
    Reason,
    validate_batch_id,
)
from resilience.batch.runner import BatchRun, BatchRunner
from resilience.batch.timing import LambdaContextLike
from resilience.errors import ValidationError
from resilience.messaging import org_id_from_record

__all__ = [
    "ItemHandedBackError",
    "MalformedBatchResponseError",
    "build_partial_response",
    "parse_record",
    "process_sqs_event",
    "validate_partial_response",
]

logger = logging.getLogger(__name__)

FAILURES_KEY = "batchItemFailures"
IDENTIFIER_KEY = "itemIdentifier"
MESSAGE_FIELDS = ("batchId", "item")


class ItemHandedBackError(Exception):
    """Raised for a record whose item must be delivered again."""

    def __init__(self, result: ItemResult) -> None:
        super().__init__(f"item handed back: {result.reason}")
        self.result = result


class MalformedBatchResponseError(ValueError):
    """The event has a record without a usable messageId."""


def parse_record(record: Mapping[str, Any]) -> BatchItem | ItemResult:
    """Return the item a record carries, or the final failure of a bad record."""
    message_id = record.get("messageId")
    group_id = (record.get("attributes") or {}).get("MessageGroupId")
    try:
        org_id = org_id_from_record(dict(record))
        body = parse_json_object(record.get("body"), field="body")
        reject_unknown_fields(body, MESSAGE_FIELDS)
        batch_id = validate_batch_id(body.get("batchId"))
        item = body.get("item")
        if not isinstance(item, dict):
            raise ValidationError(
                'message body needs "item": {"id": "...", "data": {...}}',
                field="item",
            )
        reject_unknown_fields(item, ITEM_FIELDS, prefix="item.")
        processor = item.get("processor")
        if processor is not None and not isinstance(processor, str):
            raise ValidationError("item.processor must be a string", field="processor")
    except (ValueError, ValidationError) as error:
        # Reported as failed, so the queue's redrive policy moves the
        # message to its DLQ where an operator can inspect it.
        logger.warning(
            "batch.message_invalid",
            extra={"message_id": message_id, "error": str(error)[:500]},
        )
        placeholder = BatchItem(
            batch_id="", item_id=None, message_id=message_id, group_id=group_id
        )
        return ItemResult(
            placeholder,
            ItemStatus.FAILED,
            reason=str(Reason.INVALID_ITEM),
            error=f"invalid batch-items message: {error}",
        )
    return BatchItem(
        batch_id=batch_id,
        item_id=item.get("id"),
        data=item.get("data"),
        processor=processor,
        message_id=message_id,
        group_id=group_id,
        org_id=org_id,
    )


def process_sqs_event(
    event: Mapping[str, Any],
    context: LambdaContextLike | None = None,
    *,
    runner: BatchRunner | None = None,
) -> dict[str, Any]:
    """Run every record's item and return the partial batch response.

    Raises:
        BatchProcessingError: only when every record failed and the setting
            ``BATCH_RAISE_ON_ALL_FAILED`` is true.
    """
    runner = runner or BatchRunner()
    records = list(event.get("Records") or [])
    fifo = any((r.get("attributes") or {}).get("MessageGroupId") for r in records)

    parsed = _skip_failed_groups([parse_record(record) for record in records], fifo)
    items = [p for p in parsed if isinstance(p, BatchItem)]
    run = runner.run(
        items,
        context=context,
        run_id=getattr(context, "aws_request_id", None),
        fifo=fifo,
    )
    by_message = _results_by_message(parsed, run)

    def record_handler(record: SQSRecord) -> Any:
        result = by_message.get(record.message_id)
        if result is None or result.handed_back:
            raise ItemHandedBackError(result or _missing_result())
        return result.output

    processor: BatchProcessor
    if fifo:
        processor = SqsFifoPartialProcessor(skip_group_on_error=True)
    else:
        processor = BatchProcessor(event_type=EventType.SQS)
    processor.raise_on_entire_batch_failure = runner.settings.raise_on_all_failed

    response = process_partial_response(
        event=dict(event),
        record_handler=record_handler,
        processor=processor,
        context=context,  # type: ignore[arg-type]
    )
    # Report a message when either Powertools or the runner reports it failed.
    entries: list[dict[str, Any]] = list(response.get(FAILURES_KEY) or [])  # type: ignore[call-overload]
    failed: list[object] = [entry.get(IDENTIFIER_KEY) for entry in entries]
    failed += [mid for mid, r in by_message.items() if r.handed_back]
    return build_partial_response(records, failed)


def _skip_failed_groups(
    parsed: list[BatchItem | ItemResult], fifo: bool
) -> list[BatchItem | ItemResult]:
    """Hand back, unstarted, the items after an unreadable message of their group."""
    if not fifo:
        return parsed
    failed_groups: set[str] = set()
    checked: list[BatchItem | ItemResult] = []
    for entry in parsed:
        group = entry.group_id if isinstance(entry, BatchItem) else entry.item.group_id
        if isinstance(entry, BatchItem) and group in failed_groups:
            entry = ItemResult(
                entry,
                ItemStatus.NOT_STARTED,
                reason=str(Reason.GROUP_FAILED),
                retryable=True,
            )
        elif isinstance(entry, ItemResult) and group:
            failed_groups.add(group)
        checked.append(entry)
    return checked


def _results_by_message(
    parsed: Sequence[BatchItem | ItemResult], run: BatchRun
) -> dict[str, ItemResult]:
    results = iter(run.results)
    by_message: dict[str, ItemResult] = {}
    for entry in parsed:
        result = entry if isinstance(entry, ItemResult) else next(results)
        if result.item.message_id:
            by_message[result.item.message_id] = result
    return by_message


def _missing_result() -> ItemResult:
    return ItemResult(
        BatchItem(batch_id="", item_id=None),
        ItemStatus.FAILED,
        reason=str(Reason.INVALID_ITEM),
        retryable=True,
    )


def build_partial_response(
    records: Sequence[Mapping[str, Any]], failed_ids: Iterable[object]
) -> dict[str, Any]:
    """Return ``{"batchItemFailures": [...]}`` for the failed message ids.

    The list follows the order of the event, once per message. An id that is
    not a messageId of the event (a receipt handle, an internal key, an empty
    value) cannot be reported on its own, so every message of the event is
    reported instead: the batch is delivered again, and items already
    completed return their stored results.

    Raises:
        MalformedBatchResponseError: a record has no messageId, so a failure
            cannot be reported safely; Lambda then retries the whole batch.
    """
    event_ids: list[str] = []
    for record in records:
        message_id = record.get("messageId")
        if not isinstance(message_id, str) or not message_id:
            raise MalformedBatchResponseError(
                f"SQS record without a messageId: {sorted(record)}; "
                "the batch cannot be answered per message"
            )
        event_ids.append(message_id)

    known = set(event_ids)
    wanted: set[str] = set()
    for failed_id in failed_ids:
        if not isinstance(failed_id, str) or failed_id not in known:
            logger.error(
                "batch.unknown_failure_identifier",
                extra={"identifier": repr(failed_id)[:200]},
            )
            wanted = known
            break
        wanted.add(failed_id)

    ordered = [mid for mid in dict.fromkeys(event_ids) if mid in wanted]
    return {FAILURES_KEY: [{IDENTIFIER_KEY: mid} for mid in ordered]}


def validate_partial_response(
    response: object, records: Sequence[Mapping[str, Any]]
) -> list[str]:
    """Return what is wrong with a partial batch response (empty: valid)."""
    if not isinstance(response, dict):
        return [f"response must be an object, got {type(response).__name__}"]
    problems = [f"unexpected key {key!r}" for key in response if key != FAILURES_KEY]
    failures = response.get(FAILURES_KEY, [])
    if not isinstance(failures, list):
        return [*problems, f"{FAILURES_KEY} must be a list"]

    event_ids = {record.get("messageId") for record in records}
    seen: set[str] = set()
    for index, entry in enumerate(failures):
        if not isinstance(entry, dict) or set(entry) != {IDENTIFIER_KEY}:
            problems.append(f"entry {index} must be exactly {{{IDENTIFIER_KEY!r}: id}}")
            continue
        identifier = entry[IDENTIFIER_KEY]
        if not isinstance(identifier, str) or not identifier:
            problems.append(f"entry {index} has an empty identifier")
        elif identifier not in event_ids:
            problems.append(f"entry {index} names {identifier!r}, not a messageId")
        elif identifier in seen:
            problems.append(f"entry {index} repeats {identifier!r}")
        else:
            seen.add(identifier)
    return problems
