"""HTTP API helpers shared by the handlers: org id, JSON bodies, error shapes.

Every error response has the same JSON shape::

    {"error": "validation_error", "message": "...", "field": "items[2].id"}

``message`` says what was expected, what was found and what to change.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import sys
from collections.abc import Callable, Collection, Mapping
from typing import Any

from aws_lambda_powertools.event_handler import (
    APIGatewayHttpResolver,
    CORSConfig,
    Response,
    content_types,
)
from aws_lambda_powertools.utilities.batch import (
    BatchProcessor,
    process_partial_response,
)
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

from resilience.errors import (
    BreakerOpenError,
    ConflictError,
    NotFoundError,
    ResilienceError,
    StoreUnavailableError,
    ValidationError,
)

__all__ = [
    "DEFAULT_ORG_ID",
    "bound_message",
    "build_resolver",
    "error_response",
    "json_body",
    "json_response",
    "org_id_from_http_event",
    "parse_json_object",
    "reject_unknown_fields",
    "serve_http_or_sqs",
    "text_problem",
    "truncate_for_message",
    "validate_json_value",
    "validate_org_id",
]

logger = logging.getLogger(__name__)

DEFAULT_ORG_ID = "default"
ORG_ID_CLAIMS = ("org_id", "custom:org_id")
ORG_ID_HEADER = "x-org-id"
# Only the local stack sets this: in AWS the org id comes from the verified JWT.
ENV_TRUST_ORG_ID_HEADER = "TRUST_ORG_ID_HEADER"
ENV_CORS_ALLOW_ORIGIN = "CORS_ALLOW_ORIGIN"

# Deeper JSON is rejected: no request of this API needs more, and Python's
# json module fails with RecursionError at about 1,000 levels.
MAX_JSON_DEPTH = 64
# The name of a whole request body in error messages. Its members are named
# without this prefix (see validate_json_value).
REQUEST_BODY_FIELD = "body"
# Field names and values longer than this are cut where an error message
# quotes them, so that a client cannot make an error response (or the HTML
# page that shows it) as large as its request.
MAX_QUOTED_CHARS = 64
# Maximum length of an error message and of a field path in a response,
# whatever input they quote.
MAX_MESSAGE_CHARS = 600
MAX_FIELD_CHARS = 256

_ORG_ID_PATTERN = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


def validate_org_id(raw: object, *, field: str = "orgId") -> str:
    """Return a valid org id, ``default`` when absent; reject malformed ones."""
    if raw is None or raw == "":
        return DEFAULT_ORG_ID
    if not isinstance(raw, str) or not _ORG_ID_PATTERN.fullmatch(raw):
        raise ValidationError(
            f"{field} must be 1-64 characters of letters, digits, '_', '.', ':' "
            f"or '-', got {json_text(raw)}",
            field=field,
        )
    return raw


def org_id_from_http_event(event: dict[str, Any]) -> str:
    """Read the org id from the JWT claims, or the X-Org-Id header locally."""
    authorizer = (event.get("requestContext") or {}).get("authorizer") or {}
    claims = (authorizer.get("jwt") or {}).get("claims") or {}
    for claim in ORG_ID_CLAIMS:
        if claims.get(claim):
            return validate_org_id(claims[claim], field=f"JWT claim {claim}")

    if os.environ.get(ENV_TRUST_ORG_ID_HEADER, "").lower() == "true":
        headers = {k.lower(): v for k, v in (event.get("headers") or {}).items()}
        return validate_org_id(headers.get(ORG_ID_HEADER), field="X-Org-Id header")
    return DEFAULT_ORG_ID


def truncate_for_message(text: str) -> str:
    """Cut ``text`` to MAX_QUOTED_CHARS characters and mark the cut with "…"."""
    if len(text) <= MAX_QUOTED_CHARS:
        return text
    return text[:MAX_QUOTED_CHARS] + "…"


def reject_unknown_fields(
    body: Mapping[str, Any], accepted: Collection[str], *, prefix: str = ""
) -> None:
    """Raise ValidationError when ``body`` has a field that is not in ``accepted``.

    Without this check a misspelt optional field would be ignored silently.
    The error names the first unknown field in sorted order, cut by
    :func:`truncate_for_message` and preceded by ``prefix`` (such as
    ``items[0].``), and lists the accepted fields.
    """
    unknown = sorted(name for name in body if name not in accepted)
    if not unknown:
        return
    name = prefix + truncate_for_message(unknown[0])
    more = f" and {len(unknown) - 1} more" if len(unknown) > 1 else ""
    raise ValidationError(
        f"unknown field {name!r}{more}: remove it or correct its name. "
        f"The accepted fields are {', '.join(sorted(accepted))}",
        field=name,
    )


def json_body(resolver: APIGatewayHttpResolver) -> dict[str, Any]:
    """Parse the request body as a JSON object or raise a 400 ValidationError."""
    try:
        # API Gateway sends a body that is not text base64-encoded, and
        # Powertools decodes it back to text as UTF-8.
        raw = resolver.current_event.decoded_body
    except UnicodeDecodeError:
        raise ValidationError(
            "request body is not valid UTF-8: send a JSON object encoded as UTF-8",
            field="body",
        ) from None
    if not raw:
        raise ValidationError(
            "request body is empty: send a JSON object with Content-Type "
            "application/json",
            field="body",
        )
    return parse_json_object(raw, field="body")


def parse_json_object(
    raw: str | bytes | None, *, field: str = "body"
) -> dict[str, Any]:
    """Parse ``raw`` as a JSON object that PostgreSQL and HTTP clients can carry.

    Raises:
        ValidationError: the text is not JSON or not an object, repeats a key
            in an object, contains a non-finite number (NaN, Infinity, 1e400),
            is nested deeper than ``MAX_JSON_DEPTH``, or contains a string
            that cannot be stored (see :func:`validate_json_value`).
            ``field`` names the part.
    """
    try:
        value = json.loads(
            raw or "",
            parse_constant=_reject_constant,
            parse_float=_finite_float,
            object_pairs_hook=_unique_keys,
        )
    except _NonFiniteNumberError as exc:
        raise ValidationError(
            f"{field} contains {exc.args[0]}, which is not a finite number: "
            "JSON allows only finite numbers",
            field=field,
        ) from None
    except json.JSONDecodeError as exc:
        raise ValidationError(
            f"{field} is not valid JSON ({exc.msg} at position {exc.pos})",
            field=field,
        ) from None
    except RecursionError:
        raise ValidationError(
            f"{field} is nested too deeply: at most {MAX_JSON_DEPTH} levels",
            field=field,
        ) from None
    except UnicodeDecodeError:
        raise ValidationError(f"{field} is not valid UTF-8", field=field) from None
    except ValueError:
        # Python refuses to convert integers longer than its digit limit
        # (sys.get_int_max_str_digits, 4,300 by default).
        raise ValidationError(
            f"{field} contains an integer of more than "
            f"{sys.get_int_max_str_digits()} digits: send very long numbers as "
            "strings",
            field=field,
        ) from None
    if not isinstance(value, dict):
        raise ValidationError(
            f"{field} must be a JSON object, got {json_type_name(value)}",
            field=field,
        )
    validate_json_value(value, field=field)
    return value


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # json.loads keeps the last of two equal keys, so {"decision": "reject",
    # "decision": "approve"} would approve without a word.
    result: dict[str, Any] = {}
    for name, value in pairs:
        if name in result:
            quoted_name = truncate_for_message(name)
            raise ValidationError(
                f"{quoted_name} was sent more than once in a JSON object: send each "
                "key once",
                field=quoted_name,
            )
        result[name] = value
    return result


class _NonFiniteNumberError(ValueError):
    """Python's json module accepts NaN, Infinity and 1e400; JSON does not."""


def _reject_constant(name: str) -> float:
    raise _NonFiniteNumberError(name)


def _finite_float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise _NonFiniteNumberError(text)
    return number


def validate_json_value(
    value: Any, *, field: str = REQUEST_BODY_FIELD, max_depth: int = MAX_JSON_DEPTH
) -> None:
    """Reject JSON that would fail later, deep in a store or an HTTP client.

    PostgreSQL text and jsonb cannot hold the NUL character, UTF-8 cannot
    encode a lone surrogate (JSON allows both as ``\\u0000`` and
    ``\\ud800``), and very deep nesting exhausts Python's recursion limit
    when the value is serialised again, so more than ``max_depth`` levels are
    rejected (``MAX_JSON_DEPTH`` by default). The check walks the value without
    recursion and names the first offending field, with each key cut by
    :func:`truncate_for_message`.

    ``field`` names ``value`` itself. The members of a request body
    (``field="body"``) are named as the client sent them, such as
    ``items[2].id``, which is how the handlers' own checks name fields.
    The members of any other field get it as a prefix, such as ``data.a``.
    """
    # Each pending value carries its parent container's index in ``parents``
    # and its own key or index. A path is built only for an error: a string
    # per element would cost memory in proportion to depth times width.
    parents: list[tuple[int, str | int | None]] = []
    pending: list[tuple[Any, int, str | int | None, int]] = [(value, -1, None, 1)]
    while pending:
        current, parent, segment, depth = pending.pop()
        if depth > max_depth:
            path = _json_path(field, parents, parent, segment)
            raise ValidationError(
                f"{path} is nested too deeply: at most {max_depth} levels",
                field=path,
            )
        if isinstance(current, str):
            problem = text_problem(current)
            if problem is not None:
                path = _json_path(field, parents, parent, segment)
                raise ValidationError(f"{path} {problem}", field=path)
        elif isinstance(current, float) and not math.isfinite(current):
            path = _json_path(field, parents, parent, segment)
            raise ValidationError(
                f"{path} is {current}, which is not a finite number", field=path
            )
        elif isinstance(current, dict):
            parents.append((parent, segment))
            container = len(parents) - 1
            for key, item in current.items():
                _check_key(key, field, parents, container)
                pending.append((item, container, key, depth + 1))
        elif isinstance(current, list | tuple):
            # json.dumps writes a tuple as an array, so a processor output
            # may contain tuples.
            parents.append((parent, segment))
            container = len(parents) - 1
            for index, item in enumerate(current):
                pending.append((item, container, index, depth + 1))


def _check_key(
    key: object, field: str, parents: list[tuple[int, str | int | None]], node: int
) -> None:
    if not isinstance(key, str):
        path = _json_path(field, parents, *parents[node])
        raise ValidationError(
            f"{path} has a key that is not a string "
            f"({json_type_name(key)}): JSON object keys are strings",
            field=path,
        )
    problem = text_problem(key)
    if problem is not None:
        path = f"{_json_path(field, parents, *parents[node])} key {key[:40]!r}"
        raise ValidationError(f"{path} {problem}", field=path)


def _json_path(
    field: str,
    parents: list[tuple[int, str | int | None]],
    parent: int,
    segment: str | int | None,
) -> str:
    """Name a value by the keys and indexes leading to it, such as ``data.a[2]``.

    The members of a request body (``field="body"``) are named without the
    prefix, as the client sent them.
    """
    segments: list[str | int] = [] if segment is None else [segment]
    while parent >= 0:
        parent, up = parents[parent]
        if up is not None:
            segments.append(up)
    path = field
    for position, step in enumerate(reversed(segments)):
        if isinstance(step, int):
            path += f"[{step}]"
        elif position == 0 and field == REQUEST_BODY_FIELD:
            path = truncate_for_message(step)
        else:
            path += f".{truncate_for_message(step)}"
    return path


def json_text(value: object) -> str:
    """Return ``value`` as a client wrote it in JSON, cut for an error message."""
    try:
        text = json.dumps(value, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        text = json_type_name(value)
    return truncate_for_message(text)


def json_type_name(value: Any) -> str:
    """Return the JSON name of a parsed value's type, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def storable_text(text: str) -> str:
    """Return ``text`` with NUL and lone surrogates written as escapes.

    For free text such as an error message, which is stored as it is rather
    than rejected. PostgreSQL text cannot contain NUL, and UTF-8 cannot
    encode a lone surrogate.
    """
    escaped = text.replace("\x00", "\\x00")
    return escaped.encode("utf-8", "backslashreplace").decode("utf-8")


def text_problem(text: str) -> str | None:
    """Return why ``text`` cannot be stored, or None when it can."""
    if "\x00" in text:
        return "contains the NUL character (\\u0000), which cannot be stored: remove it"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return (
            "contains a lone UTF-16 surrogate, which is not valid Unicode: send "
            "the character as a surrogate pair or as UTF-8"
        )
    return None


def json_response(
    status: int, body: Any, headers: dict[str, str] | None = None
) -> Response:
    return Response(
        status_code=status,
        content_type=content_types.APPLICATION_JSON,
        body=json.dumps(body, default=str),
        headers=headers,
    )


def error_response(status: int, code: str, message: str, **extra: Any) -> Response:
    body: dict[str, Any] = {"error": code, "message": bound_message(message)}
    body.update({key: value for key, value in extra.items() if value is not None})
    field = body.get("field")
    if isinstance(field, str) and len(field) > MAX_FIELD_CHARS:
        # Checks cut the names they quote; this bounds any path they build.
        body["field"] = field[:MAX_FIELD_CHARS] + "…"
    return json_response(status, body)


def bound_message(message: str) -> str:
    """Cut an error message to MAX_MESSAGE_CHARS, keeping its start and end.

    A message may quote the client's input, which can be megabytes. Its end
    usually tells how to fix the request, so the cut is made in the middle.
    """
    if len(message) <= MAX_MESSAGE_CHARS:
        return message
    head = MAX_MESSAGE_CHARS * 2 // 3
    tail = MAX_MESSAGE_CHARS - head
    return f"{message[:head]} … {message[-tail:]}"


def build_resolver() -> APIGatewayHttpResolver:
    """Build an HTTP API resolver with CORS and the shared error mapping."""
    origin = os.environ.get(ENV_CORS_ALLOW_ORIGIN, "")
    cors = CORSConfig(allow_origin=origin, max_age=600) if origin else None
    resolver = APIGatewayHttpResolver(cors=cors)

    @resolver.exception_handler(ValidationError)
    def _validation(error: ValidationError) -> Response:
        return error_response(400, "validation_error", str(error), field=error.field)

    @resolver.exception_handler(NotFoundError)
    def _not_found(error: NotFoundError) -> Response:
        return error_response(404, "not_found", str(error))

    @resolver.exception_handler(ConflictError)
    def _conflict(error: ConflictError) -> Response:
        return error_response(409, "conflict", str(error))

    @resolver.exception_handler(BreakerOpenError)
    def _breaker_open(error: BreakerOpenError) -> Response:
        retry_after_ms = max(0, round(error.retry_after * 1000))
        response = error_response(
            503,
            "breaker_open",
            str(error),
            service=error.service,
            state=error.state,
            retryAfterMs=retry_after_ms,
        )
        response.headers["Retry-After"] = str(max(1, -(-retry_after_ms // 1000)))
        return response

    @resolver.exception_handler(StoreUnavailableError)
    def _store_unavailable(error: StoreUnavailableError) -> Response:
        logger.error("api.store_unavailable", extra={"error": str(error)})
        return error_response(
            503, "store_unavailable", "a backing store is unavailable: retry shortly"
        )

    @resolver.exception_handler(ResilienceError)
    def _other(error: ResilienceError) -> Response:
        logger.error("api.unhandled_resilience_error", exc_info=error)
        return error_response(500, "internal_error", type(error).__name__)

    return resolver


def serve_http_or_sqs(
    event: dict[str, Any],
    context: Any,
    resolver: APIGatewayHttpResolver,
    *,
    record_handler: Callable[[SQSRecord], Any],
    processor: BatchProcessor,
) -> dict[str, Any]:
    """Serve one event of a function that has both HTTP API and SQS triggers.

    An SQS batch goes to ``record_handler`` one record at a time, and the
    response names only the failed messages (``batchItemFailures``). Any
    other event is an HTTP API (payload 2.0) request for ``resolver``.
    """
    if "Records" in event:
        return process_partial_response(  # type: ignore[return-value]
            event=event,
            record_handler=record_handler,
            processor=processor,
            context=context,
        )
    return resolver.resolve(event, context)
