"""The local stack as a pytest fixture: started once per session, on free ports.

``local_stack`` runs ``python -m local`` in a child process. It uses a
database of its own on the session's PostgreSQL server, and the session's
Redis (see tests/conftest.py) with a key prefix of its own. The local LLM
server is forced on (``LLM_MOCK=1``, provider keys removed), so no test
reaches a real provider. Failed SQS messages come back after 1 s, and the
demo service's breaker cools down in 2 s.

The fixture waits until the stack has written its ``stack.json``, and stops
it with SIGTERM at the end. The stack's output goes to ``local-stack.log`` in
the session's temporary directory and is shown when start-up fails.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from psycopg import sql

from local.embedded import free_port
from tests.e2e.harness import LocalStackHandle

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 120.0


def _stack_environment(database_url: str, redis_url: str) -> dict[str, str]:
    env = dict(os.environ)
    for name in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "AWS_ENDPOINT_URL"):
        env.pop(name, None)
    env.update(
        {
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "REDIS_KEY_PREFIX": f"e2e:{uuid.uuid4().hex[:12]}:",
            "LLM_MOCK": "1",
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def _wait_for_stack(
    process: subprocess.Popen[bytes], state_file: Path, log_path: Path
) -> dict[str, Any]:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log_path.read_text(errors="replace")[-6000:]
            pytest.fail(f"the local stack exited with {process.returncode}:\n{tail}")
        if state_file.exists():
            info: dict[str, Any] = json.loads(state_file.read_text())
            if info.get("pid") == process.pid:
                return info
        time.sleep(0.2)
    tail = log_path.read_text(errors="replace")[-6000:]
    pytest.fail(f"the local stack did not start in {START_TIMEOUT_S} s:\n{tail}")


@pytest.fixture(scope="session")
def stack_database_url(postgres_server_url: str) -> Iterator[str]:
    """URL of a database of the stack's own, dropped after the session.

    Not the session database of the other tests: messages the stack is still
    retrying write rows after the e2e tests end, which tests that empty and
    count tables must not see. The stack applies schema.sql on start.
    """
    name = f"ar_e2e_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_server_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield psycopg.conninfo.make_conninfo(postgres_server_url, dbname=name)
    finally:
        with psycopg.connect(postgres_server_url, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                    sql.Identifier(name)
                )
            )


@pytest.fixture(scope="session")
def local_stack(
    stack_database_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalStackHandle]:
    """A running local stack for the whole session."""
    state_dir = tmp_path_factory.mktemp("local-stack")
    log_path = state_dir / "local-stack.log"
    command = [
        sys.executable,
        "-m",
        "local",
        "run",
        "--state-dir",
        str(state_dir),
        "--port",
        str(free_port()),
        "--moto-port",
        str(free_port()),
        "--retry-visibility",
        "1",
        "--demo-reset-timeout",
        "2",
    ]
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=_stack_environment(stack_database_url, redis_url),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        info = _wait_for_stack(process, state_dir / "stack.json", log_path)
        yield LocalStackHandle(info=info, log_path=log_path)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


@pytest.fixture
def demo(local_stack: LocalStackHandle) -> Iterator[str]:
    """URL of the demo service, reset to ``ok`` with empty counters around the test."""
    url = str(local_stack.info["demo"])
    httpx.delete(f"{url}/_control", timeout=5).raise_for_status()
    yield url
    httpx.delete(f"{url}/_control", timeout=5).raise_for_status()


@pytest.fixture
def llm_server(local_stack: LocalStackHandle) -> Iterator[str]:
    """URL of the local LLM server, with no failure rules around the test."""
    url = str(local_stack.info["llm"])
    httpx.delete(f"{url}/_control/failures", timeout=5).raise_for_status()
    yield url
    httpx.delete(f"{url}/_control/failures", timeout=5).raise_for_status()
