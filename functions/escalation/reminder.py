"""Reminder handler, run on a schedule: remind, re-notify, re-deliver, alert.

Emits ``EscalationsPendingOver2h`` for the alarm (see
``resilience.escalation.reminders``).
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.typing import LambdaContext

from resilience.escalation import get_service
from resilience.escalation.reminders import sweep
from resilience.escalation.slack import slack_client_from_env
from resilience.observability import route_library_logs

logger = Logger(service="escalation-reminder")
route_library_logs(logger)


@logger.inject_lambda_context
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """Run one sweep and return its counts."""
    service = get_service()
    report = sweep(service, slack_client_from_env(service.config.slack_channel))
    return report.to_json()
