"""Translate provider SDK exceptions into the project's error tree, once per SDK.

Each SDK exception class maps, by name and through its class hierarchy, to a
translator. A translator reads the status, the error body (``type`` and
``code``) and the ``Retry-After`` header, and returns one of:

===================  ==========================================  ====================
error class          raised as                                   the chain then
===================  ==========================================  ====================
``transient``        UpstreamServerError, UpstreamTimeoutError,  asks the next step
                     UpstreamConnectionError                     at once
``rate_limited``     RateLimitedError (``retry_after``)          opens the breaker until
                                                                 Retry-After, next step
``context_window``   ContextWindowExceededError                  tries the larger-window
                                                                 model, else 4xx
``content_policy``   ContentPolicyError                          returns 4xx
``client_error``     UpstreamClientError                         returns 4xx
``not_sent``         RequestNotSentError                         returns 4xx, and the
                                                                 breaker counts nothing
``config_error``     AuthError (bad key, unknown model, billing) asks the next step
===================  ==========================================  ====================

An error raised while the SDK builds or writes the request (text that does
not encode as UTF-8, a header that HTTP/1.1 forbids) is ``not_sent``: the
provider never saw the request, so its breaker learns nothing from it.

Errors inside a 200 stream (an ``error`` event) carry no status: the body's
error type stands in for it, so ``overloaded_error`` is a 529.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Callable
from typing import Any

from resilience.errors import (
    AuthError,
    ContentPolicyError,
    ContextWindowExceededError,
    RateLimitedError,
    ResilienceError,
    TransientError,
    UpstreamClientError,
    UpstreamConnectionError,
    UpstreamServerError,
    UpstreamTimeoutError,
)
from resilience.retry_after import parse_retry_after

__all__ = [
    "ANTHROPIC_TRANSLATORS",
    "OPENAI_TRANSLATORS",
    "ErrorClass",
    "RequestNotSentError",
    "error_class_of",
    "resolve_translator",
    "translate_anthropic",
    "translate_openai",
]

Translator = Callable[[BaseException, str], ResilienceError]


class ErrorClass(enum.StrEnum):
    """Error class of a failed provider call, named for what the chain does next."""

    TRANSIENT = "transient"
    RATE_LIMITED = "rate_limited"
    CONTEXT_WINDOW = "context_window"
    CONTENT_POLICY = "content_policy"
    CLIENT_ERROR = "client_error"
    CONFIG_ERROR = "config_error"
    NOT_SENT = "not_sent"


class RequestNotSentError(UpstreamClientError):
    """The SDK failed to build or write the request, so the provider never saw it.

    The input is at fault (for example a lone surrogate in the text) and would
    fail at every provider in the same way, so it is returned, not retried.
    """


def error_class_of(error: BaseException) -> ErrorClass:
    """Return the error class of an exception already in the project's tree."""
    if isinstance(error, RequestNotSentError):
        return ErrorClass.NOT_SENT
    if isinstance(error, ContextWindowExceededError):
        return ErrorClass.CONTEXT_WINDOW
    if isinstance(error, ContentPolicyError):
        return ErrorClass.CONTENT_POLICY
    if isinstance(error, RateLimitedError):
        return ErrorClass.RATE_LIMITED
    if isinstance(error, TransientError):
        return ErrorClass.TRANSIENT
    if isinstance(error, UpstreamClientError):
        return ErrorClass.CLIENT_ERROR
    return ErrorClass.CONFIG_ERROR


# ---------------------------------------------------------------- reading errors

# Error types of in-stream error events (and bodies) standing in for a status.
_TYPE_STATUS = {
    "overloaded_error": 529,
    "api_error": 500,
    "server_error": 500,
    "timeout_error": 504,
    "rate_limit_error": 429,
    "invalid_request_error": 400,
    "request_too_large": 413,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
}
_CONTEXT_MARKERS = (
    "context_length_exceeded",
    "maximum context length",
    "prompt is too long",
    "context window",
    "too many tokens",
)
_POLICY_MARKERS = (
    "content_policy_violation",
    "content_filter",
    "content filtering policy",
    "safety system",
)
_QUOTA_CODES = ("insufficient_quota", "billing_hard_limit_reached")


def _error_fields(error: BaseException) -> tuple[str, str, str]:
    """Return (type, code, message) from an SDK error's body, lower case."""
    body: Any = getattr(error, "body", None)
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        body = body["error"]
    if not isinstance(body, dict):
        body = {}
    kind = str(body.get("type") or getattr(error, "type", None) or "")
    code = str(body.get("code") or getattr(error, "code", None) or "")
    message = str(body.get("message") or getattr(error, "message", "") or "")
    return kind.lower(), code.lower(), message.lower()


def _status_of(error: BaseException) -> int | None:
    status = getattr(error, "status_code", None)
    if isinstance(status, int) and status >= 300:
        return status
    kind, _, _ = _error_fields(error)
    return _TYPE_STATUS.get(kind)


# ---------------------------------------------------------------- translators


def _timeout(error: BaseException, service: str) -> ResilienceError:
    return UpstreamTimeoutError(f"{service} timed out: {error}", service=service)


def _connection(error: BaseException, service: str) -> ResilienceError:
    return UpstreamConnectionError(
        f"{service} could not be reached or closed the connection: {error}",
        service=service,
    )


def _malformed(error: BaseException, service: str) -> ResilienceError:
    return UpstreamServerError(
        f"{service} returned a response that could not be parsed: "
        f"{type(error).__name__}",
        service=service,
    )


def _config(error: BaseException, service: str) -> ResilienceError:
    return AuthError(
        f"{service} rejected the configuration (key, model or account): {error}",
        service=service,
    )


def _content_policy(error: BaseException, service: str) -> ResilienceError:
    return ContentPolicyError(
        f"{service} rejected the request under its content policy",
        service=service,
        status=400,
    )


def _client(error: BaseException, service: str) -> ResilienceError:
    return UpstreamClientError(
        f"{service} rejected the request: {error}",
        service=service,
        status=getattr(error, "status_code", None),
    )


def _by_status(error: BaseException, service: str) -> ResilienceError:
    """Translate an error that has a status, or an error type standing in for one."""
    status = _status_of(error)
    kind, code, message = _error_fields(error)
    text = f"{kind} {code} {message}"

    if status == 429:
        if code in _QUOTA_CODES:
            return _config(error, service)
        response = getattr(error, "response", None)
        retry_after = parse_retry_after(getattr(response, "headers", None))
        return RateLimitedError(
            f"{service} is rate limiting requests",
            service=service,
            retry_after=retry_after,
        )
    if status is None or status in (408, 409, 499) or status >= 500:
        return UpstreamServerError(
            f"{service} failed with status {status or 'unknown'} ({kind or 'no type'})",
            service=service,
            status=status,
        )
    if status in (401, 402, 403, 404):
        return _config(error, service)
    if any(marker in text for marker in _CONTEXT_MARKERS):
        return ContextWindowExceededError(
            f"{service}: the prompt does not fit the model's context window",
            service=service,
            status=status,
        )
    if any(marker in text for marker in _POLICY_MARKERS):
        return _content_policy(error, service)
    return _client(error, service)


# Keyed by class name, so the SDKs are imported only when an error happens.
OPENAI_TRANSLATORS: dict[str, Translator] = {
    "APITimeoutError": _timeout,
    "APIConnectionError": _connection,
    "APIResponseValidationError": _malformed,
    "RateLimitError": _by_status,
    "InternalServerError": _by_status,
    "BadRequestError": _by_status,
    "AuthenticationError": _config,
    "OAuthError": _config,
    "PermissionDeniedError": _config,
    "NotFoundError": _config,
    "ConflictError": _by_status,
    "UnprocessableEntityError": _by_status,
    "APIStatusError": _by_status,
    # An error event inside a stream: no status, only a body.
    "APIError": _by_status,
    "LengthFinishReasonError": _client,
    "ContentFilterFinishReasonError": _content_policy,
    "InvalidWebhookSignatureError": _config,
    "SubjectTokenProviderError": _config,
    "WebSocketConnectionClosedError": _connection,
    "WebSocketQueueFullError": _by_status,
    # Misuse of the SDK itself: a bug or a wrong setting, never the provider.
    "StreamAlreadyConsumed": _config,
    "APIRemovedInV1": _config,
    "MutuallyExclusiveAuthError": _config,
    "_AmbiguousModuleClientUsageError": _config,
    "OpenAIError": _config,
}

ANTHROPIC_TRANSLATORS: dict[str, Translator] = {
    "APITimeoutError": _timeout,
    "APIConnectionError": _connection,
    "APIResponseValidationError": _malformed,
    "APIWebhookValidationError": _config,
    "RateLimitError": _by_status,
    "InternalServerError": _by_status,
    "HTTPNotImplementedError": _by_status,
    "ServiceUnavailableError": _by_status,
    "GatewayTimeoutError": _by_status,
    "OverloadedError": _by_status,
    "RequestTimeoutError": _by_status,
    "ClientClosedRequestError": _by_status,
    "ConflictError": _by_status,
    "BadRequestError": _by_status,
    "UnprocessableEntityError": _by_status,
    "PreconditionFailedError": _by_status,
    "ContentTooLargeError": _by_status,
    "RequestHeaderFieldsTooLargeError": _by_status,
    "AuthenticationError": _config,
    "PaymentRequiredError": _config,
    "PermissionDeniedError": _config,
    "NotFoundError": _config,
    "APIStatusError": _by_status,
    # An error event inside a stream arrives as APIStatusError with status 200.
    "APIError": _by_status,
    "RetryableError": _by_status,
    "CredentialsError": _config,
    "IdentityTokenFileError": _config,
    "WorkloadIdentityError": _config,
    # Misuse of the SDK itself: a bug or a wrong setting, never the provider.
    "StreamAlreadyConsumed": _config,
    "MissingDependencyError": _config,
    "MutuallyExclusiveAuthError": _config,
    "ToolsetUsageError": _config,
    "AnthropicError": _config,
}

# Exceptions from parsing a malformed body, which the SDKs let through.
_PARSE_ERRORS = (json.JSONDecodeError, ValueError, KeyError, TypeError, AttributeError)


def resolve_translator(
    error_type: type[BaseException], table: dict[str, Translator], module_prefix: str
) -> tuple[str, Translator] | None:
    """Find the table entry of the nearest SDK class in ``error_type``'s hierarchy."""
    for klass in error_type.__mro__:
        if klass.__module__.split(".")[0] != module_prefix:
            continue
        translator = table.get(klass.__name__)
        if translator is not None:
            return klass.__name__, translator
    return None


# Exceptions the HTTP stack raises for a request it refuses to write, by module
# root and class name: h11 and h2 raise them, httpcore and httpx re-raise them.
_LOCAL_PROTOCOL_MODULES = ("h11", "h2", "httpcore", "httpcore2", "httpx", "httpx2")


def _not_sent_cause(error: BaseException) -> BaseException | None:
    """Return the exception in ``error``'s chain that stopped the request being sent.

    The SDKs raise UnicodeEncodeError themselves while serialising the body,
    and wrap the HTTP stack's LocalProtocolError in ``APIConnectionError``.
    """
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, UnicodeEncodeError):
            return current
        klass = type(current)
        module_root = klass.__module__.split(".")[0]
        if (
            klass.__name__ == "LocalProtocolError"
            and module_root in _LOCAL_PROTOCOL_MODULES
        ):
            return current
        current = current.__cause__ or current.__context__
    return None


def _not_sent(cause: BaseException, service: str) -> ResilienceError:
    if isinstance(cause, UnicodeEncodeError):
        detail = (
            f"the text contains {cause.object[cause.start : cause.end]!r}, which "
            "cannot be encoded as UTF-8: remove it or send a complete surrogate pair"
        )
    else:
        # The message of a LocalProtocolError can quote a header value, which
        # may be the API key, so only the class name is passed on.
        detail = (
            f"the HTTP client refused to write it ({type(cause).__name__}): "
            "check the header values and the text for control characters"
        )
    return RequestNotSentError(
        f"the request to {service} was not sent because {detail}",
        service=service,
        status=400,
    )


def _translate(
    error: BaseException, service: str, table: dict[str, Translator], sdk: str
) -> ResilienceError:
    cause = _not_sent_cause(error)
    if cause is not None:
        return _not_sent(cause, service)
    found = resolve_translator(type(error), table, sdk)
    if found is not None:
        return found[1](error, service)
    if isinstance(error, _PARSE_ERRORS):
        return _malformed(error, service)
    return UpstreamServerError(
        f"{service} failed with an unexpected {type(error).__name__}", service=service
    )


def translate_openai(error: BaseException, service: str) -> ResilienceError:
    """Translate an exception raised by the ``openai`` SDK (or by parsing its data)."""
    return _translate(error, service, OPENAI_TRANSLATORS, "openai")


def translate_anthropic(error: BaseException, service: str) -> ResilienceError:
    """Translate an exception raised by the ``anthropic`` SDK or by parsing its data."""
    return _translate(error, service, ANTHROPIC_TRANSLATORS, "anthropic")
