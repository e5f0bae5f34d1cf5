"""Cold start of the graceful_degradation handler: import time and first fallback.

Prints, for a fresh Python process each:

- the handler's import time (``python -X importtime``, its top-level
  ``app`` entry) with compiled ``.pyc`` files, and with none (a fresh
  ``-X pycache_prefix``, as on Lambda when the layer ships no ``.pyc``);
- the time of the first request that falls back from openai to anthropic,
  right after init, with the SDKs imported in the background during init
  (the default) and with that turned off (``LLM_PRELOAD_SDKS=0``).

Needs ``DATABASE_URL`` (a database with schema.sql applied) and ``REDIS_URL``.
"""

from __future__ import annotations

import json
import os
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
time.sleep(float(sys.argv[1]))
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
result = {"import_s": imported, "request_s": elapsed, "provider": body["provider"]}
print(json.dumps(result))
"""


def import_time(env: dict[str, str], pycache: str | None) -> float:
    command = [sys.executable, "-X", "importtime"]
    if pycache:
        command += ["-X", f"pycache_prefix={pycache}"]
    command += ["-c", "import app"]
    done = subprocess.run(
        command, cwd=FUNCTION_DIR, env=env, capture_output=True, text=True, check=True
    )
    line = [row for row in done.stderr.splitlines() if row.rstrip().endswith("| app")][
        -1
    ]
    return int(line.split("|")[1]) / 1e6


def first_fallback(env: dict[str, str], pause_s: float) -> dict[str, Any]:
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
    from local.llm_server import serve_llm

    server, _ = serve_llm("127.0.0.1", 0)
    base = f"http://127.0.0.1:{server.server_port}"
    import httpx

    httpx.post(f"{base}/_control/failures", json={"provider": "openai", "mode": "529"})
    env = {
        **os.environ,
        "PYTHONPATH": f"{ROOT / 'shared'}:{ROOT}",
        "OPENAI_BASE_URL": f"{base}/v1",
        "ANTHROPIC_BASE_URL": base,
        "LLM_MOCK": "1",
        "LLM_CACHE_TTL_S": "0",
        "POWERTOOLS_METRICS_NAMESPACE": "AgentResilienceBench",
    }
    print(f"Python {sys.version.split()[0]}; median of 5 runs each")
    with_pyc = sorted(import_time(env, None) for _ in range(5))[2]
    without = []
    for _ in range(5):
        with tempfile.TemporaryDirectory() as empty:
            without.append(import_time(env, empty))
    print(f"handler import, .pyc present: {with_pyc:.3f} s")
    print(f"handler import, no .pyc:      {sorted(without)[2]:.3f} s")

    # The 1.5 s pause before the first event is an assumption: the real gap
    # between init and the first invocation varies, so 0 s is measured too.
    for label, preload, pause in (
        ("first fallback request, SDKs preloaded during init", "1", 1.5),
        ("first fallback request, no preload", "0", 1.5),
        ("first fallback request, preloaded, event at once", "1", 0.0),
    ):
        runs = [
            first_fallback({**env, "LLM_PRELOAD_SDKS": preload}, pause)
            for _ in range(3)
        ]
        request_s = sorted(run["request_s"] for run in runs)[1]
        providers = {run["provider"] for run in runs}
        print(
            f"{label}: {request_s:.3f} s (answered by {', '.join(sorted(providers))})"
        )
    server.shutdown()
    return 0


if __name__ == "__main__":
    sys.path[:0] = [str(ROOT), str(ROOT / "shared")]
    raise SystemExit(main())
