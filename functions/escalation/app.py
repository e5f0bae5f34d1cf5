"""Human escalation API: start, inspect and cancel escalations; approval pages; Slack.

Routes (API Gateway HTTP API v2):

- ``POST /escalations`` ``{"data", "reason", "escalationType"?, "approvers"?,
  "timeoutSeconds"?, "source"?, "requestedBy"?}``: 202 ``{id, status:
  "pending", approvalUrl, approvalUrls, expiresAt}``.
- ``GET /escalations/{id}``: status and decision.
- ``POST /escalations/{id}/cancel`` ``{"reason"?, "requestedBy"?}``: cancel
  by the requester. Any other field gets 400.
- ``GET``/``HEAD``/``POST /approvals/{id}?approver=…&expires=…&signature=…``:
  the approval page; only POST decides (see ``resilience.escalation.web``).
- ``POST /slack/actions``: Slack buttons, verified by signature.

SQS (``escalation-requests``): each message body is a ``POST /escalations``
body; the started escalation is sent to the ``replyTo`` queue when named.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.shared.cookies import Cookie, SameSite
from aws_lambda_powertools.utilities.batch import (
    BatchProcessor,
    EventType,
)
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from resilience.api import (
    build_resolver,
    error_response,
    json_body,
    json_response,
    org_id_from_http_event,
    parse_json_object,
    reject_unknown_fields,
    serve_http_or_sqs,
)
from resilience.errors import (
    ForbiddenError,
    GoneError,
    UpstreamServerError,
    ValidationError,
)
from resilience.escalation import EscalationResolvedError, get_service
from resilience.escalation.slack import (
    DatabaseReplayGuard,
    raw_body,
    slack_signing_secret,
)
from resilience.escalation.slack_actions import handle_slack_action
from resilience.escalation.validation import validate_cancel
from resilience.escalation.web import ApprovalRequest, PageResponse, handle_approval
from resilience.messaging import org_id_from_record, reply_rejected, send_reply
from resilience.observability import route_library_logs

logger = Logger(service="escalation")
route_library_logs(logger)
app = build_resolver()
processor = BatchProcessor(event_type=EventType.SQS)

_START_FIELDS = {
    "data",
    "reason",
    "escalationType",
    "approvers",
    "timeoutSeconds",
    "source",
    "requestedBy",
}
_CANCEL_FIELDS = {"reason", "requestedBy"}


@app.exception_handler(ForbiddenError)
def _forbidden(error: ForbiddenError) -> Response:
    return error_response(403, "forbidden", str(error))


@app.exception_handler(GoneError)
def _gone(error: GoneError) -> Response:
    return error_response(410, "gone", str(error))


@app.exception_handler(EscalationResolvedError)
def _resolved(error: EscalationResolvedError) -> Response:
    return error_response(
        409,
        "already_resolved",
        str(error),
        outcome=error.outcome,
        decidedBy=error.decided_by,
    )


@app.exception_handler(UpstreamServerError)
def _upstream(error: UpstreamServerError) -> Response:
    return error_response(503, "workflow_unavailable", str(error))


def start_from_body(
    body: dict[str, Any], *, org_id: str, caller: str | None, app_url: str | None
) -> dict[str, Any]:
    """Validate a ``POST /escalations`` body and start the escalation."""
    reject_unknown_fields(body, _START_FIELDS)
    started = get_service().start(
        data=body.get("data"),  # type: ignore[arg-type]
        reason=body.get("reason"),  # type: ignore[arg-type]
        org_id=org_id,
        escalation_type=body.get("escalationType", "default"),
        requested_by=caller or body.get("requestedBy"),
        approvers=body.get("approvers"),
        timeout_seconds=body.get("timeoutSeconds"),
        source=body.get("source"),
        app_url=app_url,
    )
    return started.to_json()


@app.post("/escalations")
def create_escalation() -> Response:
    event = app.current_event.raw_event
    started = start_from_body(
        json_body(app),
        org_id=org_id_from_http_event(event),
        caller=_caller(event),
        app_url=_request_base_url(event),
    )
    return json_response(202, started)


@app.get("/escalations/<escalation_id>")
def get_escalation(escalation_id: str) -> Response:
    org_id = org_id_from_http_event(app.current_event.raw_event)
    record = get_service().get(escalation_id, org_id=org_id)
    return json_response(200, record.to_json())


@app.post("/escalations/<escalation_id>/cancel")
def cancel_escalation(escalation_id: str) -> Response:
    event = app.current_event.raw_event
    body = json_body(app) if app.current_event.body else {}
    reject_unknown_fields(body, _CANCEL_FIELDS)
    reason, requested_by = validate_cancel(body)
    org_id = org_id_from_http_event(event)
    result = get_service().cancel(
        escalation_id,
        actor=_caller(event) or requested_by or f"org:{org_id}",
        org_id=org_id,
        reason=reason,
    )
    status = 200 if result.delivery == "delivered" else 202
    return json_response(
        status,
        {"id": escalation_id, "status": result.outcome, "delivery": result.delivery},
    )


@app.route("/approvals/<escalation_id>", method=["GET", "HEAD", "POST"])
def approval(escalation_id: str) -> Response:
    event = app.current_event.raw_event
    request = ApprovalRequest(
        method=event["requestContext"]["http"]["method"],
        escalation_id=escalation_id,
        path=event.get("rawPath", f"/approvals/{escalation_id}"),
        query=dict(event.get("queryStringParameters") or {}),
        raw_query=event.get("rawQueryString", ""),
        headers={k.lower(): v for k, v in (event.get("headers") or {}).items()},
        cookies=_cookies(event),
        body=raw_body(event),
    )
    page = handle_approval(get_service(), request)
    return _to_response(page, head=request.method.upper() == "HEAD")


@app.post("/slack/actions")
def slack_actions() -> Response:
    event = app.current_event.raw_event
    service = get_service()
    status, body = handle_slack_action(
        service,
        headers=event.get("headers") or {},
        body=raw_body(event),
        signing_secret=slack_signing_secret(),
        replay_guard=DatabaseReplayGuard(service.database),
    )
    return json_response(status, body)


def _to_response(page: PageResponse, *, head: bool) -> Response:
    cookies = []
    if page.set_cookie is not None:
        name, value, path, secure = page.set_cookie
        cookies.append(
            Cookie(
                name=name,
                value=value,
                path=path,
                secure=secure,
                http_only=True,
                same_site=SameSite.STRICT_MODE,
                max_age=3600,
            )
        )
    return Response(
        status_code=page.status,
        content_type=page.content_type,
        body="" if head else page.body,
        headers=page.headers,
        cookies=cookies,
    )


def _cookies(event: dict[str, Any]) -> dict[str, str]:
    cookies: dict[str, str] = {}
    for item in event.get("cookies") or []:
        name, _, value = item.partition("=")
        cookies[name.strip()] = value.strip()
    return cookies


def _caller(event: dict[str, Any]) -> str | None:
    """Return the verified caller identity (JWT ``sub``), or None locally."""
    authorizer = (event.get("requestContext") or {}).get("authorizer") or {}
    claims = (authorizer.get("jwt") or {}).get("claims") or {}
    subject = claims.get("email") or claims.get("sub")
    return str(subject) if subject else None


def _request_base_url(event: dict[str, Any]) -> str | None:
    """Return the URL the request came in on when APP_URL is empty, else None."""
    if get_service().config.app_url:
        return None
    domain = (event.get("requestContext") or {}).get("domainName")
    if not domain:
        return None
    headers = {k.lower(): v for k, v in (event.get("headers") or {}).items()}
    proto = headers.get("x-forwarded-proto", "https")
    return f"{proto}://{domain}"


def record_handler(record: SQSRecord) -> dict[str, Any]:
    """Start one escalation from an ``escalation-requests`` message."""
    raw = record.raw_event
    try:
        body = parse_json_object(record.body, field="body")
        result = start_from_body(
            body, org_id=org_id_from_record(raw), caller=None, app_url=None
        )
    except ValidationError as exc:
        return reply_rejected(raw, exc, event="escalation.request_invalid")
    send_reply(raw, result)
    return result


@logger.inject_lambda_context
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """Serve HTTP API events and ``escalation-requests`` SQS batches."""
    return serve_http_or_sqs(
        event, context, app, record_handler=record_handler, processor=processor
    )
