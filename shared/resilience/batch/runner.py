"""The batch runner: claim every item at once, run the free ones, record results.

A run goes through these steps:

1. Validate each item on its own (invalid batch or org id, missing id,
   unknown processor, data that is not JSON or contains text PostgreSQL
   cannot store): a bad item fails alone, finally, and never gets a key.
2. Claim all valid keys in one statement with a lease that follows the time
   left. Keys already completed return their stored output (``cached``);
   keys stored with another payload hash are conflicts; keys leased by a live
   worker are handed back.
3. Run the claimed items in order. Before each, the time left must cover the
   item's expected duration plus the reserve. Items that do not fit are not
   started and are handed back. In FIFO mode, a failure hands back the rest of
   its message group unstarted.
4. Record the outcomes of processors without side effects in one statement,
   and one audit row per batch id with the counts, in one transaction. Items
   with side effects are recorded as they start and as they complete.
5. Emit ``BatchFailureRate`` (percent of finished items that failed).
"""

from __future__ import annotations

import json
import logging
import random
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import psycopg

from resilience.api import (
    DEFAULT_ORG_ID,
    bound_message,
    json_text,
    storable_text,
    text_problem,
    truncate_for_message,
    validate_json_value,
    validate_org_id,
)
from resilience.audit import write_audit
from resilience.batch.config import BatchSettings, compute_lease_seconds
from resilience.batch.execution import run_item
from resilience.batch.models import (
    BatchItem,
    ItemResult,
    ItemStatus,
    Reason,
    idempotency_key,
    payload_hash,
    validate_batch_id,
    validate_item_id,
)
from resilience.batch.processors import ItemContext, Processor, ProcessorRegistry
from resilience.batch.store import BatchStore, ClaimRequest, ClaimRow, Completion
from resilience.batch.timing import LambdaContextLike, TimeBudget
from resilience.db import Database, get_database
from resilience.errors import (
    ConfigError,
    DatabaseUnavailableError,
    IdempotencyConflictError,
    ValidationError,
)
from resilience.observability import MetricUnit, emit_metric

__all__ = ["BatchRun", "BatchRunner", "process_batch"]

logger = logging.getLogger(__name__)

# A transaction that PostgreSQL rolled back, to break a deadlock (SQLSTATE
# 40P01) or after a serialization failure (40001, under REPEATABLE READ or
# SERIALIZABLE), changed nothing. It is run again, up to this many times in
# all. A short random pause first lets the other transaction finish.
_ROLLED_BACK = frozenset({"40P01", "40001"})
_ROLLBACK_ATTEMPTS = 5
_ROLLBACK_PAUSE_S = 0.02

# Deepest processor output that is stored. Python's JSON encoder and decoder
# fail at about 1,500 levels on CPython 3.12. They fail sooner when called
# deep in a stack: the completion statement encodes each output inside its
# row, and GET /batches decodes it again.
MAX_OUTPUT_DEPTH = 512

# Items named in the one log line of a run's invalid items.
MAX_LOGGED_REJECTIONS = 5

# Escalation type of take-overs whose processor names none. When
# ESCALATION_TYPES lists types, it must list this one too.
DEFAULT_ESCALATION_TYPE = "batch_takeover"

EscalateFn = Callable[..., Any]
_T = TypeVar("_T")


@dataclass
class BatchRun:
    """The results of one run, in the order the items were given.

    ``run_id`` names the run in audit rows and LLM usage (the Lambda request
    id when there is one). ``owner`` is the unique lease owner of its claims.
    """

    run_id: str
    results: list[ItemResult]
    owner: str = field(default_factory=lambda: uuid.uuid4().hex)

    @property
    def completed(self) -> int:
        return sum(1 for r in self.results if r.status is ItemStatus.COMPLETED)

    @property
    def failed(self) -> int:
        return sum(1 for r in self.results if r.status is ItemStatus.FAILED)

    @property
    def handed_back(self) -> list[ItemResult]:
        return [r for r in self.results if r.handed_back]


@dataclass(slots=True)
class _Work:
    """A valid, claimed-or-not item during a run."""

    index: int
    item: BatchItem
    item_id: str
    key: str
    hash: str
    processor: Processor
    claim: ClaimRow | None = None
    # Id of the row this run claimed, None for an item it did not claim.
    row_id: int | None = None
    base_attempts: int = 0
    # The first item of this run with the same key; set on later ones.
    duplicate_of: _Work | None = None


class BatchRunner:
    """Runs items under idempotency keys on PostgreSQL; see the module docstring.

    Args:
        database: defaults to the container's :func:`get_database`.
        settings: defaults to :meth:`BatchSettings.from_env`.
        registry: processors by name; defaults to one built from settings.
        escalate: called as ``start_escalation(...)`` for take-overs under the
            ``escalate`` policy; defaults to
            :func:`resilience.escalation.start_escalation`, imported on use.
    """

    def __init__(
        self,
        database: Database | None = None,
        *,
        settings: BatchSettings | None = None,
        registry: ProcessorRegistry | None = None,
        escalate: EscalateFn | None = None,
    ) -> None:
        self.settings = settings or BatchSettings.from_env()
        self.database = database or get_database()
        self.store = BatchStore(self.database)
        self.registry = registry or ProcessorRegistry(self.settings.processors)
        self._escalate = escalate

    def __repr__(self) -> str:
        return (
            f"<BatchRunner {self.database!r} max_attempts={self.settings.max_attempts}>"
        )

    def run(
        self,
        items: Sequence[BatchItem],
        *,
        context: LambdaContextLike | None = None,
        budget: TimeBudget | None = None,
        run_id: str | None = None,
        raise_on_conflict: bool = False,
        fifo: bool = False,
    ) -> BatchRun:
        """Process ``items`` and return one result per item, in order.

        Raises:
            IdempotencyConflictError: with ``raise_on_conflict``, when any key
                was stored with another payload; nothing is claimed or run.
            ValidationError: ``run_id`` is not text that PostgreSQL can store
                (it names the run's audit row); nothing is claimed or run.
        """
        if run_id is not None and (
            not isinstance(run_id, str) or text_problem(run_id) is not None
        ):
            raise ValidationError(
                f"run_id must be text without NUL characters or lone "
                f"surrogates, got {json_text(run_id)}",
                field="run_id",
            )
        budget = budget or TimeBudget(
            context, budget_s=self.settings.no_context_budget_s
        )
        run = BatchRun(run_id=run_id or uuid.uuid4().hex, results=[])
        items = [_with_default_org(item) for item in items]
        results: list[ItemResult | None] = [None] * len(items)
        work = self._prepare(items, results)
        if raise_on_conflict:
            for w in work:
                if w.duplicate_of is not None and w.duplicate_of.hash != w.hash:
                    raise IdempotencyConflictError(w.key)

        primaries = [w for w in work if w.duplicate_of is None]
        unrecorded: list[tuple[_Work, Completion]] = []
        if primaries:
            if budget.remaining_s() < self._reserve_s():
                for w in primaries:
                    results[w.index] = _not_started(w, Reason.NOT_STARTED)
            else:
                unrecorded = self._claim_and_execute(
                    primaries, results, budget, run, raise_on_conflict, fifo
                )

        self._finish(run, work, results, unrecorded)
        return run

    # ------------------------------------------------------------ steps

    def _prepare(
        self,
        items: Sequence[BatchItem],
        results: list[ItemResult | None],
    ) -> list[_Work]:
        work: list[_Work] = []
        first_by_key: dict[str, _Work] = {}
        processors: dict[str, Processor] = {}
        # Items of one batch share their org and batch id, so each distinct
        # pair is checked once per run.
        org_batch_errors: dict[tuple[object, object], str | None] = {}
        for index, item in enumerate(items):
            org_batch_error = _cached_org_batch_error(item, org_batch_errors)
            if org_batch_error is not None:
                results[index] = _final(item, Reason.INVALID_ITEM, org_batch_error)
                continue
            try:
                item_id = validate_item_id(item.item_id)
            except ValidationError as error:
                results[index] = _final(item, Reason.INVALID_ITEM, str(error))
                continue
            if item_id is None:
                results[index] = _final(item, Reason.MISSING_ITEM_ID, _id_error(item))
                continue
            name = item.processor or self.settings.default_processor
            if not isinstance(name, str):
                results[index] = _final(
                    item,
                    Reason.INVALID_ITEM,
                    f"processor must be a processor name (text), got {json_text(name)}",
                )
                continue
            try:
                processor = processors.get(name)
                if processor is None:
                    processor = processors[name] = self.registry.get(name)
                digest = payload_hash(item.data, processor=name, org_id=item.org_id)
            except (ValidationError, ConfigError) as error:
                reason = (
                    Reason.UNKNOWN_PROCESSOR
                    if getattr(error, "field", None) == "processor"
                    or isinstance(error, ConfigError)
                    else Reason.INVALID_ITEM
                )
                results[index] = _final(item, reason, str(error))
                continue

            entry = _Work(
                index=index,
                item=item,
                item_id=item_id,
                key=idempotency_key(item.batch_id, item_id),
                hash=digest,
                processor=processor,
            )
            entry.duplicate_of = first_by_key.setdefault(entry.key, entry)
            if entry.duplicate_of is entry:
                entry.duplicate_of = None
            work.append(entry)
        _log_rejected(results)
        return work

    def _claim_and_execute(
        self,
        work: list[_Work],
        results: list[ItemResult | None],
        budget: TimeBudget,
        run: BatchRun,
        raise_on_conflict: bool,
        fifo: bool,
    ) -> list[tuple[_Work, Completion]]:
        """Claim and run the items, and return the outcomes still to record."""
        owner = run.owner
        lease_s = compute_lease_seconds(budget.raw_remaining_s(), self.settings)
        try:
            rows = self._claim(work, owner, lease_s, raise_on_conflict)
        except DatabaseUnavailableError as error:
            logger.warning(
                "batch.claim_failed",
                extra={"run_id": run.run_id, "owner": owner, "error": str(error)},
            )
            for w in work:
                results[w.index] = _retryable(
                    w.item, Reason.DATABASE_UNAVAILABLE, str(error), 0
                )
            return []

        to_run: list[_Work] = []
        for w in work:
            row = rows.get(w.key)
            w.claim = row
            if row is None or not row.claimed:
                results[w.index] = _unclaimed_result(w, row)
            else:
                w.row_id = row.row_id
                w.base_attempts = (row.claimed_attempts or 1) - 1
                to_run.append(w)

        return self._execute(to_run, results, budget, run, fifo)

    def _claim(
        self,
        work: list[_Work],
        owner: str,
        lease_s: float,
        raise_on_conflict: bool,
    ) -> dict[str, ClaimRow]:
        # Positional: keyword arguments double the cost of building a tuple.
        requests = [
            ClaimRequest(
                w.item.batch_id,
                w.item_id,
                w.key,
                w.hash,
                w.processor.name,
                w.item.org_id,
                w.item.data,
            )
            for w in work
        ]

        def claim() -> dict[str, ClaimRow]:
            with self.database.transaction() as connection:
                # The claim's commit does not wait for its WAL to reach disk.
                # Whatever follows a claim commits synchronously first (the
                # record of the outcomes, mark_started before a call with side
                # effects, the store of an escalation), and that flush covers
                # the claim too. A PostgreSQL crash in between loses only
                # leases: the record then fails and the items come back, as
                # for any crash before it.
                connection.execute("SET LOCAL synchronous_commit = off")
                rows = self.store.claim(
                    requests, owner=owner, lease_s=lease_s, connection=connection
                )
                if raise_on_conflict:
                    # Raising inside the transaction rolls the claim back, so
                    # a conflicting request claims and runs nothing.
                    for w in work:
                        if _is_conflict(w, rows.get(w.key)):
                            raise IdempotencyConflictError(w.key)
                return rows

        return _retry_rollbacks(claim, step="claim", owner=owner)

    def _execute(
        self,
        work: list[_Work],
        results: list[ItemResult | None],
        budget: TimeBudget,
        run: BatchRun,
        fifo: bool,
    ) -> list[tuple[_Work, Completion]]:
        """Run the claimed items, and return the outcomes to record with the audit."""
        unrecorded: list[tuple[_Work, Completion]] = []
        failed_groups: set[str] = set()
        # Items that failed before this step (invalid, a stored final failure,
        # a lease held elsewhere) also stop the later items of their group.
        first_failure = _first_failure_by_group(results) if fifo else {}
        # Seconds an item of each processor is expected to take: its declared
        # estimate, raised to the longest call seen in this run.
        estimate_s: dict[str, float] = {}
        reserve_s = self._reserve_s()

        def call_time_left_s() -> float:
            return budget.remaining_s() - reserve_s

        for w in work:
            group = w.item.group_id if fifo else None
            if group is not None and (
                group in failed_groups or w.index > first_failure.get(group, w.index)
            ):
                result = _not_started(w, Reason.GROUP_FAILED)
            else:
                processor = w.processor
                estimate = estimate_s.get(processor.name, processor.expected_duration_s)
                if budget.remaining_s() - reserve_s < estimate:
                    result = _not_started(w, Reason.NOT_STARTED)
                elif (
                    w.claim is not None
                    and w.claim.taken_over
                    and processor.side_effects
                    and processor.takeover_policy == "escalate"
                ):
                    result = self._escalate_item(w)
                else:
                    started_at = budget.now()
                    result = self._run_one(w, budget, run, estimate, call_time_left_s)
                    elapsed = budget.now() - started_at
                    calls = result.attempts - w.base_attempts
                    if calls > 0 and elapsed / calls > estimate:
                        estimate_s[processor.name] = elapsed / calls

            completion = _completion(w, result)
            if w.processor.side_effects and result.status is not ItemStatus.NOT_STARTED:
                result = self._record_now(w, result, completion, run)
            else:
                unrecorded.append((w, completion))
            results[w.index] = result
            if group is not None and not result.ok:
                failed_groups.add(group)
        return unrecorded

    def _run_one(
        self,
        w: _Work,
        budget: TimeBudget,
        run: BatchRun,
        estimate: float,
        call_time_left_s: Callable[[], float],
    ) -> ItemResult:
        if w.processor.side_effects:
            try:
                still_owned = self.store.mark_started(w.key, owner=run.owner)
            except DatabaseUnavailableError as error:
                return _retryable(
                    w.item, Reason.DATABASE_UNAVAILABLE, str(error), w.base_attempts
                )
            if not still_owned:
                return _retryable(w.item, Reason.LEASE_LOST, None, w.base_attempts)

        context = ItemContext(
            batch_id=w.item.batch_id,
            item_id=w.item_id,
            data=w.item.data,
            idempotency_key=w.key,
            attempt=w.base_attempts + 1,
            org_id=w.item.org_id,
            remaining_s=call_time_left_s,
            run_id=run.run_id,
        )
        outcome = run_item(
            w.processor,
            context,
            budget=budget,
            settings=self.settings,
            estimate_s=estimate,
        )
        attempts = w.base_attempts + outcome.calls
        output_error = None
        if outcome.ok and outcome.output is not None:
            output_error = _unstorable_output(outcome.output)
        if output_error is not None:
            return ItemResult(
                w.item,
                ItemStatus.FAILED,
                attempts=attempts,
                reason=str(Reason.PROCESSOR_ERROR),
                error=bound_message(
                    f"processor {w.processor.name!r} returned output that cannot "
                    f"be stored: {output_error}"
                ),
            )
        if outcome.ok:
            return ItemResult(
                w.item, ItemStatus.COMPLETED, attempts=attempts, output=outcome.output
            )
        logger.warning(
            "batch.item_failed",
            extra={
                "key": w.key,
                "reason": outcome.reason,
                "retryable": outcome.retryable,
                "attempts": attempts,
                "error": outcome.error,
            },
        )
        return ItemResult(
            w.item,
            ItemStatus.FAILED,
            attempts=attempts,
            reason=outcome.reason,
            error=outcome.error,
            retryable=outcome.retryable,
        )

    def _escalate_item(self, w: _Work) -> ItemResult:
        """Stop a side-effecting item whose previous worker died mid-call."""
        source = {
            "pattern": "batch",
            "batchId": w.item.batch_id,
            "itemId": w.item_id,
            "idempotencyKey": w.key,
        }
        try:
            escalate = self._escalate
            if escalate is None:
                from resilience.escalation import start_escalation

                escalate = start_escalation
            started = escalate(
                data={**source, "data": w.item.data},
                reason=(
                    "a worker stopped during a call with side effects and its "
                    "lease expired: confirm whether the effect happened before "
                    "the item is retried"
                ),
                org_id=w.item.org_id,
                escalation_type=getattr(
                    w.processor, "escalation_type", DEFAULT_ESCALATION_TYPE
                ),
                source=source,
            )
        except Exception as error:  # any failure leaves the item for a later try
            logger.error(
                "batch.escalation_failed",
                extra={"key": w.key, "error": f"{type(error).__name__}: {error}"},
            )
            return _retryable(
                w.item, Reason.ESCALATION_FAILED, str(error), w.base_attempts
            )

        logger.warning("batch.item_escalated", extra={"key": w.key})
        return ItemResult(
            w.item,
            ItemStatus.FAILED,
            attempts=w.base_attempts,
            reason=str(Reason.ESCALATED),
            retryable=False,
            output={
                "escalationId": getattr(started, "id", None),
                "approvalUrl": getattr(started, "approval_url", None),
            },
        )

    def _record_now(
        self, w: _Work, result: ItemResult, completion: Completion, run: BatchRun
    ) -> ItemResult:
        try:
            owned = self.store.complete([completion], owner=run.owner)
        except DatabaseUnavailableError as error:
            logger.warning(
                "batch.record_failed", extra={"key": w.key, "error": str(error)}
            )
            return _retryable(
                w.item, Reason.DATABASE_UNAVAILABLE, str(error), result.attempts
            )
        if w.row_id not in owned:
            return _retryable(w.item, Reason.LEASE_LOST, None, result.attempts)
        return result

    def _finish(
        self,
        run: BatchRun,
        work: list[_Work],
        results: list[ItemResult | None],
        unrecorded: list[tuple[_Work, Completion]],
    ) -> None:
        """Record the remaining outcomes and the audit rows in one transaction.

        One commit instead of two: if the audit row cannot be written, the
        outcomes are not stored either and the items come back, which only
        happens when PostgreSQL fails.
        """
        # In key order, the order in which claims lock rows, so that this
        # statement and another worker's claim rarely wait for each other.
        completions = [
            completion
            for _, completion in sorted(unrecorded, key=lambda pair: pair[0].key)
        ]

        def record() -> None:
            with self.database.transaction() as connection:
                owned: set[int] = set()
                if completions:
                    owned = self.store.complete_in(
                        connection, completions, owner=run.owner
                    )
                run.results = _final_results(work, results, unrecorded, owned, None)
                self._write_audit(connection, run)

        try:
            _retry_rollbacks(record, step="record", owner=run.owner)
        except DatabaseUnavailableError as error:
            run.results = _final_results(work, results, unrecorded, set(), str(error))
            if unrecorded:
                logger.warning(
                    "batch.record_failed",
                    extra={"run_id": run.run_id, "error": str(error)},
                )
                # The completion can fail on its own (a statement timeout)
                # while PostgreSQL still takes the audit row.
                self._write_audit_alone(run)
            else:
                logger.warning(
                    "batch.audit_failed",
                    extra={"run_id": run.run_id, "error": str(error)},
                )

        completed, failed = run.completed, run.failed
        if completed + failed:
            emit_metric(
                "BatchFailureRate",
                100.0 * failed / (completed + failed),
                MetricUnit.Percent,
            )
        logger.info(
            "batch.run_completed",
            extra={
                "run_id": run.run_id,
                "total": len(run.results),
                "completed": completed,
                "failed": failed,
            },
        )

    def _write_audit_alone(self, run: BatchRun) -> None:
        try:
            with self.database.transaction() as connection:
                self._write_audit(connection, run)
        except DatabaseUnavailableError as error:
            logger.warning(
                "batch.audit_failed", extra={"run_id": run.run_id, "error": str(error)}
            )

    def _write_audit(self, connection: psycopg.Connection[Any], run: BatchRun) -> None:
        """Write one audit row with the counts of each batch in the run."""
        counts_by_batch: dict[tuple[str, str], dict[str, int]] = {}
        for result in run.results:
            batch = (result.item.org_id, result.item.batch_id)
            if not (isinstance(batch[0], str) and isinstance(batch[1], str)):
                # Such items failed as invalid_item, and the audit table
                # cannot store ids that are not text.
                continue
            counts = counts_by_batch.get(batch)
            if counts is None:
                counts = {"total": 0, "completed": 0, "failed": 0, "handedBack": 0}
                counts_by_batch[batch] = counts
            counts["total"] += 1
            if result.status is ItemStatus.COMPLETED:
                counts["completed"] += 1
            elif result.status is ItemStatus.FAILED:
                counts["failed"] += 1
            if result.retryable:
                counts["handedBack"] += 1

        for (org_id, batch_id), counts in counts_by_batch.items():
            if _org_batch_error(org_id, batch_id) is not None:
                # Such items failed as invalid_item, and an audit row could
                # not store their ids (a NUL, for example).
                continue
            write_audit(
                connection,
                pattern="batch",
                action="batch.run_completed",
                task_id=batch_id,
                run_id=run.run_id,
                org_id=org_id,
                metadata=counts,
            )

    def _reserve_s(self) -> float:
        return self.settings.time_reserve_ms / 1000.0


def process_batch(
    batch_id: str,
    items: Sequence[dict[str, Any]],
    *,
    context: LambdaContextLike | None = None,
    org_id: str = "default",
    runner: BatchRunner | None = None,
    raise_on_conflict: bool = True,
) -> BatchRun:
    """Run ``[{"id", "data", "processor"?}, ...]`` of one batch with the defaults."""
    runner = runner or BatchRunner()
    batch_items = [
        BatchItem(
            batch_id=batch_id,
            item_id=entry.get("id"),
            data=entry.get("data"),
            processor=entry.get("processor"),
            org_id=org_id,
        )
        for entry in items
    ]
    return runner.run(
        batch_items,
        context=context,
        raise_on_conflict=raise_on_conflict,
    )


# ------------------------------------------------------------ result helpers


def _log_rejected(results: list[ItemResult | None]) -> None:
    """Log the items that failed validation: one line per run, a few named."""
    rejected = [result for result in results if result is not None]
    if not rejected:
        return
    logger.warning(
        "batch.items_rejected",
        extra={
            "count": len(rejected),
            "items": [
                {
                    "batch_id": json_text(result.item.batch_id),
                    "item_id": json_text(result.item.item_id),
                    "message_id": result.item.message_id,
                    "reason": result.reason,
                    "error": bound_message(result.error or ""),
                }
                for result in rejected[:MAX_LOGGED_REJECTIONS]
            ],
        },
    )


def _first_failure_by_group(results: list[ItemResult | None]) -> dict[str, int]:
    """Return the index of each message group's first failed result so far."""
    first: dict[str, int] = {}
    for index, result in enumerate(results):
        if result is not None and not result.ok and result.item.group_id is not None:
            first.setdefault(result.item.group_id, index)
    return first


def _retry_rollbacks(action: Callable[[], _T], *, step: str, owner: str) -> _T:
    """Run one transaction, and again when PostgreSQL rolled it back for a conflict."""
    for attempt in range(1, _ROLLBACK_ATTEMPTS + 1):
        try:
            return action()
        except DatabaseUnavailableError as error:
            if error.sqlstate not in _ROLLED_BACK or attempt == _ROLLBACK_ATTEMPTS:
                raise
            logger.info(
                "batch.rollback_retry",
                extra={
                    "step": step,
                    "owner": owner,
                    "attempt": attempt,
                    "sqlstate": error.sqlstate,
                },
            )
            time.sleep(random.uniform(0, _ROLLBACK_PAUSE_S * attempt))
    raise AssertionError("unreachable")  # pragma: no cover


def _final_results(
    work: list[_Work],
    results: list[ItemResult | None],
    unrecorded: list[tuple[_Work, Completion]],
    owned: set[int],
    error: str | None,
) -> list[ItemResult]:
    """Return the run's results in item order, once the outcomes are recorded.

    An outcome whose row the run no longer owns, or that was not stored at
    all (``error``), goes back to be delivered again. Then each repeated key
    takes its result from its first item.
    """
    final = list(results)
    for w, _ in unrecorded:
        previous = final[w.index]
        if previous is None or w.row_id in owned:
            continue
        if previous.status is ItemStatus.NOT_STARTED:
            continue
        reason = Reason.DATABASE_UNAVAILABLE if error else Reason.LEASE_LOST
        final[w.index] = _retryable(w.item, reason, error, previous.attempts)
    for w in work:
        if w.duplicate_of is not None:
            final[w.index] = _duplicate_result(
                w, w.duplicate_of, final[w.duplicate_of.index]
            )
    return [result for result in final if result is not None]


def _unstorable_output(value: Any) -> str | None:
    """Return why ``value`` cannot be stored as jsonb, or None when it can.

    The outputs of a run are recorded in one statement, so one output that
    PostgreSQL rejects would fail the record of every item in the batch.
    """
    if value is None or isinstance(value, bool):
        return None
    try:
        # The walk comes first: it finds text that PostgreSQL cannot store and
        # nesting too deep to be written and read back at any stack depth.
        # json.dumps then raises for NaN and integers of over 4,300 digits.
        validate_json_value(value, field="output", max_depth=MAX_OUTPUT_DEPTH)
        json.dumps(value, allow_nan=False)
    except ValidationError as exc:
        return str(exc)
    except (TypeError, ValueError) as exc:
        return (
            f"it is not JSON ({type(exc).__name__}: {truncate_for_message(str(exc))})"
        )
    return None


def _with_default_org(item: BatchItem) -> BatchItem:
    """Return the item with org id ``default`` when it has none, as HTTP does."""
    if item.org_id is None or item.org_id == "":
        return replace(item, org_id=DEFAULT_ORG_ID)
    return item


def _org_batch_error(org_id: object, batch_id: object) -> str | None:
    """Return why an item's org id or batch id is invalid, or None when both are valid.

    A batch id with ':' would let two batch and item pairs share a key.
    """
    try:
        validate_batch_id(batch_id)
        validate_org_id(org_id)
    except ValidationError as error:
        return str(error)
    return None


def _cached_org_batch_error(
    item: BatchItem, cache: dict[tuple[object, object], str | None]
) -> str | None:
    pair = (item.org_id, item.batch_id)
    try:
        return cache[pair]
    except KeyError:
        error = _org_batch_error(*pair)
        cache[pair] = error
        return error
    except TypeError:  # an unhashable id, which is invalid anyway
        return _org_batch_error(*pair)


def _id_error(item: BatchItem) -> str:
    return (
        f"item id is missing or empty, got {json_text(item.item_id)}: give "
        "every item its own id"
    )


def _final(item: BatchItem, reason: Reason, error: str | None) -> ItemResult:
    return ItemResult(item, ItemStatus.FAILED, reason=str(reason), error=error)


def _retryable(
    item: BatchItem, reason: Reason, error: str | None, attempts: int
) -> ItemResult:
    return ItemResult(
        item,
        ItemStatus.FAILED,
        attempts=attempts,
        reason=str(reason),
        error=error,
        retryable=True,
    )


def _not_started(w: _Work, reason: Reason) -> ItemResult:
    return ItemResult(
        w.item,
        ItemStatus.NOT_STARTED,
        attempts=w.base_attempts,
        reason=str(reason),
        retryable=True,
    )


def _conflict(item: BatchItem, row: ClaimRow | None) -> ItemResult:
    key = idempotency_key(item.batch_id, str(item.item_id))
    return ItemResult(
        item,
        ItemStatus.FAILED,
        attempts=(row.attempts or 0) if row else 0,
        reason=str(Reason.PAYLOAD_MISMATCH),
        error=str(IdempotencyConflictError(key)),
    )


def _is_conflict(w: _Work, row: ClaimRow | None) -> bool:
    return (
        row is not None
        and not row.claimed
        and row.payload_hash is not None
        and row.payload_hash != w.hash
    )


def _unclaimed_result(w: _Work, row: ClaimRow | None) -> ItemResult:
    """Result of a key the claim did not take: stored, conflicting or busy."""
    if row is None or row.status is None:
        # Inserted by a concurrent claim after this statement's snapshot.
        return ItemResult(
            w.item,
            ItemStatus.IN_PROGRESS,
            reason=str(Reason.IN_PROGRESS_ELSEWHERE),
            retryable=True,
        )
    if _is_conflict(w, row):
        return _conflict(w.item, row)
    attempts = row.attempts or 0
    if row.status == ItemStatus.COMPLETED:
        return ItemResult(
            w.item,
            ItemStatus.COMPLETED,
            attempts=attempts,
            cached=True,
            output=row.output,
        )
    if row.status == ItemStatus.FAILED:
        return ItemResult(
            w.item,
            ItemStatus.FAILED,
            attempts=attempts,
            reason=row.reason,
            error=row.error,
            retryable=bool(row.retryable),
            cached=True,
            output=row.output,
        )
    return ItemResult(
        w.item,
        ItemStatus.IN_PROGRESS,
        attempts=attempts,
        reason=str(Reason.IN_PROGRESS_ELSEWHERE),
        retryable=True,
    )


def _duplicate_result(
    w: _Work, first: _Work, first_result: ItemResult | None
) -> ItemResult:
    """Result of a key repeated in one run, decided after its first item ran.

    With the first item's payload it shares that item's outcome. With other
    data it is compared with what is stored: the stored row's result when
    the payload matches the row, otherwise a conflict.
    """
    if first_result is None:  # pragma: no cover (every first item gets a result)
        return _not_started(w, Reason.NOT_STARTED)
    if first.hash == w.hash:
        return ItemResult(
            w.item,
            first_result.status,
            attempts=first_result.attempts,
            reason=first_result.reason,
            error=first_result.error,
            retryable=first_result.retryable,
            cached=True,
            output=first_result.output,
        )
    row = first.claim
    if row is None:
        # Nothing was claimed (no time left, PostgreSQL unavailable): the key's
        # stored payload is unknown, so the item goes back like its first one.
        if first_result.retryable:
            return ItemResult(
                w.item,
                first_result.status,
                reason=first_result.reason,
                retryable=True,
            )
        return _conflict(w.item, None)
    if not row.claimed and (row.status is None or row.payload_hash == w.hash):
        return _unclaimed_result(w, row)
    return _conflict(w.item, row)


def _completion(w: _Work, result: ItemResult) -> Completion:
    assert w.row_id is not None, "only claimed items are recorded"
    if result.status is ItemStatus.NOT_STARTED:
        # Hand back unstarted: status stays in_progress, lease ends now.
        return Completion(
            row_id=w.row_id,
            status=ItemStatus.IN_PROGRESS,
            success=None,
            attempts=w.base_attempts,
            reason=result.reason,
            error=None,
            retryable=None,
            output=None,
            keep_started=True,
        )
    ok = result.ok
    # Positional, in field order: keyword arguments double the cost.
    return Completion(
        w.row_id,
        result.status,
        ok,  # success
        result.attempts,
        result.reason,
        storable_text(result.error) if result.error else result.error,
        None if ok else result.retryable,
        result.output,
        result.reason == Reason.ESCALATION_FAILED,  # keep_started
    )
