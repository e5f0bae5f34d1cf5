"""Fixtures of the breaker and key-value store tests, imported by their modules.

``store`` is parametrized over both stores, so every test that takes it runs
once on redis-py and once on the Upstash REST API bridged to the same Redis.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from resilience.kvstore import KeyValueStore, RedisStore, UpstashStore
from tests.upstash_bridge import UpstashBridge

__all__ = [
    "CountingStore",
    "Downstream",
    "FakeClock",
    "clock",
    "downstream",
    "make_store",
    "store",
    "store_kind",
    "upstash_bridge",
]


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


class _Server(ThreadingHTTPServer):
    # The default backlog of 5 drops connections when 20 callers start at once.
    request_queue_size = 128
    daemon_threads = True


class FakeClock:
    """A settable clock (epoch seconds) shared by every breaker of a test."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class CountingStore:
    """Wrap a store and count its round trips (every method is one)."""

    def __init__(self, inner: KeyValueStore) -> None:
        self.inner = inner
        self.prefix = inner.prefix
        self.round_trips = 0

    def get(self, key: str) -> bytes | None:
        self.round_trips += 1
        return self.inner.get(key)

    def set(self, key: str, value: bytes | str, **options: Any) -> bool:
        self.round_trips += 1
        return self.inner.set(key, value, **options)

    def delete(self, *keys: str) -> int:
        self.round_trips += 1
        return self.inner.delete(*keys)

    def run_script(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        self.round_trips += 1
        return self.inner.run_script(script, keys, args)

    def send_script(
        self, script: Any, keys: list[str], args: list[Any], on_reply: Any
    ) -> None:
        self.round_trips += 1
        self.inner.send_script(script, keys, args, on_reply)

    def collect_replies(self, *, wait: bool = False) -> None:
        self.inner.collect_replies(wait=wait)

    def ping(self) -> bool:
        self.round_trips += 1
        return self.inner.ping()


class Downstream:
    """A local HTTP service whose responses a test sets: status, delay, headers."""

    def __init__(self) -> None:
        self.status = 200
        self.status_by_path: dict[str, int] = {}
        self.delay_s = 0.0
        self.headers: dict[str, str] = {}
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        downstream = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                return

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length).decode() if length else ""
                with downstream._lock:
                    downstream.requests.append(
                        {
                            "method": self.command,
                            "path": self.path,
                            "headers": dict(self.headers),
                            "body": body,
                        }
                    )
                if downstream.delay_s:
                    time.sleep(downstream.delay_s)
                payload = json.dumps({"path": self.path, "method": self.command})
                data = payload.encode()
                route = self.path.split("?", 1)[0]
                status = downstream.status_by_path.get(route, downstream.status)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for key, value in downstream.headers.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _serve

        self.server = _Server(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(
            target=self.server.serve_forever, args=(0.05,), daemon=True
        ).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def downstream() -> Iterator[Downstream]:
    service = Downstream()
    try:
        yield service
    finally:
        service.stop()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()
