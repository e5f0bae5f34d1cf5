"""Cold start of the graceful_degradation handler: import time and first fallback.

Prints, for a fresh Python process each:

- the handler's import time (``python -X importtime``, its top-level
  ``app`` entry) with compiled ``.pyc`` files, and with none (a fresh
  ``-X pycache_prefix``, which recompiles the standard library too, so it
  is slower than a Lambda layer without ``.pyc`` would be);
- the time of the first request that falls back from openai to anthropic,
  right after init, with the SDKs imported in the background during init
  (the default) and with that turned off (``LLM_PRELOAD_SDKS=0``).

PostgreSQL and Redis come from ``DATABASE_URL`` / ``REDIS_URL`` when set (a
scratch database is created and dropped), else from embedded servers.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
FUNCTION_DIR = ROOT / "functions" / "graceful_degradation"

FIRST_REQUEST = r"""
import json, sys, time
started = time.perf_counter()
import app
imported = time.perf_counter() - started
if sys.argv[1] == "join":
    app.preload.join()
else:
    time.sleep(float(sys.argv[1]))
preloaded = time.perf_counter() - started
event = json.load(open(sys.argv[2]))
class Context:
    aws_request_id = "cold-start-1"
    function_name = "graceful-degradation"
    memory_limit_in_mb = 1024
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:gd"
    def get_remaining_time_in_millis(self):
        return 29000
begin = time.perf_counter()
response = app.lambda_handler(event, Context())
elapsed = time.perf_counter() - begin
body = json.loads(response["body"])
result = {
    "import_s": imported,
    "preloaded_s": preloaded,
    "request_s": elapsed,
    "provider": body["provider"],
}
print(json.dumps(result))
"""


def import_time(env: dict[str, str], pycache: str | None) -> float:
    command = [sys.executable, "-X", "importtime"]
    if pycache:
        command += ["-X", f"pycache_prefix={pycache}"]
    command += ["-c", "import app"]
    # Without the preload thread, whose imports -X importtime would mix into
    # the handler's own figures. The thread starts after the import anyway.
    quiet = {**env, "LLM_PRELOAD_SDKS": "0"}
    done = subprocess.run(
        command, cwd=FUNCTION_DIR, env=quiet, capture_output=True, text=True, check=True
    )
    found = re.findall(r"import time:\s+\d+ \|\s+(\d+) \|\s+app$", done.stderr, re.M)
    if not found:
        raise RuntimeError(f"no import time of app in: {done.stderr[-2000:]}")
    return int(found[-1]) / 1e6


def first_fallback(env: dict[str, str], pause_s: float | str) -> dict[str, Any]:
    event = ROOT / "tests" / "events" / "llm" / "post_completion.json"
    done = subprocess.run(
        [sys.executable, "-c", FIRST_REQUEST, str(pause_s), str(event)],
        cwd=FUNCTION_DIR,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    from llm_failover import Environment

    # A scratch database with schema.sql, Redis, and the LLM server.
    scratch = Environment()
    try:
        return measure(scratch)
    finally:
        scratch.close()


def measure(scratch: Any) -> int:
    base = scratch.base_url
    scratch.fail({"mode": "529"})
    env = {
        **os.environ,
        "DATABASE_URL": scratch.database_url,
        "REDIS_URL": scratch.redis_url,
        "PYTHONPATH": f"{ROOT / 'shared'}:{ROOT}",
        "OPENAI_BASE_URL": f"{base}/v1",
        "ANTHROPIC_BASE_URL": base,
        "LLM_MOCK": "1",
        "LLM_CACHE_TTL_S": "0",
        "POWERTOOLS_METRICS_NAMESPACE": "AgentResilienceBench",
    }
    print(f"Python {sys.version.split()[0]}; medians of 5 imports and 3 requests")
    with_pyc = sorted(import_time(env, None) for _ in range(5))[2]
    without = []
    for _ in range(5):
        with tempfile.TemporaryDirectory() as empty:
            without.append(import_time(env, empty))
    print(f"handler import, .pyc present: {with_pyc:.3f} s")
    print(f"handler import, no .pyc:      {sorted(without)[2]:.3f} s")

    joined = [first_fallback(env, "join") for _ in range(3)]
    ready = sorted(run["preloaded_s"] for run in joined)[1]
    after = sorted(run["request_s"] for run in joined)[1]
    print(f"preload finished {ready:.3f} s after the import began")
    print(f"first fallback request after the preload finished: {after:.3f} s")
    # The 1.5 s pause before the first event is an assumption: the real gap
    # between init and the first invocation varies, so 0 s is measured too.
    pauses: tuple[tuple[str, str, float], ...] = (
        ("first fallback request, SDKs preloaded during init", "1", 1.5),
        ("first fallback request, no preload", "0", 1.5),
        ("first fallback request, preloaded, event at once", "1", 0.0),
        ("first fallback request, no preload, event at once", "0", 0.0),
    )
    for label, preload, pause in pauses:
        runs = [
            first_fallback({**env, "LLM_PRELOAD_SDKS": preload}, pause)
            for _ in range(3)
        ]
        request_s = sorted(run["request_s"] for run in runs)[1]
        providers = {run["provider"] for run in runs}
        print(
            f"{label}: {request_s:.3f} s (answered by {', '.join(sorted(providers))})"
        )
    return 0


if __name__ == "__main__":
    sys.path[:0] = [str(ROOT), str(ROOT / "shared"), str(ROOT / "bench")]
    raise SystemExit(main())
