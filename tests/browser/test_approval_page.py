"""The approval page in headless Chromium (Debian's, driven by Playwright).

A small HTTP server in the test turns the browser's requests into API Gateway
HTTP API (v2) events for the escalation handler, so the page, its cookie and
its form run exactly as behind API Gateway.
"""

from __future__ import annotations

import base64
import os
import shutil
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

import pytest

from local.embedded import free_port
from resilience.db import Database
from resilience.escalation.links import LinkSigner
from tests.escalation_support import (
    LINK_KEY,
    RESUMED,
    Harness,
    audit_actions,
    harness_for_test,
    http_event,
    moto_session,
)

pytestmark = [pytest.mark.browser, pytest.mark.timeout(60)]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
]

if not shutil.which(CHROMIUM):
    if os.environ.get("CI") == "true":
        pytest.fail(
            f"{CHROMIUM} is missing: install Debian's chromium package "
            "(apt-get install -y chromium)",
            pytrace=False,
        )
    pytest.skip(
        f"{CHROMIUM} is missing: install Debian's chromium package to run the "
        "approval-page tests",
        allow_module_level=True,
    )


def serve_handler(harness: Harness, port: int) -> ThreadingHTTPServer:
    """Serve the escalation handler on 127.0.0.1:port as API Gateway would."""

    class Gateway(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length) if length else None
            headers = {k.lower(): v for k, v in self.headers.items()}
            headers["x-forwarded-proto"] = "http"
            cookie_header = headers.pop("cookie", "")
            cookies = [c.strip() for c in cookie_header.split(";") if c.strip()]
            event = http_event(
                self.command,
                f"http://{headers.get('host')}{self.path}",
                body=body,
                headers=headers,
                cookies=cookies,
                base64_body=body is not None,
            )
            answer = harness.call(event)
            payload = answer.get("body") or ""
            raw = (
                base64.b64decode(payload)
                if answer.get("isBase64Encoded")
                else payload.encode()
            )
            self.send_response(answer["statusCode"])
            for name, value in (answer.get("headers") or {}).items():
                self.send_header(name, value)
            for cookie in answer.get("cookies") or []:
                self.send_header("Set-Cookie", cookie)
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(raw)

        do_GET = do_POST = do_HEAD = _serve

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Gateway)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    yield from moto_session()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS
        )
        yield chromium
        chromium.close()


@pytest.fixture
def site(
    app_env: dict[str, str], moto_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Harness, str]]:
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    for harness in harness_for_test(moto_endpoint, monkeypatch):
        monkeypatch.setenv("APP_URL", base_url)
        server = serve_handler(harness, port)
        yield harness, base_url
        server.shutdown()
        server.server_close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context()
    yield context.new_page()
    context.close()


def start(harness: Harness) -> dict[str, Any]:
    started = harness.start(
        {
            "data": {"refund": 120, "order": "o-17"},
            "reason": "refund above the agent's limit",
            "source": {"pattern": "test"},
        }
    )
    harness.pump_notify()
    return started


def test_opening_link_and_waiting_changes_nothing(
    site: tuple[Harness, str], page: Any, database: Database
) -> None:
    """A real browser opens the link and waits 2 s: still pending."""
    harness, _ = site
    started = start(harness)

    response = page.goto(started["approvalUrl"])
    page.wait_for_timeout(2000)

    assert response.status == 200
    assert page.title() == "Approval request"
    assert "refund above the agent" in page.text_content("#reason")
    assert harness.status(started["id"])["status"] == "pending"
    assert harness.stack.execution_status(started["id"], wait_s=0) == "RUNNING"
    assert "escalation.decided" not in audit_actions(database, started["id"])


def test_click_approve_decides_once(
    site: tuple[Harness, str], page: Any, database: Database
) -> None:
    harness, _ = site
    started = start(harness)
    page.goto(started["approvalUrl"])
    second_tab = page.context.new_page()
    second_tab.goto(started["approvalUrl"])

    page.click("button[value=approve]")
    second_tab.click("button[value=approve]")

    assert page.text_content("h1") == "Approved"
    assert second_tab.text_content("h1") == "Already decided"
    assert harness.stack.execution_status(started["id"]) == "SUCCEEDED"
    harness.pump_resume()
    assert [r.data for r in RESUMED] == [{"refund": 120, "order": "o-17"}]
    assert audit_actions(database, started["id"]).count("escalation.decided") == 1

    # The page is never cached, so going back shows the decision, not the form.
    page.go_back()
    assert page.text_content("h1") == "Already decided"


def test_approve_with_edited_data(site: tuple[Harness, str], page: Any) -> None:
    harness, _ = site
    started = start(harness)
    page.goto(started["approvalUrl"])

    page.fill("#data", '{"refund": 90, "order": "o-17"}')
    page.click("button[value=approve]")

    assert page.text_content("h1") == "Approved"
    harness.pump_resume()
    assert [r.data for r in RESUMED] == [{"refund": 90, "order": "o-17"}]


def test_reject_with_reason(site: tuple[Harness, str], page: Any) -> None:
    harness, _ = site
    started = start(harness)
    page.goto(started["approvalUrl"])

    page.fill("#decision-reason", "customer already refunded")
    page.click("button[value=reject]")

    assert page.text_content("h1") == "Rejected"
    assert harness.stack.execution_status(started["id"]) == "SUCCEEDED"
    harness.pump_resume()
    assert [r.outcome for r in RESUMED] == ["rejected"]
    status = harness.status(started["id"])
    assert status["status"] == "rejected"
    assert status["decision"]["reason"] == "customer already refunded"


def test_reject_without_reason_asks_for_one(
    site: tuple[Harness, str], page: Any
) -> None:
    harness, _ = site
    started = start(harness)
    page.goto(started["approvalUrl"])

    page.click("button[value=reject]")

    assert "reason is missing" in page.text_content("[role=alert]")
    assert harness.status(started["id"])["status"] == "pending"


def test_error_pages(site: tuple[Harness, str], page: Any) -> None:
    """Expired, tampered and used links each show their own page."""
    harness, base_url = site
    started = start(harness)
    signer = LinkSigner(LINK_KEY.encode())
    expired, _ = signer.build_url(
        base_url, started["id"], "anyone", int(time.time()) - 1
    )
    parts = urlsplit(started["approvalUrl"])
    tampered = started["approvalUrl"].replace("signature=", "signature=x")

    expired_response = page.goto(expired)
    assert expired_response.status == 410
    assert page.text_content("h1") == "Approval link expired"

    tampered_response = page.goto(tampered)
    assert tampered_response.status == 403
    assert page.text_content("h1") == "Invalid approval link"

    page.goto(started["approvalUrl"])
    page.click("button[value=approve]")
    used_response = page.goto(f"{base_url}{parts.path}?{parts.query}")
    assert used_response.status == 409
    assert page.text_content("h1") == "Already decided"
