"""Restart the local stack's embedded PostgreSQL and Redis when they exit.

Without this, a store that crashed or was killed stays down and every request
that needs it fails until the whole stack is restarted. The supervisor checks
each server every ``interval_s`` and starts a dead one again on the same port
and data directory, so the URLs in the functions' environment stay valid and
their clients reconnect. PostgreSQL keeps its data (it runs crash recovery on
start). Embedded Redis keeps nothing on disk, so after a restart it is empty:
breaker state and cached completions start over.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from local.embedded import describe_exit_status

__all__ = ["EmbeddedServer", "EmbeddedSupervisor"]

logger = logging.getLogger(__name__)


class EmbeddedServer(Protocol):
    """Interface of EmbeddedPostgres and EmbeddedRedis that the supervisor uses."""

    @property
    def port(self) -> int: ...
    @property
    def url(self) -> str: ...
    @property
    def directory(self) -> str: ...
    @property
    def running(self) -> bool: ...
    @property
    def pid(self) -> int | None: ...
    @property
    def exit_status(self) -> int | None: ...
    def start(self) -> object: ...
    def stop(self) -> None: ...


# A server that fails to start, or exits again within STABLE_AFTER_S of a
# restart, is retried after a delay that doubles each time up to
# MAX_RETRY_DELAY_S. A crash loop then logs one error per delay, not per check.
STABLE_AFTER_S = 10.0
MAX_RETRY_DELAY_S = 30.0


@dataclass
class _RestartState:
    # Count of failed starts and early exits in a row, reset once the server
    # has run for STABLE_AFTER_S.
    failures: int = 0
    next_attempt: float = 0.0
    started_at: float = -math.inf
    # Set once the exit has been logged, until the server runs again.
    down: bool = False


class EmbeddedSupervisor:
    """A thread that restarts the embedded servers it is given when they exit.

    ``on_restart(name, server)`` runs in the supervisor's thread after each
    successful restart. Call :meth:`stop` before stopping the servers, or the
    supervisor starts them again.
    """

    def __init__(
        self,
        servers: Mapping[str, EmbeddedServer],
        *,
        interval_s: float = 1.0,
        on_restart: Callable[[str, EmbeddedServer], None] | None = None,
    ) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s must be positive, got {interval_s}")
        self.servers = dict(servers)
        self.interval_s = interval_s
        self._on_restart = on_restart
        self._states = {name: _RestartState() for name in self.servers}
        self._stopping = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name="embedded-supervisor", daemon=True
        )

    def __repr__(self) -> str:
        return f"<EmbeddedSupervisor servers={sorted(self.servers)}>"

    def start(self) -> EmbeddedSupervisor:
        self._thread.start()
        logger.info(
            "embedded_supervisor.started servers=%s interval=%ss",
            ",".join(f"{name}:{server.port}" for name, server in self.servers.items()),
            self.interval_s,
        )
        return self

    def stop(self, timeout_s: float = 90.0) -> None:
        """Stop the checks and wait for a restart in progress to finish."""
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout=timeout_s)
            if self._thread.is_alive():
                logger.warning(
                    "embedded_supervisor.stop_timed_out after %ss: a restart "
                    "is still in progress",
                    timeout_s,
                )
                return
        logger.info("embedded_supervisor.stopped")

    def _run(self) -> None:
        while not self._stopping.wait(self.interval_s):
            for name, server in self.servers.items():
                if self._stopping.is_set():
                    return
                try:
                    self.check(name, server)
                except Exception:
                    # Keep supervising the other server and the next checks.
                    logger.exception("embedded_supervisor.check_failed %s", name)

    def check(self, name: str, server: EmbeddedServer) -> None:
        """Restart ``server`` if its process has exited, logging exit and restart."""
        state = self._states[name]
        now = time.monotonic()
        if server.running:
            if state.failures and now - state.started_at >= STABLE_AFTER_S:
                state.failures = 0
            return
        if not state.down:
            state.down = True
            self._log_exit(name, server, state, now)
        if now < state.next_attempt:
            return
        try:
            server.start()
        except Exception:
            # From now, not from the check: a failed start can take 30 s.
            delay = self._delay_after_failure(state, time.monotonic())
            logger.exception(
                "embedded_%s.restart_failed port=%s attempt=%s: retrying in %.1f s",
                name,
                server.port,
                state.failures,
                delay,
            )
            # A half-started process would look alive to the next check.
            _stop_quietly(name, server)
            return
        state.down = False
        state.started_at = time.monotonic()
        logger.info(
            "embedded_%s.restarted port=%s pid=%s dir=%s",
            name,
            server.port,
            server.pid,
            server.directory,
        )
        if self._on_restart is not None:
            try:
                self._on_restart(name, server)
            except Exception:
                logger.exception("embedded_supervisor.on_restart_failed %s", name)

    def _log_exit(
        self, name: str, server: EmbeddedServer, state: _RestartState, now: float
    ) -> None:
        status = server.exit_status
        description = "not running" if status is None else describe_exit_status(status)
        if now - state.started_at < STABLE_AFTER_S:
            delay = self._delay_after_failure(state, now)
            next_step = f"exited {now - state.started_at:.1f} s after its restart, "
            next_step += f"restarting in {delay:.1f} s"
        else:
            next_step = "restarting"
        logger.error(
            "embedded_%s.exited port=%s pid=%s status=%s (%s) dir=%s: %s",
            name,
            server.port,
            server.pid,
            status,
            description,
            server.directory,
            next_step,
        )

    def _delay_after_failure(self, state: _RestartState, now: float) -> float:
        state.failures += 1
        delay = min(self.interval_s * 2**state.failures, MAX_RETRY_DELAY_S)
        state.next_attempt = now + delay
        return delay


def _stop_quietly(name: str, server: EmbeddedServer) -> None:
    try:
        server.stop()
    except Exception:
        logger.exception("embedded_%s.stop_failed port=%s", name, server.port)
