"""Values of the escalation flow: started escalations, records and decisions."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from resilience.errors import ConflictError

__all__ = [
    "DECISIONS",
    "ERROR_NAMES",
    "OUTCOMES",
    "Decision",
    "DecisionResult",
    "EscalationRecord",
    "EscalationResolvedError",
    "EscalationStarted",
]

# Decision (what a person asked for) to outcome (what the escalation became).
DECISIONS = {"approve": "approved", "reject": "rejected", "cancel": "cancelled"}
OUTCOMES = ("approved", "rejected", "cancelled", "expired")
# Error names that SendTaskFailure uses; the state machine catches each one.
ERROR_NAMES = {"reject": "Escalation.Rejected", "cancel": "Escalation.Cancelled"}

Channel = Literal["link", "slack", "api", "timeout"]
Delivery = Literal["delivered", "pending", "gone"]


@dataclass(frozen=True)
class EscalationStarted:
    """Result of :func:`~resilience.escalation.start_escalation`."""

    id: str
    status: str
    approval_url: str
    approval_urls: dict[str, str]
    expires_at: datetime

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "status": self.status,
            "approvalUrl": self.approval_url,
            "approvalUrls": self.approval_urls,
            "expiresAt": self.expires_at.isoformat(),
        }


@dataclass(frozen=True)
class Decision:
    """One person's decision, as received from a link, Slack or the API."""

    kind: Literal["approve", "reject", "cancel"]
    actor: str
    channel: Channel
    data: dict[str, Any] | None = None
    reason: str | None = None


@dataclass(frozen=True)
class EscalationRecord:
    """An escalation row with its data decrypted."""

    id: str
    org_id: str
    escalation_type: str
    status: str
    data: dict[str, Any]
    request_reason: str
    requested_by: str | None
    approvers: list[str]
    source: dict[str, Any] | None
    expires_at: datetime
    created_at: datetime
    decision: str | None = None
    decision_reason: str | None = None
    resolved_at: datetime | None = None
    resolved_by: str | None = None
    decided_channel: str | None = None
    decided_data: dict[str, Any] | None = None
    completed_at: datetime | None = None
    resumed_at: datetime | None = None
    delivery: str | None = None
    notify_state: str = "waiting"
    slack_channel: str | None = None
    slack_ts: str | None = None
    has_task_token: bool = False

    @property
    def pending(self) -> bool:
        return self.resolved_at is None

    def to_json(self) -> dict[str, Any]:
        """Return the status view of the API (no task token, no link secrets).

        ``completedAt`` is when the workflow's outcome was recorded and
        ``resumedAt`` when the resume handler handed it to its source.
        """
        decision = None
        if self.resolved_at is not None:
            decision = {
                "decision": self.decision,
                "decidedBy": self.resolved_by,
                "decidedAt": self.resolved_at.isoformat(),
                "channel": self.decided_channel,
                "reason": self.decision_reason,
                "delivery": self.delivery,
                # The approved data, edited or not; None for other outcomes.
                "data": self.decided_data,
            }
        return {
            "id": self.id,
            "status": self.status,
            "escalationType": self.escalation_type,
            "reason": self.request_reason,
            "requestedBy": self.requested_by,
            "approvers": self.approvers,
            "source": self.source,
            "createdAt": self.created_at.isoformat(),
            "expiresAt": self.expires_at.isoformat(),
            "completedAt": self.completed_at.isoformat() if self.completed_at else None,
            "resumedAt": self.resumed_at.isoformat() if self.resumed_at else None,
            "decision": decision,
        }


@dataclass(frozen=True)
class DecisionResult:
    """Delivery state of a winning decision, as Step Functions saw it."""

    escalation_id: str
    outcome: str
    delivery: Delivery
    decided_by: str
    error: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


class EscalationResolvedError(ConflictError):
    """The escalation was already decided (or expired) before this decision."""

    def __init__(
        self,
        escalation_id: str,
        *,
        outcome: str,
        decided_by: str | None,
        decided_at: datetime | None,
    ) -> None:
        who = decided_by or "the system"
        when = decided_at.isoformat() if decided_at else "earlier"
        super().__init__(
            f"escalation {escalation_id} is already {outcome} (by {who} at {when}); "
            "this decision was not applied"
        )
        self.escalation_id = escalation_id
        self.outcome = outcome
        self.decided_by = decided_by
        self.decided_at = decided_at
