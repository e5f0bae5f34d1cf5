"""Translation of openai and anthropic SDK exceptions into the error tree."""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

import anthropic
import httpx2
import openai
import pytest

from resilience.errors import (
    AuthError,
    ContentPolicyError,
    ContextWindowExceededError,
    RateLimitedError,
    UpstreamClientError,
    UpstreamConnectionError,
    UpstreamServerError,
    UpstreamTimeoutError,
)
from resilience.llm.classify import (
    ANTHROPIC_TRANSLATORS,
    OPENAI_TRANSLATORS,
    ErrorClass,
    RequestNotSentError,
    error_class_of,
    resolve_translator,
    translate_anthropic,
    translate_openai,
)

REQUEST = httpx2.Request("POST", "http://127.0.0.1:1/v1/chat/completions")


def _all_subclasses(root: type) -> set[type]:
    found: set[type] = set()
    stack = [root]
    while stack:
        for subclass in stack.pop().__subclasses__():
            if subclass not in found:
                found.add(subclass)
                stack.append(subclass)
    return found


def _import_all(package: Any) -> None:
    # Error classes defined in submodules exist only once those are imported.
    for module in pkgutil.iter_modules(package.__path__, package.__name__ + "."):
        if module.name.split(".")[-1] in ("_exceptions", "_error_classes"):
            importlib.import_module(module.name)


@pytest.mark.parametrize(
    ("sdk", "root", "table"),
    [
        (openai, openai.OpenAIError, OPENAI_TRANSLATORS),
        (anthropic, anthropic.AnthropicError, ANTHROPIC_TRANSLATORS),
    ],
)
def test_every_exported_exception_has_an_entry(
    sdk: Any, root: type, table: dict
) -> None:
    exported = set(sdk._exceptions.__all__) | {
        "APIError",
        "APIStatusError",
        "APIConnectionError",
        "APITimeoutError",
        "APIResponseValidationError",
        root.__name__,
    }
    aliases = {
        name
        for name in exported
        if getattr(sdk._exceptions, name).__name__ != name  # e.g. RequestTooLargeError
    }

    missing = sorted(exported - aliases - set(table))

    assert missing == []


@pytest.mark.parametrize(
    ("sdk", "root", "table"),
    [
        (openai, openai.OpenAIError, OPENAI_TRANSLATORS),
        (anthropic, anthropic.AnthropicError, ANTHROPIC_TRANSLATORS),
    ],
)
def test_every_sdk_exception_class_resolves(sdk: Any, root: type, table: dict) -> None:
    _import_all(sdk)
    classes = {
        c for c in _all_subclasses(root) if c.__module__.startswith(sdk.__name__)
    }
    assert len(classes) > 10

    unmapped = []
    for klass in sorted(classes, key=lambda c: c.__name__):
        found = resolve_translator(klass, table, sdk.__name__)
        if found is None or found[0] == root.__name__:
            unmapped.append(klass.__name__)

    assert unmapped == []


def _openai_status(
    status: int, body: dict[str, Any], headers: dict[str, str] | None = None
):
    response = httpx2.Response(status, headers=headers or {}, request=REQUEST)
    client = openai.OpenAI(api_key="k", base_url="http://127.0.0.1:1/v1")
    return client._make_status_error(
        f"Error code: {status}", body=body, response=response
    )


def _anthropic_status(status: int, body: Any, headers: dict[str, str] | None = None):
    response = httpx2.Response(status, headers=headers or {}, request=REQUEST)
    client = anthropic.Anthropic(api_key="k", base_url="http://127.0.0.1:1")
    return client._make_status_error(f"{status}", body=body, response=response)


def _anthropic_body(kind: str, message: str = "failed") -> dict[str, Any]:
    return {"type": "error", "error": {"type": kind, "message": message}}


@pytest.mark.parametrize(
    ("status", "body", "expected", "error_class"),
    [
        (500, {"error": {"type": "server_error"}}, UpstreamServerError, "transient"),
        (503, {"error": {}}, UpstreamServerError, "transient"),
        (
            529,
            {"error": {"type": "overloaded_error"}},
            UpstreamServerError,
            "transient",
        ),
        (401, {"error": {"code": "invalid_api_key"}}, AuthError, "config_error"),
        (404, {"error": {"code": "model_not_found"}}, AuthError, "config_error"),
        (
            400,
            {"error": {"code": "context_length_exceeded", "message": "too long"}},
            ContextWindowExceededError,
            "context_window",
        ),
        (
            400,
            {"error": {"code": "content_policy_violation"}},
            ContentPolicyError,
            "content_policy",
        ),
        (
            400,
            {"error": {"message": "bad temperature"}},
            UpstreamClientError,
            "client_error",
        ),
        (429, {"error": {"code": "insufficient_quota"}}, AuthError, "config_error"),
    ],
)
def test_openai_status_errors(
    status: int, body: dict[str, Any], expected: type, error_class: str
) -> None:
    error = translate_openai(_openai_status(status, body), "openai:gpt-4o-mini")

    assert type(error) is expected
    assert error_class_of(error) == ErrorClass(error_class)
    assert error.service == "openai:gpt-4o-mini"


def test_openai_rate_limit_reads_retry_after() -> None:
    sdk_error = _openai_status(429, {"error": {}}, {"retry-after": "7"})

    error = translate_openai(sdk_error, "openai:gpt-4o-mini")

    assert isinstance(error, RateLimitedError)
    assert error.retry_after == 7.0
    assert error_class_of(error) is ErrorClass.RATE_LIMITED


def test_openai_stream_error_event_is_transient() -> None:
    sdk_error = openai.APIError(
        "Overloaded",
        REQUEST,
        body={"message": "Overloaded", "type": "overloaded_error"},
    )

    error = translate_openai(sdk_error, "openai:gpt-4o-mini")

    assert isinstance(error, UpstreamServerError)
    assert error.status == 529


def test_timeouts_and_connections() -> None:
    assert isinstance(
        translate_openai(openai.APITimeoutError(REQUEST), "openai:m"),
        UpstreamTimeoutError,
    )
    assert isinstance(
        translate_anthropic(
            anthropic.APIConnectionError(request=REQUEST), "anthropic:m"
        ),
        UpstreamConnectionError,
    )


@pytest.mark.parametrize(
    ("status", "kind", "message", "expected"),
    [
        (529, "overloaded_error", "Overloaded", UpstreamServerError),
        (200, "overloaded_error", "Overloaded", UpstreamServerError),
        (200, "rate_limit_error", "slow down", RateLimitedError),
        (
            400,
            "invalid_request_error",
            "prompt is too long: 1 > 0",
            ContextWindowExceededError,
        ),
        (400, "invalid_request_error", "max_tokens too large", UpstreamClientError),
        (401, "authentication_error", "invalid x-api-key", AuthError),
        (402, "billing_error", "credit", AuthError),
        (413, "request_too_large", "too big", UpstreamClientError),
    ],
)
def test_anthropic_errors(status: int, kind: str, message: str, expected: type) -> None:
    sdk_error = _anthropic_status(status, _anthropic_body(kind, message))

    error = translate_anthropic(sdk_error, "anthropic:claude-haiku-4-5")

    assert type(error) is expected


def test_parse_errors_are_transient() -> None:
    import json

    try:
        json.loads("{broken")
    except json.JSONDecodeError as exc:
        error = translate_openai(exc, "openai:m")

    assert isinstance(error, UpstreamServerError)
    assert "could not be parsed" in str(error)


def _encode_error() -> UnicodeEncodeError:
    try:
        "prompt \ud800".encode("utf-8")
    except UnicodeEncodeError as exc:
        return exc
    raise AssertionError("a lone surrogate encoded as UTF-8")


def _connection_error_from(cause: Exception, sdk: Any) -> Exception:
    try:
        try:
            raise cause
        except Exception as exc:
            raise sdk.APIConnectionError(request=REQUEST) from exc
    except sdk.APIConnectionError as wrapped:
        return wrapped
    raise AssertionError("no APIConnectionError raised")


@pytest.mark.parametrize(
    ("translate", "sdk"),
    [(translate_openai, openai), (translate_anthropic, anthropic)],
)
def test_unencodable_text_is_not_sent(translate: Any, sdk: Any) -> None:
    error = translate(_encode_error(), "openai:gpt-4o-mini")

    assert type(error) is RequestNotSentError
    assert error_class_of(error) is ErrorClass.NOT_SENT
    assert error.status == 400
    assert "\\ud800" in str(error)


@pytest.mark.parametrize(
    ("translate", "sdk"),
    [(translate_openai, openai), (translate_anthropic, anthropic)],
)
def test_local_protocol_error_is_not_sent(translate: Any, sdk: Any) -> None:
    secret_header = "Illegal header value b'Bearer sk-secret\\n'"
    sdk_error = _connection_error_from(httpx2.LocalProtocolError(secret_header), sdk)

    error = translate(sdk_error, "anthropic:claude-haiku-4-5")

    assert type(error) is RequestNotSentError
    assert error_class_of(error) is ErrorClass.NOT_SENT
    assert "LocalProtocolError" in str(error)
    assert "sk-secret" not in str(error)


def test_remote_protocol_error_stays_transient() -> None:
    sdk_error = _connection_error_from(
        httpx2.RemoteProtocolError("peer closed connection"), openai
    )

    error = translate_openai(sdk_error, "openai:gpt-4o-mini")

    assert type(error) is UpstreamConnectionError
    assert error_class_of(error) is ErrorClass.TRANSIENT
