"""Human escalation: a person approves, edits or rejects what an agent wants to do.

A Step Functions execution (a Standard workflow) waits on a task token for
each escalation. Approvers decide through signed links, one per approver, or
Slack buttons. One conditional UPDATE in PostgreSQL picks the single winning
decision. Only the winner's decision is delivered to Step Functions, from an
outbox that retries. Outcomes: ``approved``, ``rejected``, ``cancelled``
and ``expired``. Data and task tokens are encrypted at rest.

Start one from any pattern::

    from resilience.escalation import start_escalation

    started = start_escalation(
        data={"refund": 120}, reason="refund above limit",
        source={"pattern": "batch", "batchId": "b1", "itemId": "i7"},
    )
    started.approval_urls  # {"approver": "https://…/approvals/esc-…?…"}
"""

from __future__ import annotations

from typing import Any

from resilience.escalation.models import (
    Decision,
    DecisionResult,
    EscalationRecord,
    EscalationResolvedError,
    EscalationStarted,
)
from resilience.escalation.service import EscalationService, get_service

__all__ = [
    "Decision",
    "DecisionResult",
    "EscalationRecord",
    "EscalationResolvedError",
    "EscalationService",
    "EscalationStarted",
    "get_service",
    "start_escalation",
]


def start_escalation(
    *,
    data: dict[str, Any],
    reason: str,
    org_id: str = "default",
    escalation_type: str = "default",
    requested_by: str | None = None,
    approvers: list[str] | None = None,
    timeout_seconds: int | None = None,
    source: dict[str, Any] | None = None,
    app_url: str | None = None,
) -> EscalationStarted:
    """Store an escalation, create its approval links and start its workflow.

    Args:
        data: what the approver reviews and may edit (a JSON object).
        reason: why a person must decide, shown on the approval page.
        org_id: the org the escalation belongs to.
        escalation_type: key of ``ESCALATION_TYPES`` (allow-list, timeout).
        requested_by: identity of the requester, for self-approval checks and
            cancellation.
        approvers: one link is made per approver; default: the type's
            allow-list, else one link that anyone holding it may use.
        timeout_seconds: wait before expiry; default: the type's, else 24 h.
        source: the work to resume, e.g. ``{"pattern": "batch", ...}``.
        app_url: base URL of the links; default ``APP_URL``.

    Raises:
        ValidationError: an argument is invalid (names the field).
        ConfigError: a setting is missing (names the setting).
        UpstreamServerError: Step Functions did not start the workflow.
    """
    return get_service().start(
        data=data,
        reason=reason,
        org_id=org_id,
        escalation_type=escalation_type,
        requested_by=requested_by,
        approvers=approvers,
        timeout_seconds=timeout_seconds,
        source=source,
        app_url=app_url,
    )
