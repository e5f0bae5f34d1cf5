"""Response cache in Redis, keyed by a hash of tier, models, messages and params.

The key covers the tier's name and its (provider, model) steps, so changing a
tier's models starts a new cache, plus the messages and every parameter that
changes the answer (``max_tokens``, ``temperature``). Only complete answers
from a provider are stored: template answers, incomplete streams and errors
never are. A Redis failure makes the cache miss (logged), never the call.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from typing import Any

from resilience.errors import RedisUnavailableError
from resilience.kvstore import KeyValueStore
from resilience.llm.config import TierStep
from resilience.llm.types import CompletionRequest

__all__ = ["CachedAnswer", "ResponseCache", "cache_key"]

logger = logging.getLogger(__name__)

KEY_PREFIX = "llm:cache:"


@dataclass(frozen=True)
class CachedAnswer:
    """A stored answer: text and who gave it."""

    output: str
    provider: str
    model: str
    degraded: bool


def cache_key(request: CompletionRequest, steps: tuple[TierStep, ...]) -> str:
    """Return the cache key of a validated request in a tier."""
    material = {
        "tier": request.tier,
        "steps": [step.name for step in steps],
        "messages": request.messages,
        "max_tokens": request.max_tokens,
        "temperature": request.temperature,
    }
    encoded = json.dumps(material, sort_keys=True, separators=(",", ":"))
    return KEY_PREFIX + hashlib.sha256(encoded.encode()).hexdigest()


class ResponseCache:
    """Get and put answers under :func:`cache_key` with a TTL in seconds."""

    def __init__(self, store: KeyValueStore, ttl_s: int) -> None:
        self.store = store
        self.ttl_s = ttl_s

    def __repr__(self) -> str:
        return f"<ResponseCache ttl_s={self.ttl_s} prefix={self.store.prefix!r}>"

    def get(self, key: str) -> CachedAnswer | None:
        try:
            raw = self.store.get(key)
        except RedisUnavailableError as exc:
            logger.warning("llm.cache_unavailable", extra={"error": str(exc)})
            return None
        if raw is None:
            return None
        try:
            data: dict[str, Any] = json.loads(raw)
            return CachedAnswer(
                output=str(data["output"]),
                provider=str(data["provider"]),
                model=str(data["model"]),
                degraded=bool(data.get("degraded", False)),
            )
        except (ValueError, KeyError, TypeError):
            logger.warning("llm.cache_entry_invalid", extra={"key": key})
            return None

    def put(self, key: str, answer: CachedAnswer) -> None:
        value = json.dumps(
            {
                "output": answer.output,
                "provider": answer.provider,
                "model": answer.model,
                "degraded": answer.degraded,
            }
        )
        try:
            self.store.set(key, value, ttl_seconds=self.ttl_s)
        except RedisUnavailableError as exc:
            logger.warning("llm.cache_unavailable", extra={"error": str(exc)})
