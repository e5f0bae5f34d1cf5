"""Graceful-degradation handler: completions over HTTP and from SQS.

Route (API Gateway HTTP API):

- ``POST /completions`` ``{"prompt": "...", "maxTokens": 500}`` (or
  ``"messages": [{"role", "content"}]``; optional ``tier``, ``cache``,
  ``deadlineS``, ``temperature``) returns ``{ok, model, provider, output,
  degraded, cached, usage, cost}``. ``{"prompts": ["...", ...]}`` completes
  up to ``LLM_MAX_PROMPTS`` prompts (default 20) at once and returns
  ``{ok, results: [...]}`` in request order. 400 names the invalid field;
  429 when the org's hard daily budget is spent; 400 or 422 when the
  provider rejects the prompt itself (too long, content policy); 400
  ``request_not_sent`` when the SDK could not send the request at all.

SQS (``completions``): each message body is the HTTP route's body; the
result is sent to the queue named by the ``replyTo`` attribute, if any.

At init the provider SDKs start importing in a background thread, so a
request that falls back to the second provider does not wait for its import.
"""

from __future__ import annotations

import json
import os
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
    json_text,
    org_id_from_http_event,
    parse_json_object,
    serve_http_or_sqs,
)
from resilience.errors import (
    BudgetExceededError,
    ContentPolicyError,
    ContextWindowExceededError,
    UpstreamClientError,
    ValidationError,
)
from resilience.llm import CompletionRequest, complete, complete_many, warm_up
from resilience.llm.classify import RequestNotSentError
from resilience.messaging import org_id_from_record, reply_rejected, send_reply
from resilience.observability import route_library_logs

logger = Logger(service="graceful-degradation")
route_library_logs(logger)
app = build_resolver()
processor = BatchProcessor(event_type=EventType.SQS)

ENV_MAX_PROMPTS = "LLM_MAX_PROMPTS"
# Fields of a request body and the CompletionRequest argument each one sets.
FIELDS = {
    "prompt": "prompt",
    "messages": "messages",
    "maxTokens": "max_tokens",
    "tier": "tier",
    "cache": "cache",
    "deadlineS": "deadline_s",
    "temperature": "temperature",
}
KNOWN_FIELDS = {*FIELDS, "prompts"}


def parse_requests(
    body: dict[str, Any], org_id: str, run_id: str
) -> tuple[list[CompletionRequest], bool]:
    """Build the requests of a body; the flag is True for the ``prompts`` form."""
    unknown = sorted(set(body) - KNOWN_FIELDS)
    if unknown:
        raise ValidationError(
            f"unknown field {unknown[0]!r}: valid fields are {sorted(KNOWN_FIELDS)}",
            field=unknown[0],
        )
    shared = _shared_fields(body)
    if "prompts" not in body:
        request = CompletionRequest(org_id=org_id, run_id=run_id, **shared)
        return [request.validated()], False

    prompts = body["prompts"]
    limit = int(os.environ.get(ENV_MAX_PROMPTS) or 20)
    if "prompt" in body or "messages" in body:
        raise ValidationError(
            "send prompts on its own, without prompt or messages", field="prompts"
        )
    if not isinstance(prompts, list) or not prompts or len(prompts) > limit:
        raise ValidationError(
            f"prompts must be a list of 1 to {limit} strings", field="prompts"
        )
    requests = []
    for index, prompt in enumerate(prompts):
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValidationError(
                f"prompts[{index}] must be a non-empty string",
                field=f"prompts[{index}]",
            )
        request = CompletionRequest(
            prompt=prompt, org_id=org_id, run_id=run_id, **shared
        )
        try:
            requests.append(request.validated())
        except ValidationError as exc:
            if exc.field != "prompt":
                raise
            message = str(exc).replace("prompt", f"prompts[{index}]", 1)
            raise ValidationError(message, field=f"prompts[{index}]") from None
    return requests, True


def _shared_fields(body: dict[str, Any]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name, argument in FIELDS.items():
        if name in body and body[name] is not None:
            values[argument] = body[name]
    _check_type(values, "max_tokens", "maxTokens", int, "an integer")
    _check_type(values, "tier", "tier", str, "a tier name")
    _check_type(values, "cache", "cache", bool, "true or false")
    _check_type(values, "deadline_s", "deadlineS", (int, float), "a number of seconds")
    _check_type(values, "temperature", "temperature", (int, float), "a number")
    # CompletionRequest.validated() converts deadlineS and temperature to
    # float and rejects values beyond the float range.
    return values


def _check_type(
    values: dict[str, Any], key: str, field: str, kind: Any, description: str
) -> None:
    value = values.get(key)
    wrong_bool = isinstance(value, bool) and kind is not bool
    if key in values and (wrong_bool or not isinstance(value, kind)):
        raise ValidationError(
            f"{field} must be {description}, got {json_text(value)}", field=field
        )


def run_completions(body: dict[str, Any], org_id: str, context: Any) -> dict[str, Any]:
    run_id = str(getattr(context, "aws_request_id", "") or "")
    requests, many = parse_requests(body, org_id, run_id)
    if not many:
        return complete(requests[0], context=context).to_json()
    results = complete_many(requests, context=context)
    return {
        "ok": all(result.ok for result in results),
        "results": [result.to_json() for result in results],
    }


# ---------------------------------------------------------------- HTTP


@app.exception_handler(BudgetExceededError)
def _budget_exceeded(error: BudgetExceededError) -> Response:
    response = error_response(
        429,
        "budget_exceeded",
        str(error),
        orgId=error.org_id,
        retryAfterS=round(error.retry_after),
    )
    response.headers["Retry-After"] = str(max(1, round(error.retry_after)))
    return response


@app.exception_handler(UpstreamClientError)
def _rejected(error: UpstreamClientError) -> Response:
    if isinstance(error, ContextWindowExceededError):
        return error_response(
            400,
            "context_length_exceeded",
            "the prompt and maxTokens do not fit the model's context window: "
            "shorten the prompt or use a tier with a larger-window model",
            field="prompt",
        )
    if isinstance(error, RequestNotSentError):
        return error_response(400, "request_not_sent", str(error))
    if isinstance(error, ContentPolicyError):
        return error_response(
            422, "content_policy", "the provider's content policy rejected the prompt"
        )
    return error_response(400, "upstream_rejected", str(error))


@app.post("/completions")
def post_completions() -> Response:
    body = json_body(app)
    org_id = org_id_from_http_event(app.current_event.raw_event)
    return json_response(200, run_completions(body, org_id, app.lambda_context))


# ---------------------------------------------------------------- SQS


def record_handler(record: SQSRecord) -> dict[str, Any]:
    """Complete one queued body; raising sends the message back to the queue."""
    raw = record.raw_event
    try:
        body = parse_json_object(record.body, field="body")
        outcome = run_completions(
            body, org_id_from_record(raw), processor.lambda_context
        )
    except (json.JSONDecodeError, ValidationError) as exc:
        return reply_rejected(raw, exc, event="llm.message_rejected")
    except (BudgetExceededError, UpstreamClientError) as exc:
        logger.warning(
            "llm.message_refused",
            extra={"message_id": record.message_id, "error": type(exc).__name__},
        )
        outcome = {"ok": False, "error": type(exc).__name__, "message": str(exc)}
        send_reply(raw, outcome)
        return outcome

    send_reply(raw, outcome)
    return outcome


@logger.inject_lambda_context
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """Serve HTTP API events and SQS batches."""
    return serve_http_or_sqs(
        event, context, app, record_handler=record_handler, processor=processor
    )


# Last, so the module's own imports are not slowed by the background import.
preload = warm_up()
