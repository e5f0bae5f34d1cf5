"""Fixtures of the LLM chain tests, imported by their modules.

``llm_server`` is one local OpenAI/Anthropic server per session; ``llm`` is
a client of its control API, reset around each test. ``llm_env`` points the
real SDKs, PostgreSQL and Redis of the chain at the test servers, and
``make_chain`` builds a chain with settings of the test's choosing.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from local.llm_server import LLMServer, serve_llm
from resilience.breaker import clear_breakers
from resilience.db import Database, DatabaseConfig
from resilience.kvstore import reset_store_cache, store_from_env
from resilience.llm import ChainConfig, LLMChain, reset_default_chain

__all__ = [
    "FakeLambdaContext",
    "LLMControl",
    "SlackRecorder",
    "llm",
    "llm_env",
    "llm_server",
    "make_chain",
    "slack",
    "usage_rows",
]


@dataclass
class FakeLambdaContext:
    """The parts of the Lambda context object that the chain and handler read."""

    aws_request_id: str
    remaining_ms: int = 29_000
    function_name: str = "graceful-degradation"
    memory_limit_in_mb: int = 1024
    invoked_function_arn: str = (
        "arn:aws:lambda:us-east-1:123456789012:function:graceful-degradation"
    )

    def get_remaining_time_in_millis(self) -> int:
        return self.remaining_ms


class LLMControl:
    """Client of the local LLM server's control API."""

    def __init__(self, server: LLMServer) -> None:
        self.server = server
        self.base_url = f"http://127.0.0.1:{server.server_port}"

    def fail(self, provider: str, mode: str, model: str = "*", **options: Any) -> None:
        body = {"provider": provider, "model": model, "mode": mode, **options}
        httpx.post(f"{self.base_url}/_control/failures", json=body).raise_for_status()

    def reset(self) -> None:
        httpx.delete(f"{self.base_url}/_control/failures").raise_for_status()
        httpx.delete(f"{self.base_url}/_control/requests").raise_for_status()

    def requests(self, provider: str | None = None) -> list[dict[str, Any]]:
        calls = httpx.get(f"{self.base_url}/_control/requests").json()["requests"]
        return [c for c in calls if provider is None or c["provider"] == provider]


class SlackRecorder:
    """A Slack incoming-webhook stand-in that keeps every posted JSON body."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                recorder.bodies.append(json.loads(self.rfile.read(length) or b"{}"))
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks/test"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def texts(self) -> list[str]:
        return [json.dumps(body) for body in self.bodies]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def slack(
    llm_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> Iterator[SlackRecorder]:
    """Alerts go to a local recorder (set after ``llm_env`` cleared the settings)."""
    recorder = SlackRecorder()
    monkeypatch.setenv("SLACK_WEBHOOK_URL", recorder.url)
    yield recorder
    recorder.close()


@pytest.fixture(scope="session")
def llm_server() -> Iterator[LLMServer]:
    server, _ = serve_llm("127.0.0.1", 0)
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def llm(llm_server: LLMServer) -> Iterator[LLMControl]:
    control = LLMControl(llm_server)
    control.reset()
    yield control
    control.reset()


@pytest.fixture
def llm_env(
    app_env: dict[str, str], llm: LLMControl, monkeypatch: pytest.MonkeyPatch
) -> Iterator[dict[str, str]]:
    """Environment of the chain: local LLM server, test PostgreSQL and Redis."""
    values = {
        "OPENAI_BASE_URL": f"{llm.base_url}/v1",
        "ANTHROPIC_BASE_URL": llm.base_url,
        "OPENAI_API_KEY": "test-openai-key",
        "ANTHROPIC_API_KEY": "test-anthropic-key",
        "LLM_MOCK": "1",
        "LLM_MOCK_URL": llm.base_url,
        "LLM_CACHE_TTL_S": "0",
    }
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    for key in ("SLACK_WEBHOOK_URL", "PAGERDUTY_ROUTING_KEY", "ALERTING_SECRET"):
        monkeypatch.delenv(key, raising=False)
    _forget_container_state()
    yield {**app_env, **values}
    _forget_container_state()


def _forget_container_state() -> None:
    reset_default_chain()
    clear_breakers()
    reset_store_cache()


@pytest.fixture
def make_chain(
    llm_env: dict[str, str], database: Database
) -> Iterator[Callable[..., LLMChain]]:
    """Build chains on the test database and Redis prefix; keyword args are settings."""
    databases: list[Database] = []

    def factory(**settings: Any) -> LLMChain:
        chain_database = Database(DatabaseConfig(url=llm_env["DATABASE_URL"]))
        databases.append(chain_database)
        return LLMChain(
            ChainConfig.from_env(**settings),
            database=chain_database,
            store=store_from_env(),
        )

    yield factory
    for chain_database in databases:
        chain_database.close()


def usage_rows(database: Database, run_id: str | None = None) -> list[dict[str, Any]]:
    """Return llm_usage rows in insertion order, optionally for one run id."""
    with database.transaction() as connection:
        if run_id is None:
            return connection.execute("SELECT * FROM llm_usage ORDER BY id").fetchall()
        return connection.execute(
            "SELECT * FROM llm_usage WHERE task_run_id = %s ORDER BY id", (run_id,)
        ).fetchall()
