"""StartExecution of the escalation state machine, with failure recording."""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from resilience.audit import write_audit
from resilience.errors import ConfigError, UpstreamServerError

if TYPE_CHECKING:
    from resilience.escalation.service import EscalationService

__all__ = ["start_execution"]

logger = logging.getLogger(__name__)


def start_execution(
    service: EscalationService, *, escalation_id: str, execution_input: dict[str, Any]
) -> str:
    """Start the execution named ``escalation_id`` and store its ARN.

    When Step Functions rejects the call, the escalation is marked ``failed``
    (no decision can reach it any more) and the error is raised.

    Raises:
        ConfigError: ``STATE_MACHINE_ARN`` is not set.
        UpstreamServerError: StartExecution failed.
    """
    arn = service.config.state_machine_arn
    if not arn:
        _mark_failed(service, escalation_id, "STATE_MACHINE_ARN is not set")
        raise ConfigError(
            "STATE_MACHINE_ARN is not set: point it at the escalation state machine",
            setting="STATE_MACHINE_ARN",
        )
    try:
        response = service.stepfunctions.start_execution(
            stateMachineArn=arn,
            name=escalation_id,
            # Compact, as validation measures data and source against the
            # 256 KiB input limit.
            input=json.dumps(execution_input, separators=(",", ":")),
        )
    except (ClientError, BotoCoreError) as exc:
        _mark_failed(service, escalation_id, type(exc).__name__)
        raise UpstreamServerError(
            f"could not start the escalation workflow: {exc}", service="stepfunctions"
        ) from exc

    execution_arn = str(response["executionArn"])
    with service.database.transaction() as connection:
        connection.execute(
            "UPDATE escalation_token SET execution_arn = %s, updated_at = now() "
            "WHERE task_run_id = %s",
            (execution_arn, escalation_id),
        )
    logger.info("escalation.started", extra={"escalation_id": escalation_id})
    return execution_arn


def _mark_failed(service: EscalationService, escalation_id: str, error: str) -> None:
    with service.database.transaction() as connection:
        connection.execute(
            """
            UPDATE escalation_token
            SET status = 'failed', resolved_at = now(), resolved_by = 'system',
                completed_at = now(), reason = %s, updated_at = now()
            WHERE task_run_id = %s
            """,
            (f"workflow did not start: {error}", escalation_id),
        )
        write_audit(
            connection,
            pattern="escalation",
            action="escalation.start_failed",
            task_id=escalation_id,
            metadata={"error": error},
        )
    logger.error(
        "escalation.start_failed",
        extra={"escalation_id": escalation_id, "error": error},
    )
