"""The container's PostgreSQL connection and the schema."""

from __future__ import annotations

import threading
from pathlib import Path

import psycopg
import pytest

from local.embedded import EmbeddedPostgres
from resilience.audit import record_audit
from resilience.db import Database, DatabaseConfig, apply_schema
from resilience.errors import ConfigError, DatabaseUnavailableError


def test_schema_applies_twice(database: Database) -> None:
    apply_schema(database)
    apply_schema(database)

    with database.transaction() as connection:
        columns = connection.execute(
            "SELECT table_name, column_name, data_type FROM information_schema.columns"
            " WHERE table_schema = 'public'"
        ).fetchall()
    tables = {row["table_name"] for row in columns}
    assert {"circuit_breaker_state", "batch_item", "audit_log", "llm_usage"} <= tables
    created = {
        row["table_name"] for row in columns if row["column_name"] == "created_at"
    }
    assert created == tables
    time_types = {
        row["data_type"] for row in columns if row["data_type"].startswith("timestamp")
    }
    assert time_types == {"timestamp with time zone"}


def test_schema_upgrades_earlier_version(database: Database) -> None:
    # GIVEN a database whose llm_usage table predates the cost column
    with database.transaction() as connection:
        connection.execute("ALTER TABLE llm_usage DROP COLUMN cost")

    # WHEN the schema is applied
    apply_schema(database)

    # THEN the column is back
    with database.transaction() as connection:
        row = connection.execute(
            "SELECT 1 FROM information_schema.columns"
            " WHERE table_name = 'llm_usage' AND column_name = 'cost'"
        ).fetchone()
    assert row is not None


def test_audit_dedupe_key_writes_once(database: Database) -> None:
    first = record_audit(database, pattern="breaker", action="opened", dedupe_key="k1")
    second = record_audit(database, pattern="breaker", action="opened", dedupe_key="k1")
    without_key = record_audit(database, pattern="breaker", action="opened")

    assert first is True
    assert second is False
    assert without_key is True


def test_statement_timeout_applies(database: Database) -> None:
    with (
        pytest.raises(DatabaseUnavailableError, match="timed out after 100 ms"),
        database.transaction(statement_timeout_ms=100) as connection,
    ):
        connection.execute("SELECT pg_sleep(2)")

    with database.transaction() as connection:
        assert connection.execute("SELECT 1 AS one").fetchone() == {"one": 1}


def test_connection_reopens_after_restart() -> None:
    server = EmbeddedPostgres().start()
    try:
        database = Database(DatabaseConfig(url=server.url, connect_timeout_s=1))
        with database.transaction() as connection:
            connection.execute("SELECT 1")

        server.stop()
        with (
            pytest.raises(DatabaseUnavailableError),
            database.transaction() as connection,
        ):
            connection.execute("SELECT 1")

        server.start()
        with database.transaction() as connection:
            assert connection.execute("SELECT 2 AS two").fetchone() == {"two": 2}
    finally:
        server.close()


def test_config_rejects_empty_url() -> None:
    with pytest.raises(ConfigError, match="DATABASE_URL"):
        DatabaseConfig(url="")


def test_sql_errors_keep_connection(database: Database) -> None:
    with (
        pytest.raises(psycopg.errors.UndefinedTable),
        database.transaction() as connection,
    ):
        connection.execute("SELECT * FROM no_such_table")

    with database.transaction() as connection:
        assert connection.execute("SELECT 3 AS three").fetchone() == {"three": 3}


def test_embedded_postgres_creates_missing_data_dir(tmp_path: Path) -> None:
    server = EmbeddedPostgres(data_dir=str(tmp_path / "new" / "pg")).start()
    try:
        with psycopg.connect(server.url) as connection:
            assert connection.execute("SELECT 1").fetchone() == (1,)
    finally:
        server.close()


def test_deadlock_victim_keeps_its_connection(database: Database) -> None:
    # Two transactions lock the same two rows in opposite orders. PostgreSQL
    # rolls one back, which reports sqlstate 40P01 and keeps its connection
    # open, so the caller can run the transaction again.
    with database.transaction() as conn:
        conn.execute(
            "INSERT INTO audit_log (pattern, action, task_id) "
            "VALUES ('test', 'lock', 'a'), ('test', 'lock', 'b')"
        )
    first = Database(database.config)
    second = Database(database.config)
    both_locked_one = threading.Barrier(2)
    errors: dict[str, DatabaseUnavailableError] = {}

    def lock(db: Database, name: str, order: tuple[str, str]) -> None:
        try:
            with db.transaction() as conn:
                for task_id in order:
                    conn.execute(
                        "SELECT id FROM audit_log WHERE task_id = %s FOR UPDATE",
                        (task_id,),
                    )
                    if task_id == order[0]:
                        both_locked_one.wait(timeout=10)
        except DatabaseUnavailableError as error:
            errors[name] = error

    threads = [
        threading.Thread(target=lock, args=(first, "first", ("a", "b"))),
        threading.Thread(target=lock, args=(second, "second", ("b", "a"))),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert len(errors) == 1
    ((name, error),) = errors.items()
    assert error.sqlstate == "40P01"
    victim = first if name == "first" else second
    assert victim._is_open()
    with victim.transaction() as conn:
        assert conn.execute("SELECT 1 AS one").fetchone() == {"one": 1}
    first.close()
    second.close()
