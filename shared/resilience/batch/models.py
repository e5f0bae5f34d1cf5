"""Items, results and the rules that name them: keys, payload hashes, reasons.

An item is identified by the idempotency key ``batch:{batch_id}:item:{item_id}``.
Its payload hash covers the org, the processor name and the data, so the same
key sent with other data, by another org or for another processor is a
conflict, never a cached result.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, NoReturn

from resilience.api import (
    MAX_JSON_DEPTH,
    json_text,
    text_problem,
    validate_json_value,
)
from resilience.errors import ValidationError

__all__ = [
    "FINAL_REASONS",
    "ITEM_FIELDS",
    "RETRYABLE_REASONS",
    "BatchItem",
    "ItemResult",
    "ItemStatus",
    "Reason",
    "batch_key_range",
    "idempotency_key",
    "payload_hash",
    "validate_batch_id",
    "validate_item_id",
]

MAX_BATCH_ID_LENGTH = 128
# The fields of an item in POST /batches and in a batch-items message. Any
# other field is rejected: the payload hash covers the processor, so a
# misspelt "processor" would run the default one and block the key.
ITEM_FIELDS = frozenset({"id", "data", "processor"})
MAX_ITEM_ID_LENGTH = 512

# A batch id may not contain ':' because the key is
# "batch:{batch_id}:item:{item_id}": with ':' allowed, batch "a:item:b" with
# item "c" and batch "a" with item "b:item:c" would share a key. The pattern
# is used with fullmatch, because "$" also matches before a final newline.
_BATCH_ID_PATTERN = re.compile(r"[A-Za-z0-9_.\-]{1,128}")


class ItemStatus(StrEnum):
    """Status of an item, stored (the first three) or reported for this run."""

    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    FAILED = "failed"
    # Reported only: the item was not started because the time left was too
    # short; its message goes back to the queue.
    NOT_STARTED = "not_started"


class Reason(StrEnum):
    """Reason code of an item that did not complete.

    An item failed for a retryable reason may complete on a later delivery.
    """

    # Retryable: the same request can succeed on a later delivery.
    TIMEOUT = "timeout"
    CONNECTION_ERROR = "connection_error"
    RATE_LIMITED = "rate_limited"
    SERVER_ERROR = "server_error"
    BREAKER_OPEN = "breaker_open"
    LEASE_EXPIRED = "lease_expired"
    LEASE_LOST = "lease_lost"
    IN_PROGRESS_ELSEWHERE = "in_progress_elsewhere"
    DEGRADED = "degraded"
    NOT_STARTED = "not_started"
    GROUP_FAILED = "group_failed"
    DATABASE_UNAVAILABLE = "database_unavailable"
    ESCALATION_FAILED = "escalation_failed"
    ESCALATION_APPROVED = "escalation_approved"
    TRANSIENT_ERROR = "transient_error"
    # Final: retrying the same request cannot help.
    MISSING_ITEM_ID = "missing item id"
    INVALID_ITEM = "invalid_item"
    UNKNOWN_PROCESSOR = "unknown_processor"
    PAYLOAD_MISMATCH = "payload_mismatch"
    CLIENT_ERROR = "client_error"
    VALIDATION_ERROR = "validation_error"
    PROCESSOR_ERROR = "processor_error"
    ESCALATED = "escalated"
    ESCALATION_REJECTED = "escalation_rejected"
    ESCALATION_EXPIRED = "escalation_expired"
    ESCALATION_CANCELLED = "escalation_cancelled"


RETRYABLE_REASONS = frozenset(
    {
        Reason.TIMEOUT,
        Reason.CONNECTION_ERROR,
        Reason.RATE_LIMITED,
        Reason.SERVER_ERROR,
        Reason.BREAKER_OPEN,
        Reason.LEASE_EXPIRED,
        Reason.LEASE_LOST,
        Reason.IN_PROGRESS_ELSEWHERE,
        Reason.DEGRADED,
        Reason.NOT_STARTED,
        Reason.GROUP_FAILED,
        Reason.DATABASE_UNAVAILABLE,
        Reason.ESCALATION_FAILED,
        Reason.ESCALATION_APPROVED,
        Reason.TRANSIENT_ERROR,
    }
)
FINAL_REASONS = frozenset(Reason) - RETRYABLE_REASONS


def validate_batch_id(raw: object) -> str:
    """Return ``raw`` if it is a valid batch id, else raise ValidationError."""
    if not isinstance(raw, str) or not _BATCH_ID_PATTERN.fullmatch(raw):
        raise ValidationError(
            f"batchId must be 1-{MAX_BATCH_ID_LENGTH} characters of letters, "
            f"digits, '_', '.' or '-', got {json_text(raw)}",
            field="batchId",
        )
    return raw


def validate_item_id(raw: object) -> str | None:
    """Return the item id, or None when it is missing, empty or blank.

    None means the item is rejected on its own with reason ``missing item id``.
    Such an item never gets a key, so it can never share one with another item.

    Raises:
        ValidationError: the id is not a string, is longer than
            ``MAX_ITEM_ID_LENGTH``, or contains a NUL character, which
            PostgreSQL cannot store, or a lone surrogate, which UTF-8 cannot
            encode.
    """
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return None
    if not isinstance(raw, str):
        raise ValidationError(
            f"id must be a string, got {json_text(raw)}: send the id as text, "
            'such as "42"',
            field="id",
        )
    if len(raw) > MAX_ITEM_ID_LENGTH:
        raise ValidationError(
            f"id has {len(raw)} characters; the maximum is {MAX_ITEM_ID_LENGTH}",
            field="id",
        )
    problem = text_problem(raw)
    if problem is not None:
        raise ValidationError(f"id {problem}", field="id")
    return raw


def idempotency_key(batch_id: str, item_id: str) -> str:
    return f"batch:{batch_id}:item:{item_id}"


def batch_key_range(batch_id: str) -> dict[str, str]:
    """Return the bounds of a batch's keys in byte order: first <= key < end.

    A batch id has no ':', and ';' follows ':', so every key of the batch and
    no other key lies in the range. Queries by batch compare with
    ``COLLATE "C"``, so the range is correct whatever the column's collation.
    Once the column sorts in byte order (schema.sql), they scan the range in
    the key index.
    """
    first = idempotency_key(batch_id, "")
    return {"batch_id": batch_id, "first_key": first, "end_key": first[:-1] + ";"}


_CANONICAL_OPTIONS = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
)


def _canonical_encoder() -> Callable[[Any], str]:
    """Return a function that writes JSON with the canonical options.

    ``JSONEncoder.encode`` builds a new C encoder on every call, which took
    three times as long as encoding a small item when measured, so this
    builds it once. A
    circular structure then fails as RecursionError, not ValueError. Where the
    C encoder is missing or writes anything else, the standard path is used.
    """
    make_encoder = getattr(json.encoder, "c_make_encoder", None)
    if make_encoder is None:
        return _CANONICAL_OPTIONS.encode
    encoder = make_encoder(
        None,  # no markers: circular structures recurse until RecursionError
        _CANONICAL_OPTIONS.default,
        json.encoder.encode_basestring,  # ensure_ascii=False
        None,  # no indent
        ":",
        ",",
        True,  # sort_keys
        False,  # skipkeys
        False,  # allow_nan
    )

    def encode(value: Any) -> str:
        return "".join(encoder(value, 0))

    sample = {"b": [1, 2.5, -0.0, 1e20, None, True], "a": 'é"\n', "c": {}}
    if encode(sample) != _CANONICAL_OPTIONS.encode(sample):
        return _CANONICAL_OPTIONS.encode
    return encode


_canonical_json = _canonical_encoder()


@functools.lru_cache(maxsize=256)
def _tail(org_id: str, processor: str) -> str:
    """Return the canonical JSON of an item after its data.

    Sorted keys put "data" first, so the rest of the object depends only on
    the org and the processor, which a run shares across its items.
    """
    org = _canonical_json(org_id)
    return f',"org":{org},"processor":{_canonical_json(processor)}}}'


def payload_hash(data: Any, *, processor: str, org_id: str) -> str:
    """Return the SHA-256 of the item's canonical JSON (org, processor, data).

    Raises:
        ValidationError: when ``data`` cannot be written as JSON, or contains
            text that PostgreSQL cannot store (NUL) or UTF-8 cannot encode (a
            lone surrogate). The error names the field, such as ``data.note``.
    """
    try:
        try:
            canonical = '{"data":' + _canonical_json(data) + _tail(org_id, processor)
        except RecursionError:
            # The C encoder recurses once per level and raises past its limit
            # (about 1,500 levels on CPython 3.12.1). The fast encoder has no
            # check for circular structures, so they end here too. The
            # standard encoder names them (ValueError) and fails the same way
            # on depth.
            _CANONICAL_OPTIONS.encode(data)
            raise
    except (TypeError, ValueError) as exc:
        raise ValidationError(
            f"item data must be JSON (objects, arrays, strings, finite numbers, "
            f"booleans, null): {exc}",
            field="data",
        ) from None
    except RecursionError:
        raise ValidationError(
            "data is nested too deeply to encode as JSON: send at most "
            f"{MAX_JSON_DEPTH} levels of objects and arrays, as the HTTP API "
            "requires",
            field="data",
        ) from None
    # The encoder writes NUL as the six characters \u0000. The substring test
    # keeps the common case cheap, and the pattern then skips a string that
    # contains a literal backslash before "u0000" (written as \\u0000).
    if "\\u0000" in canonical and _NUL_ESCAPE.search(canonical):
        _raise_unstorable_text(canonical)
    try:
        encoded = canonical.encode()
    except UnicodeEncodeError:
        _raise_unstorable_text(canonical)
    return hashlib.sha256(encoded).hexdigest()


# A \u0000 escape preceded by an even number of backslashes, so that its own
# backslash starts an escape.
_NUL_ESCAPE = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")


def _raise_unstorable_text(canonical: str) -> NoReturn:
    """Raise ValidationError naming the first NUL or lone surrogate of an item.

    The walk reads the canonical JSON back, so keys and arrays have the types
    that ``validate_json_value`` expects whatever Python types the caller used.
    """
    item = json.loads(canonical)
    validate_json_value(item["data"], field="data")
    validate_json_value(item["org"], field="orgId")
    validate_json_value(item["processor"], field="processor")
    raise ValidationError(  # pragma: no cover (one of the checks above raises)
        "item contains a NUL character or a lone surrogate", field="data"
    )


@dataclass(slots=True)
class BatchItem:
    """One unit of work as received, before validation.

    ``item_id`` keeps the raw value (possibly None or empty) so that a rejected
    item can still be reported. ``message_id`` and ``group_id`` are set for
    items read from SQS. The runner never changes an item. The class is not
    frozen because a frozen dataclass takes about four times as long to build.
    """

    batch_id: str
    item_id: Any
    data: Any = None
    processor: str | None = None
    message_id: str | None = None
    group_id: str | None = None
    org_id: str = "default"


@dataclass(slots=True)
class ItemResult:
    """The outcome of one item in one run, in the shape the API returns."""

    item: BatchItem
    status: ItemStatus
    attempts: int = 0
    reason: str | None = None
    error: str | None = None
    retryable: bool = False
    cached: bool = False
    output: Any = None

    @property
    def ok(self) -> bool:
        return self.status is ItemStatus.COMPLETED

    @property
    def handed_back(self) -> bool:
        """True when the item should be delivered again (SQS: report failed)."""
        return not self.ok

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON shape of ``results[]`` in the HTTP API."""
        body: dict[str, Any] = {
            "id": self.item.item_id,
            "ok": self.ok,
            "status": str(self.status),
            "attempts": self.attempts,
            "reason": self.reason,
            "cached": self.cached,
            "output": self.output,
        }
        if self.error is not None:
            body["error"] = self.error
        if not self.ok:
            body["retryable"] = self.retryable
        return body
