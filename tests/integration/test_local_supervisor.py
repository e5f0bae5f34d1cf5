"""The local stack's supervisor restarts embedded PostgreSQL and Redis after an exit."""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable, Iterator

import psycopg
import pytest
import redis

from local.embedded import EmbeddedPostgres, EmbeddedRedis
from local.supervisor import EmbeddedServer, EmbeddedSupervisor

pytestmark = pytest.mark.timeout(120)

INTERVAL_S = 0.2
# A restart takes one check interval plus a start, and PostgreSQL's crash
# recovery takes well under a second on an empty cluster. The rest is slack
# for a loaded machine, not a performance target.
RESTART_BOUND_S = 20.0


def wait_for(condition: Callable[[], bool], timeout_s: float, description: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{description}: not met within {timeout_s} s")
        time.sleep(0.05)


def supervisor_messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "local.supervisor"]


def restarted(
    name: str,
    server: EmbeddedPostgres | EmbeddedRedis,
    old_pid: int,
    caplog: pytest.LogCaptureFixture,
) -> bool:
    """Return whether a new process runs and its restart has been logged.

    The supervisor logs after start() returns, so the log line comes last.
    """
    logged = any(
        m.startswith(f"embedded_{name}.restarted") for m in supervisor_messages(caplog)
    )
    return logged and server.running and server.pid != old_pid


@pytest.fixture
def redis_server() -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis().start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def postgres_server() -> Iterator[EmbeddedPostgres]:
    server = EmbeddedPostgres().start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def supervisor_factory() -> Iterator[Callable[..., EmbeddedSupervisor]]:
    started: list[EmbeddedSupervisor] = []

    def start(servers: dict[str, EmbeddedServer]) -> EmbeddedSupervisor:
        supervisor = EmbeddedSupervisor(servers, interval_s=INTERVAL_S).start()
        started.append(supervisor)
        return supervisor

    yield start
    for supervisor in started:
        supervisor.stop()


def test_killed_redis_restarts_on_same_port(
    redis_server: EmbeddedRedis,
    supervisor_factory: Callable[..., EmbeddedSupervisor],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="local.supervisor")
    port = redis_server.port
    old_pid = redis_server.pid
    assert old_pid is not None
    supervisor_factory({"redis": redis_server})

    os.kill(old_pid, signal.SIGKILL)
    wait_for(
        lambda: restarted("redis", redis_server, old_pid, caplog),
        RESTART_BOUND_S,
        "redis restarted",
    )

    assert redis_server.port == port
    client = redis.Redis.from_url(redis_server.url, socket_timeout=5)
    try:
        assert client.ping() is True
    finally:
        client.close()
    messages = supervisor_messages(caplog)
    exited = [m for m in messages if m.startswith("embedded_redis.exited")]
    assert len(exited) == 1, messages
    assert f"port={port} pid={old_pid}" in exited[0]
    assert "status=-9 (killed by SIGKILL)" in exited[0]
    assert redis_server.directory in exited[0]
    restarts = [m for m in messages if m.startswith("embedded_redis.restarted")]
    assert restarts == [
        f"embedded_redis.restarted port={port} pid={redis_server.pid} "
        f"dir={redis_server.directory}"
    ]


def test_killed_postgres_restarts_with_data(
    postgres_server: EmbeddedPostgres,
    supervisor_factory: Callable[..., EmbeddedSupervisor],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="local.supervisor")
    with psycopg.connect(postgres_server.url, autocommit=True) as connection:
        connection.execute("CREATE TABLE kept (value text)")
        connection.execute("INSERT INTO kept VALUES ('before the kill')")
    old_pid = postgres_server.pid
    assert old_pid is not None
    supervisor_factory({"postgres": postgres_server})

    os.kill(old_pid, signal.SIGKILL)
    wait_for(
        lambda: restarted("postgres", postgres_server, old_pid, caplog),
        RESTART_BOUND_S,
        "postgres restarted",
    )

    with psycopg.connect(postgres_server.url, connect_timeout=5) as connection:
        rows = connection.execute("SELECT value FROM kept").fetchall()
    assert rows == [("before the kill",)]
    messages = supervisor_messages(caplog)
    exited = [m for m in messages if m.startswith("embedded_postgres.exited")]
    assert len(exited) == 1, messages
    assert f"port={postgres_server.port} pid={old_pid}" in exited[0]
    assert "(killed by SIGKILL)" in exited[0]
    assert postgres_server.directory in exited[0]
    assert any(m.startswith("embedded_postgres.restarted") for m in messages)


def test_stopped_supervisor_restarts_nothing(
    redis_server: EmbeddedRedis,
    supervisor_factory: Callable[..., EmbeddedSupervisor],
) -> None:
    supervisor = supervisor_factory({"redis": redis_server})
    supervisor.stop()
    pid = redis_server.pid
    assert pid is not None

    os.kill(pid, signal.SIGKILL)
    time.sleep(INTERVAL_S * 5)

    assert redis_server.running is False


class FakeServer:
    """An embedded server whose start fails a given number of times."""

    def __init__(self, start_failures: int = 0) -> None:
        self.port = 6399
        self.pid: int | None = 4242
        self.url = "redis://127.0.0.1:6399/0"
        self.directory = "/nonexistent"
        self.exit_status: int | None = None
        self.start_failures = start_failures
        self.start_calls = 0

    @property
    def running(self) -> bool:
        return self.pid is not None and self.exit_status is None

    def kill(self) -> None:
        self.exit_status = -signal.SIGKILL

    def start(self) -> FakeServer:
        self.start_calls += 1
        if self.start_calls <= self.start_failures:
            self.exit_status = 1
            raise RuntimeError("port taken")
        self.pid = 4242 + self.start_calls
        self.exit_status = None
        return self

    def stop(self) -> None:
        self.pid = None
        self.exit_status = None


def test_failed_restart_retried_after_delay(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="local.supervisor")
    server = FakeServer(start_failures=2)
    supervisor = EmbeddedSupervisor({"redis": server}, interval_s=0.05)
    server.kill()

    supervisor.check("redis", server)
    supervisor.check("redis", server)
    assert server.start_calls == 1
    time.sleep(0.15)
    supervisor.check("redis", server)
    assert server.start_calls == 2
    time.sleep(0.25)
    supervisor.check("redis", server)

    assert server.start_calls == 3
    assert server.running is True
    messages = supervisor_messages(caplog)
    assert [m.split(" ")[0] for m in messages] == [
        "embedded_redis.exited",
        "embedded_redis.restart_failed",
        "embedded_redis.restart_failed",
        "embedded_redis.restarted",
    ]
    assert messages[1].endswith("attempt=1: retrying in 0.1 s")
    assert messages[2].endswith("attempt=2: retrying in 0.2 s")


def test_crash_loop_waits_before_restart(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="local.supervisor")
    server = FakeServer()
    supervisor = EmbeddedSupervisor({"redis": server}, interval_s=0.05)
    server.kill()
    supervisor.check("redis", server)
    assert server.start_calls == 1

    # The restarted server exits again at once.
    server.kill()
    supervisor.check("redis", server)

    assert server.start_calls == 1
    exited = [m for m in supervisor_messages(caplog) if ".exited" in m]
    assert len(exited) == 2
    assert exited[1].endswith("after its restart, restarting in 0.1 s")
    time.sleep(0.15)
    supervisor.check("redis", server)
    assert server.start_calls == 2


def test_interval_must_be_positive() -> None:
    with pytest.raises(ValueError, match="interval_s must be positive"):
        EmbeddedSupervisor({}, interval_s=0)
