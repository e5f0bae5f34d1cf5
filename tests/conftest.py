"""Shared fixtures: real PostgreSQL and Redis for every test that needs them.

``TEST_DATABASE_URL`` and ``TEST_REDIS_URL`` name servers to use; without
them, embedded servers are started once per test session. Each session works
in a database of its own (created from the server URL, dropped at the end)
and each test in a Redis key prefix of its own, so test runs can share a
server without seeing each other's data.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import psycopg
import pytest
import redis
from psycopg import sql

from local.embedded import EmbeddedPostgres, EmbeddedRedis
from resilience.breaker import clear_breakers
from resilience.db import Database, DatabaseConfig, apply_schema, reset_database
from resilience.kvstore import reset_store_cache

TABLES = (
    "circuit_breaker_state",
    "escalation_token",
    "batch_item",
    "audit_log",
    "llm_usage",
)


@pytest.fixture(scope="session")
def postgres_server_url() -> Iterator[str]:
    """URL of a PostgreSQL server whose `postgres` user may create databases."""
    configured = os.environ.get("TEST_DATABASE_URL")
    if configured:
        yield configured
        return
    server = EmbeddedPostgres().start()
    try:
        yield server.url
    finally:
        server.close()


@pytest.fixture(scope="session")
def database_url(postgres_server_url: str) -> Iterator[str]:
    """URL of a fresh database with schema.sql applied, dropped after the session."""
    name = f"ar_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_server_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))

    url = psycopg.conninfo.make_conninfo(postgres_server_url, dbname=name)
    database = Database(DatabaseConfig(url=url))
    apply_schema(database)
    database.close()
    try:
        yield url
    finally:
        reset_database()
        with psycopg.connect(postgres_server_url, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                    sql.Identifier(name)
                )
            )


@pytest.fixture
def database(database_url: str) -> Iterator[Database]:
    """A :class:`Database` on the session's database, emptied before the test."""
    database = Database(DatabaseConfig(url=database_url))
    with database.transaction() as connection:
        connection.execute(
            sql.SQL("TRUNCATE {} RESTART IDENTITY").format(
                sql.SQL(", ").join(
                    sql.Identifier(table) for table in _tables(connection)
                )
            )
        )
    try:
        yield database
    finally:
        database.close()


def _tables(connection: psycopg.Connection) -> list[str]:
    # Every table in the schema, so tables added later are emptied too.
    rows = connection.execute(
        "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
    ).fetchall()
    return [row["tablename"] for row in rows]


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """URL of a Redis server; test data lives under a per-test key prefix."""
    configured = os.environ.get("TEST_REDIS_URL")
    if configured:
        yield configured
        return
    server = EmbeddedRedis().start()
    try:
        yield server.url
    finally:
        server.close()


@pytest.fixture
def redis_key_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix no other test uses; its keys are deleted after the test."""
    prefix = f"test:{uuid.uuid4().hex[:12]}:"
    yield prefix

    # Tests may run against a shared server, so leave nothing behind on it.
    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
    except redis.RedisError:
        # A test that stopped this server leaves it to the session's teardown.
        pass
    finally:
        client.close()


@pytest.fixture
def app_env(
    monkeypatch: pytest.MonkeyPatch,
    database: Database,
    database_url: str,
    redis_url: str,
    redis_key_prefix: str,
) -> Iterator[dict[str, str]]:
    """Environment of a handler pointed at the test database and Redis."""
    values = {
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "REDIS_KEY_PREFIX": redis_key_prefix,
        "POWERTOOLS_METRICS_NAMESPACE": "AgentResilienceTest",
        "POWERTOOLS_TRACE_DISABLED": "true",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    _reset_container_state()
    yield values
    _reset_container_state()


def _reset_container_state() -> None:
    # The database, the store and the breakers are built once per container
    # from the environment. A store kept from an earlier test would write
    # under that test's key prefix, after its keys were deleted.
    reset_database()
    clear_breakers()
    reset_store_cache()
