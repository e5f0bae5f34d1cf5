"""Approval-link requests: GET/HEAD show, POST decides.

Framework-free, so the Lambda handler, the local gateway and tests share it:
the caller passes an :class:`ApprovalRequest` and turns the returned
:class:`PageResponse` into its own response type.

Status codes:

- 200: shown, or the decision was delivered.
- 202: decision recorded, not yet accepted by Step Functions (the outbox
  retries it).
- 400: a form field name or value is not UTF-8 text.
- 403: tampered, forged or not-allowed link, or a failed CSRF check.
- 404: unknown escalation. 409: already decided. 410: expired.
- 422: invalid decision body.
"""

from __future__ import annotations

import json
import logging
import secrets
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from resilience.api import (
    parse_json_object,
    truncate_for_message,
    validate_json_value,
)
from resilience.errors import (
    ForbiddenError,
    GoneError,
    NotFoundError,
    ValidationError,
)
from resilience.escalation.links import LinkClaims
from resilience.escalation.models import (
    Decision,
    DecisionResult,
    EscalationRecord,
    EscalationResolvedError,
)
from resilience.escalation.pages import PAGE_HEADERS, message_page, review_page
from resilience.escalation.service import EscalationService
from resilience.escalation.validation import parse_decision

__all__ = ["CSRF_COOKIE", "ApprovalRequest", "PageResponse", "handle_approval"]

logger = logging.getLogger(__name__)

CSRF_COOKIE = "ar_csrf"


@dataclass(frozen=True)
class ApprovalRequest:
    """One HTTP request for ``/approvals/{id}``; header names in lower case."""

    method: str
    escalation_id: str
    path: str
    query: dict[str, str]
    raw_query: str
    headers: dict[str, str]
    cookies: dict[str, str]
    body: bytes = b""

    @property
    def wants_json(self) -> bool:
        content_type = self.headers.get("content-type", "")
        # Media types are case-insensitive (RFC 9110, section 8.3.1).
        return content_type.split(";")[0].strip().lower() == "application/json"

    @property
    def secure(self) -> bool:
        return self.headers.get("x-forwarded-proto", "https") == "https"


# The audit reason of a decision rejected because of its link.
_LINK_REJECTION_REASONS: dict[type[Exception], str] = {
    ForbiddenError: "invalid_link",
    NotFoundError: "not_found",
    GoneError: "link_expired",
}


class _UnreadableBodyError(ValidationError):
    """The body is empty or not UTF-8, or a form field in it is not UTF-8."""


@dataclass
class PageResponse:
    status: int
    body: str
    content_type: str = "text/html; charset=utf-8"
    headers: dict[str, str] = field(default_factory=lambda: dict(PAGE_HEADERS))
    set_cookie: tuple[str, str, str, bool] | None = None  # name, value, path, secure


def handle_approval(
    service: EscalationService, request: ApprovalRequest
) -> PageResponse:
    """Handle one approval-link request (see the module docstring)."""
    method = request.method.upper()
    try:
        record, claims = service.check_link(request.escalation_id, request.query)
    except (ForbiddenError, NotFoundError, GoneError) as exc:
        if method == "POST":
            service.audit_attempt(
                request.escalation_id,
                actor=request.query.get("approver"),
                channel="link",
                decision=None,
                why=_LINK_REJECTION_REASONS[type(exc)],
            )
        return _link_error(request, exc)

    if method in ("GET", "HEAD"):
        return _show(service, request, record, claims)
    if method == "POST":
        return _decide(service, request, record, claims)
    return _respond(
        request, 405, "Method not allowed", "Use GET to view or POST to decide."
    )


def _show(
    service: EscalationService,
    request: ApprovalRequest,
    record: EscalationRecord,
    claims: LinkClaims,
) -> PageResponse:
    if not record.pending:
        return _already_resolved(request, record)
    cookie_value = request.cookies.get(CSRF_COOKIE) or secrets.token_urlsafe(24)
    page = review_page(
        record,
        approver=claims.approver,
        form_action=_form_action(request),
        csrf_token=service.signer.csrf_token(claims, cookie_value),
    )
    response = PageResponse(200, page)
    response.set_cookie = (CSRF_COOKIE, cookie_value, request.path, request.secure)
    return response


def _decide(
    service: EscalationService,
    request: ApprovalRequest,
    record: EscalationRecord,
    claims: LinkClaims,
) -> PageResponse:
    body: dict[str, Any] = {}
    try:
        body = _parse_body(request)
        if not request.wants_json:
            _check_form_origin(service, request, claims, body)
        parsed = parse_decision(body, original=record.data)
    except ForbiddenError as exc:
        service.audit_attempt(
            record.id, actor=claims.approver, channel="link", decision=None, why="csrf"
        )
        return _respond(request, 403, "Request refused", str(exc), record.id)
    except ValidationError as exc:
        service.audit_attempt(
            record.id,
            actor=claims.approver,
            channel="link",
            decision=None,
            why="invalid_body",
        )
        # The form keeps what the approver typed, so a typo costs no rework.
        typed = body.get("data")
        data_text = typed if isinstance(typed, str) and typed else None
        # Bytes that are not UTF-8 make the request malformed (400). A body
        # that decodes but breaks a rule of the decision is 422.
        status = 400 if isinstance(exc, _UnreadableBodyError) else 422
        return _invalid_body(service, request, record, claims, exc, data_text, status)

    decision = Decision(
        kind=parsed.decision,  # type: ignore[arg-type]
        actor=claims.approver,
        channel="link",
        data=parsed.data,
        reason=parsed.reason,
    )
    try:
        result = service.decide(record.id, decision)
    except EscalationResolvedError as exc:
        return _respond(
            request,
            409,
            "Already decided",
            str(exc),
            record.id,
            extra={"outcome": exc.outcome, "decidedBy": exc.decided_by},
        )
    except GoneError as exc:
        return _respond(request, 410, "Approval link expired", str(exc), record.id)
    except ForbiddenError as exc:
        return _respond(request, 403, "Not allowed", str(exc), record.id)
    return _result_page(request, result)


def _result_page(request: ApprovalRequest, result: DecisionResult) -> PageResponse:
    extra = {
        "outcome": result.outcome,
        "delivery": result.delivery,
        "decidedBy": result.decided_by,
    }
    if result.delivery == "delivered":
        text = f"The escalation is {result.outcome} and the workflow has continued."
        return _respond(
            request, 200, result.outcome.capitalize(), text, result.escalation_id, extra
        )
    if result.delivery == "gone":
        text = (
            "The workflow no longer waits for a decision: it was already resolved "
            "or has expired, so your decision had no effect."
        )
        return _respond(
            request,
            410,
            "Already resolved or expired",
            text,
            result.escalation_id,
            extra,
        )
    text = (
        f"Your decision ({result.outcome}) is recorded, but the workflow has not "
        "accepted it yet. It is retried automatically; nothing has continued so far."
    )
    return _respond(
        request,
        202,
        "Decision recorded, not yet delivered",
        text,
        result.escalation_id,
        extra,
    )


def _parse_body(request: ApprovalRequest) -> dict[str, Any]:
    if request.wants_json:
        try:
            text = request.body.decode("utf-8")
        except UnicodeDecodeError:
            raise _UnreadableBodyError(
                "body is not valid UTF-8: send the decision as JSON encoded in UTF-8",
                field="body",
            ) from None
        if not text.strip():
            raise _UnreadableBodyError(
                'body is missing: send a JSON object such as {"decision": "approve"}',
                field="body",
            )
        return parse_json_object(text, field="body")
    fields = _decode_form(request.body)
    validate_json_value(fields, field="body")
    return fields


def _decode_form(body: bytes) -> dict[str, str]:
    """Decode an ``application/x-www-form-urlencoded`` body into its fields.

    Every name and value must be UTF-8 after percent-decoding, and each name
    may occur once.

    Raises:
        _UnreadableBodyError: a name or value is not valid UTF-8. The error
            names the field, so nothing is stored with U+FFFD in its place.
        ValidationError: a field occurs more than once, so the decision the
            approver meant is unknown (``decision=reject&decision=approve``).
    """
    # Latin-1 maps each byte to one character and back, so the strict UTF-8
    # decode below gets exactly the bytes that the client percent-encoded.
    pairs = parse_qsl(
        body.decode("latin-1"), keep_blank_values=True, encoding="latin-1"
    )
    fields: dict[str, str] = {}
    for raw_name, raw_value in pairs:
        name_bytes = raw_name.encode("latin-1")
        try:
            name = name_bytes.decode("utf-8")
        except UnicodeDecodeError:
            escaped_name = truncate_for_message(
                name_bytes.decode("utf-8", "backslashreplace")
            )
            raise _UnreadableBodyError(
                f"the form field name '{escaped_name}' is not valid UTF-8: send "
                "field names as UTF-8 text",
                field=escaped_name,
            ) from None
        if name in fields:
            shown_name = truncate_for_message(name)
            raise ValidationError(
                f"{shown_name} was sent more than once: send each form field "
                "once, then submit the form again",
                field=shown_name,
            )
        try:
            fields[name] = raw_value.encode("latin-1").decode("utf-8")
        except UnicodeDecodeError:
            shown_name = truncate_for_message(name)
            raise _UnreadableBodyError(
                f"{shown_name} must be UTF-8 text, but the form sent bytes that "
                "are not valid UTF-8: enter the text again and resubmit the form",
                field=shown_name,
            ) from None
    return fields


def _check_form_origin(
    service: EscalationService,
    request: ApprovalRequest,
    claims: LinkClaims,
    body: dict[str, Any],
) -> None:
    # A form post must come from our own page: same origin, and the token
    # that page put next to its cookie.
    origin = request.headers.get("origin")
    host = request.headers.get("host", "")
    if origin and origin != "null" and urlsplit(origin).netloc != host:
        raise ForbiddenError("form was posted from another site")
    if request.headers.get("sec-fetch-site") == "cross-site":
        raise ForbiddenError("form was posted from another site")
    token = str(body.pop("csrf", ""))
    if not service.signer.check_csrf(
        claims, request.cookies.get(CSRF_COOKIE, ""), token
    ):
        raise ForbiddenError(
            "the form's security token is missing or invalid: reopen the approval "
            "link and submit the form again"
        )


def _invalid_body(
    service: EscalationService,
    request: ApprovalRequest,
    record: EscalationRecord,
    claims: LinkClaims,
    error: ValidationError,
    data_text: str | None,
    status: int,
) -> PageResponse:
    if request.wants_json:
        body = {
            "error": "validation_error",
            "message": str(error),
            "field": error.field,
        }
        return PageResponse(status, json.dumps(body), "application/json")
    cookie_value = request.cookies.get(CSRF_COOKIE) or secrets.token_urlsafe(24)
    page = review_page(
        record,
        approver=claims.approver,
        form_action=_form_action(request),
        csrf_token=service.signer.csrf_token(claims, cookie_value),
        error=str(error),
        data_text=data_text,
    )
    response = PageResponse(status, page)
    response.set_cookie = (CSRF_COOKIE, cookie_value, request.path, request.secure)
    return response


def _already_resolved(
    request: ApprovalRequest, record: EscalationRecord
) -> PageResponse:
    if record.status == "expired":
        return _respond(
            request,
            410,
            "Approval link expired",
            "Nobody decided in time; the escalation has expired.",
            record.id,
        )
    who = record.resolved_by or "the system"
    when = record.resolved_at.isoformat() if record.resolved_at else "earlier"
    return _respond(
        request,
        409,
        "Already decided",
        f"This escalation was already {record.status} by {who} at {when}.",
        record.id,
        extra={"outcome": record.status, "decidedBy": record.resolved_by},
    )


def _link_error(request: ApprovalRequest, error: Exception) -> PageResponse:
    if isinstance(error, NotFoundError):
        return _respond(
            request,
            404,
            "Approval request not found",
            "No approval request matches this link.",
        )
    if isinstance(error, GoneError):
        return _respond(
            request,
            410,
            "Approval link expired",
            "This approval link has expired; nothing was changed.",
        )
    return _respond(
        request, 403, "Invalid approval link", f"{error}. Nothing was changed."
    )


def _respond(
    request: ApprovalRequest,
    status: int,
    heading: str,
    text: str,
    escalation_id: str | None = None,
    extra: dict[str, Any] | None = None,
) -> PageResponse:
    if request.wants_json:
        body: dict[str, Any] = {"status": heading, "message": text, "id": escalation_id}
        body.update(extra or {})
        return PageResponse(status, json.dumps(body), "application/json")
    return PageResponse(
        status, message_page(heading, text, escalation_id=escalation_id)
    )


def _form_action(request: ApprovalRequest) -> str:
    return f"{request.path}?{request.raw_query}"
