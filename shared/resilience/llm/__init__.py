"""Graceful degradation: a fallback chain of LLM providers ending with a template.

Vocabulary: a ``tier`` is an ordered list of (``provider``, model) steps,
the ``fallback chain`` a call walks; a ``deadline`` bounds the whole call and
an ``attempt`` timeout each provider call inside it; ``degraded`` means the
tier's first step did not answer; every call writes one ``llm_usage`` row.

Example::

    from resilience.llm import CompletionRequest, complete

    result = complete(
        CompletionRequest(prompt="Summarise ...", max_tokens=200,
                          run_id=context.aws_request_id),
        context=context,
    )
    result.output, result.provider, result.degraded

Settings are read from the environment once per container (see
:mod:`resilience.llm.config` and :mod:`resilience.llm.providers`).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from resilience.errors import ResilienceError
from resilience.llm.chain import LLMChain
from resilience.llm.classify import ErrorClass, error_class_of
from resilience.llm.config import ChainConfig, TierStep
from resilience.llm.streaming import CompletionStream
from resilience.llm.types import CompletionRequest, CompletionResult, Usage

__all__ = [
    "ChainConfig",
    "CompletionRequest",
    "CompletionResult",
    "CompletionStream",
    "ErrorClass",
    "LLMChain",
    "TierStep",
    "Usage",
    "complete",
    "complete_many",
    "default_chain",
    "error_class_of",
    "reset_default_chain",
    "stream",
    "warm_up",
]

_chain: LLMChain | None = None
_chain_lock = threading.Lock()


def default_chain() -> LLMChain:
    """Return the container's chain, built from the environment once."""
    global _chain
    with _chain_lock:
        if _chain is None:
            _chain = LLMChain()
        return _chain


def reset_default_chain() -> None:
    """Forget the container's chain and clients (tests, or changed settings)."""
    global _chain
    from resilience.llm.providers import reset_providers

    with _chain_lock:
        _chain = None
    reset_providers()


def complete(request: CompletionRequest, *, context: Any = None) -> CompletionResult:
    """Complete one request through the default chain (see ``LLMChain.complete``)."""
    return default_chain().complete(request, context=context)


def stream(request: CompletionRequest, *, context: Any = None) -> CompletionStream:
    """Stream one request through the default chain (see ``CompletionStream``)."""
    return CompletionStream(default_chain(), request, context)


def complete_many(
    requests: Sequence[CompletionRequest],
    *,
    context: Any = None,
    max_concurrency: int | None = None,
    chain: LLMChain | None = None,
) -> list[CompletionResult]:
    """Complete several requests at once, at most ``max_concurrency`` at a time.

    Results come back in request order. A request that fails on its own
    (invalid, rejected by the provider, over the hard budget) becomes a result
    with ``ok=False`` and ``reason`` naming the error, so one bad prompt does
    not fail the others.
    """
    chain = chain or default_chain()
    workers = max(
        1, min(max_concurrency or chain.config.max_concurrency, len(requests))
    )

    def _one(request: CompletionRequest) -> CompletionResult:
        try:
            return chain.complete(request, context=context)
        except ResilienceError as error:
            return CompletionResult(
                ok=False,
                output="",
                provider="",
                model="",
                degraded=False,
                cached=False,
                reason=f"{type(error).__name__}: {error}",
            )

    if not requests:
        return []
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="llm-many") as pool:
        return list(pool.map(_one, requests))


def warm_up(tier: str = "default") -> threading.Thread | None:
    """Start importing the tier's provider SDKs in the background (Lambda init).

    ``LLM_PRELOAD_SDKS=0`` turns this off.
    """
    if os.environ.get("LLM_PRELOAD_SDKS", "1") == "0":
        return None
    config = ChainConfig.from_env()
    providers: list[str] = []
    for step in config.tiers.get(tier, ()):
        if not step.is_template and step.provider not in providers:
            providers.append(step.provider)
    from resilience.llm.providers import preload_sdks

    return preload_sdks(providers, also=_preload_stores)


def _preload_stores() -> None:
    """Import the breaker, Redis and alert modules a first request needs."""
    import logging

    try:
        import resilience.alerts
        import resilience.breaker  # noqa: F401
        from resilience.kvstore import store_from_env

        store_from_env()
    except Exception:
        # The first request builds what is missing and reports the failure.
        logging.getLogger(__name__).warning("llm.preload_failed", exc_info=True)
