"""The one Retry-After parser of providers, services and batch processors."""

from __future__ import annotations

import email.utils
import time

import httpx
import pytest

from resilience.retry_after import MAX_RETRY_AFTER_S, parse_retry_after


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after": "7"}, 7.0),
        ({"Retry-After": "0.5"}, 0.5),
        ({"retry-after-ms": "1500", "retry-after": "9"}, 1.5),
        ({"retry-after": "-3"}, 0.0),
        ({"retry-after": "soon"}, None),
        ({"retry-after": ""}, None),
        ({}, None),
        (None, None),
    ],
)
def test_reads_seconds_and_milliseconds(
    headers: dict[str, str] | None, expected: float | None
) -> None:
    assert parse_retry_after(headers) == expected


def test_reads_http_date() -> None:
    now = time.time()
    date = email.utils.formatdate(now + 30, usegmt=True)

    assert 28 < (parse_retry_after({"Retry-After": date}, now=now) or 0) <= 31
    assert parse_retry_after({"Retry-After": date}, now=now + 60) == 0.0


@pytest.mark.parametrize(
    "raw", ["inf", "Infinity", "nan", "-inf", "1e3", "1_000", "\u0663", "60, 90"]
)
def test_non_decimal_counts_as_absent(raw: str) -> None:
    assert parse_retry_after({"retry-after": raw}) is None
    assert parse_retry_after({"retry-after-ms": raw, "retry-after": "4"}) == 4.0


@pytest.mark.parametrize("raw", ["1000000000000", "9" * 300])
def test_huge_wait_is_cut_to_maximum(raw: str) -> None:
    assert parse_retry_after({"retry-after": raw}) == MAX_RETRY_AFTER_S
    far = email.utils.formatdate(time.time() + 10 * 365 * 86400, usegmt=True)
    assert parse_retry_after({"retry-after": far}) == MAX_RETRY_AFTER_S


def test_reads_httpx_headers() -> None:
    assert parse_retry_after(httpx.Headers({"Retry-After": "12"})) == 12.0
