"""Partial success: run batch items once each, under idempotency keys.

Each item runs under the key ``batch:{batchId}:item:{itemId}`` with status
``in_progress``, ``completed`` or ``failed``. A run claims all its keys in one
statement. A claim is a lease that ends at ``lease_until``, and after that
another worker may take the item over. A completed key returns its stored output and
never runs again; the same key with another payload is a conflict.

Entry points: :class:`BatchRunner` (library), :func:`process_batch` (one
batch with default settings), :func:`resilience.batch.sqs.process_sqs_event`
(an SQS event with partial batch responses).
"""

from __future__ import annotations

from resilience.batch.config import BatchSettings, compute_lease_seconds
from resilience.batch.execution import DegradedAnswerError, classify_error
from resilience.batch.models import (
    BatchItem,
    ItemResult,
    ItemStatus,
    Reason,
    idempotency_key,
    payload_hash,
)
from resilience.batch.operations import resume_from_escalation
from resilience.batch.processors import (
    EchoProcessor,
    ItemContext,
    Processor,
    ProcessorRegistry,
)
from resilience.batch.runner import BatchRun, BatchRunner, process_batch
from resilience.batch.timing import TimeBudget

__all__ = [
    "BatchItem",
    "BatchRun",
    "BatchRunner",
    "BatchSettings",
    "DegradedAnswerError",
    "EchoProcessor",
    "ItemContext",
    "ItemResult",
    "ItemStatus",
    "Processor",
    "ProcessorRegistry",
    "Reason",
    "TimeBudget",
    "classify_error",
    "compute_lease_seconds",
    "idempotency_key",
    "payload_hash",
    "process_batch",
    "resume_from_escalation",
]
