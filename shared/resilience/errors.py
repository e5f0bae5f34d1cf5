"""The exception tree of agent-resilience.

Callers branch on the class and on attributes, never on message text::

    ResilienceError
    ├── ConfigError                 invalid or missing setting (also a ValueError)
    ├── ValidationError             bad input: names the field (HTTP 400/422)
    ├── NotFoundError               unknown id, service or key (HTTP 404)
    ├── ConflictError               the request contradicts stored state (HTTP 409)
    │   └── IdempotencyConflictError  same key, different payload
    ├── ForbiddenError              the caller may not do this (HTTP 403)
    ├── GoneError                   the resource existed but has expired (HTTP 410)
    ├── BreakerOpenError            the breaker rejected the call (retry_after)
    ├── BudgetExceededError         the org's hard LLM budget is spent (HTTP 429)
    ├── StoreUnavailableError       Redis or PostgreSQL cannot be reached
    │   ├── RedisUnavailableError
    │   └── DatabaseUnavailableError
    ├── TransientError              retrying (later, or elsewhere) can help
    │   ├── UpstreamTimeoutError      the downstream did not answer in time
    │   ├── UpstreamConnectionError   the downstream could not be reached
    │   ├── RateLimitedError          429 or equivalent (retry_after)
    │   └── UpstreamServerError       5xx or overloaded (status)
    └── PermanentError              retrying the same request cannot help
        ├── UpstreamClientError       4xx other than 429 (status)
        │   ├── ContextWindowExceededError  the prompt is too long for the model
        │   └── ContentPolicyError          the provider's safety system refused
        └── AuthError                 bad credentials or configuration

Third-party exceptions (httpx, redis, upstash, psycopg, botocore, openai,
anthropic) are translated into this tree at one boundary each, with
``raise ... from exc``.
"""

from __future__ import annotations

__all__ = [
    "AuthError",
    "BreakerOpenError",
    "BudgetExceededError",
    "ConfigError",
    "ConflictError",
    "ContentPolicyError",
    "ContextWindowExceededError",
    "DatabaseUnavailableError",
    "ForbiddenError",
    "GoneError",
    "IdempotencyConflictError",
    "NotFoundError",
    "PermanentError",
    "RateLimitedError",
    "RedisUnavailableError",
    "ResilienceError",
    "StoreUnavailableError",
    "TransientError",
    "UpstreamClientError",
    "UpstreamConnectionError",
    "UpstreamServerError",
    "UpstreamTimeoutError",
    "ValidationError",
]


class ResilienceError(Exception):
    """Root of every error raised by agent-resilience."""

    retryable: bool = False


class ConfigError(ResilienceError, ValueError):
    """A setting is missing or invalid; the message names it and the fix."""

    def __init__(self, message: str, *, setting: str | None = None) -> None:
        super().__init__(message)
        self.setting = setting


class ValidationError(ResilienceError):
    """Input failed validation. ``field`` names the offending field."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class NotFoundError(ResilienceError):
    """The named resource does not exist."""

    def __init__(self, message: str, *, resource: str | None = None) -> None:
        super().__init__(message)
        self.resource = resource


class ConflictError(ResilienceError):
    """The request contradicts state that is already stored."""


class IdempotencyConflictError(ConflictError):
    """The idempotency key was used before with a different payload or org."""

    def __init__(self, key: str) -> None:
        # Keys do not contain the org, so another org's use of the same ids
        # is a conflict too. The message therefore names both causes.
        super().__init__(
            f"idempotency key {key!r} was already used with a different payload "
            "or by another org: use a new batch or item id for new data"
        )
        self.key = key


class ForbiddenError(ResilienceError):
    """The caller is not allowed to do this, or its credential is invalid."""


class GoneError(ResilienceError):
    """The resource existed but has expired; retrying cannot revive it."""


class BreakerOpenError(ResilienceError):
    """The circuit breaker rejected the call without making it."""

    retryable = True

    def __init__(self, service: str, retry_after: float, state: str = "open") -> None:
        super().__init__(
            f"circuit breaker for {service!r} is {state}: "
            f"retry after {retry_after:.3f} s"
        )
        self.service = service
        self.retry_after = retry_after
        self.state = state


class StoreUnavailableError(ResilienceError):
    """A backing store (Redis or PostgreSQL) cannot be reached in time."""

    retryable = True


class RedisUnavailableError(StoreUnavailableError):
    """Redis (or Upstash) failed, timed out or refused the connection."""


class DatabaseUnavailableError(StoreUnavailableError):
    """PostgreSQL failed, timed out or refused the connection."""

    def __init__(self, message: str, *, sqlstate: str | None = None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


class TransientError(ResilienceError):
    """A failure that retrying later, or elsewhere, can fix."""

    retryable = True

    def __init__(self, message: str, *, service: str | None = None) -> None:
        super().__init__(message)
        self.service = service


class UpstreamTimeoutError(TransientError):
    """The downstream service did not answer within the timeout."""


class UpstreamConnectionError(TransientError):
    """The downstream service could not be reached."""


class RateLimitedError(TransientError):
    """The downstream answered 429 (or an equivalent rate-limit error)."""

    def __init__(
        self,
        message: str,
        *,
        service: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, service=service)
        self.retry_after = retry_after


class UpstreamServerError(TransientError):
    """The downstream answered 5xx or reported that it is overloaded."""

    def __init__(
        self, message: str, *, service: str | None = None, status: int | None = None
    ) -> None:
        super().__init__(message, service=service)
        self.status = status


class PermanentError(ResilienceError):
    """A failure that retrying the same request cannot fix."""

    def __init__(self, message: str, *, service: str | None = None) -> None:
        super().__init__(message)
        self.service = service


class UpstreamClientError(PermanentError):
    """The downstream answered 4xx (other than 429) to the request."""

    def __init__(
        self, message: str, *, service: str | None = None, status: int | None = None
    ) -> None:
        super().__init__(message, service=service)
        self.status = status


class AuthError(PermanentError):
    """Credentials or configuration were rejected by the downstream."""


class ContextWindowExceededError(UpstreamClientError):
    """The prompt and ``max_tokens`` do not fit the model's context window."""


class ContentPolicyError(UpstreamClientError):
    """The provider's content policy rejected the prompt or the output."""


class BudgetExceededError(ResilienceError):
    """The org's hard daily LLM budget is spent until midnight UTC (``retry_after``)."""

    def __init__(
        self, message: str, *, org_id: str, budget: str, retry_after: float
    ) -> None:
        super().__init__(message)
        self.org_id = org_id
        self.budget = budget
        self.retry_after = retry_after
