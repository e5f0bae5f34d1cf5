"""Partial-success handler: batches over HTTP and items from SQS.

Routes (API Gateway HTTP API):

- ``POST /batches`` ``{"batchId": "...", "items": [{"id": "...", "data": {...},
  "processor"?: "..."}]}``: runs up to ``BATCH_SYNC_LIMIT`` items (default
  100) while the request waits and returns ``{ok, batchId, total, okCount,
  failedCount, notStartedCount, inProgressCount, results}``. Larger batches
  get 413 and belong on the ``batch-items`` queue. 409 when an item id was
  used before with other data; 400 for malformed input, including fields
  other than these.
- ``GET /batches/{batchId}``: the same summary from PostgreSQL; 404 unknown.

SQS (``batch-items`` and ``batch-items.fifo``): each message is
``{"batchId": "...", "item": {"id": "...", "data": {...}}}``; the answer
names the messages to deliver again in ``batchItemFailures``.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.utilities.typing import LambdaContext

from resilience.api import (
    build_resolver,
    error_response,
    json_body,
    json_response,
    json_type_name,
    org_id_from_http_event,
    reject_unknown_fields,
)
from resilience.batch import BatchItem, BatchRunner, BatchSettings
from resilience.batch.models import ITEM_FIELDS, Reason, validate_batch_id
from resilience.batch.sqs import process_sqs_event
from resilience.batch.summary import run_summary, stored_summary
from resilience.db import get_database
from resilience.errors import ValidationError
from resilience.observability import route_library_logs

logger = Logger(service="partial-success")
route_library_logs(logger)
app = build_resolver()

QUEUE_EXAMPLE = {"batchId": "<batchId>", "item": {"id": "<id>", "data": {}}}
REQUEST_FIELDS = ("batchId", "items")


def parse_items(
    body: dict[str, Any], batch_id: str, org_id: str, sync_limit: int
) -> list[BatchItem] | Response:
    """Validate ``items``; return the items, or the 413 response for a large batch."""
    items = body.get("items")
    if not isinstance(items, list) or not items:
        raise ValidationError(
            'items must be a non-empty list of {"id": "...", "data": {...}}',
            field="items",
        )
    if len(items) > sync_limit:
        return error_response(
            413,
            "batch_too_large",
            f"POST /batches runs at most {sync_limit} items while the request "
            f"waits, got {len(items)}: send larger batches to the batch-items "
            "queue, one message per item, and read progress from "
            f"GET /batches/{batch_id}",
            limit=sync_limit,
            messageExample=QUEUE_EXAMPLE,
        )

    parsed: list[BatchItem] = []
    seen: dict[object, int] = {}
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise ValidationError(
                f"items[{index}] must be an object with id and data, "
                f"got {json_type_name(item)}",
                field=f"items[{index}]",
            )
        reject_unknown_fields(item, ITEM_FIELDS, prefix=f"items[{index}].")
        processor = item.get("processor")
        if processor is not None and not isinstance(processor, str):
            raise ValidationError(
                f"items[{index}].processor must be a string naming a processor, "
                f"got {json_type_name(processor)}: send a name such as "
                '"echo", "service" or "llm", or leave it out for the default',
                field=f"items[{index}].processor",
            )
        item_id = item.get("id")
        if isinstance(item_id, str) and item_id in seen:
            raise ValidationError(
                f"items[{index}].id {item_id!r} repeats items[{seen[item_id]}]: "
                "give every item its own id",
                field=f"items[{index}].id",
            )
        if isinstance(item_id, str):
            seen[item_id] = index
        parsed.append(
            BatchItem(
                batch_id=batch_id,
                item_id=item_id,
                data=item.get("data"),
                processor=processor,
                org_id=org_id,
            )
        )
    return parsed


@app.post("/batches")
def create_batch() -> Response:
    body = json_body(app)
    reject_unknown_fields(body, REQUEST_FIELDS)
    batch_id = validate_batch_id(body.get("batchId"))
    org_id = org_id_from_http_event(app.current_event.raw_event)
    settings = BatchSettings.from_env()

    items = parse_items(body, batch_id, org_id, settings.sync_limit)
    if isinstance(items, Response):
        return items

    runner = BatchRunner(settings=settings)
    run = runner.run(
        items,
        context=app.lambda_context,
        run_id=getattr(app.lambda_context, "aws_request_id", None),
        raise_on_conflict=True,
    )
    # Nothing was recorded, so nothing ran: the caller should retry the whole
    # request later rather than read 200 with every item failed.
    if all(result.reason == Reason.DATABASE_UNAVAILABLE for result in run.results):
        logger.error("batch.store_unavailable", extra={"batch_id": batch_id})
        return error_response(
            503,
            "store_unavailable",
            "PostgreSQL is unavailable, so no item was recorded or run: retry "
            "the same request shortly (it is idempotent)",
            batchId=batch_id,
        )
    return json_response(200, run_summary(batch_id, run))


@app.get("/batches/<batch_id>")
def get_batch(batch_id: str) -> Response:
    batch_id = validate_batch_id(batch_id)
    org_id = org_id_from_http_event(app.current_event.raw_event)
    return json_response(200, stored_summary(get_database(), batch_id, org_id=org_id))


@logger.inject_lambda_context
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    if "Records" in event:
        return process_sqs_event(event, context)
    return app.resolve(event, context)
