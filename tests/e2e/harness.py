"""Helpers of the end-to-end tests: the running stack's handle and polling."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import boto3
import httpx

__all__ = ["LocalStackHandle", "wait_until"]

T = TypeVar("T")


@dataclass(frozen=True)
class LocalStackHandle:
    """URLs of the running stack and clients to reach it."""

    info: dict[str, Any]
    log_path: Path

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
