"""agent-resilience: error-handling patterns for AI-agent backends on AWS Lambda.

The layer's library. Handlers in ``functions/`` parse events and shape
responses; every rule of a pattern lives here, usable from any Lambda or worker.

Vocabulary, used the same way in code, logs, metrics and docs:

- Circuit breaker (``resilience.breaker``): states ``closed``, ``open`` and
  ``half_open``; ``failure_threshold`` consecutive failures or a failure rate
  over a window trip it; it stays open for ``reset_timeout`` seconds, then
  admits at most ``half_open_max_calls`` probes. Every transition increments
  the breaker's ``generation``.
- Partial success (``resilience.batch``): each item runs under the idempotency
  key ``batch:{batchId}:item:{itemId}`` with status ``in_progress``,
  ``completed`` or ``failed``; a claim is a lease that ends at ``lease_until``;
  ``attempt`` counts every call made for the item.
- Human escalation (``resilience.escalation``): a Step Functions execution
  waits on a task token until a person approves or rejects; outcomes are
  ``approved``, ``rejected``, ``expired`` and ``cancelled``.
- Graceful degradation (``resilience.llm``): a ``fallback chain`` of
  (``provider``, model) pairs ending with a local template answer; every call
  is recorded in ``llm_usage`` with its cost.

Errors form one tree rooted at :class:`resilience.errors.ResilienceError`.
"""

from __future__ import annotations

__all__: list[str] = []
