"""Slack request verification over the raw body, in both API Gateway encodings."""

from __future__ import annotations

import base64
import json
from urllib.parse import urlencode

import pytest

from resilience.escalation.slack import (
    MemoryReplayGuard,
    SlackVerificationError,
    raw_body,
    sign_slack_request,
    verify_slack_request,
)

SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
NOW = 1_700_000_000
BODY = urlencode(
    {"payload": json.dumps({"type": "block_actions", "user": {"id": "U1"}})}
).encode()


def signed_headers(body: bytes = BODY, timestamp: int = NOW) -> dict[str, str]:
    return {
        "X-Slack-Request-Timestamp": str(timestamp),
        "X-Slack-Signature": sign_slack_request(SECRET, str(timestamp), body),
    }


def event(body: bytes, *, encoded: bool) -> dict[str, object]:
    if encoded:
        return {"body": base64.b64encode(body).decode(), "isBase64Encoded": True}
    return {"body": body.decode(), "isBase64Encoded": False}


def test_signature_matches_slack_documentation_example() -> None:
    # The example request of Slack's "Verifying requests from Slack" guide.
    body = (
        b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow"
        b"&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA"
        b"&user_name=roadrunner&command=%2Fwebhook-collect&text="
        b"&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN"
        b"&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c"
    )

    signature = sign_slack_request(SECRET, "1531420618", body)

    assert signature == (
        "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503"
    )


@pytest.mark.parametrize("encoded", [False, True])
def test_valid_signature_in_both_encodings(encoded: bool) -> None:
    body = raw_body(event(BODY, encoded=encoded))

    verify_slack_request(signed_headers(), body, signing_secret=SECRET, now=NOW)

    assert body == BODY


def test_base64_body_verified_over_decoded_bytes() -> None:
    encoded_text = base64.b64encode(BODY)

    with pytest.raises(SlackVerificationError, match="does not match"):
        verify_slack_request(
            signed_headers(), encoded_text, signing_secret=SECRET, now=NOW
        )


def test_one_tampered_byte_rejected() -> None:
    tampered = BODY[:10] + bytes([BODY[10] ^ 1]) + BODY[11:]

    with pytest.raises(SlackVerificationError, match="does not match"):
        verify_slack_request(signed_headers(), tampered, signing_secret=SECRET, now=NOW)


def test_timestamp_301_seconds_old_rejected() -> None:
    headers = signed_headers(timestamp=NOW - 301)

    with pytest.raises(SlackVerificationError, match="more than 300 s off"):
        verify_slack_request(headers, BODY, signing_secret=SECRET, now=NOW)


def test_timestamp_300_seconds_old_accepted() -> None:
    headers = signed_headers(timestamp=NOW - 300)

    verify_slack_request(headers, BODY, signing_secret=SECRET, now=NOW)


def test_future_timestamp_rejected() -> None:
    headers = signed_headers(timestamp=NOW + 301)

    with pytest.raises(SlackVerificationError, match="more than 300 s off"):
        verify_slack_request(headers, BODY, signing_secret=SECRET, now=NOW)


def test_replay_rejected() -> None:
    guard = MemoryReplayGuard()
    verify_slack_request(
        signed_headers(), BODY, signing_secret=SECRET, replay_guard=guard, now=NOW
    )

    with pytest.raises(SlackVerificationError, match="replay"):
        verify_slack_request(
            signed_headers(), BODY, signing_secret=SECRET, replay_guard=guard, now=NOW
        )


@pytest.mark.parametrize("missing", ["X-Slack-Request-Timestamp", "X-Slack-Signature"])
def test_missing_header_rejected(missing: str) -> None:
    headers = signed_headers()
    del headers[missing]

    with pytest.raises(SlackVerificationError, match="missing"):
        verify_slack_request(headers, BODY, signing_secret=SECRET, now=NOW)


@pytest.mark.parametrize(
    "timestamp",
    [
        "1" + "0" * 5_000,  # past int()'s 4,300-digit limit
        "1" + "0" * 400,  # beyond the float range
        "\u00b2",  # str.isdigit() accepts it, int() does not
        "\u0661\u0662",  # Arabic-Indic digits
        "-1",
    ],
    ids=["5001-digits", "401-digits", "superscript", "arabic-indic", "negative"],
)
def test_malformed_timestamp_rejected(timestamp: str) -> None:
    headers = {
        "X-Slack-Request-Timestamp": timestamp,
        "X-Slack-Signature": sign_slack_request(SECRET, timestamp, BODY),
    }

    with pytest.raises(SlackVerificationError, match="is not a number"):
        verify_slack_request(headers, BODY, signing_secret=SECRET, now=NOW)


def test_wrong_secret_rejected() -> None:
    with pytest.raises(SlackVerificationError, match="does not match"):
        verify_slack_request(
            signed_headers(), BODY, signing_secret="another-secret", now=NOW
        )
