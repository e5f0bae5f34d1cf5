"""Built-in processors: a registered service through its breaker, and the LLM chain.

Both import their pattern's module on first use, so a batch that never calls
a service or a model does not load httpx or the provider SDKs.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

from resilience.batch.execution import DegradedAnswerError
from resilience.batch.processors import ItemContext, TakeoverPolicy
from resilience.errors import (
    ConfigError,
    RateLimitedError,
    TransientError,
    UpstreamClientError,
    UpstreamServerError,
    ValidationError,
)
from resilience.retry_after import parse_retry_after

__all__ = ["LLMProcessor", "ServiceProcessor", "downstream_idempotency_key"]

# Provider name the LLM chain reports for its local template response.
TEMPLATE_PROVIDER = "local"

_TAKEOVER_POLICIES = ("retry", "escalate")

# An HTTP header carries printable ASCII, and downstream APIs commonly cap an
# idempotency key at 255 characters (Stripe's limit, for example).
_MAX_HEADER_KEY_LENGTH = 255


def downstream_idempotency_key(key: str) -> str:
    """Return ``key`` as it can travel in an ``Idempotency-Key`` header.

    Item ids may be any text up to 512 characters, so a key that is not
    printable ASCII or is too long is replaced by ``batch-sha256:`` and the
    hex SHA-256 of the key: still one stable value per item.
    """
    printable = key.isascii() and key.isprintable() and key == key.strip()
    if printable and len(key) <= _MAX_HEADER_KEY_LENGTH:
        return key
    return "batch-sha256:" + hashlib.sha256(key.encode("utf-8")).hexdigest()


def _policy(name: str, value: object) -> TakeoverPolicy:
    if value not in _TAKEOVER_POLICIES:
        raise ConfigError(
            f"processor {name!r}: takeoverPolicy must be 'retry' or 'escalate', "
            f"got {value!r}",
            setting="BATCH_PROCESSORS",
        )
    return "escalate" if value == "escalate" else "retry"


class ServiceProcessor:
    """Call a service registered in ``BREAKER_SERVICES`` through its breaker.

    The item's data names the call: ``{"service": "payments", "method":
    "POST", "path": "/refunds", "body": {...}}``; options may fix ``service``,
    ``method`` and ``path`` instead. The item's idempotency key is sent as the
    ``Idempotency-Key`` header. 5xx, 429, timeouts, connection errors and an
    open breaker are retryable; other 4xx responses fail the item for good.

    Options: ``sideEffects`` (default true), ``takeoverPolicy`` (``retry`` or
    ``escalate``, default ``retry``), ``escalationType`` (default
    ``batch_takeover``), ``expectedDurationS`` (default 1.0).
    """

    def __init__(
        self,
        name: str = "service",
        *,
        service: str | None = None,
        method: str | None = None,
        path: str | None = None,
        side_effects: bool = True,
        takeover_policy: str = "retry",
        escalation_type: str = "batch_takeover",
        expected_duration_s: float = 1.0,
    ) -> None:
        self.name = name
        self.service = service
        self.method = method
        self.path = path
        self.side_effects = bool(side_effects)
        self.takeover_policy = _policy(name, takeover_policy)
        self.escalation_type = escalation_type
        self.expected_duration_s = float(expected_duration_s)

    def __repr__(self) -> str:
        return f"<ServiceProcessor name={self.name!r} service={self.service!r}>"

    def process(self, context: ItemContext) -> Any:
        from resilience.services import call_service

        data = context.data if isinstance(context.data, dict) else {}
        service = self.service or data.get("service")
        if not isinstance(service, str) or not service:
            raise ValidationError(
                'service items need data {"service": "<registered name>", '
                '"path": "/..."}',
                field="data.service",
            )
        response = call_service(
            service,
            self.method or str(data.get("method", "POST")),
            self.path or str(data.get("path", "/")),
            body=data.get("body"),
            headers=data.get("headers"),
            idempotency_key=downstream_idempotency_key(context.idempotency_key),
            deadline=time.time() + max(0.0, context.remaining_s()),
        )
        context.extra["calls"] = max(1, int(response.attempts))

        if response.status == 429:
            raise RateLimitedError(
                f"{service} returned HTTP 429",
                service=service,
                retry_after=parse_retry_after(response.headers),
            )
        if response.status >= 500:
            raise UpstreamServerError(
                f"{service} returned HTTP {response.status}",
                service=service,
                status=response.status,
            )
        if response.status >= 400:
            raise UpstreamClientError(
                f"{service} returned HTTP {response.status}: the request is invalid "
                "for that service",
                service=service,
                status=response.status,
            )
        return {"status": response.status, "body": response.body}


class LLMProcessor:
    """Complete a prompt through the fallback chain (``resilience.llm``).

    The item's data is ``{"prompt": "..."}`` or ``{"messages": [...]}`` with
    optional ``maxTokens``. A response from the local template (every provider
    failed) is a retryable failure (``degraded``) unless the option
    ``acceptDegraded`` is true. A response from a later provider of the chain
    completes the item.

    Options: ``acceptDegraded`` (default false), ``tier`` (default
    ``default``), ``expectedDurationS`` (default 5.0).
    """

    side_effects = False
    takeover_policy: TakeoverPolicy = "retry"

    def __init__(
        self,
        name: str = "llm",
        *,
        accept_degraded: bool = False,
        tier: str = "default",
        expected_duration_s: float = 5.0,
    ) -> None:
        self.name = name
        self.accept_degraded = bool(accept_degraded)
        self.tier = tier
        self.expected_duration_s = float(expected_duration_s)

    def __repr__(self) -> str:
        return (
            f"<LLMProcessor name={self.name!r} accept_degraded={self.accept_degraded}>"
        )

    def process(self, context: ItemContext) -> Any:
        from resilience.llm import CompletionRequest, complete

        data = context.data if isinstance(context.data, dict) else {}
        max_tokens = data.get("maxTokens", 500)
        remaining = context.remaining_s()
        result = complete(
            CompletionRequest(
                prompt=data.get("prompt"),
                messages=data.get("messages"),
                max_tokens=max_tokens,
                org_id=context.org_id,
                run_id=context.run_id or "",
                tier=self.tier,
                deadline_s=remaining if remaining > 0 else None,
            )
        )
        output = {
            "output": result.output,
            "provider": result.provider,
            "model": result.model,
            "degraded": result.degraded,
            "cached": result.cached,
        }
        if not result.ok:
            raise TransientError(
                f"LLM chain failed: {result.reason or 'no reason given'}"
            )
        # The chain marks every response after its first step as degraded, so
        # only a response from the local template makes the item fail.
        if result.provider == TEMPLATE_PROVIDER and not self.accept_degraded:
            raise DegradedAnswerError(
                "only the local template responded; retry when a provider is back, or "
                "set acceptDegraded on this processor"
            )
        return output
