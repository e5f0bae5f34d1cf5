"""Circuit breaker handler: call registered services over HTTP and from SQS.

Routes (API Gateway HTTP API):

- ``POST /breaker/calls`` ``{"service", "path", "method"?, "body"?,
  "headers"?, "idempotencyKey"?}`` (``method`` defaults to GET): 200 with the
  downstream status and the breaker state for any HTTP response, 502 when the
  service cannot be reached, 504 when it times out, 503 with ``retryAfterMs``
  when the breaker rejects the call, 400 for bad input, including a missing
  ``path`` and fields other than these six.
- ``GET /breaker/{service}``: state, failure count, opened-until.
- ``POST /breaker/{service}/reset``: admin only (JWT scope
  ``resilience:admin``, or ``Authorization: Bearer $ADMIN_API_TOKEN`` when
  that variable is set); audited.

SQS (``breaker-calls``): each message body is a ``POST /breaker/calls``
body. Breaker rejections, 5xx answers and unreachable services go back to
the queue (batchItemFailures); bad input is final and answered once.
"""

from __future__ import annotations

import hmac
import json
import os
import time
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.event_handler import Response
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
    json_type_name,
    parse_json_object,
    reject_unknown_fields,
    serve_http_or_sqs,
    truncate_for_message,
)
from resilience.breaker import BreakerSnapshot, get_breaker
from resilience.errors import (
    BreakerOpenError,
    TransientError,
    UpstreamConnectionError,
    UpstreamTimeoutError,
    ValidationError,
)
from resilience.messaging import org_id_from_record, reply_rejected, send_reply
from resilience.observability import route_library_logs
from resilience.services import ServiceResponse, call_service, default_registry

logger = Logger(service="circuit-breaker")
route_library_logs(logger)
app = build_resolver()
processor = BatchProcessor(event_type=EventType.SQS)

ADMIN_SCOPE = "resilience:admin"
ENV_ADMIN_API_TOKEN = "ADMIN_API_TOKEN"
MAX_HEADERS = 50
CALL_FIELDS = ("service", "path", "method", "body", "headers", "idempotencyKey")


@app.exception_handler(UpstreamConnectionError)
def _unreachable(error: UpstreamConnectionError) -> Response:
    return error_response(
        502, "upstream_unreachable", str(error), service=error.service
    )


@app.exception_handler(UpstreamTimeoutError)
def _timed_out(error: UpstreamTimeoutError) -> Response:
    return error_response(504, "upstream_timeout", str(error), service=error.service)


def parse_call(body: Any) -> dict[str, Any]:
    """Validate a call request and return the arguments of call_service."""
    if not isinstance(body, dict):
        raise ValidationError(
            f"the call must be a JSON object, got {json_type_name(body)}", field="body"
        )
    reject_unknown_fields(body, CALL_FIELDS)
    service = body.get("service")
    if service is None or service == "":
        raise ValidationError(
            "service is missing: name a registered service", field="service"
        )
    if not isinstance(service, str):
        raise ValidationError(
            f"service must be a string naming a registered service, got "
            f"{json_type_name(service)}",
            field="service",
        )
    path = body.get("path")
    if path is None or path == "":
        raise ValidationError(
            "path is missing: send the path to call under the service's base "
            'URL, such as "/orders/42"',
            field="path",
        )
    method = body.get("method", "GET")
    headers = body.get("headers") or {}
    if not isinstance(headers, dict) or len(headers) > MAX_HEADERS:
        raise ValidationError(
            f"headers must be a JSON object of at most {MAX_HEADERS} string values",
            field="headers",
        )
    key = body.get("idempotencyKey")
    if key is not None and (not isinstance(key, str) or not 0 < len(key) <= 255):
        raise ValidationError(
            "idempotencyKey must be a string of 1-255 characters",
            field="idempotencyKey",
        )
    return {
        "name": service,
        "method": method,
        "path": path,
        "body": body.get("body"),
        "headers": headers,
        "idempotency_key": key,
    }


def _response_body(service: str, result: ServiceResponse) -> dict[str, Any]:
    return {
        "service": service,
        "status": result.status,
        "body": result.body,
        "breakerState": result.breaker_state,
        "attempts": result.attempts,
        "elapsedMs": result.elapsed_ms,
    }


def _snapshot_body(snapshot: BreakerSnapshot) -> dict[str, Any]:
    return {
        "service": snapshot.name,
        "state": snapshot.state.value,
        "failureCount": snapshot.failure_count,
        "openedUntil": snapshot.opened_until.isoformat()
        if snapshot.opened_until
        else None,
        "generation": snapshot.generation,
    }


def _deadline(context: LambdaContext | None) -> float | None:
    if context is None:
        return None
    return time.time() + context.get_remaining_time_in_millis() / 1000


@app.post("/breaker/calls")
def post_call() -> Response:
    request = parse_call(json_body(app))
    result = call_service(**request, deadline=_deadline(app.lambda_context))
    return json_response(200, _response_body(request["name"], result))


@app.get("/breaker/<service>")
def get_state(service: str) -> Response:
    config = _registered(service)
    if config is None:
        return _not_registered(service)
    snapshot = get_breaker(service, config.breaker, critical=config.critical).snapshot()
    return json_response(200, _snapshot_body(snapshot))


@app.post("/breaker/<service>/reset")
def post_reset(service: str) -> Response:
    actor, denied = _authorize_admin(app.current_event.raw_event)
    if denied is not None:
        return denied
    config = _registered(service)
    if config is None:
        return _not_registered(service)
    breaker = get_breaker(service, config.breaker, critical=config.critical)
    snapshot = breaker.reset(actor=actor or "unknown")
    logger.info("breaker.reset_requested", extra={"service": service, "actor": actor})
    return json_response(200, _snapshot_body(snapshot))


def _not_registered(service: str) -> Response:
    return error_response(
        404,
        "not_found",
        f"service {truncate_for_message(service)!r} is not registered",
    )


def _registered(service: str) -> Any:
    return default_registry().services.get(service)


def _authorize_admin(event: dict[str, Any]) -> tuple[str | None, Response | None]:
    """Return (actor, None) for an admin caller, or (None, a 401/403 response)."""
    authorizer = (event.get("requestContext") or {}).get("authorizer") or {}
    jwt = authorizer.get("jwt") or {}
    claims = jwt.get("claims") or {}
    if claims:
        scopes = set(jwt.get("scopes") or [])
        scopes |= set(str(claims.get("scope") or "").split())
        scp = claims.get("scp")
        scopes |= set(scp if isinstance(scp, list) else str(scp or "").split())
        if ADMIN_SCOPE in scopes or str(claims.get(ADMIN_SCOPE)).lower() == "true":
            return str(claims.get("sub") or "jwt"), None
        return None, error_response(
            403, "forbidden", f"the token lacks the {ADMIN_SCOPE} scope"
        )

    expected = os.environ.get(ENV_ADMIN_API_TOKEN)
    headers = {k.lower(): v for k, v in (event.get("headers") or {}).items()}
    supplied = str(headers.get("authorization") or "")
    if not expected or not supplied.startswith("Bearer "):
        return None, error_response(
            401,
            "unauthorized",
            f"send a JWT with the {ADMIN_SCOPE} scope, or Authorization: Bearer "
            "<ADMIN_API_TOKEN>",
        )
    if not hmac.compare_digest(supplied[len("Bearer ") :].encode(), expected.encode()):
        return None, error_response(401, "unauthorized", "the admin token is invalid")
    return "admin-token", None


def record_handler(record: SQSRecord) -> dict[str, Any]:
    """Run one queued call; raising sends the message back to the queue."""
    raw = record.raw_event
    message_id = record.message_id
    try:
        org_id = org_id_from_record(raw)
        request = parse_call(parse_json_object(record.body, field="body"))
        result = call_service(**request, deadline=_deadline(processor.lambda_context))
    except (json.JSONDecodeError, ValidationError) as exc:
        return reply_rejected(raw, exc, event="breaker.call_rejected")
    except (BreakerOpenError, TransientError) as exc:
        logger.warning(
            "breaker.call_retry_later",
            extra={"message_id": message_id, "error": f"{type(exc).__name__}: {exc}"},
        )
        raise

    outcome = {"ok": result.status < 400, **_response_body(request["name"], result)}
    logger.info(
        "breaker.call_completed",
        extra={
            "message_id": message_id,
            "org_id": org_id,
            "service": request["name"],
            "status": result.status,
            "breaker_state": result.breaker_state,
        },
    )
    if result.status >= 500 or result.status == 429:
        raise TransientServiceAnswer(request["name"], result.status)
    send_reply(raw, outcome)
    return outcome


class TransientServiceAnswer(TransientError):
    """A 5xx or 429 response after the retries; the message is retried later."""

    def __init__(self, service: str, status: int) -> None:
        super().__init__(f"{service!r} answered {status}", service=service)
        self.status = status


@logger.inject_lambda_context
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """Serve HTTP API events and SQS batches."""
    return serve_http_or_sqs(
        event, context, app, record_handler=record_handler, processor=processor
    )
