"""Read the wait a server requests: ``retry-after-ms`` or ``Retry-After``.

One parser serves the LLM providers, the registered services and the batch
processors, so a bad header means the same thing everywhere.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping
from email.utils import parsedate_to_datetime
from typing import Any

__all__ = ["MAX_RETRY_AFTER_S", "parse_retry_after"]

# A longer wait is more likely a server's mistake than a plan: honouring
# Retry-After: 1e12 would keep a breaker open for ever.
MAX_RETRY_AFTER_S = 3600.0

# Digits with an optional sign and fraction; RFC 9110 allows only digits,
# and some servers send a fraction or a negative number anyway.
_NUMBER = re.compile(r"-?[0-9]+(?:\.[0-9]+)?")


def parse_retry_after(headers: Any, *, now: float | None = None) -> float | None:
    """Return the seconds to wait, or None when the headers give no usable value.

    ``retry-after-ms`` (sent by OpenAI and Anthropic) wins over ``Retry-After``,
    which may be seconds or an HTTP date. Names match in any case. A value
    that is neither a plain decimal number nor a date counts as absent, a
    negative one as 0, and one above ``MAX_RETRY_AFTER_S`` is cut to it.
    """
    raw_ms = _header(headers, "retry-after-ms")
    if raw_ms:
        seconds = _finite(raw_ms)
        if seconds is not None:
            return _bounded(seconds / 1000)
    raw = _header(headers, "retry-after")
    if not raw:
        return None
    seconds = _finite(raw)
    if seconds is not None:
        return _bounded(seconds)
    try:
        moment = parsedate_to_datetime(raw)
    except (TypeError, ValueError, IndexError):
        return None
    return _bounded(moment.timestamp() - (time.time() if now is None else now))


def _header(headers: Any, name: str) -> str | None:
    if headers is None:
        return None
    value = headers.get(name)
    if value is None and isinstance(headers, Mapping):
        # httpx headers ignore case already; a plain dict does not.
        value = next(
            (v for key, v in headers.items() if str(key).lower() == name), None
        )
    return None if value is None else str(value).strip()


def _finite(raw: str) -> float | None:
    # float() would also take "1_000", "inf" and non-ASCII digits.
    if not _NUMBER.fullmatch(raw):
        return None
    value = float(raw)
    return value if math.isfinite(value) else None


def _bounded(seconds: float) -> float:
    return min(max(0.0, seconds), MAX_RETRY_AFTER_S)
