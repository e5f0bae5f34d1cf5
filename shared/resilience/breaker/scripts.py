"""The breaker's Lua scripts, each one atomic decision or update on Redis.

Each script is ``lua/common.lua`` followed by its own file, so all of them
share the state layout and the transition rule.
"""

from __future__ import annotations

from pathlib import Path

from resilience.kvstore import Script

__all__ = ["ACQUIRE", "OPEN_UNTIL", "REPORT", "RESET", "SNAPSHOT", "breaker_keys"]

_LUA_DIR = Path(__file__).resolve().parent / "lua"


def _load(name: str) -> Script:
    common = (_LUA_DIR / "common.lua").read_text()
    body = (_LUA_DIR / f"{name}.lua").read_text()
    return Script(f"{common}\n{body}", name=f"breaker_{name}")


ACQUIRE = _load("acquire")
REPORT = _load("report")
OPEN_UNTIL = _load("open_until")
RESET = _load("reset")
SNAPSHOT = _load("snapshot")


def breaker_keys(name: str) -> list[str]:
    """Return the keys of breaker ``name``: one hash holds its whole state."""
    return [f"breaker:{name}"]
