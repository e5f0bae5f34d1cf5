"""Fixtures of the breaker and key-value store tests, imported by their modules.

``store`` is parametrized over both stores, so every test that takes it runs
once on redis-py and once on the Upstash REST API bridged to the same Redis.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from resilience.kvstore import KeyValueStore, RedisStore, UpstashStore
from tests.upstash_bridge import UpstashBridge

__all__ = ["make_store", "store", "store_kind", "upstash_bridge"]


@pytest.fixture(scope="session")
def upstash_bridge(redis_url: str) -> Iterator[UpstashBridge]:
    bridge = UpstashBridge(redis_url).start()
    try:
        yield bridge
    finally:
        bridge.stop()


@pytest.fixture(params=["redis", "upstash"])
def store_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make_store(
    store_kind: str,
    redis_url: str,
    redis_key_prefix: str,
    request: pytest.FixtureRequest,
) -> Iterator[object]:
    """A factory of separate store clients (one per simulated instance)."""
    created: list[RedisStore | UpstashStore] = []

    def factory(timeout_ms: int = 1000) -> KeyValueStore:
        store: RedisStore | UpstashStore
        if store_kind == "redis":
            store = RedisStore.from_url(
                redis_url, prefix=redis_key_prefix, timeout_ms=timeout_ms
            )
        else:
            bridge = request.getfixturevalue("upstash_bridge")
            store = UpstashStore.from_settings(
                bridge.url, bridge.token, prefix=redis_key_prefix, timeout_ms=timeout_ms
            )
        created.append(store)
        return store

    yield factory
    for store in created:
        store.close()


@pytest.fixture
def store(make_store: object) -> KeyValueStore:
    return make_store()  # type: ignore[operator,no-any-return]
