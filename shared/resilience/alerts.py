"""Alerts to people: a Slack incoming webhook and, for pages, PagerDuty.

:func:`send_alert` never raises: an alert that cannot be delivered is logged
(``alert.failed``) and counted (metric ``AlertFailed``). Nothing is sent when
no channel is configured.

Settings (environment first, then the JSON secret named by
``ALERTING_SECRET``):

- ``SLACK_WEBHOOK_URL`` / ``slackWebhookUrl``: Slack incoming webhook.
- ``PAGERDUTY_ROUTING_KEY`` / ``pagerdutyRoutingKey``: Events v2 routing key;
  ``PAGERDUTY_EVENTS_URL`` overrides the endpoint (default
  ``https://events.pagerduty.com/v2/enqueue``).
- ``WEBHOOK_SIGNING_SECRET`` / ``webhookSigningSecret``: when set, each
  request carries ``X-Resilience-Timestamp`` (epoch seconds) and
  ``X-Resilience-Signature`` (``v1=`` + hex HMAC-SHA256 of
  ``"{timestamp}.{body}"``).
- ``ALERT_TIMEOUT_S``: per-request timeout, default 2.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx

from resilience.observability import emit_metric
from resilience.secrets import get_secret_value

__all__ = ["Alert", "send_alert", "sign_body"]

logger = logging.getLogger(__name__)

DEFAULT_PAGERDUTY_EVENTS_URL = "https://events.pagerduty.com/v2/enqueue"
SECRET_ENV = "ALERTING_SECRET"


@dataclass(frozen=True)
class Alert:
    """One alert; ``dedupe_key`` groups repeats of the same event downstream."""

    title: str
    text: str
    severity: Literal["warning", "critical"] = "warning"
    source: str = "breaker"
    dedupe_key: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    page: bool = False


def sign_body(body: bytes, secret: str, timestamp: int) -> str:
    """Return the ``X-Resilience-Signature`` value of ``body`` sent at ``timestamp``."""
    message = f"{timestamp}.".encode() + body
    digest = hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()
    return f"v1={digest}"


def send_alert(alert: Alert, *, client: httpx.Client | None = None) -> None:
    """Send ``alert`` to Slack, and to PagerDuty when ``alert.page`` is set."""
    try:
        slack_url = get_secret_value(
            "SLACK_WEBHOOK_URL", secret_env=SECRET_ENV, field="slackWebhookUrl"
        )
        routing_key = (
            get_secret_value(
                "PAGERDUTY_ROUTING_KEY",
                secret_env=SECRET_ENV,
                field="pagerdutyRoutingKey",
            )
            if alert.page
            else None
        )
        signing_secret = get_secret_value(
            "WEBHOOK_SIGNING_SECRET",
            secret_env=SECRET_ENV,
            field="webhookSigningSecret",
        )
    except Exception as exc:
        _failed(alert, "settings", exc)
        return

    if not slack_url and not routing_key:
        logger.debug("alert.not_configured", extra={"dedupe_key": alert.dedupe_key})
        return

    timeout = float(os.environ.get("ALERT_TIMEOUT_S") or 2)
    own_client = client is None
    http = client or httpx.Client(timeout=timeout, follow_redirects=False)
    try:
        if slack_url:
            _post(
                http, "slack", slack_url, _slack_payload(alert), signing_secret, alert
            )
        if routing_key:
            url = os.environ.get("PAGERDUTY_EVENTS_URL") or DEFAULT_PAGERDUTY_EVENTS_URL
            payload = _pagerduty_payload(alert, routing_key)
            _post(http, "pagerduty", url, payload, signing_secret, alert)
    finally:
        if own_client:
            http.close()


def _post(
    http: httpx.Client,
    channel: str,
    url: str,
    payload: dict[str, Any],
    signing_secret: str | None,
    alert: Alert,
) -> None:
    body = json.dumps(payload, default=str).encode()
    headers = {"Content-Type": "application/json"}
    if signing_secret:
        timestamp = int(time.time())
        headers["X-Resilience-Timestamp"] = str(timestamp)
        headers["X-Resilience-Signature"] = sign_body(body, signing_secret, timestamp)
    try:
        response = http.post(url, content=body, headers=headers)
        response.raise_for_status()
    except httpx.HTTPError as exc:
        _failed(alert, channel, exc)
        return
    logger.info(
        "alert.sent",
        extra={
            "channel": channel,
            "dedupe_key": alert.dedupe_key,
            "source": alert.source,
        },
    )


def _failed(alert: Alert, channel: str, error: Exception) -> None:
    logger.warning(
        "alert.failed",
        extra={
            "channel": channel,
            "dedupe_key": alert.dedupe_key,
            "error": f"{type(error).__name__}: {error}",
        },
    )
    emit_metric("AlertFailed", 1, channel=channel)


def _slack_payload(alert: Alert) -> dict[str, Any]:
    marker = ":rotating_light:" if alert.severity == "critical" else ":warning:"
    lines = [f"{marker} *{alert.title}*", alert.text]
    lines += [f"• {key}: {value}" for key, value in alert.details.items()]
    return {"text": "\n".join(lines)}


def _pagerduty_payload(alert: Alert, routing_key: str) -> dict[str, Any]:
    return {
        "routing_key": routing_key,
        "event_action": "trigger",
        "dedup_key": alert.dedupe_key or None,
        "payload": {
            "summary": alert.title[:1024],
            "source": f"agent-resilience/{alert.source}",
            "severity": "critical" if alert.severity == "critical" else "warning",
            "custom_details": {"text": alert.text, **alert.details},
        },
    }
