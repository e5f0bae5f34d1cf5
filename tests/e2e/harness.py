"""Helpers of the end-to-end tests: starting the stack, its handle, polling.

:func:`run_local_stack` runs ``python -m local`` in a child process and stops
it with SIGTERM. :func:`run_stack_on_test_servers` runs it on the test
session's PostgreSQL and Redis, under a Redis key prefix of its own, and
deletes every key under that prefix when the stack has stopped.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import boto3
import httpx
import pytest
import redis

from local.embedded import free_port

__all__ = [
    "LocalStackHandle",
    "delete_redis_keys",
    "redis_keys",
    "run_local_stack",
    "run_stack_on_test_servers",
    "stack_environment",
    "wait_until",
]

T = TypeVar("T")

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 60.0
# Keys of the stack's functions start with this and a random part, so that
# runs sharing a Redis server do not see each other's keys.
REDIS_KEY_PREFIX_ROOT = "e2e:"
# Characters that SCAN MATCH reads as a glob pattern.
_GLOB_SPECIAL = re.compile(r"([*?\[\]\\])")


@dataclass(frozen=True)
class LocalStackHandle:
    """URLs of the running stack and clients to reach it."""

    info: dict[str, Any]
    log_path: Path
    process: subprocess.Popen[bytes]
    # None when the stack uses a Redis of its own (embedded).
    redis_key_prefix: str | None = None

    @property
    def api(self) -> str:
        return str(self.info["gateway"])

    def http(self, org_id: str = "default") -> httpx.Client:
        return httpx.Client(base_url=self.api, headers={"X-Org-Id": org_id}, timeout=35)

    def aws(self, service: str) -> Any:
        return boto3.client(
            service,
            endpoint_url=self.info["moto"],
            region_name=self.info["region"],
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )

    def queue_url(self, name: str) -> str:
        return str(self.info["queues"][name])

    def log_tail(self, lines: int = 60) -> str:
        text = self.log_path.read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])


def wait_until(
    probe: Callable[[], T | None],
    *,
    timeout_s: float,
    interval_s: float = 0.25,
    description: str | None = None,
) -> T:
    """Call ``probe`` until it returns a truthy value; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            name = description or getattr(probe, "__name__", "condition")
            raise AssertionError(f"{name}: not met within {timeout_s} s")
        time.sleep(interval_s)


def stack_environment(**settings: str | None) -> dict[str, str]:
    """Return this process's environment for a stack, changed by ``settings``.

    A setting of None removes the variable. Provider keys are always removed
    and ``LLM_MOCK=1`` is set, so that no test reaches a real LLM provider.
    """
    env = dict(os.environ)
    defaults: dict[str, str | None] = {
        "OPENAI_API_KEY": None,
        "ANTHROPIC_API_KEY": None,
        "AWS_ENDPOINT_URL": None,
        "LLM_MOCK": "1",
        "PYTHONUNBUFFERED": "1",
    }
    for name, value in {**defaults, **settings}.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


@contextmanager
def run_local_stack(
    state_dir: Path, env: dict[str, str], *extra_args: str
) -> Iterator[LocalStackHandle]:
    """Run ``python -m local`` on free ports until the block ends.

    Failed SQS messages come back after 1 s and the demo service's breaker
    cools down in 2 s. The stack's output goes to ``local-stack.log`` in
    ``state_dir`` and is shown when start-up fails. The handle's ``process``
    has its return code once the block has ended.
    """
    state_dir.mkdir(parents=True, exist_ok=True)
    log_path = state_dir / "local-stack.log"
    command = [
        sys.executable,
        "-m",
        "local",
        "run",
        "--state-dir",
        str(state_dir),
        "--port",
        str(free_port()),
        "--moto-port",
        str(free_port()),
        "--retry-visibility",
        "1",
        "--demo-reset-timeout",
        "2",
        *extra_args,
    ]
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        info = _wait_for_stack(process, state_dir / "stack.json", log_path)
        yield LocalStackHandle(
            info=info,
            log_path=log_path,
            process=process,
            redis_key_prefix=env.get("REDIS_KEY_PREFIX"),
        )
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def _wait_for_stack(
    process: subprocess.Popen[bytes], state_file: Path, log_path: Path
) -> dict[str, Any]:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log_path.read_text(errors="replace")[-6000:]
            pytest.fail(f"the local stack exited with {process.returncode}:\n{tail}")
        if state_file.exists():
            info: dict[str, Any] = json.loads(state_file.read_text())
            if info.get("pid") == process.pid:
                return info
        time.sleep(0.2)
    tail = log_path.read_text(errors="replace")[-6000:]
    pytest.fail(f"the local stack did not start in {START_TIMEOUT_S} s:\n{tail}")


@contextmanager
def run_stack_on_test_servers(
    state_dir: Path, database_url: str, redis_url: str
) -> Iterator[LocalStackHandle]:
    """Run the stack on the given servers and delete its Redis keys afterwards.

    The keys are deleted after the stack has stopped, because its workers
    write keys until then. The block fails if a key under the stack's prefix
    is still there after the deletion, which means that a process of the
    stack outlived it.
    """
    prefix = f"{REDIS_KEY_PREFIX_ROOT}{uuid.uuid4().hex[:12]}:"
    env = stack_environment(
        DATABASE_URL=database_url, REDIS_URL=redis_url, REDIS_KEY_PREFIX=prefix
    )
    try:
        with run_local_stack(state_dir, env) as handle:
            yield handle
    finally:
        delete_redis_keys(redis_url, prefix)
        left = redis_keys(redis_url, prefix)
        assert not left, f"the local stack left Redis keys under {prefix!r}: {left}"


def redis_keys(redis_url: str, prefix: str) -> list[str]:
    """Return the keys under ``prefix``, found with SCAN, sorted."""
    if not prefix:
        raise ValueError("prefix must not be empty: it would match every key")
    pattern = _GLOB_SPECIAL.sub(r"\\\1", prefix) + "*"
    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    try:
        return sorted(
            key.decode() for key in client.scan_iter(match=pattern, count=1000)
        )
    finally:
        client.close()


def delete_redis_keys(redis_url: str, prefix: str) -> int:
    """Delete every key under ``prefix`` and return how many were deleted."""
    keys = redis_keys(redis_url, prefix)
    if not keys:
        return 0
    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    try:
        return int(client.delete(*keys))
    finally:
        client.close()
