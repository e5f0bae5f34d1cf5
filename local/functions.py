"""Function workers: each template function runs in child processes of its own.

A :class:`FunctionPool` keeps up to ``max_workers`` child processes for one
function. Like a Lambda container, each child handles one invocation at a
time, keeps its imports and connections between invocations, and is replaced
when an invocation runs past the function's ``Timeout``. The children's output
is copied to the console, one line at a time, prefixed with the function name.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from local.model import FunctionSpec

__all__ = ["CodeVersion", "FunctionPool", "Invocation", "exit_with_parent"]

logger = logging.getLogger(__name__)

# Time a child gets to import its handler before it counts as failed.
_IMPORT_TIMEOUT_S = 60.0
_output_lock = threading.Lock()
_WORKER_SCRIPT = str(Path(__file__).with_name("function_worker.py"))


@dataclass(frozen=True)
class Invocation:
    """The outcome of one invocation: ``result`` when ok, else Lambda's error shape."""

    request_id: str
    ok: bool
    result: Any = None
    error: dict[str, Any] | None = None
    timed_out: bool = False
    duration_ms: int = 0


class WorkerError(RuntimeError):
    """A worker process died or stopped responding."""


class _Worker:
    def __init__(self, spec: FunctionSpec, env: dict[str, str]) -> None:
        self.spec = spec
        request_read, self._request_write = os.pipe()
        self._response_read, response_write = os.pipe()
        self.process = subprocess.Popen(
            # -P keeps local/ off sys.path, so its modules shadow nothing.
            [
                sys.executable,
                "-P",
                _WORKER_SCRIPT,
                str(request_read),
                str(response_write),
            ],
            env=env,
            cwd=spec.code_uri if spec.code_uri.is_dir() else None,
            pass_fds=(request_read, response_write),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            # Ctrl-C reaches the stack, which then stops the workers itself.
            # A worker exits by itself when the stack dies: its request pipe
            # closes. (PR_SET_PDEATHSIG would fire when the spawning thread
            # ends, and workers are spawned from short-lived threads.)
            start_new_session=True,
        )
        os.close(request_read)
        os.close(response_write)
        self._buffer = b""
        self.import_error: dict[str, Any] | None = None
        self.code_version = 0.0
        assert self.process.stdout is not None
        threading.Thread(
            target=_copy_output,
            args=(spec.logical_id, self.process.stdout),
            name=f"output-{spec.logical_id}",
            daemon=True,
        ).start()

    def wait_ready(self) -> None:
        message = self._read_line(time.monotonic() + _IMPORT_TIMEOUT_S)
        self.import_error = message.get("importError")
        if self.import_error:
            logger.error(
                "function.import_failed function=%s handler=%s error=%s: %s",
                self.spec.logical_id,
                self.spec.handler,
                self.import_error.get("errorType"),
                self.import_error.get("errorMessage"),
            )

    def invoke(self, request: dict[str, Any], deadline: float) -> dict[str, Any]:
        os.write(self._request_write, json.dumps(request).encode() + b"\n")
        return self._read_line(deadline)

    def _read_line(self, deadline: float) -> dict[str, Any]:
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            readable, _, _ = select.select([self._response_read], [], [], remaining)
            if not readable:
                continue
            chunk = os.read(self._response_read, 65536)
            if not chunk:
                raise WorkerError(f"worker exited with code {self.process.wait()}")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        result: dict[str, Any] = json.loads(line)
        return result

    def stop(self) -> None:
        for fd in (self._request_write, self._response_read):
            with contextlib.suppress(OSError):
                os.close(fd)
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


def exit_with_parent() -> None:
    """Ask Linux to send SIGTERM to this child when the stack process dies.

    Runs in the child between fork and exec. Linux sends the signal when the
    thread that started the child ends, so use it only from the main thread.
    """
    if sys.platform != "linux":
        return
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def _copy_output(name: str, stream: IO[bytes]) -> None:
    for raw in iter(stream.readline, b""):
        line = raw.decode("utf-8", errors="replace").rstrip("\n")
        with _output_lock:
            sys.stdout.write(f"{name} | {line}\n")
            sys.stdout.flush()


class CodeVersion:
    """The newest modification time of the ``.py`` files under some directories.

    Rescanned at most once per ``interval_s``, so that a pool can replace
    workers that imported older code without a scan per invocation.
    """

    def __init__(self, paths: list[Path], interval_s: float = 1.0) -> None:
        self.paths = paths
        self.interval_s = interval_s
        self._checked_at = time.monotonic()
        self._value = self._scan()

    def __repr__(self) -> str:
        return f"<CodeVersion {self._value} paths={len(self.paths)}>"

    def current(self) -> float:
        now = time.monotonic()
        if now - self._checked_at >= self.interval_s:
            self._value = self._scan()
            self._checked_at = now
        return self._value

    def _scan(self) -> float:
        newest = 0.0
        for root in self.paths:
            for path in root.rglob("*.py"):
                with contextlib.suppress(OSError):
                    newest = max(newest, path.stat().st_mtime)
        return newest


class FunctionPool:
    """Invoke one function; up to ``max_workers`` invocations run at the same time."""

    def __init__(
        self,
        spec: FunctionSpec,
        env: dict[str, str],
        max_workers: int = 2,
        *,
        watch: list[Path] | None = None,
    ) -> None:
        self.spec = spec
        self.env = env
        self.max_workers = max_workers
        self._code = CodeVersion(watch or [])
        self._idle: list[_Worker] = []
        self._count = 0
        self._condition = threading.Condition()
        self._closed = False
        self._all: set[_Worker] = set()

    def __repr__(self) -> str:
        return f"<FunctionPool {self.spec.logical_id} workers={self._count}>"

    def warm(self) -> None:
        """Start one worker and wait until its handler is imported."""
        with self._condition:
            self._count += 1
        try:
            worker = self._start_worker()
        except (TimeoutError, WorkerError) as exc:
            # The stack still starts; each invocation tries a new worker.
            logger.error(
                "function.start_failed function=%s error=%r", self.spec.logical_id, exc
            )
            return
        with self._condition:
            self._idle.append(worker)
            self._condition.notify()

    def invoke(self, event: Any, *, request_id: str | None = None) -> Invocation:
        """Run the handler once, within the function's Timeout."""
        request_id = request_id or str(uuid.uuid4())
        started = time.monotonic()
        try:
            worker = self._acquire()
        except (TimeoutError, WorkerError) as exc:
            error = {"errorType": "Runtime.InitError", "errorMessage": str(exc)}
            return Invocation(request_id, False, None, error)

        deadline = time.time() + self.spec.timeout_s
        request = {"requestId": request_id, "event": event, "deadline": deadline}
        try:
            # One second of grace for the response to arrive.
            response = worker.invoke(request, started + self.spec.timeout_s + 1.0)
        except (TimeoutError, WorkerError, OSError) as exc:
            worker.stop()
            self._release(None)
            duration = int((time.monotonic() - started) * 1000)
            timed_out = isinstance(exc, TimeoutError)
            message = (
                f"Task timed out after {self.spec.timeout_s} seconds"
                if timed_out
                else f"worker failed: {exc}"
            )
            logger.error(
                "function.invocation_failed function=%s request_id=%s error=%s",
                self.spec.logical_id,
                request_id,
                message,
            )
            error = {
                "errorType": "Sandbox.Timedout" if timed_out else "Runtime.ExitError"
            }
            error["errorMessage"] = message
            return Invocation(request_id, False, None, error, timed_out, duration)

        self._release(worker)
        duration = int((time.monotonic() - started) * 1000)
        return Invocation(
            request_id=request_id,
            ok=bool(response.get("ok")),
            result=response.get("result"),
            error=response.get("error"),
            duration_ms=duration,
        )

    def _start_worker(self) -> _Worker:
        worker = _Worker(self.spec, self.env)
        worker.code_version = self._code.current()
        with self._condition:
            self._all.add(worker)
        try:
            worker.wait_ready()
        except (TimeoutError, WorkerError):
            worker.stop()
            with self._condition:
                self._count -= 1
                self._condition.notify()
            raise
        return worker

    def _acquire(self) -> _Worker:
        with self._condition:
            while True:
                if self._closed:
                    raise WorkerError(f"{self.spec.logical_id} is stopped")
                self._retire_stale_workers()
                if self._idle:
                    return self._idle.pop()
                if self._count < self.max_workers:
                    self._count += 1
                    break
                self._condition.wait()
        return self._start_worker()

    def _retire_stale_workers(self) -> None:
        # Called with the condition held: idle workers that imported older
        # code are stopped, so the next invocation starts a fresh one.
        version = self._code.current()
        stale = [w for w in self._idle if w.code_version != version]
        if not stale:
            return
        logger.info(
            "function.reloading function=%s reason=code changed workers=%s",
            self.spec.logical_id,
            len(stale),
        )
        for worker in stale:
            self._idle.remove(worker)
            self._all.discard(worker)
            self._count -= 1
            worker.stop()

    def _release(self, worker: _Worker | None) -> None:
        with self._condition:
            if worker is None or self._closed:
                self._count -= 1
                if worker is not None:
                    worker.stop()
                self._all = {
                    alive for alive in self._all if alive.process.poll() is None
                }
            else:
                self._idle.append(worker)
            self._condition.notify()

    def close(self) -> None:
        with self._condition:
            self._closed = True
            workers, self._all, self._idle = list(self._all), set(), []
            self._condition.notify_all()
        # Busy workers too: their invocations end with a WorkerError.
        for worker in workers:
            worker.stop()
