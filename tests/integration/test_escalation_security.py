"""Links that cannot be forged, approvers from allow-lists, verified Slack users."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

import pytest

from local.standins import SlackStandIn
from resilience.db import Database
from resilience.escalation.links import LinkSigner
from resilience.escalation.slack import sign_slack_request
from tests.escalation_support import (
    LINK_KEY,
    SLACK_SECRET,
    Harness,
    audit_actions,
    harness_for_test,
    http_event,
    moto_session,
)

pytestmark = pytest.mark.timeout(60)

TYPES = {
    "deploy": {
        "approvers": ["alice@example.com", "bob@example.com", "slack:U111"],
        "forbidSelfApproval": True,
    }
}


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    yield from moto_session()


@pytest.fixture
def slack() -> Iterator[SlackStandIn]:
    stand_in = SlackStandIn().start()
    yield stand_in  # type: ignore[misc]
    stand_in.stop()


@pytest.fixture
def harness(
    app_env: dict[str, str],
    moto_endpoint: str,
    monkeypatch: pytest.MonkeyPatch,
    slack: SlackStandIn,
) -> Iterator[Harness]:
    monkeypatch.setenv("ESCALATION_TYPES", json.dumps(TYPES))
    yield from harness_for_test(moto_endpoint, monkeypatch, slack_url=slack.url)


def start_deploy(harness: Harness, **fields: Any) -> dict[str, Any]:
    started = harness.start(
        {
            "data": {"deploy": "v2"},
            "reason": "production deploy",
            "escalationType": "deploy",
            **fields,
        }
    )
    harness.pump_notify()
    return started


def slack_action(
    escalation_id: str,
    action: str,
    user_id: str,
    *,
    timestamp: int | None = None,
    tamper: bool = False,
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    payload = {
        "type": "block_actions",
        "user": {"id": user_id, "username": user_id.lower()},
        "actions": [{"action_id": action, "value": escalation_id}],
        "container": {"channel_id": "C1", "message_ts": "1.000001"},
    }
    body = urlencode({"payload": json.dumps(payload)}).encode()
    stamp = str(timestamp if timestamp is not None else int(time.time()))
    signature = sign_slack_request(SLACK_SECRET, stamp, body)
    if tamper:
        body = body[:-1] + bytes([body[-1] ^ 1])
    signed_headers = {
        "content-type": "application/x-www-form-urlencoded",
        "x-slack-request-timestamp": stamp,
        "x-slack-signature": signature,
    }
    return http_event(
        "POST",
        "https://approvals.test/slack/actions",
        body=body,
        headers=headers if headers is not None else signed_headers,
        base64_body=True,
    )


def test_links_one_per_allowed_approver(harness: Harness) -> None:
    started = start_deploy(harness)

    assert sorted(started["approvalUrls"]) == ["alice@example.com", "bob@example.com"]
    for approver, url in started["approvalUrls"].items():
        assert f"approver={approver.replace('@', '%40')}" in url
        assert "signature=" in url
        assert "expires=" in url


def test_approver_outside_allow_list_rejected(harness: Harness) -> None:
    answer = harness.call(
        http_event(
            "POST",
            "https://approvals.test/escalations",
            body=json.dumps(
                {
                    "data": {},
                    "reason": "x",
                    "escalationType": "deploy",
                    "approvers": ["mallory@example.com"],
                }
            ),
            headers={"content-type": "application/json"},
        )
    )

    assert answer["statusCode"] == 400
    assert json.loads(answer["body"])["field"] == "approvers"


@pytest.mark.parametrize("part", ["signature", "approver", "expires"])
def test_tampered_link_is_403(harness: Harness, database: Database, part: str) -> None:
    started = start_deploy(harness)
    url = started["approvalUrls"]["alice@example.com"]
    replacements = {
        "signature": ("signature=", "signature=A"),
        "approver": ("approver=alice", "approver=mallory"),
        "expires": ("expires=", "expires=9"),
    }
    old, new = replacements[part]
    tampered = url.replace(old, new, 1)

    page = harness.open_link(tampered)
    post = harness.post_json(tampered, {"decision": "approve"})

    assert page["statusCode"] == 403
    assert "Invalid approval link" in page["body"]
    assert post["statusCode"] == 403
    assert harness.status(started["id"])["status"] == "pending"
    assert "escalation.decision_refused" in audit_actions(database, started["id"])
    with database.transaction() as connection:
        rejected = connection.execute(
            "SELECT metadata->>'why' AS why FROM audit_log "
            "WHERE task_id = %s AND action = 'escalation.decision_refused'",
            (started["id"],),
        ).fetchall()
    assert [row["why"] for row in rejected] == ["invalid_link"]


@pytest.mark.parametrize("expires", ["1" + "0" * 5_000, "\u00b2", "1" * 20, "-1"])
def test_malformed_expires_is_403(harness: Harness, expires: str) -> None:
    query = urlencode({"approver": "x", "expires": expires, "signature": "y"})
    url = f"https://approvals.test/approvals/abc?{query}"

    page = harness.open_link(url)

    assert page["statusCode"] == 403
    assert "Invalid approval link" in page["body"]
    assert "expires must be Unix seconds" in page["body"]


def test_correctly_signed_but_never_issued_link_is_403(harness: Harness) -> None:
    """Even with the signing key, a link not issued for bob's row fails."""
    started = start_deploy(harness, approvers=["alice@example.com"])
    expires = int(time.time()) + 3600
    url, _ = LinkSigner(LINK_KEY.encode()).build_url(
        "https://approvals.test", started["id"], "bob@example.com", expires
    )

    answer = harness.post_json(url, {"decision": "approve"})

    assert answer["statusCode"] == 403
    assert harness.status(started["id"])["status"] == "pending"


def test_unknown_and_expired_links(harness: Harness) -> None:
    signer = LinkSigner(LINK_KEY.encode())
    unknown, _ = signer.build_url(
        "https://approvals.test", "esc-unknown", "alice@example.com", 2**31
    )
    expired, _ = signer.build_url(
        "https://approvals.test", "esc-unknown", "alice@example.com", 1000
    )

    unknown_page = harness.open_link(unknown)
    expired_page = harness.open_link(expired)

    assert unknown_page["statusCode"] == 404
    assert "not found" in unknown_page["body"]
    assert expired_page["statusCode"] == 410
    assert "expired" in expired_page["body"]


def test_used_link_shows_decision(harness: Harness) -> None:
    started = start_deploy(harness)
    url = started["approvalUrls"]["alice@example.com"]
    assert harness.submit_form(url, {"decision": "approve"})["statusCode"] == 200

    page = harness.open_link(url)

    assert page["statusCode"] == 409
    assert "already approved by alice@example.com" in page["body"]


def test_form_without_csrf_token_is_403(harness: Harness) -> None:
    started = start_deploy(harness)
    url = started["approvalUrls"]["alice@example.com"]

    answer = harness.call(
        http_event(
            "POST",
            url,
            body="decision=approve",
            headers={"content-type": "application/x-www-form-urlencoded"},
        )
    )

    assert answer["statusCode"] == 403
    assert harness.status(started["id"])["status"] == "pending"


def test_form_from_other_site_is_403(harness: Harness) -> None:
    started = start_deploy(harness)
    url = started["approvalUrls"]["alice@example.com"]
    opened = harness.open_link(url)
    cookies = [c.split(";", 1)[0] for c in opened["cookies"]]

    answer = harness.call(
        http_event(
            "POST",
            url,
            body="decision=approve&csrf=x",
            headers={
                "content-type": "application/x-www-form-urlencoded",
                "origin": "https://evil.example",
            },
            cookies=cookies,
        )
    )

    assert answer["statusCode"] == 403
    assert harness.status(started["id"])["status"] == "pending"


def test_slack_action_base64_body_approves(
    harness: Harness, database: Database
) -> None:
    """A signed action that API Gateway base64-encoded is verified."""
    started = start_deploy(harness)

    answer = harness.call(slack_action(started["id"], "approve", "U111"))

    assert answer["statusCode"] == 200, answer["body"]
    assert "approved" in json.loads(answer["body"])["text"]
    status = harness.status(started["id"])
    assert status["decision"]["decidedBy"] == "slack:U111"
    assert status["decision"]["channel"] == "slack"
    assert harness.stack.execution_status(started["id"]) == "SUCCEEDED"


@pytest.mark.parametrize(
    "case", ["tampered", "old", "missing_header", "superscript_timestamp"]
)
def test_slack_action_rejected_with_401(
    harness: Harness, database: Database, case: str
) -> None:
    """One changed byte, a 301-second-old or malformed timestamp, no headers: 401."""
    started = start_deploy(harness)
    malformed_headers = {
        "content-type": "application/x-www-form-urlencoded",
        "x-slack-request-timestamp": "\u00b2",
        "x-slack-signature": "v0=00",
    }
    events = {
        "superscript_timestamp": slack_action(
            started["id"], "approve", "U111", headers=malformed_headers
        ),
        "tampered": slack_action(started["id"], "approve", "U111", tamper=True),
        "old": slack_action(
            started["id"], "approve", "U111", timestamp=int(time.time()) - 301
        ),
        "missing_header": slack_action(started["id"], "approve", "U111", headers={}),
    }

    answer = harness.call(events[case])

    assert answer["statusCode"] == 401
    assert harness.status(started["id"])["status"] == "pending"
    assert "escalation.decision_refused" in audit_actions(database, None)


def test_slack_replay_is_401(harness: Harness) -> None:
    started = start_deploy(harness)
    event = slack_action(started["id"], "reject", "U111")
    assert harness.call(event)["statusCode"] == 200

    replayed = harness.call(event)

    assert replayed["statusCode"] == 401
    assert "replay" in json.loads(replayed["body"])["message"]


def test_slack_user_outside_allow_list_refused(
    harness: Harness, database: Database
) -> None:
    """Refused, audited, still pending."""
    started = start_deploy(harness)

    answer = harness.call(slack_action(started["id"], "approve", "U999"))

    assert answer["statusCode"] == 200
    assert "Not applied" in json.loads(answer["body"])["text"]
    assert harness.status(started["id"])["status"] == "pending"
    assert "escalation.decision_refused" in audit_actions(database, started["id"])


def test_requester_may_not_approve_own_request(harness: Harness) -> None:
    started = start_deploy(harness, requestedBy="slack:U111")

    answer = harness.call(slack_action(started["id"], "approve", "U111"))

    assert "may not approve" in json.loads(answer["body"])["text"]
    assert harness.status(started["id"])["status"] == "pending"


def test_slack_message_updated_with_outcome(
    harness: Harness, slack: SlackStandIn
) -> None:
    started = start_deploy(harness)
    posted = [e for e in slack.recorded if e["path"] == "/api/chat.postMessage"]
    assert len(posted) == 1
    assert "actions" in json.dumps(posted[0]["body"]["blocks"])

    harness.call(slack_action(started["id"], "reject", "U111"))
    harness.pump_resume()

    updates = [e for e in slack.recorded if e["path"] == "/api/chat.update"]
    assert len(updates) == 1
    assert "rejected by slack:U111" in updates[0]["body"]["text"]
    assert "actions" not in json.dumps(updates[0]["body"]["blocks"])
