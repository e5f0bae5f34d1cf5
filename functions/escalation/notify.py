"""Notify handler: the state machine's waiting state sends each task token here.

Message body: ``{"taskToken", "executionName", "input"}``. The token is
stored (encrypted) and committed first; then the approvers are notified once,
and a decision that arrived before the token is delivered now.
"""

from __future__ import annotations

import json
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.batch import (
    BatchProcessor,
    EventType,
    process_partial_response,
)
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from resilience.errors import ValidationError
from resilience.escalation import get_service
from resilience.escalation.notifications import notify, store_task_token
from resilience.escalation.slack import slack_client_from_env
from resilience.observability import route_library_logs

logger = Logger(service="escalation-notify")
route_library_logs(logger)
processor = BatchProcessor(event_type=EventType.SQS)


def record_handler(record: SQSRecord) -> dict[str, Any]:
    """Store one task token, notify the approvers, deliver an early decision."""
    message = json.loads(record.body)
    task_token = message.get("taskToken")
    escalation_id = message.get("executionName")
    if not isinstance(task_token, str) or not isinstance(escalation_id, str):
        raise ValidationError(
            "notify message needs taskToken and executionName strings",
            field="taskToken",
        )

    service = get_service()
    stored = store_task_token(
        service,
        execution_name=escalation_id,
        task_token=task_token,
        execution_input=message.get("input") or {},
    )
    slack = slack_client_from_env(service.config.slack_channel)
    state = notify(service, slack, escalation_id)
    delivery = service.deliver(escalation_id)
    logger.info(
        "escalation.notify_handled",
        extra={
            "escalation_id": escalation_id,
            "token_stored": stored,
            "notify_state": state,
        },
    )
    return {"id": escalation_id, "notifyState": state, "delivery": delivery.delivery}


@logger.inject_lambda_context
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """Process a batch of notify messages; failed ones return to the queue."""
    return process_partial_response(  # type: ignore[return-value]
        event=event,
        record_handler=record_handler,
        processor=processor,
        context=context,
    )
