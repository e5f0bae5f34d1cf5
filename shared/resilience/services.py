"""Registered downstream services, called through their circuit breakers.

Only services named in configuration can be called, and only by a relative
path under their base URL: a URL taken from a request would let a caller
reach any host the Lambda can reach (server-side request forgery).

``BREAKER_SERVICES`` is a JSON object of name to settings::

    {"payments": {"baseUrl": "https://payments.internal/api",
                  "timeoutS": 5, "critical": true,
                  "breaker": {"failureThreshold": 5, "resetTimeoutS": 30},
                  "retry": {"attempts": 2, "backoffFactor": 2,
                            "initialWaitS": 0.2, "maxWaitS": 5}}}

Only ``baseUrl`` is required. ``breaker`` takes the camelCase names of
:class:`~resilience.breaker.BreakerConfig` fields (see ``docs/breaker.md``);
its ``probeLeaseS`` defaults to twice ``timeoutS``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx
import stamina

from resilience.api import json_text, truncate_for_message
from resilience.breaker import BreakerConfig, Permit, get_breaker
from resilience.errors import (
    BreakerOpenError,
    ConfigError,
    UpstreamConnectionError,
    UpstreamTimeoutError,
    ValidationError,
)
from resilience.retry_after import parse_retry_after

__all__ = [
    "RetryConfig",
    "ServiceConfig",
    "ServiceRegistry",
    "ServiceResponse",
    "call_service",
    "validate_path",
]

logger = logging.getLogger(__name__)

ENV_SERVICES = "BREAKER_SERVICES"
ALLOWED_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"})
# Headers a caller may not set: they describe the connection or the target,
# which this module controls.
BLOCKED_HEADERS = frozenset(
    {"host", "content-length", "connection", "transfer-encoding", "upgrade", "te"}
)
# Time kept back from the deadline for shaping the response after the call.
DEADLINE_MARGIN_S = 0.25

_NAME_PATTERN = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
# A header name is an RFC 9110 (formerly RFC 7230) token.
_HEADER_NAME_PATTERN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# A header value: visible ASCII, space and tab, no leading or trailing
# whitespace (h11 rejects those on send).
_HEADER_VALUE_PATTERN = re.compile(
    r"(?:[\x21-\x7e](?:[\x20\x09\x21-\x7e]*[\x21-\x7e])?)?"
)
# Printable ASCII of 1-255 characters, no leading or trailing space.
_IDEMPOTENCY_KEY_PATTERN = re.compile(r"[\x21-\x7e](?:[\x20-\x7e]{0,253}[\x21-\x7e])?")
# A '%' in a path must start a percent-escape of two hex digits.
_BAD_PERCENT_PATTERN = re.compile(r"%(?![0-9A-Fa-f]{2})")
# Errors httpx and the codecs raise while building or writing a request,
# before any byte reaches the service: the caller's input is at fault, so they
# become a ValidationError and never count as a failure of the service.
_CLIENT_SIDE_ERRORS = (
    httpx.LocalProtocolError,
    httpx.InvalidURL,
    httpx.UnsupportedProtocol,
    UnicodeEncodeError,
)


@dataclass(frozen=True)
class RetryConfig:
    """Retries of one call: attempts in total, exponential backoff in seconds."""

    attempts: int = 2
    backoff_factor: float = 2.0
    initial_wait: float = 0.2
    max_wait: float = 5.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ConfigError(
                f"retry.attempts must be >= 1, got {self.attempts}",
                setting="retry.attempts",
            )
        if self.backoff_factor < 1:
            raise ConfigError(
                f"retry.backoffFactor must be >= 1, got {self.backoff_factor}",
                setting="retry.backoffFactor",
            )


@dataclass(frozen=True)
class ServiceConfig:
    """A registered service: base URL, timeout and breaker settings."""

    name: str
    base_url: str
    timeout_s: float = 5.0
    critical: bool = False
    breaker: BreakerConfig = field(default_factory=BreakerConfig)
    retry: RetryConfig = field(default_factory=RetryConfig)


@dataclass(frozen=True)
class ServiceResponse:
    """A downstream HTTP response, with the attempts and time the call took."""

    status: int
    headers: dict[str, str]
    body: Any
    breaker_state: str
    attempts: int
    elapsed_ms: int


class ServiceRegistry:
    """Services that may be called, by name."""

    def __init__(self, services: Mapping[str, ServiceConfig]) -> None:
        self.services = dict(services)
        self._clients: dict[str, httpx.Client] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<ServiceRegistry services={sorted(self.services)}>"

    @classmethod
    def from_env(cls) -> ServiceRegistry:
        """Parse ``BREAKER_SERVICES`` (see the module docstring)."""
        return cls.from_json(os.environ.get(ENV_SERVICES) or "{}")

    @classmethod
    def from_json(cls, raw: str) -> ServiceRegistry:
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ConfigError(
                f"{ENV_SERVICES} is not valid JSON ({exc.msg} at position {exc.pos})",
                setting=ENV_SERVICES,
            ) from None
        if not isinstance(data, dict):
            raise ConfigError(
                f"{ENV_SERVICES} must be a JSON object of name to settings, "
                f"got {type(data).__name__}",
                setting=ENV_SERVICES,
            )
        return cls({name: _parse_service(name, spec) for name, spec in data.items()})

    def get(self, name: object) -> ServiceConfig:
        """Return the service called ``name``; unknown names raise ValidationError."""
        if not isinstance(name, str) or name not in self.services:
            known = ", ".join(sorted(self.services)) or "none registered"
            raise ValidationError(
                f"service {_quote(name)} is not registered: use one of {known}",
                field="service",
            )
        return self.services[name]

    def client(self, service: ServiceConfig) -> httpx.Client:
        """Return the service's HTTP client (one per service per container)."""
        with self._lock:
            client = self._clients.get(service.name)
            if client is None:
                # Redirects are not followed: one could lead to another host.
                client = httpx.Client(
                    base_url=service.base_url, follow_redirects=False, timeout=None
                )
                self._clients[service.name] = client
            return client


def _parse_service(name: str, spec: Any) -> ServiceConfig:
    setting = f"{ENV_SERVICES}.{name}"
    if not _NAME_PATTERN.fullmatch(name):
        raise ConfigError(
            f"service name {name!r} must be 1-64 letters, digits, '_', '.', ':' or '-'",
            setting=setting,
        )
    if not isinstance(spec, dict):
        raise ConfigError(f"{setting} must be a JSON object", setting=setting)

    base_url = spec.get("baseUrl")
    if not isinstance(base_url, str):
        base_url = ""
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(
            f"{setting}.baseUrl must be an http(s) URL, got {spec.get('baseUrl')!r}",
            setting=f"{setting}.baseUrl",
        )
    timeout_s = float(spec.get("timeoutS", 5))
    if timeout_s <= 0:
        raise ConfigError(
            f"{setting}.timeoutS must be > 0, got {timeout_s}",
            setting=f"{setting}.timeoutS",
        )

    breaker = BreakerConfig.from_env(probe_lease=2 * timeout_s)
    breaker = breaker.with_mapping(
        spec.get("breaker") or {}, source=f"{setting}.breaker"
    )
    retry_spec = spec.get("retry") or {}
    retry = RetryConfig(
        attempts=int(retry_spec.get("attempts", 2)),
        backoff_factor=float(retry_spec.get("backoffFactor", 2)),
        initial_wait=float(retry_spec.get("initialWaitS", 0.2)),
        max_wait=float(retry_spec.get("maxWaitS", 5)),
    )
    return ServiceConfig(
        name=name,
        base_url=base_url.rstrip("/"),
        timeout_s=timeout_s,
        critical=bool(spec.get("critical", False)),
        breaker=breaker,
        retry=retry,
    )


def validate_path(path: object) -> str:
    """Return ``path`` when it is a relative path under the base URL, else raise.

    Rejected: anything not starting with one '/', '//' (a network path that
    names a host), a scheme, '..' segments, backslashes, control characters,
    a '%' that does not start a two-hex-digit escape, and text that cannot be
    encoded as UTF-8 (lone surrogates). Other non-ASCII characters are sent
    percent-encoded as UTF-8.
    """
    if not isinstance(path, str) or not path.startswith("/") or path.startswith("//"):
        raise ValidationError(
            "path must be a relative path starting with a single '/', "
            f"got {_quote(path)}",
            field="path",
        )
    bare = path.split("?", 1)[0].split("#", 1)[0]
    segments = bare.split("/")
    if (
        "\\" in path
        or any(ord(char) < 0x20 or ord(char) == 0x7F for char in path)
        or "://" in bare
        or any(segment in ("..", ".") for segment in segments)
        or "%2e" in bare.lower()
        or "%2f" in bare.lower()
    ):
        raise ValidationError(
            "path must not contain '..' or '.' segments, encoded dots or slashes, "
            f"backslashes, control characters or a URL scheme, got {_quote(path)}",
            field="path",
        )
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        raise ValidationError(
            f"path must be valid Unicode text, got {_quote(path)}: remove lone "
            "surrogates or percent-encode the bytes (e.g. %C3%A9)",
            field="path",
        ) from None
    if _BAD_PERCENT_PATTERN.search(path):
        raise ValidationError(
            f"path has a '%' not followed by two hex digits, got {_quote(path)}: "
            "write a literal '%' as %25",
            field="path",
        )
    return path


class _RetryableResponse(Exception):
    """An HTTP response that counts as a failure, raised so that stamina retries."""

    def __init__(self, response: httpx.Response, retry_after: float | None) -> None:
        super().__init__(f"HTTP {response.status_code}")
        self.response = response
        self.retry_after = retry_after


_registry: ServiceRegistry | None = None
_registry_lock = threading.Lock()


def default_registry() -> ServiceRegistry:
    """Return the container's registry, parsed from the environment once."""
    global _registry
    with _registry_lock:
        if _registry is None:
            _registry = ServiceRegistry.from_env()
        return _registry


def reset_default_registry() -> None:
    global _registry
    with _registry_lock:
        _registry = None


def call_service(
    name: str,
    method: str = "GET",
    path: str = "/",
    *,
    body: Any = None,
    headers: Mapping[str, str] | None = None,
    idempotency_key: str | None = None,
    deadline: float | None = None,
    registry: ServiceRegistry | None = None,
) -> ServiceResponse:
    """Call a registered service through its breaker, retrying as configured.

    ``deadline`` is an epoch time (``time.time()``) by which the call must be
    over, such as the Lambda's end; attempts and waits never go past it.

    Raises:
        ValidationError: unknown service, method, path, header or idempotency
            key, or a request httpx cannot build or write. The breaker does
            not count these.
        BreakerOpenError: the breaker rejected the first attempt.
        UpstreamConnectionError: the service could not be reached.
        UpstreamTimeoutError: the service did not respond in time.
    """
    registry = registry or default_registry()
    service = registry.get(name)
    method = _validate_method(method)
    path = validate_path(path)
    request_headers = _request_headers(headers, idempotency_key)
    breaker = get_breaker(service.name, service.breaker, critical=service.critical)
    client = registry.client(service)
    _check_request(client, service, method, path, body, request_headers)

    started = time.monotonic()
    attempts = 0
    failed_response: httpx.Response | None = None
    last_error: Exception | None = None
    retry = service.retry

    def wait_for(error: Exception) -> bool | float:
        # stamina calls this after a failed attempt: True retries with its
        # backoff, a number retries after that many seconds, False stops.
        left = _remaining(deadline)
        if left == 0.0:
            return False
        if isinstance(error, _RetryableResponse) and error.retry_after is not None:
            if left is not None and error.retry_after > left:
                return False
            return min(error.retry_after, retry.max_wait)
        return isinstance(
            error, _RetryableResponse | UpstreamConnectionError | UpstreamTimeoutError
        )

    try:
        for attempt in stamina.retry_context(
            on=wait_for,
            attempts=retry.attempts,
            timeout=_remaining(deadline) or None,
            wait_initial=retry.initial_wait,
            wait_max=retry.max_wait,
            wait_exp_base=retry.backoff_factor,
            wait_jitter=retry.initial_wait,
        ):
            with attempt:
                if _remaining(deadline) == 0.0:
                    raise UpstreamTimeoutError(
                        f"no time left before the deadline to call {service.name!r}",
                        service=service.name,
                    )
                permit = breaker.acquire()
                attempts += 1
                try:
                    response = _attempt(
                        permit,
                        client,
                        service,
                        method,
                        path,
                        body,
                        request_headers,
                        deadline,
                    )
                except (UpstreamConnectionError, UpstreamTimeoutError) as exc:
                    last_error = exc
                    raise
                if breaker.config.counts_status(response.status_code):
                    failed_response = response
                    raise _RetryableResponse(
                        response, parse_retry_after(response.headers)
                    )
    except _RetryableResponse as exhausted:
        response = exhausted.response
    except BreakerOpenError:
        # A retry rejected by the breaker ends the retries: the caller gets
        # what the previous attempt got.
        if failed_response is not None:
            response = failed_response
        elif last_error is not None:
            raise last_error from None
        else:
            raise

    return ServiceResponse(
        status=response.status_code,
        headers=dict(response.headers),
        body=_decode_body(response),
        breaker_state=breaker.last_seen_state or "closed",
        attempts=attempts,
        elapsed_ms=round((time.monotonic() - started) * 1000),
    )


def _attempt(
    permit: Permit,
    client: httpx.Client,
    service: ServiceConfig,
    method: str,
    path: str,
    body: Any,
    headers: dict[str, str],
    deadline: float | None,
) -> httpx.Response:
    left = _remaining(deadline)
    timeout = service.timeout_s if left is None else min(service.timeout_s, left)
    timeout = max(timeout, 0.001)
    content, content_headers = _encode_body(body)
    try:
        response = client.request(
            method,
            path,
            content=content,
            headers={**headers, **content_headers},
            timeout=timeout,
        )
    except _CLIENT_SIDE_ERRORS as exc:
        # Raised before anything was sent: the service did nothing wrong.
        permit.release()
        raise _client_side_error(service, method, path, exc) from exc
    except httpx.TimeoutException as exc:
        error: Exception = UpstreamTimeoutError(
            f"{service.name!r} timed out: no response to {method} {_quote(path)} "
            f"within {timeout:.2f} s",
            service=service.name,
        )
        permit.failure(error)
        raise error from exc
    except httpx.TransportError as exc:
        error = UpstreamConnectionError(
            f"cannot reach {service.name!r} for {method} {_quote(path)}: "
            f"{type(exc).__name__}",
            service=service.name,
        )
        permit.failure(error)
        raise error from exc

    permit.record_status(response.status_code)
    logger.info(
        "service.called",
        extra={
            "service": service.name,
            "method": method,
            "status": response.status_code,
        },
    )
    return response


def _check_request(
    client: httpx.Client,
    service: ServiceConfig,
    method: str,
    path: str,
    body: Any,
    headers: dict[str, str],
) -> None:
    """Build the request without sending it; raise ValidationError if httpx cannot."""
    content, content_headers = _encode_body(body)
    try:
        client.build_request(
            method, path, content=content, headers={**headers, **content_headers}
        )
    except _CLIENT_SIDE_ERRORS as exc:
        raise _client_side_error(service, method, path, exc) from exc


def _client_side_error(
    service: ServiceConfig, method: str, path: str, error: Exception
) -> ValidationError:
    logger.warning(
        "service.request_invalid",
        extra={
            "service": service.name,
            "method": method,
            "error": f"{type(error).__name__}: {error}",
        },
    )
    return ValidationError(
        f"the request to {service.name!r} cannot be sent ({type(error).__name__}: "
        f"{error}): fix the path, headers or idempotencyKey of {method} "
        f"{_quote(path)}",
        field="request",
    )


def _quote(value: object) -> str:
    """Quote a caller's value for an error message as JSON writes it."""
    return json_text(value)


def _remaining(deadline: float | None) -> float | None:
    if deadline is None:
        return None
    return max(0.0, deadline - time.time() - DEADLINE_MARGIN_S)


def _validate_method(method: object) -> str:
    # Only a string is looked up in the set, because a list or dict is unhashable.
    upper = method.upper() if isinstance(method, str) else None
    if upper is None or upper not in ALLOWED_METHODS:
        raise ValidationError(
            f"method must be one of {', '.join(sorted(ALLOWED_METHODS))}, "
            f"got {_quote(method)}",
            field="method",
        )
    return upper


def _request_headers(
    headers: Mapping[str, str] | None, idempotency_key: str | None
) -> dict[str, str]:
    result: dict[str, str] = {}
    for key, value in (headers or {}).items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise ValidationError(
                "headers must map header names to string values",
                field="headers",
            )
        # A valid header name has no length limit, so errors quote it cut.
        header_field = f"headers.{truncate_for_message(key)}"
        if not _HEADER_NAME_PATTERN.fullmatch(key):
            raise ValidationError(
                f"header name {_quote(key)} is invalid: use letters, digits and "
                "!#$%&'*+-.^_`|~ only (no spaces, colons or empty names)",
                field=header_field,
            )
        if key.lower() in BLOCKED_HEADERS:
            raise ValidationError(
                f"header {_quote(key)} cannot be set by the caller: remove it",
                field=header_field,
            )
        if not _HEADER_VALUE_PATTERN.fullmatch(value):
            raise ValidationError(
                f"header {_quote(key)} has an invalid value {_quote(value)}: use "
                "visible ASCII, spaces and tabs only, with no line breaks, NUL "
                "or leading or trailing whitespace",
                field=header_field,
            )
        result[key] = value
    if idempotency_key is not None:
        if not isinstance(
            idempotency_key, str
        ) or not _IDEMPOTENCY_KEY_PATTERN.fullmatch(idempotency_key):
            raise ValidationError(
                f"idempotencyKey is invalid, got {_quote(idempotency_key)}: use 1-255 "
                "printable ASCII characters with no leading or trailing space",
                field="idempotencyKey",
            )
        result["Idempotency-Key"] = idempotency_key
    return result


def _encode_body(body: Any) -> tuple[bytes | None, dict[str, str]]:
    if body is None:
        return None, {}
    if isinstance(body, bytes):
        return body, {}
    if isinstance(body, str):
        return body.encode(), {"Content-Type": "text/plain; charset=utf-8"}
    return json.dumps(body).encode(), {"Content-Type": "application/json"}


def _decode_body(response: httpx.Response) -> Any:
    if "json" in response.headers.get("content-type", ""):
        try:
            return response.json()
        except ValueError:
            pass
    return response.text
