"""``python -m resilience db migrate`` against a real PostgreSQL database."""

from __future__ import annotations

import psycopg
import pytest

from resilience.__main__ import main


def test_migrate_twice_succeeds(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    first = main(["db", "migrate", "--database-url", database_url])
    second = main(["db", "migrate", "--database-url", database_url])

    output = capsys.readouterr().out
    assert first == 0
    assert second == 0
    assert output.count("schema applied to database ar_test_") == 2


def test_migrate_creates_every_table(database_url: str) -> None:
    code = main(["db", "migrate", "--database-url", database_url])

    with psycopg.connect(database_url) as connection:
        rows = connection.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
        ).fetchall()
    tables = {row[0] for row in rows}
    assert code == 0
    for table in (
        "circuit_breaker_state",
        "escalation_token",
        "batch_item",
        "audit_log",
        "llm_usage",
    ):
        assert table in tables


def test_migrate_reads_database_url_env(
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("DATABASE_URL", database_url)

    code = main(["db", "migrate"])

    assert code == 0
    assert "schema applied to database ar_test_" in capsys.readouterr().out


def test_migrate_unreachable_server_exits_1(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Port 1 on the loopback interface: nothing listens, the connect fails fast.
    url = "postgresql://postgres@127.0.0.1:1/test?connect_timeout=1"

    code = main(["db", "migrate", "--database-url", url])

    error = capsys.readouterr().err
    assert code == 1
    assert "failed to apply schema.sql" in error
    assert "cannot connect to PostgreSQL" in error
