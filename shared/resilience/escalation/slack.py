"""Slack: request verification, and messages posted through the Web API or a webhook.

Incoming requests (``POST /slack/actions``) carry ``X-Slack-Signature``, the
HMAC-SHA256 (``v0=`` hex) of ``v0:{timestamp}:{raw body}`` under the app's
signing secret, and ``X-Slack-Request-Timestamp``. The raw body is the bytes
Slack sent: API Gateway may deliver them base64-encoded (``isBase64Encoded``),
and they must be decoded, not re-serialised, before verification.

Outgoing messages: with a bot token, ``chat.postMessage`` posts the
notification with Approve and Reject buttons and ``chat.update`` replaces it
with the outcome. With only an incoming webhook, the notification is posted
once and cannot be updated (webhooks return no message id).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import httpx

from resilience.errors import (
    ForbiddenError,
    UpstreamConnectionError,
    UpstreamServerError,
)
from resilience.secrets import get_secret_value

__all__ = [
    "MAX_CLOCK_SKEW_S",
    "DatabaseReplayGuard",
    "MemoryReplayGuard",
    "ReplayGuard",
    "SlackClient",
    "SlackVerificationError",
    "raw_body",
    "slack_client_from_env",
    "verify_slack_request",
]

logger = logging.getLogger(__name__)

MAX_CLOCK_SKEW_S = 300
# Slack sends 10 digits until the year 2286, and 19 fit a signed 64-bit integer.
MAX_TIMESTAMP_DIGITS = 19
_TIMESTAMP_PATTERN = re.compile(rf"[0-9]{{1,{MAX_TIMESTAMP_DIGITS}}}")
DEFAULT_API_URL = "https://slack.com/api"


class SlackVerificationError(ForbiddenError):
    """A Slack request failed signature, timestamp or replay checks (HTTP 401)."""


class ReplayGuard(Protocol):
    def first_use(self, signature: str) -> bool:
        """Record ``signature``; return False when it was seen before."""
        ...


class MemoryReplayGuard:
    """Signatures seen by this process within the clock-skew window."""

    def __init__(self) -> None:
        self._seen: dict[str, float] = {}
        self._lock = threading.Lock()

    def first_use(self, signature: str) -> bool:
        now = time.monotonic()
        with self._lock:
            for key, seen_at in list(self._seen.items()):
                if now - seen_at > 2 * MAX_CLOCK_SKEW_S:
                    del self._seen[key]
            if signature in self._seen:
                return False
            self._seen[signature] = now
            return True


class DatabaseReplayGuard:
    """Signatures seen by any instance, in the ``slack_request_seen`` table."""

    def __init__(self, database: Any) -> None:
        self._database = database

    def first_use(self, signature: str) -> bool:
        digest = hashlib.sha256(signature.encode()).hexdigest()
        with self._database.transaction() as connection:
            connection.execute(
                "DELETE FROM slack_request_seen "
                "WHERE created_at < now() - interval '10 minutes'"
            )
            row = connection.execute(
                "INSERT INTO slack_request_seen (signature_hash) VALUES (%s) "
                "ON CONFLICT DO NOTHING RETURNING signature_hash",
                (digest,),
            ).fetchone()
        return row is not None


def raw_body(event: Mapping[str, Any]) -> bytes:
    """Return the raw body of an API Gateway event, decoding base64 when marked so."""
    body = event.get("body") or ""
    if event.get("isBase64Encoded"):
        return base64.b64decode(body)
    return body.encode() if isinstance(body, str) else bytes(body)


def verify_slack_request(
    headers: Mapping[str, str],
    body: bytes,
    *,
    signing_secret: str,
    replay_guard: ReplayGuard | None = None,
    now: float | None = None,
) -> None:
    """Check a Slack request's signature, timestamp and freshness.

    Raises:
        SlackVerificationError: a header is missing, the timestamp is more
            than 300 s from ``now``, the signature does not match the body, or
            the same signed request was accepted before.
    """
    lowered = {key.lower(): value for key, value in headers.items()}
    timestamp = lowered.get("x-slack-request-timestamp", "")
    signature = lowered.get("x-slack-signature", "")
    if not timestamp or not signature:
        raise SlackVerificationError(
            "Slack request is missing X-Slack-Signature or X-Slack-Request-Timestamp"
        )
    # str.isdigit() also accepts digits that int() rejects (such as "²"), and
    # int() raises ValueError past 4,300 digits.
    if not _TIMESTAMP_PATTERN.fullmatch(timestamp):
        raise SlackVerificationError(
            "X-Slack-Request-Timestamp is not a number of Unix seconds (1 to "
            f"{MAX_TIMESTAMP_DIGITS} digits 0-9)"
        )
    current = time.time() if now is None else now
    if abs(current - int(timestamp)) > MAX_CLOCK_SKEW_S:
        raise SlackVerificationError(
            f"Slack request timestamp is more than {MAX_CLOCK_SKEW_S} s off"
        )

    expected = sign_slack_request(signing_secret, timestamp, body)
    if not hmac.compare_digest(expected.encode(), signature.encode()):
        raise SlackVerificationError("Slack request signature does not match the body")
    if replay_guard is not None and not replay_guard.first_use(signature):
        raise SlackVerificationError("Slack request was already accepted (replay)")


def sign_slack_request(signing_secret: str, timestamp: str, body: bytes) -> str:
    """Return the ``v0=`` signature Slack sends for ``body`` at ``timestamp``."""
    base = b"v0:" + timestamp.encode() + b":" + body
    digest = hmac.new(signing_secret.encode(), base, hashlib.sha256).hexdigest()
    return f"v0={digest}"


@dataclass(frozen=True)
class PostedMessage:
    channel: str
    ts: str


class SlackClient:
    """Slack Web API (bot token) or incoming webhook, over one httpx client."""

    def __init__(
        self,
        *,
        bot_token: str | None,
        webhook_url: str | None,
        api_url: str = DEFAULT_API_URL,
        channel: str = "",
        timeout_s: float = 2.5,
    ) -> None:
        self.bot_token = bot_token
        self.webhook_url = webhook_url
        self.api_url = api_url.rstrip("/")
        self.channel = channel
        self._http = httpx.Client(timeout=timeout_s)

    def __repr__(self) -> str:
        mode = "off"
        if self.bot_token:
            mode = "web_api"
        elif self.webhook_url:
            mode = "webhook"
        return f"<SlackClient mode={mode}>"

    @property
    def can_update(self) -> bool:
        return bool(self.bot_token and self.channel)

    @property
    def configured(self) -> bool:
        return self.can_update or bool(self.webhook_url)

    def post(
        self, text: str, blocks: list[dict[str, Any]], *, thread_ts: str | None = None
    ) -> PostedMessage | None:
        """Post a message; return its id with a bot token, None through a webhook."""
        if self.can_update:
            payload: dict[str, Any] = {
                "channel": self.channel,
                "text": text,
                "blocks": blocks,
            }
            if thread_ts:
                payload["thread_ts"] = thread_ts
            answer = self._call("chat.postMessage", payload)
            return PostedMessage(channel=answer["channel"], ts=answer["ts"])
        if self.webhook_url:
            self._send(self.webhook_url, {"text": text, "blocks": blocks}, json=False)
            return None
        return None

    def update(
        self, channel: str, ts: str, text: str, blocks: list[dict[str, Any]]
    ) -> None:
        """Replace a posted message (bot token only)."""
        if not self.bot_token:
            return
        self._call(
            "chat.update",
            {"channel": channel, "ts": ts, "text": text, "blocks": blocks},
        )

    def _call(self, method: str, payload: dict[str, Any]) -> dict[str, Any]:
        answer = self._send(f"{self.api_url}/{method}", payload, json=True)
        if not answer.get("ok"):
            raise UpstreamServerError(
                f"Slack {method} failed: {answer.get('error', 'unknown error')}",
                service="slack",
            )
        return answer

    def _send(self, url: str, payload: dict[str, Any], *, json: bool) -> dict[str, Any]:
        headers = {}
        if json and self.bot_token:
            headers["Authorization"] = f"Bearer {self.bot_token}"
        try:
            response = self._http.post(url, json=payload, headers=headers)
        except httpx.TimeoutException as exc:
            raise UpstreamConnectionError(
                "Slack did not respond in time", service="slack"
            ) from exc
        except httpx.HTTPError as exc:
            raise UpstreamConnectionError(
                f"Slack could not be reached: {type(exc).__name__}", service="slack"
            ) from exc
        if response.status_code >= 400:
            raise UpstreamServerError(
                f"Slack responded with HTTP {response.status_code}",
                service="slack",
                status=response.status_code,
            )
        if not json:
            return {"ok": True}
        try:
            body: dict[str, Any] = response.json()
        except ValueError:
            body = {"ok": False, "error": "response is not JSON"}
        return body


def slack_client_from_env(channel: str) -> SlackClient:
    """Build the client from SLACK_BOT_TOKEN, SLACK_WEBHOOK_URL and SLACK_API_URL."""
    import os

    return SlackClient(
        bot_token=get_secret_value(
            "SLACK_BOT_TOKEN", secret_env="ALERTING_SECRET", field="slackBotToken"
        ),
        webhook_url=get_secret_value(
            "SLACK_WEBHOOK_URL", secret_env="ALERTING_SECRET", field="slackWebhookUrl"
        ),
        api_url=os.environ.get("SLACK_API_URL", "") or DEFAULT_API_URL,
        channel=channel,
    )


def slack_signing_secret() -> str | None:
    return get_secret_value(
        "SLACK_SIGNING_SECRET", secret_env="ALERTING_SECRET", field="slackSigningSecret"
    )
