"""Secret settings: an environment variable first, then a Secrets Manager secret.

In AWS, secrets live in Secrets Manager as JSON objects and are read through
Powertools Parameters with a cache (``SECRETS_MAX_AGE_S``, default 300 s), so
a rotated secret is picked up within that time without a redeploy. Locally,
and in tests, the plain environment variable wins::

    get_secret_value("SLACK_BOT_TOKEN", secret_env="ALERTING_SECRET",
                     field="slackBotToken")

reads ``SLACK_BOT_TOKEN`` when set, else the ``slackBotToken`` field of the
secret named by ``ALERTING_SECRET``, else returns None.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

from resilience.errors import ConfigError

__all__ = ["get_secret_value"]

logger = logging.getLogger(__name__)

ENV_SECRETS_MAX_AGE_S = "SECRETS_MAX_AGE_S"


def get_secret_value(
    env_name: str, *, secret_env: str | None = None, field: str | None = None
) -> str | None:
    """Return a secret setting, or None when neither source has it."""
    direct = os.environ.get(env_name)
    if direct:
        return direct
    if not secret_env or not os.environ.get(secret_env):
        return None

    secret = _read_json_secret(os.environ[secret_env])
    value = secret.get(field or env_name)
    return str(value) if value else None


def _read_json_secret(secret_name: str) -> dict[str, Any]:
    from aws_lambda_powertools.utilities import parameters

    max_age = int(os.environ.get(ENV_SECRETS_MAX_AGE_S, "300"))
    raw = parameters.get_secret(secret_name, max_age=max_age)
    try:
        value = json.loads(raw) if isinstance(raw, str | bytes) else raw
    except json.JSONDecodeError:
        raise ConfigError(
            f"secret {secret_name!r} is not a JSON object: store it as "
            '{"field": "value", ...}',
            setting=secret_name,
        ) from None
    if not isinstance(value, dict):
        raise ConfigError(
            f"secret {secret_name!r} must be a JSON object, got {type(value).__name__}",
            setting=secret_name,
        )
    return value
