"""``POST /slack/actions``: Approve and Reject buttons pressed in Slack.

The request is verified over its raw body before anything is parsed. The
acting identity is ``slack:{user id}`` from the verified payload, checked
against the escalation type's allow-list like a link's approver. The response
is an ephemeral message to the clicking user. The resume handler replaces the
channel message with the outcome (``chat.update``) once the workflow has
ended.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs

from resilience.errors import ForbiddenError, GoneError, NotFoundError
from resilience.escalation.models import Decision, EscalationResolvedError
from resilience.escalation.service import EscalationService
from resilience.escalation.slack import (
    ReplayGuard,
    SlackVerificationError,
    verify_slack_request,
)

__all__ = ["handle_slack_action"]

logger = logging.getLogger(__name__)


def handle_slack_action(
    service: EscalationService,
    *,
    headers: Mapping[str, str],
    body: bytes,
    signing_secret: str | None,
    replay_guard: ReplayGuard | None,
) -> tuple[int, dict[str, Any]]:
    """Verify and apply one Slack block action; return (HTTP status, JSON body)."""
    if not signing_secret:
        logger.error("escalation.slack_not_configured")
        return 503, {
            "error": "slack_not_configured",
            "message": (
                "SLACK_SIGNING_SECRET is not set, so Slack actions cannot be verified"
            ),
        }
    try:
        verify_slack_request(
            headers, body, signing_secret=signing_secret, replay_guard=replay_guard
        )
    except SlackVerificationError as exc:
        logger.warning("escalation.slack_rejected", extra={"error": str(exc)})
        # The escalation id and user are unverified, so none is recorded.
        service.audit_attempt(
            None, actor=None, channel="slack", decision=None, why=f"slack: {exc}"
        )
        return 401, {"error": "invalid_signature", "message": str(exc)}

    try:
        payload = json.loads(parse_qs(body.decode())["payload"][0])
        user_id = str(payload["user"]["id"])
        action = payload["actions"][0]
        kind = str(action["action_id"])
        escalation_id = str(action["value"])
    except (KeyError, IndexError, TypeError, ValueError, UnicodeDecodeError):
        service.audit_attempt(
            None, actor=None, channel="slack", decision=None, why="invalid_payload"
        )
        return 400, {
            "error": "validation_error",
            "message": "payload is not a Slack block action",
        }
    if kind not in ("approve", "reject"):
        return 400, {
            "error": "validation_error",
            "message": f"unknown action {kind!r}: expected approve or reject",
        }

    actor = f"slack:{user_id}"
    reason = f"Rejected in Slack by <@{user_id}>" if kind == "reject" else None
    decision = Decision(kind=kind, actor=actor, channel="slack", reason=reason)  # type: ignore[arg-type]
    try:
        result = service.decide(escalation_id, decision)
    except EscalationResolvedError as exc:
        return 200, _ephemeral(
            f"Already {exc.outcome} by {exc.decided_by or 'the system'}; "
            "your click changed nothing."
        )
    except (ForbiddenError, GoneError, NotFoundError) as exc:
        return 200, _ephemeral(f"Not applied: {exc}")

    if result.delivery == "delivered":
        return 200, _ephemeral(f"Done: the escalation is {result.outcome}.")
    if result.delivery == "gone":
        return 200, _ephemeral(
            "The workflow no longer waits: already resolved or expired."
        )
    return 200, _ephemeral(
        f"Recorded ({result.outcome}); the workflow has not accepted it yet and it "
        "is retried automatically."
    )


def _ephemeral(text: str) -> dict[str, Any]:
    return {"response_type": "ephemeral", "replace_original": False, "text": text}
