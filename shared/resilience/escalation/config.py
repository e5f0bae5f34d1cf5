"""Settings of human escalation, read from the environment in one place.

Environment (secret values may instead come from the ``ALERTING_SECRET`` JSON
secret, field name in brackets):

- ``STATE_MACHINE_ARN``: the escalation state machine.
- ``APP_URL``: public base URL of approval links; empty uses the request's own.
- ``ESCALATION_TYPES``: JSON ``{"type": {"approvers": [...],
  "forbidSelfApproval": true, "timeoutSeconds": 3600}}``. Approvers are
  identities such as e-mail addresses; ``slack:U123`` allows that Slack user.
- ``ESCALATION_DEFAULT_TIMEOUT_S``: wait before expiry, default 86400 (24 h).
- ``LINK_SIGNING_KEY`` [linkSigningKey], or ``LINK_SIGNING_KEY_FILE``: the
  HMAC key of approval links; the file is created with a random key if absent.
- ``ESCALATION_KMS_KEY_ARN``: KMS key for envelope encryption, else
  ``ESCALATION_LOCAL_KEY``: a base64-encoded 32-byte AES key.
- ``SLACK_BOT_TOKEN`` [slackBotToken] with ``SLACK_CHANNEL``,
  ``SLACK_API_URL`` (default https://slack.com/api), ``SLACK_WEBHOOK_URL``
  [slackWebhookUrl], ``SLACK_SIGNING_SECRET`` [slackSigningSecret].
- ``ESCALATION_RESUMERS``: JSON ``{"pattern": "module:function"}`` added to
  the built-in resumers (see :mod:`resilience.escalation.resume`).
- ``ESCALATION_REMINDER_AFTER_S``: age of a pending escalation that gets a
  reminder, default 7200 (2 h).
"""

from __future__ import annotations

import base64
import json
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from resilience.errors import ConfigError
from resilience.secrets import get_secret_value

__all__ = [
    "ANYONE",
    "MAX_TIMEOUT_S",
    "EscalationConfig",
    "EscalationType",
    "link_signing_key",
]

# The approver of a link that is not bound to a named person: whoever holds
# the link may decide. Used only when neither the request nor the escalation
# type names approvers.
ANYONE = "anyone"
# Step Functions ends a Standard workflow after one year.
MAX_TIMEOUT_S = 365 * 24 * 3600
DEFAULT_TIMEOUT_S = 24 * 3600

ENV_TYPES = "ESCALATION_TYPES"
ENV_DEFAULT_TIMEOUT = "ESCALATION_DEFAULT_TIMEOUT_S"
ENV_LINK_KEY = "LINK_SIGNING_KEY"
ENV_LINK_KEY_FILE = "LINK_SIGNING_KEY_FILE"
ENV_REMINDER_AFTER = "ESCALATION_REMINDER_AFTER_S"


@dataclass(frozen=True)
class EscalationType:
    """Allow-list, self-approval rule and timeout of one escalation type."""

    name: str
    approvers: tuple[str, ...] = ()
    forbid_self_approval: bool = False
    timeout_seconds: int | None = None

    def allows(self, identity: str) -> bool:
        """Return True when the type has no allow-list or lists ``identity``."""
        return not self.approvers or identity in self.approvers


@dataclass(frozen=True)
class EscalationConfig:
    """Settings of the escalation flow (see the module docstring)."""

    state_machine_arn: str = ""
    app_url: str = ""
    types: dict[str, EscalationType] = field(default_factory=dict)
    default_timeout_s: int = DEFAULT_TIMEOUT_S
    reminder_after_s: int = 7200
    slack_channel: str = ""
    resumers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 1 <= self.default_timeout_s <= MAX_TIMEOUT_S:
            raise ConfigError(
                f"{ENV_DEFAULT_TIMEOUT} must be between 1 and {MAX_TIMEOUT_S} "
                f"seconds, got {self.default_timeout_s}",
                setting=ENV_DEFAULT_TIMEOUT,
            )
        if self.reminder_after_s <= 0:
            raise ConfigError(
                f"{ENV_REMINDER_AFTER} must be positive, got {self.reminder_after_s}",
                setting=ENV_REMINDER_AFTER,
            )

    def escalation_type(self, name: str) -> EscalationType:
        """Return the settings of type ``name``; unconfigured types get none."""
        configured = self.types.get(name)
        if configured is not None:
            return configured
        return EscalationType(name=name)

    @classmethod
    def from_env(cls) -> EscalationConfig:
        """Build the settings from the environment."""
        return cls(
            state_machine_arn=os.environ.get("STATE_MACHINE_ARN", ""),
            app_url=os.environ.get("APP_URL", "").rstrip("/"),
            types=parse_types(os.environ.get(ENV_TYPES, "")),
            default_timeout_s=_int_env(ENV_DEFAULT_TIMEOUT, DEFAULT_TIMEOUT_S),
            reminder_after_s=_int_env(ENV_REMINDER_AFTER, 7200),
            slack_channel=os.environ.get("SLACK_CHANNEL", ""),
            resumers=_parse_resumers(os.environ.get("ESCALATION_RESUMERS", "")),
        )


def parse_types(raw: str) -> dict[str, EscalationType]:
    """Parse the ``ESCALATION_TYPES`` JSON object into :class:`EscalationType`."""
    if not raw.strip():
        return {}
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"{ENV_TYPES} is not valid JSON ({exc.msg}): expected "
            '{"type": {"approvers": ["a@example.com"]}}',
            setting=ENV_TYPES,
        ) from None
    if not isinstance(value, dict):
        raise ConfigError(f"{ENV_TYPES} must be a JSON object", setting=ENV_TYPES)

    types: dict[str, EscalationType] = {}
    for name, settings in value.items():
        types[name] = _parse_type(name, settings)
    return types


def _parse_type(name: str, settings: Any) -> EscalationType:
    where = f"{ENV_TYPES}[{name!r}]"
    if not isinstance(settings, dict):
        raise ConfigError(f"{where} must be a JSON object", setting=ENV_TYPES)
    approvers = settings.get("approvers", [])
    if not isinstance(approvers, list) or not all(
        isinstance(item, str) and item for item in approvers
    ):
        raise ConfigError(
            f"{where}.approvers must be a list of non-empty strings",
            setting=ENV_TYPES,
        )
    timeout = settings.get("timeoutSeconds")
    if timeout is not None and (
        not isinstance(timeout, int) or not 1 <= timeout <= MAX_TIMEOUT_S
    ):
        raise ConfigError(
            f"{where}.timeoutSeconds must be an integer from 1 to {MAX_TIMEOUT_S}",
            setting=ENV_TYPES,
        )
    return EscalationType(
        name=name,
        approvers=tuple(approvers),
        forbid_self_approval=bool(settings.get("forbidSelfApproval", False)),
        timeout_seconds=timeout,
    )


def _parse_resumers(raw: str) -> dict[str, str]:
    if not raw.strip():
        return {}
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = None
    if not isinstance(value, dict) or not all(
        isinstance(path, str) and ":" in path for path in value.values()
    ):
        raise ConfigError(
            'ESCALATION_RESUMERS must be a JSON object {"pattern": "module:function"}',
            setting="ESCALATION_RESUMERS",
        )
    return dict(value)


def _int_env(name: str, default: int) -> int:
    raw = os.environ.get(name, "")
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(
            f"{name} must be an integer, got {raw!r}", setting=name
        ) from None


def link_signing_key() -> bytes:
    """Return the HMAC key of approval links.

    Sources in order: ``LINK_SIGNING_KEY`` (or the ``linkSigningKey`` field of
    ``ALERTING_SECRET``), then the file named by ``LINK_SIGNING_KEY_FILE``,
    created with 32 random bytes on first use.
    """
    configured = get_secret_value(
        ENV_LINK_KEY, secret_env="ALERTING_SECRET", field="linkSigningKey"
    )
    if configured:
        if len(configured) < 32:
            raise ConfigError(
                f"{ENV_LINK_KEY} must be at least 32 characters long",
                setting=ENV_LINK_KEY,
            )
        return configured.encode()

    key_file = os.environ.get(ENV_LINK_KEY_FILE, "")
    if not key_file:
        raise ConfigError(
            f"no link signing key: set {ENV_LINK_KEY} (at least 32 characters), "
            f"the linkSigningKey field of ALERTING_SECRET, or {ENV_LINK_KEY_FILE}",
            setting=ENV_LINK_KEY,
        )
    return _read_or_create_key_file(Path(key_file))


def _read_or_create_key_file(path: Path) -> bytes:
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        encoded = base64.b64encode(secrets.token_bytes(32))
        # O_EXCL: when two processes race, one creates the file and both read it.
        try:
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(descriptor, "wb") as handle:
                handle.write(encoded)
    return path.read_bytes().strip()
