"""Key-value store shared by every Lambda instance: Redis or Upstash Redis.

Two stores implement one :class:`KeyValueStore` protocol:

- :class:`RedisStore` speaks RESP through redis-py (self-hosted Redis,
  ElastiCache, the local stack).
- :class:`UpstashStore` speaks the Upstash REST API through the
  ``upstash-redis`` SDK, with an httpx client of our own: the SDK's client
  has no timeout and retries once after 3 s.

Both put every key under one prefix (``REDIS_KEY_PREFIX``, default ``ar:``),
run Lua scripts with EVALSHA and fall back to EVAL when the server does not
know the script yet, and fail within a tight timeout (``REDIS_TIMEOUT_MS``,
default 200 ms). Every failure, timeout included, is raised as
:class:`~resilience.errors.RedisUnavailableError`.

``send_script`` runs a script whose reply the caller does not wait for. The
Redis store writes it to a connection of its own and reads the reply later,
in the order sent: when the next command needs the connection order, or on
:meth:`RedisStore.collect_replies`. The Upstash store has no such pipeline
over REST and runs the script at once.

Settings read by :func:`store_from_env`, first match wins:

1. ``REDIS_URL`` (``redis://`` or ``rediss://``): a :class:`RedisStore`.
2. ``UPSTASH_REDIS_REST_URL`` and ``UPSTASH_REDIS_REST_TOKEN`` (the SDK's
   names), or ``UPSTASH_REDIS_URL`` and ``UPSTASH_REDIS_TOKEN``: an
   :class:`UpstashStore`.
3. ``REDIS_SECRET``: a Secrets Manager secret holding ``{"url", "token"}``;
   a ``redis://`` URL there gives a :class:`RedisStore`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from resilience.errors import ConfigError, RedisUnavailableError

__all__ = [
    "DEFAULT_KEY_PREFIX",
    "DEFAULT_TIMEOUT_MS",
    "KeyValueStore",
    "RedisStore",
    "Script",
    "StoreSettings",
    "UpstashStore",
    "reset_store_cache",
    "store_from_env",
]

logger = logging.getLogger(__name__)

ENV_REDIS_URL = "REDIS_URL"
ENV_KEY_PREFIX = "REDIS_KEY_PREFIX"
ENV_TIMEOUT_MS = "REDIS_TIMEOUT_MS"
ENV_REDIS_SECRET = "REDIS_SECRET"
ENV_UPSTASH_PAIRS = (
    ("UPSTASH_REDIS_REST_URL", "UPSTASH_REDIS_REST_TOKEN"),
    ("UPSTASH_REDIS_URL", "UPSTASH_REDIS_TOKEN"),
)

DEFAULT_KEY_PREFIX = "ar:"
DEFAULT_TIMEOUT_MS = 200

# Replies the Redis store leaves unread before it waits for all of them.
MAX_UNREAD_REPLIES = 64
# At most this many keys are named when replies are lost.
MAX_LOGGED_KEYS = 5

# Receives the reply of a script sent with send_script, or the error that
# stood in its way (then the reply is None).
ReplyHandler = Callable[[Any, Exception | None], None]


@dataclass(frozen=True)
class Script:
    """A Lua script identified by the SHA1 digest that EVALSHA uses."""

    source: str
    name: str = "script"
    sha1: str = field(init=False)

    def __post_init__(self) -> None:
        digest = hashlib.sha1(self.source.encode(), usedforsecurity=False)
        object.__setattr__(self, "sha1", digest.hexdigest())


@runtime_checkable
class KeyValueStore(Protocol):
    """Store interface used by the patterns. Every key is put under ``prefix``."""

    prefix: str

    def get(self, key: str) -> bytes | None: ...

    def set(
        self,
        key: str,
        value: bytes | str,
        *,
        ttl_seconds: float | None = None,
        only_if_absent: bool = False,
    ) -> bool: ...

    def delete(self, *keys: str) -> int: ...

    def run_script(
        self, script: Script, keys: list[str], args: list[str | int | float]
    ) -> Any: ...

    def send_script(
        self,
        script: Script,
        keys: list[str],
        args: list[str | int | float],
        on_reply: ReplyHandler,
    ) -> None: ...

    def collect_replies(self, *, wait: bool = False) -> None: ...

    def ping(self) -> bool: ...


def _normalize(value: Any) -> Any:
    """Turn bulk strings into ``str`` so both stores return the same shapes."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, list):
        return [_normalize(item) for item in value]
    return value


def _set_command(
    key: str, value: bytes | str, ttl_seconds: float | None, only_if_absent: bool
) -> list[bytes | str | int]:
    command: list[bytes | str | int] = ["SET", key, value]
    if ttl_seconds is not None:
        if ttl_seconds <= 0:
            raise ValueError(f"ttl_seconds must be positive, got {ttl_seconds}")
        command += ["PX", max(1, round(ttl_seconds * 1000))]
    if only_if_absent:
        command.append("NX")
    return command


def _encode_command(parts: list[Any]) -> bytes:
    """Encode a command as RESP; redis-py's encoder is several times slower."""
    chunks = [b"*%d\r\n" % len(parts)]
    for part in parts:
        data = part if isinstance(part, bytes) else str(part).encode()
        chunks.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(chunks)


@dataclass
class _UnreadReply:
    script: Script
    command: list[Any]
    on_reply: ReplyHandler


class _ReplyPipeline:
    """One connection whose replies are read after the caller has moved on.

    Commands sent here run on the server in the order sent, and their replies
    are read in that order. Anything else that must run after them calls
    :meth:`collect` with ``wait=True`` first.
    """

    def __init__(self, store: RedisStore) -> None:
        self._store = store
        self._connection: Any = None
        self._unread: deque[_UnreadReply] = deque()
        # SHA1 digests of the scripts sent on this connection. A script's
        # first send is an EVAL with its source, because an EVALSHA that the
        # server does not know would run only when its reply is read, which
        # can be the next invocation or never.
        self._sent_scripts: set[str] = set()
        # Re-entrant: a reply handler may use the store again.
        self._lock = threading.RLock()

    def send(self, script: Script, command: list[Any], on_reply: ReplyHandler) -> None:
        import redis

        with self._lock:
            error = self._read(wait=len(self._unread) >= MAX_UNREAD_REPLIES)
            if isinstance(error, redis.TimeoutError):
                # The server did not respond in time, so a new connection's
                # handshake would wait for it a second time.
                raise _unavailable(script, error) from error
            self._drop_if_closed()
            try:
                if self._connection is None:
                    pool = self._store.client.connection_pool
                    self._connection = pool.get_connection()
                if script.sha1 not in self._sent_scripts:
                    command = ["EVAL", script.source, *command[2:]]
                self._connection.send_packed_command([_encode_command(command)])
            except redis.RedisError as exc:
                self._break(exc)
                raise _unavailable(script, exc) from exc
            self._sent_scripts.add(script.sha1)
            self._unread.append(_UnreadReply(script, command, on_reply))

    def collect(self, *, wait: bool) -> None:
        """Pass arrived replies to their handlers, or every reply when ``wait``.

        Raises:
            RedisUnavailableError: with ``wait``, the server did not respond
                within the timeout. The caller's own command would wait a
                second timeout for the same server, so it should not be sent.
        """
        if not self._unread:
            return
        import redis

        with self._lock:
            error = self._read(wait=wait)
        if wait and isinstance(error, redis.TimeoutError):
            raise RedisUnavailableError(
                f"Redis timed out on earlier commands: {error}"
            ) from error

    def close(self) -> None:
        with self._lock:
            if self._unread:
                # Replies already on their way are read, so a store closed
                # while healthy reports nothing lost.
                self._read(wait=True)
            self._break(RedisUnavailableError("the Redis store was closed"))

    def _read(self, *, wait: bool) -> Exception | None:
        """Read replies in order; return the error that broke the connection."""
        import redis

        connection = self._connection
        while self._unread:
            entry = self._unread[0]
            try:
                if not wait and not connection.can_read(timeout=0):
                    return None
                reply = connection.read_response()
            except redis.exceptions.NoScriptError:
                # The server lost its scripts (a restart or SCRIPT FLUSH): run
                # this one again with EVAL, which also reloads it, and send
                # every script's source again on its next use.
                self._unread.popleft()
                self._sent_scripts.clear()
                try:
                    reply = self._store._evalsha(entry.script, entry.command[2:])
                except RedisUnavailableError as exc:
                    _deliver(entry.on_reply, None, exc)
                    continue
            except redis.exceptions.ResponseError as exc:
                # An error reply (a failing script, an out-of-memory server)
                # concerns that script alone; the connection is fine.
                self._unread.popleft()
                _deliver(entry.on_reply, None, _unavailable(entry.script, exc))
                continue
            except redis.RedisError as exc:
                # A lost connection loses the replies still unread; whether
                # those scripts ran is unknown, so each sender hears the error.
                self._break(exc)
                return exc
            else:
                self._unread.popleft()
                reply = _normalize(reply)
            _deliver(entry.on_reply, reply, None)
        return None

    def _drop_if_closed(self) -> None:
        """Replace an idle connection that the server or the network closed.

        With no reply due, anything readable is an end of stream or an error
        (an idle timeout, a restart, a frozen Lambda thawed much later). The
        pool checks its connections the same way before lending them out.
        """
        import redis

        if self._connection is None or self._unread:
            return
        try:
            closed = self._connection.can_read(timeout=0)
        except redis.RedisError:
            closed = True
        if closed:
            logger.info(
                "kvstore.pipeline_reconnect", extra={"prefix": self._store.prefix}
            )
            self._drop_connection()

    def _drop_connection(self) -> None:
        # A new connection may reach a restarted server without the scripts.
        self._sent_scripts.clear()
        if self._connection is not None:
            self._connection.disconnect()
            self._store.client.connection_pool.release(self._connection)
            self._connection = None

    def _break(self, error: Exception) -> None:
        self._drop_connection()
        unread, self._unread = self._unread, deque()
        if unread:
            logger.warning(
                "kvstore.replies_lost",
                extra={
                    "unread": len(unread),
                    "scripts": sorted({entry.script.name for entry in unread}),
                    # The breakers whose reports are lost, named by their keys.
                    "keys": _first_keys(unread)[:MAX_LOGGED_KEYS],
                    "error": f"{type(error).__name__}: {error}",
                },
            )
        wrapped = RedisUnavailableError(
            f"Redis reply lost: {type(error).__name__}: {error}"
        )
        for entry in unread:
            _deliver(entry.on_reply, None, wrapped)


def _first_keys(entries: Iterable[_UnreadReply]) -> list[str]:
    # EVAL and EVALSHA commands: name, script, number of keys, keys, arguments.
    keys = {str(e.command[3]) for e in entries if int(e.command[2]) > 0}
    return sorted(keys)


def _unavailable(script: Script, error: Exception) -> RedisUnavailableError:
    return RedisUnavailableError(
        f"Redis script {script.name} failed: {type(error).__name__}: {error}"
    )


def _deliver(on_reply: ReplyHandler, reply: Any, error: Exception | None) -> None:
    try:
        on_reply(reply, error)
    except Exception:
        # A handler's bug must not break the connection other senders share.
        logger.exception("kvstore.reply_handler_failed")


class RedisStore:
    """A :class:`KeyValueStore` on redis-py (RESP), with no client retries."""

    def __init__(self, client: Any, *, prefix: str = DEFAULT_KEY_PREFIX) -> None:
        self.client = client
        self.prefix = prefix
        self._pipeline = _ReplyPipeline(self)

    def __repr__(self) -> str:
        return f"<RedisStore prefix={self.prefix!r}>"

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        prefix: str = DEFAULT_KEY_PREFIX,
        timeout_ms: int = DEFAULT_TIMEOUT_MS,
    ) -> RedisStore:
        """Build a store whose every command fails after ``timeout_ms``."""
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        timeout_s = timeout_ms / 1000
        client = redis.Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),
            retry_on_timeout=False,
            protocol=2,
        )
        return cls(client, prefix=prefix)

    def _call(self, *command: Any) -> Any:
        import redis

        self._pipeline.collect(wait=True)
        try:
            return self.client.execute_command(*command)
        except redis.RedisError as exc:
            raise RedisUnavailableError(
                f"Redis command {command[0]} failed: {type(exc).__name__}: {exc}"
            ) from exc

    def get(self, key: str) -> bytes | None:
        value = self._call("GET", self.prefix + key)
        return None if value is None else bytes(value)

    def set(
        self,
        key: str,
        value: bytes | str,
        *,
        ttl_seconds: float | None = None,
        only_if_absent: bool = False,
    ) -> bool:
        command = _set_command(self.prefix + key, value, ttl_seconds, only_if_absent)
        return bool(self._call(*command))

    def delete(self, *keys: str) -> int:
        if not keys:
            return 0
        return int(self._call("DEL", *(self.prefix + key for key in keys)))

    def run_script(
        self, script: Script, keys: list[str], args: list[str | int | float]
    ) -> Any:
        self._pipeline.collect(wait=True)
        full_keys = [self.prefix + key for key in keys]
        return self._evalsha(script, [len(full_keys), *full_keys, *args])

    def _evalsha(self, script: Script, tail: list[Any]) -> Any:
        """Run ``script`` with ``tail`` (numkeys, keys, args) on a pooled connection."""
        import redis

        try:
            try:
                result = self.client.execute_command("EVALSHA", script.sha1, *tail)
            except redis.exceptions.NoScriptError:
                # EVAL runs the script and caches it, so the next EVALSHA succeeds.
                result = self.client.execute_command("EVAL", script.source, *tail)
        except redis.RedisError as exc:
            raise _unavailable(script, exc) from exc
        return _normalize(result)

    def send_script(
        self,
        script: Script,
        keys: list[str],
        args: list[str | int | float],
        on_reply: ReplyHandler,
    ) -> None:
        """Send ``script`` and return before its reply arrives.

        ``on_reply`` gets the reply (or the error that replaced it) when a
        later call on this store reads it. Raises
        :class:`~resilience.errors.RedisUnavailableError` when it cannot be sent.
        """
        full_keys = [self.prefix + key for key in keys]
        command = ["EVALSHA", script.sha1, len(full_keys), *full_keys, *args]
        self._pipeline.send(script, command, on_reply)

    def collect_replies(self, *, wait: bool = False) -> None:
        """Pass the replies that have arrived to their handlers.

        With ``wait``, read every reply still due first, so that other
        clients see what was sent. Raises
        :class:`~resilience.errors.RedisUnavailableError` when Redis does not
        respond within the timeout.
        """
        self._pipeline.collect(wait=wait)

    def ping(self) -> bool:
        return bool(self._call("PING"))

    def close(self) -> None:
        self._pipeline.close()
        self.client.close()


class UpstashStore:
    """A :class:`KeyValueStore` on the Upstash REST API (``upstash-redis``).

    Values travel as JSON strings, so a ``bytes`` value must be UTF-8 text.
    """

    def __init__(self, client: Any, *, prefix: str = DEFAULT_KEY_PREFIX) -> None:
        self.client = client
        self.prefix = prefix

    def __repr__(self) -> str:
        return f"<UpstashStore prefix={self.prefix!r}>"

    @classmethod
    def from_settings(
        cls,
        url: str,
        token: str,
        *,
        prefix: str = DEFAULT_KEY_PREFIX,
        timeout_ms: int = DEFAULT_TIMEOUT_MS,
    ) -> UpstashStore:
        """Build a store whose every request fails after ``timeout_ms``."""
        import httpx
        from upstash_redis import Redis

        client = Redis(
            url=url.rstrip("/"),
            token=token,
            rest_retries=0,
            allow_telemetry=False,
        )
        # NOTE: upstash-redis 1.8 offers no way to pass an httpx client or a
        # timeout, so its private client is swapped for one with the timeout.
        client._http._client.close()
        client._http._client = httpx.Client(timeout=httpx.Timeout(timeout_ms / 1000))
        return cls(client, prefix=prefix)

    def _call(self, command: list[Any]) -> Any:
        import httpx
        from upstash_redis.errors import UpstashError

        try:
            return self.client.execute(command)
        except (httpx.HTTPError, UpstashError, ValueError) as exc:
            # ValueError covers a non-JSON body (an HTML 500 page, a proxy error).
            raise RedisUnavailableError(
                f"Upstash command {command[0]} failed: {type(exc).__name__}: {exc}"
            ) from exc

    def get(self, key: str) -> bytes | None:
        value = self._call(["GET", self.prefix + key])
        return None if value is None else str(value).encode()

    def set(
        self,
        key: str,
        value: bytes | str,
        *,
        ttl_seconds: float | None = None,
        only_if_absent: bool = False,
    ) -> bool:
        text = value.decode() if isinstance(value, bytes) else value
        command = _set_command(self.prefix + key, text, ttl_seconds, only_if_absent)
        # The SDK turns "OK" into True (and a missed NX into None).
        return self._call(command) in (True, "OK")

    def delete(self, *keys: str) -> int:
        if not keys:
            return 0
        return int(self._call(["DEL", *(self.prefix + key for key in keys)]))

    def run_script(
        self, script: Script, keys: list[str], args: list[str | int | float]
    ) -> Any:
        full_keys = [self.prefix + key for key in keys]
        tail = [len(full_keys), *full_keys, *(str(arg) for arg in args)]
        try:
            return self._call(["EVALSHA", script.sha1, *tail])
        except RedisUnavailableError as exc:
            if not str(exc.__cause__).startswith("NOSCRIPT"):
                raise
        # EVAL runs the script and caches it, so the next EVALSHA succeeds.
        return self._call(["EVAL", script.source, *tail])

    def send_script(
        self,
        script: Script,
        keys: list[str],
        args: list[str | int | float],
        on_reply: ReplyHandler,
    ) -> None:
        """Run ``script`` and pass its reply to ``on_reply`` before returning.

        Each REST request waits for its response, so nothing is left unread.
        """
        on_reply(self.run_script(script, keys, args), None)

    def collect_replies(self, *, wait: bool = False) -> None:
        """Nothing to collect: every request has had its response."""

    def ping(self) -> bool:
        return self._call(["PING"]) in (True, "PONG")

    def close(self) -> None:
        self.client.close()


@dataclass(frozen=True)
class StoreSettings:
    """Store location and per-command timeout."""

    redis_url: str | None = None
    upstash_url: str | None = None
    upstash_token: str | None = None
    prefix: str = DEFAULT_KEY_PREFIX
    timeout_ms: int = DEFAULT_TIMEOUT_MS

    def __post_init__(self) -> None:
        if self.timeout_ms <= 0:
            raise ConfigError(
                f"{ENV_TIMEOUT_MS} must be a positive number of milliseconds, "
                f"got {self.timeout_ms}",
                setting=ENV_TIMEOUT_MS,
            )
        if self.upstash_url and not self.upstash_token:
            raise ConfigError(
                "the Upstash URL is set but its token is missing: set "
                "UPSTASH_REDIS_REST_TOKEN (or the token field of REDIS_SECRET)",
                setting="UPSTASH_REDIS_REST_TOKEN",
            )
        if not self.redis_url and not self.upstash_url:
            raise ConfigError(
                "no Redis store is configured: set REDIS_URL, "
                "UPSTASH_REDIS_REST_URL and UPSTASH_REDIS_REST_TOKEN, or REDIS_SECRET",
                setting=ENV_REDIS_URL,
            )

    @classmethod
    def from_env(cls) -> StoreSettings:
        """Read the settings listed in the module docstring."""
        prefix = os.environ.get(ENV_KEY_PREFIX) or DEFAULT_KEY_PREFIX
        raw_timeout = os.environ.get(ENV_TIMEOUT_MS) or str(DEFAULT_TIMEOUT_MS)
        try:
            timeout_ms = int(raw_timeout)
        except ValueError:
            raise ConfigError(
                f"{ENV_TIMEOUT_MS} must be an integer, got {raw_timeout!r}",
                setting=ENV_TIMEOUT_MS,
            ) from None
        common: dict[str, Any] = {"prefix": prefix, "timeout_ms": timeout_ms}

        if os.environ.get(ENV_REDIS_URL):
            return cls(redis_url=os.environ[ENV_REDIS_URL], **common)
        for url_env, token_env in ENV_UPSTASH_PAIRS:
            if os.environ.get(url_env):
                return cls(
                    upstash_url=os.environ[url_env],
                    upstash_token=os.environ.get(token_env),
                    **common,
                )
        if os.environ.get(ENV_REDIS_SECRET):
            url, token = _read_redis_secret(os.environ[ENV_REDIS_SECRET])
            if url.startswith(("redis://", "rediss://")):
                return cls(redis_url=url, **common)
            return cls(upstash_url=url, upstash_token=token, **common)
        return cls(**common)

    def build(self) -> RedisStore | UpstashStore:
        """Create the store these settings describe (no network call)."""
        if self.redis_url:
            return RedisStore.from_url(
                self.redis_url, prefix=self.prefix, timeout_ms=self.timeout_ms
            )
        # __post_init__ guarantees both once redis_url is empty.
        assert self.upstash_url is not None
        assert self.upstash_token is not None
        return UpstashStore.from_settings(
            self.upstash_url,
            self.upstash_token,
            prefix=self.prefix,
            timeout_ms=self.timeout_ms,
        )


def _read_redis_secret(secret_name: str) -> tuple[str, str | None]:
    from aws_lambda_powertools.utilities import parameters

    raw = parameters.get_secret(secret_name, max_age=300)
    try:
        secret = json.loads(raw) if isinstance(raw, str | bytes) else raw
    except json.JSONDecodeError:
        secret = None
    if not isinstance(secret, dict) or not secret.get("url"):
        raise ConfigError(
            f'secret {secret_name!r} must be a JSON object with a "url" field '
            '(and "token" for Upstash)',
            setting=ENV_REDIS_SECRET,
        )
    token = secret.get("token")
    return str(secret["url"]), str(token) if token else None


_store: RedisStore | UpstashStore | None = None
_store_lock = threading.Lock()


def store_from_env() -> KeyValueStore:
    """Return the container's store, built from the environment on first use.

    Raises:
        ConfigError: no store is configured, or a setting is invalid.
    """
    global _store
    with _store_lock:
        if _store is None:
            _store = StoreSettings.from_env().build()
            logger.info("kvstore.created", extra={"store": repr(_store)})
        return _store


def reset_store_cache() -> None:
    """Forget the container's store, so the next call re-reads the settings."""
    global _store
    with _store_lock:
        if _store is not None:
            _store.close()
        _store = None
