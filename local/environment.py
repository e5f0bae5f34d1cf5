"""The environment of each local function: the template's, plus local overrides.

A worker process starts from an almost empty environment (``PATH``, locale,
home). It adds the variables the template gives the function: Globals
first, then the function's own, with intrinsics resolved to local values.
Then come the local overrides below, which point every client at a local
server:

- ``DATABASE_URL``, ``REDIS_URL`` (or the Upstash settings when set),
  ``REDIS_KEY_PREFIX`` when set;
- AWS: ``AWS_ENDPOINT_URL`` (moto), credentials ``testing``, the region and
  the Lambda runtime variables. The ``*_SECRET`` names are removed, so
  nothing reads Secrets Manager. ``ESCALATION_KMS_KEY_ARN`` is removed too,
  so escalation data is encrypted with ``ESCALATION_LOCAL_KEY``;
- ``TRUST_ORG_ID_HEADER=true`` (the org id comes from ``X-Org-Id``), ``APP_URL``;
- Slack and PagerDuty: the stand-ins; LLM providers: the local LLM server,
  unless real keys are set and ``LLM_MOCK`` is not ``1``;
- the ``--env NAME=VALUE`` settings of ``python -m local``;
- ``BREAKER_SERVICES``: the configured services plus ``demo`` when they do
  not name a ``demo`` of their own.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from local.aws import LOCAL_CREDENTIALS
from local.model import FunctionSpec

__all__ = ["LocalValues", "function_environment"]

# Taken from the stack's own environment when set.
_INHERITED = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR", "SSL_CERT_FILE")
_PASSED_THROUGH = (
    "REDIS_KEY_PREFIX",
    "REDIS_TIMEOUT_MS",
    "UPSTASH_REDIS_REST_URL",
    "UPSTASH_REDIS_REST_TOKEN",
    "UPSTASH_REDIS_URL",
    "UPSTASH_REDIS_TOKEN",
    "POWERTOOLS_LOG_LEVEL",
    "LLM_MOCK",
)
# Template variables naming Secrets Manager secrets; locally every value is
# an environment variable instead.
_SECRET_NAMES = (
    "DATABASE_URL_SECRET",
    "REDIS_SECRET",
    "PROVIDER_KEYS_SECRET",
    "ALERTING_SECRET",
)


@dataclass(frozen=True)
class LocalValues:
    """Addresses and secrets of the running local stack."""

    root: Path
    region: str
    moto_url: str
    app_url: str
    database_url: str
    redis_url: str | None
    llm_url: str | None
    demo_url: str
    slack_url: str
    pagerduty_url: str
    secrets: dict[str, str]
    demo_reset_timeout_s: float = 10.0
    extra_env: dict[str, str] = field(default_factory=dict)


def function_environment(spec: FunctionSpec, values: LocalValues) -> dict[str, str]:
    """Build the environment of one function's worker processes."""
    env = {name: os.environ[name] for name in _INHERITED if name in os.environ}
    env.update(spec.environment)
    for name in _SECRET_NAMES:
        env.pop(name, None)
    env.pop("ESCALATION_KMS_KEY_ARN", None)
    env.update({n: os.environ[n] for n in _PASSED_THROUGH if n in os.environ})

    env.update(_runtime(spec, values))
    env["DATABASE_URL"] = values.database_url
    if values.redis_url:
        env["REDIS_URL"] = values.redis_url
    env["TRUST_ORG_ID_HEADER"] = "true"
    # Template parameters that are empty by default get local values.
    if not env.get("APP_URL"):
        env["APP_URL"] = values.app_url
    if not env.get("SLACK_CHANNEL"):
        env["SLACK_CHANNEL"] = "#agent-escalations"
    env.update(values.secrets)
    env.update(_alerting(values))
    env.update(_llm_providers(values))
    env.update(values.extra_env)
    env["BREAKER_SERVICES"] = _breaker_services(env.get("BREAKER_SERVICES", ""), values)
    return env


def _runtime(spec: FunctionSpec, values: LocalValues) -> dict[str, str]:
    code_path = os.pathsep.join([str(spec.code_uri), str(values.root / "shared")])
    return {
        **LOCAL_CREDENTIALS,
        "AWS_ENDPOINT_URL": values.moto_url,
        "AWS_DEFAULT_REGION": values.region,
        "AWS_REGION": values.region,
        "AWS_LAMBDA_FUNCTION_NAME": spec.logical_id,
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(spec.memory_mb),
        "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
        "AWS_LAMBDA_FUNCTION_TIMEOUT": str(spec.timeout_s),
        "LOCAL_HANDLER": spec.handler,
        "PYTHONPATH": code_path,
        "PYTHONUNBUFFERED": "1",
        # No X-Ray daemon runs locally.
        "POWERTOOLS_TRACE_DISABLED": "true",
    }


def _alerting(values: LocalValues) -> dict[str, str]:
    return {
        "SLACK_WEBHOOK_URL": f"{values.slack_url}/services/T0LOCAL/B0LOCAL/local",
        "SLACK_API_URL": f"{values.slack_url}/api",
        "SLACK_BOT_TOKEN": "xoxb-local-stand-in",
        "PAGERDUTY_EVENTS_URL": f"{values.pagerduty_url}/v2/enqueue",
        "PAGERDUTY_ROUTING_KEY": "local-routing-key",
    }


def _llm_providers(values: LocalValues) -> dict[str, str]:
    real_keys = os.environ.get("OPENAI_API_KEY") or os.environ.get("ANTHROPIC_API_KEY")
    if real_keys and os.environ.get("LLM_MOCK") != "1":
        return {
            name: os.environ[name]
            for name in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY")
            if name in os.environ
        }
    if values.llm_url is None:
        return {}
    # The SDKs need some key; the local server accepts any.
    return {
        "OPENAI_BASE_URL": f"{values.llm_url}/v1",
        "ANTHROPIC_BASE_URL": values.llm_url,
        "LLM_MOCK_URL": values.llm_url,
        "LLM_MOCK": "1",
        "OPENAI_API_KEY": "sk-local",
        "ANTHROPIC_API_KEY": "sk-ant-local",
    }


def _breaker_services(configured: str, values: LocalValues) -> str:
    services = json.loads(configured) if configured.strip() else {}
    services.setdefault(
        "demo",
        {
            "baseUrl": values.demo_url,
            "timeoutS": 2,
            "critical": True,
            "breaker": {
                "failureThreshold": 3,
                "resetTimeoutS": values.demo_reset_timeout_s,
            },
        },
    )
    return json.dumps(services)
