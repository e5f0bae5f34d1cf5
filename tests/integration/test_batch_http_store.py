"""POST /batches when PostgreSQL is away or the input cannot be stored."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import stamina

from local.embedded import EmbeddedPostgres
from resilience.db import Database, DatabaseConfig, apply_schema, reset_database
from tests.batch_support import FakeLambdaContext, http_event

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def no_retry_waits() -> Iterator[None]:
    with stamina.set_testing(True, attempts=100, cap=True):
        yield


def load_handler() -> ModuleType:
    path = ROOT / "functions" / "partial_success" / "app.py"
    spec = importlib.util.spec_from_file_location("partial_success_store", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def post(handler: ModuleType, body: str) -> dict[str, Any]:
    event = http_event("POST", "/batches")
    event["body"] = body
    return dict(handler.lambda_handler(event, FakeLambdaContext()))


def test_nul_in_item_id_is_400(app_env: dict[str, str]) -> None:
    handler = load_handler()

    response = post(
        handler, '{"batchId": "b-nul", "items": [{"id": "a\\u0000b", "data": {}}]}'
    )

    assert response["statusCode"] == 400
    assert json.loads(response["body"])["field"] == "items[0].id"


def test_postgres_down_answers_503(
    monkeypatch: pytest.MonkeyPatch, redis_url: str
) -> None:
    # GIVEN the handler's own PostgreSQL, which then stops
    server = EmbeddedPostgres().start()
    try:
        apply_schema(Database(DatabaseConfig(url=server.url)))
        monkeypatch.setenv("DATABASE_URL", server.url)
        monkeypatch.setenv("DATABASE_CONNECT_TIMEOUT_S", "1")
        monkeypatch.setenv("REDIS_URL", redis_url)
        reset_database()
        handler = load_handler()
        server.stop()

        # WHEN a batch arrives
        body = '{"batchId": "b-down", "items": [{"id": "i1", "data": {}}]}'
        response = post(handler, body)

        # THEN nothing ran, and the response asks the caller to retry
        assert response["statusCode"] == 503
        assert json.loads(response["body"])["error"] == "store_unavailable"

        # AND the same request succeeds once PostgreSQL is back
        server.start()
        retried = post(handler, body)
        assert retried["statusCode"] == 200
        assert json.loads(retried["body"])["okCount"] == 1
    finally:
        reset_database()
        server.close()
