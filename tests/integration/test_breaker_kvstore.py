"""KeyValueStore behaviour, run on redis-py and on the Upstash REST bridge."""

from __future__ import annotations

import time

import pytest

from resilience.errors import RedisUnavailableError
from resilience.kvstore import (
    KeyValueStore,
    RedisStore,
    Script,
    UpstashStore,
    reset_store_cache,
    store_from_env,
)
from tests.breaker_fixtures import make_store, store, store_kind, upstash_bridge
from tests.upstash_bridge import UpstashBridge

__all__ = ["make_store", "store", "store_kind", "upstash_bridge"]

ECHO = Script("return {KEYS[1], ARGV[1], tonumber(ARGV[2]) + 1}", name="echo")
COUNT = Script("return redis.call('INCR', KEYS[1])", name="count")
FAIL = Script("return redis.error_reply('ERR refused by the test')", name="fail")


class Replies:
    """Collects what send_script hands to its reply handler."""

    def __init__(self) -> None:
        self.received: list[tuple[object, Exception | None]] = []

    def __call__(self, reply: object, error: Exception | None) -> None:
        self.received.append((reply, error))

    def wait(self, store: KeyValueStore, count: int) -> None:
        deadline = time.monotonic() + 2
        while len(self.received) < count and time.monotonic() < deadline:
            store.collect_replies()
            time.sleep(0.001)


def test_set_get_round_trip(store: KeyValueStore) -> None:
    assert store.set("k", "value") is True
    assert store.get("k") == b"value"
    assert store.get("missing") is None


def test_set_accepts_bytes(store: KeyValueStore) -> None:
    store.set("k", b'{"a": 1}')
    assert store.get("k") == b'{"a": 1}'


def test_set_only_if_absent(store: KeyValueStore) -> None:
    assert store.set("k", "first", only_if_absent=True) is True
    assert store.set("k", "second", only_if_absent=True) is False
    assert store.get("k") == b"first"


def test_set_ttl_expires(store: KeyValueStore) -> None:
    store.set("k", "v", ttl_seconds=0.05)
    time.sleep(0.15)
    assert store.get("k") is None


def test_delete_counts_removed_keys(store: KeyValueStore) -> None:
    store.set("a", "1")
    store.set("b", "2")
    assert store.delete("a", "b", "c") == 2
    assert store.delete() == 0


def test_keys_carry_prefix(store: KeyValueStore, redis_url: str) -> None:
    import redis

    store.set("k", "v")
    raw = redis.Redis.from_url(redis_url)
    assert raw.get(store.prefix + "k") == b"v"
    raw.delete(store.prefix + "k")
    raw.close()


def test_run_script_loads_then_uses_sha(store: KeyValueStore, redis_url: str) -> None:
    import redis

    raw = redis.Redis.from_url(redis_url)
    script = Script(f"return ARGV[1] .. '{time.time_ns()}'", name="fresh")
    assert raw.script_exists(script.sha1) == [False]

    first = store.run_script(script, [], ["x"])
    second = store.run_script(script, [], ["x"])

    assert first == second
    assert raw.script_exists(script.sha1) == [True]
    raw.close()


def test_run_script_prefixes_keys_and_normalizes(store: KeyValueStore) -> None:
    assert store.run_script(ECHO, ["k"], ["a", 41]) == [store.prefix + "k", "a", 42]


def test_send_script_hands_reply_to_handler(store: KeyValueStore) -> None:
    replies = Replies()
    store.send_script(ECHO, ["k"], ["a", 1], replies)
    replies.wait(store, 1)
    assert replies.received == [([store.prefix + "k", "a", 2], None)]


def test_sent_scripts_run_before_the_next_command(store: KeyValueStore) -> None:
    replies = Replies()
    for _ in range(5):
        store.send_script(COUNT, ["counter"], [], replies)

    # The next command waits for every reply still unread, in order.
    assert store.get("counter") == b"5"
    assert replies.received == [(n, None) for n in range(1, 6)]


def test_error_reply_reaches_only_its_sender(redis_url: str) -> None:
    store = RedisStore.from_url(redis_url, prefix="kv-error:")
    failed, counted = Replies(), Replies()
    store.send_script(FAIL, [], [], failed)
    store.send_script(COUNT, ["counter"], [], counted)
    try:
        assert store.run_script(COUNT, ["counter"], []) == 2
        [(reply, error)] = failed.received
        assert reply is None
        assert isinstance(error, RedisUnavailableError)
        assert "refused by the test" in str(error)
        assert counted.received == [(1, None)]
    finally:
        store.delete("counter")
        store.close()


def test_sent_script_unknown_to_server_runs_with_eval(redis_url: str) -> None:
    import redis

    store = RedisStore.from_url(redis_url, prefix="kv-noscript:")
    fresh = Script(f"return 'ran {time.time_ns()}'", name="fresh")
    replies = Replies()
    store.send_script(fresh, [], [], replies)
    replies.wait(store, 1)
    store.close()

    [(reply, error)] = replies.received
    assert error is None
    assert str(reply).startswith("ran ")
    raw = redis.Redis.from_url(redis_url)
    assert raw.script_exists(fresh.sha1) == [True]
    raw.close()


def test_first_send_of_script_runs_unread(redis_url: str) -> None:
    import redis

    store = RedisStore.from_url(redis_url, prefix="kv-first-send:")
    fresh = Script(
        f"-- {time.time_ns()}\nreturn redis.call('INCR', KEYS[1])", name="fresh"
    )
    raw = redis.Redis.from_url(redis_url)
    try:
        store.send_script(fresh, ["counter"], [], Replies())

        # No later call on the store reads the reply, as when a Lambda
        # invocation ends right after its last success.
        deadline = time.monotonic() + 2
        while raw.get("kv-first-send:counter") is None:
            assert time.monotonic() < deadline, "the script did not run"
            time.sleep(0.01)
        assert raw.script_exists(fresh.sha1) == [True]
    finally:
        store.close()
        raw.delete("kv-first-send:counter")
        raw.close()


def test_ping(store: KeyValueStore) -> None:
    assert store.ping() is True


def test_redis_port_closed_raises_unavailable() -> None:
    from local.embedded import free_port

    store = RedisStore.from_url(f"redis://127.0.0.1:{free_port()}/0", timeout_ms=200)
    with pytest.raises(RedisUnavailableError, match="GET"):
        store.get("k")


@pytest.mark.parametrize("mode", ["error", "html_error"])
def test_upstash_500_raises_unavailable(redis_url: str, mode: str) -> None:
    bridge = UpstashBridge(redis_url).start()
    store = UpstashStore.from_settings(bridge.url, bridge.token, timeout_ms=200)
    bridge.set_mode(mode)
    try:
        with pytest.raises(RedisUnavailableError, match="Upstash command GET"):
            store.get("k")
    finally:
        bridge.stop()


@pytest.mark.timeout(10)
def test_upstash_hang_times_out(redis_url: str) -> None:
    bridge = UpstashBridge(redis_url).start()
    store = UpstashStore.from_settings(bridge.url, bridge.token, timeout_ms=200)
    bridge.set_mode("hang")
    started = time.monotonic()
    try:
        with pytest.raises(RedisUnavailableError, match="Timeout"):
            store.get("k")
        elapsed = time.monotonic() - started
    finally:
        bridge.stop()
    assert elapsed < 1.0


def test_upstash_wrong_token_raises(upstash_bridge: UpstashBridge) -> None:
    store = UpstashStore.from_settings(upstash_bridge.url, "wrong", timeout_ms=500)
    with pytest.raises(RedisUnavailableError, match="Unauthorized"):
        store.get("k")


def test_store_from_env_prefers_redis_url(
    monkeypatch: pytest.MonkeyPatch, redis_url: str
) -> None:
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("REDIS_KEY_PREFIX", "p1:")
    monkeypatch.setenv("UPSTASH_REDIS_REST_URL", "http://127.0.0.1:9")
    reset_store_cache()
    try:
        store = store_from_env()
        assert isinstance(store, RedisStore)
        assert store.prefix == "p1:"
        assert store_from_env() is store
    finally:
        reset_store_cache()


@pytest.mark.parametrize(
    ("url_env", "token_env"),
    [
        ("UPSTASH_REDIS_REST_URL", "UPSTASH_REDIS_REST_TOKEN"),
        ("UPSTASH_REDIS_URL", "UPSTASH_REDIS_TOKEN"),
    ],
)
def test_store_from_env_reads_upstash(
    monkeypatch: pytest.MonkeyPatch,
    upstash_bridge: UpstashBridge,
    url_env: str,
    token_env: str,
) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.delenv("REDIS_KEY_PREFIX", raising=False)
    monkeypatch.setenv(url_env, upstash_bridge.url)
    monkeypatch.setenv(token_env, upstash_bridge.token)
    reset_store_cache()
    try:
        store = store_from_env()
        assert isinstance(store, UpstashStore)
        assert store.prefix == "ar:"
        assert store.ping() is True
    finally:
        reset_store_cache()
