"""Every redis-py, httpx and upstash-redis error becomes RedisUnavailableError."""

from __future__ import annotations

import inspect
from typing import Any

import httpx
import pytest
import redis.exceptions
from upstash_redis.errors import UpstashError

from resilience.errors import RedisUnavailableError
from resilience.kvstore import RedisStore, UpstashStore


class RaisingClient:
    """Stands in for a third-party client whose every command raises ``error``."""

    def __init__(self, error: BaseException) -> None:
        self.error = error

    def execute_command(self, *args: Any) -> Any:
        raise self.error

    def execute(self, command: list[Any]) -> Any:
        raise self.error


def subclasses(root: type[BaseException], module: object) -> list[type[BaseException]]:
    return [
        value
        for _, value in inspect.getmembers(module, inspect.isclass)
        if issubclass(value, root)
    ]


def make_error(cls: type[BaseException]) -> BaseException:
    request = httpx.Request("POST", "http://127.0.0.1:1/")
    if issubclass(cls, httpx.HTTPStatusError):
        return cls("failed", request=request, response=httpx.Response(500))
    if issubclass(cls, httpx.RequestError):
        return cls("failed", request=request)
    if issubclass(cls, redis.exceptions.AskError):
        # Cluster redirections parse "<slot> <host>:<port>" from the message.
        return cls("1 127.0.0.1:7000")
    return cls("failed")


@pytest.mark.parametrize(
    "error_class",
    [
        c
        for c in subclasses(redis.exceptions.RedisError, redis.exceptions)
        if c is not redis.exceptions.NoScriptError
    ],
)
def test_redis_errors_mapped(error_class: type[BaseException]) -> None:
    store = RedisStore(RaisingClient(make_error(error_class)))
    with pytest.raises(RedisUnavailableError):
        store.get("k")


@pytest.mark.parametrize(
    "error_class", [*subclasses(httpx.HTTPError, httpx), UpstashError, ValueError]
)
def test_upstash_errors_mapped(error_class: type[BaseException]) -> None:
    store = UpstashStore(RaisingClient(make_error(error_class)))
    with pytest.raises(RedisUnavailableError):
        store.get("k")
