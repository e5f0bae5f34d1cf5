"""Resume handler: each finished execution reports its outcome here.

Message body: ``{"escalationId", "outcome", "data"?, "source", "orgId"}``
with outcome ``approved``, ``rejected``, ``cancelled`` or ``expired``. The
outcome is stored, the Slack message updated, and the work named by
``source`` resumed (once, also when the message is redelivered).
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

from resilience.escalation import get_service
from resilience.escalation.resume import record_outcome
from resilience.escalation.slack import slack_client_from_env
from resilience.messaging import send_reply
from resilience.observability import route_library_logs

logger = Logger(service="escalation-resume")
route_library_logs(logger)
processor = BatchProcessor(event_type=EventType.SQS)


def record_handler(record: SQSRecord) -> dict[str, Any]:
    """Record one outcome and resume its source work."""
    service = get_service()
    slack = slack_client_from_env(service.config.slack_channel)
    outcome, first = record_outcome(service, slack, json.loads(record.body))
    result = {
        "id": outcome.escalation_id,
        "outcome": outcome.outcome,
        "data": outcome.data,
        "source": outcome.source,
        "decidedBy": outcome.decided_by,
        "resumed": first,
    }
    send_reply(record.raw_event, result)
    return result


@logger.inject_lambda_context
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """Process a batch of outcome messages; failed ones return to the queue."""
    return process_partial_response(  # type: ignore[return-value]
        event=event,
        record_handler=record_handler,
        processor=processor,
        context=context,
    )
