"""Validation of escalation requests and decision bodies.

Errors are :class:`~resilience.errors.ValidationError` naming the field; the
handlers return 400 for a bad escalation request and 422 for a bad decision.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from resilience.api import (
    json_text,
    json_type_name,
    parse_json_object,
    truncate_for_message,
    validate_json_value,
)
from resilience.errors import ConfigError, ValidationError
from resilience.escalation.config import ANYONE, MAX_TIMEOUT_S, EscalationConfig

__all__ = [
    "MAX_DATA_BYTES",
    "MAX_REQUESTED_BY_CHARS",
    "MAX_SOURCE_BYTES",
    "DecisionBody",
    "StartRequest",
    "parse_decision",
    "validate_cancel",
    "validate_start",
]

# Step Functions limits execution input and state to 256 KiB, and the data
# travels in the input next to the other fields. The edited data does not: it
# stays in PostgreSQL, and the task output carries only the decision. Sizes
# are counted by state_bytes.
MAX_DATA_BYTES = 200_000
# source travels in the execution input next to data. A reason of
# MAX_REASON_CHARS takes at most 24,000 bytes, because a character can need a
# 12-byte surrogate-pair escape. With data and source at their maximums, over
# 20,000 of the 262,144 bytes remain for the ids, the app URL and field names.
MAX_SOURCE_BYTES = 16_384
MAX_REASON_CHARS = 2000
MAX_REQUESTED_BY_CHARS = 256
MAX_APPROVERS = 20
_TYPE_PATTERN = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_DECISION_FIELDS = {"decision", "data", "reason", "csrf"}


@dataclass(frozen=True)
class StartRequest:
    data: dict[str, Any]
    reason: str
    org_id: str
    escalation_type: str
    requested_by: str | None
    approvers: list[str]
    timeout_seconds: int
    source: dict[str, Any] | None
    app_url: str


def validate_start(
    config: EscalationConfig,
    *,
    data: Any,
    reason: Any,
    org_id: str,
    escalation_type: Any,
    requested_by: Any,
    approvers: Any,
    timeout_seconds: Any,
    source: Any,
    app_url: str | None,
) -> StartRequest:
    """Check an escalation request and fill in approvers and timeout."""
    checked_data = validate_data(data, field="data")
    checked_reason = _text(reason, field="reason", required=True)

    if not isinstance(escalation_type, str) or not _TYPE_PATTERN.fullmatch(
        escalation_type
    ):
        raise ValidationError(
            "escalationType must be 1-64 letters, digits, '_', '.' or '-'",
            field="escalationType",
        )
    if (
        config.types
        and escalation_type != "default"
        and (escalation_type not in config.types)
    ):
        raise ValidationError(
            f"escalationType {escalation_type!r} is not configured: use one of "
            f"{sorted(config.types)} or add it to ESCALATION_TYPES",
            field="escalationType",
        )
    type_settings = config.escalation_type(escalation_type)

    requested_by = _requested_by(requested_by)

    checked_approvers = _approvers(approvers, type_settings.approvers)
    if type_settings.forbid_self_approval and requested_by:
        checked_approvers = [a for a in checked_approvers if a != requested_by]
        if not checked_approvers:
            raise ValidationError(
                f"the requester {requested_by} may not approve escalations of type "
                f"{escalation_type!r}: name another approver",
                field="approvers",
            )

    timeout = _timeout(
        timeout_seconds,
        type_settings.timeout_seconds or config.default_timeout_s,
    )
    _check_source(source)

    base_url = (app_url or config.app_url or "").rstrip("/")
    if not base_url.startswith(("https://", "http://")):
        raise ConfigError(
            "approval links need a base URL: set APP_URL (e.g. "
            "https://api.example.com)",
            setting="APP_URL",
        )

    return StartRequest(
        data=checked_data,
        reason=checked_reason,
        org_id=org_id,
        escalation_type=escalation_type,
        requested_by=requested_by,
        approvers=checked_approvers,
        timeout_seconds=timeout,
        source=source,
        app_url=base_url,
    )


def validate_data(data: Any, *, field: str) -> dict[str, Any]:
    """Return ``data`` when it is a storable JSON object within the size limit."""
    if not isinstance(data, dict):
        raise ValidationError(
            f"{field} must be a JSON object, got {json_type_name(data)}", field=field
        )
    validate_json_value(data, field=field)
    size = state_bytes(data)
    if size > MAX_DATA_BYTES:
        raise ValidationError(
            f"{field} is {size} bytes of JSON written with a space after each "
            f"',' and ':'; the maximum is {MAX_DATA_BYTES}: send less data, or "
            "store it elsewhere and send its id",
            field=field,
        )
    return data


def state_bytes(value: Any) -> int:
    """Return the size of ``value`` in a Step Functions state.

    Counted as json.dumps writes it by default, with ASCII escapes and a
    space after each ',' and ':', which is how moto's Step Functions
    measures its 256 KiB limit. The count is never below the compact size,
    so a value within the limit fits a compact count too. Data with many
    separators, such as a long list of numbers, counts up to 1.5 times its
    compact size.
    """
    return len(json.dumps(value).encode())


def validate_cancel(body: dict[str, Any]) -> tuple[str | None, str | None]:
    """Return the reason and requester of a cancel body, both optional texts."""
    reason = _text(body.get("reason"), field="reason", required=False)
    requested_by = _requested_by(body.get("requestedBy"))
    return reason or None, requested_by


def _requested_by(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValidationError("requestedBy must be a string", field="requestedBy")
    if len(value) > MAX_REQUESTED_BY_CHARS:
        raise ValidationError(
            f"requestedBy has {len(value)} characters; the maximum is "
            f"{MAX_REQUESTED_BY_CHARS}: send the requester's id, such as an email "
            "address",
            field="requestedBy",
        )
    return value


def _check_source(source: Any) -> None:
    if source is None:
        return
    if not isinstance(source, dict) or not isinstance(source.get("pattern"), str):
        raise ValidationError(
            'source must be an object with a "pattern" string, e.g. '
            '{"pattern": "batch", "batchId": "b1", "itemId": "i1"}',
            field="source",
        )
    validate_json_value(source, field="source")
    size = state_bytes(source)
    if size > MAX_SOURCE_BYTES:
        raise ValidationError(
            f"source is {size} bytes of JSON; the maximum is {MAX_SOURCE_BYTES}: "
            "send ids that point to the work, and put the content in data",
            field="source",
        )


def _text(value: Any, *, field: str, required: bool) -> str:
    if value is None or value == "":
        if required:
            raise ValidationError(f"{field} is missing: send a short text", field=field)
        return ""
    if not isinstance(value, str):
        raise ValidationError(f"{field} must be a string", field=field)
    if len(value) > MAX_REASON_CHARS:
        raise ValidationError(
            f"{field} has {len(value)} characters; the maximum is {MAX_REASON_CHARS}",
            field=field,
        )
    return value.strip()


def _approvers(value: Any, allow_list: tuple[str, ...]) -> list[str]:
    # Slack identities decide through Slack buttons and get no link.
    listed = [item for item in allow_list if not item.startswith("slack:")]
    if value is None:
        return listed or [ANYONE]
    if (
        not isinstance(value, list)
        or not value
        or len(value) > MAX_APPROVERS
        or not all(isinstance(item, str) and 0 < len(item) <= 254 for item in value)
    ):
        raise ValidationError(
            f"approvers must be a list of 1-{MAX_APPROVERS} identities "
            "(strings of up to 254 characters)",
            field="approvers",
        )
    if allow_list:
        outside = [item for item in value if item not in allow_list]
        if outside:
            raise ValidationError(
                f"approvers {outside} are not in the allow-list of this escalation "
                "type",
                field="approvers",
            )
    return list(dict.fromkeys(value))


def _timeout(value: Any, default: int) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(
            "timeoutSeconds must be an integer number of seconds",
            field="timeoutSeconds",
        )
    if not 1 <= value <= MAX_TIMEOUT_S:
        raise ValidationError(
            f"timeoutSeconds must be between 1 and {MAX_TIMEOUT_S}, got {value}",
            field="timeoutSeconds",
        )
    return value


@dataclass(frozen=True)
class DecisionBody:
    decision: str
    data: dict[str, Any] | None
    reason: str | None


def parse_decision(body: dict[str, Any], *, original: dict[str, Any]) -> DecisionBody:
    """Validate a decision body from the approval form or a JSON client.

    ``data`` may be a JSON object or, from the form, its text. Unknown fields
    are rejected, so a misspelt ``decision`` never falls back to a default.
    The error names the first unknown field, cut by
    :func:`~resilience.api.truncate_for_message`, and never shows its value.
    """
    unknown = sorted(set(body) - _DECISION_FIELDS)
    if unknown:
        shown_name = truncate_for_message(unknown[0])
        more = f" and {len(unknown) - 1} more" if len(unknown) > 1 else ""
        raise ValidationError(
            f"unknown field {shown_name!r}{more}: send decision (approve or "
            "reject), and optionally data and reason",
            field=shown_name,
        )
    decision = body.get("decision")
    if decision not in ("approve", "reject"):
        raise ValidationError(
            f'decision must be "approve" or "reject", got {json_text(decision)}',
            field="decision",
        )

    reason = _text(body.get("reason"), field="reason", required=decision == "reject")
    data = body.get("data")
    if decision == "reject" or data is None or data == "":
        return DecisionBody(decision=decision, data=None, reason=reason or None)

    if isinstance(data, str):
        data = parse_json_object(data, field="data")
    checked = validate_data(data, field="data")
    edited = None if checked == original else checked
    return DecisionBody(decision=decision, data=edited, reason=reason or None)
