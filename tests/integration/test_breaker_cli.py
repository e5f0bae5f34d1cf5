"""``python -m resilience breaker show|reset`` against real Redis and PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from local.embedded import free_port
from resilience.breaker import BreakerConfig, CircuitBreaker, clear_breakers
from resilience.breaker.cli import main
from resilience.db import Database
from resilience.kvstore import RedisStore, reset_store_cache


@pytest.fixture
def cli_env(
    app_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> Iterator[dict[str, str]]:
    services = {
        "demo": {"baseUrl": "http://127.0.0.1:9", "breaker": {"failureThreshold": 1}}
    }
    monkeypatch.setenv("BREAKER_SERVICES", json.dumps(services))
    monkeypatch.delenv("SLACK_WEBHOOK_URL", raising=False)
    reset_store_cache()
    clear_breakers()
    yield app_env
    reset_store_cache()
    clear_breakers()


def open_breaker(env: dict[str, str], name: str) -> None:
    store = RedisStore.from_url(env["REDIS_URL"], prefix=env["REDIS_KEY_PREFIX"])
    CircuitBreaker(
        name, BreakerConfig(failure_threshold=1), store=store
    ).acquire().failure()
    store.close()


def test_reset_closes_and_audits(
    cli_env: dict[str, str], database: Database, capsys: pytest.CaptureFixture[str]
) -> None:
    open_breaker(cli_env, "demo")

    code = main(["reset", "demo", "--actor", "bob"])

    output = json.loads(capsys.readouterr().out)
    assert code == 0
    assert output["state"] == "closed"
    assert output["generation"] == 2
    with database.transaction() as connection:
        row = connection.execute(
            "SELECT actor, action FROM audit_log WHERE task_id = 'demo' "
            "ORDER BY id DESC LIMIT 1"
        ).fetchone()
    assert row == {"actor": "bob", "action": "breaker.open_to_closed"}


def test_show_prints_state(
    cli_env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    open_breaker(cli_env, "demo")

    code = main(["show", "demo"])

    output = json.loads(capsys.readouterr().out)
    assert code == 0
    assert output["state"] == "open"
    assert output["failureCount"] == 1
    assert output["openedUntil"] is not None


def test_unregistered_service_is_usage_error(
    cli_env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["show", "nope"])
    assert code == 2
    assert "not registered" in capsys.readouterr().err


def test_any_name_reaches_llm_breaker(
    cli_env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["show", "openai:gpt-4o-mini", "--any-name"])
    assert code == 0
    assert json.loads(capsys.readouterr().out)["state"] == "closed"


def test_store_down_exits_1(
    cli_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    reset_store_cache()

    code = main(["reset", "demo"])

    assert code == 1
    assert "unavailable" in capsys.readouterr().err
