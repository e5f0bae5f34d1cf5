"""The local stack as a pytest fixture: started once per session, on free ports.

``local_stack`` runs ``python -m local`` in a child process (see
tests/e2e/harness.py). It uses a database of its own on the session's
PostgreSQL server, and the session's Redis (see tests/conftest.py) with a key
prefix of its own, whose keys it deletes after the stack has stopped. The
local LLM server is forced on (``LLM_MOCK=1``, provider keys removed), so no
test reaches a real provider. Failed SQS messages come back after 1 s, and
the demo service's breaker cools down in 2 s.

The fixture waits until the stack has written its ``stack.json``, and stops
it with SIGTERM at the end. The stack's output goes to ``local-stack.log`` in
the session's temporary directory and is shown when start-up fails.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import httpx
import psycopg
import pytest
from psycopg import sql

from tests.e2e.harness import LocalStackHandle, run_stack_on_test_servers


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
    with run_stack_on_test_servers(state_dir, stack_database_url, redis_url) as stack:
        yield stack


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
