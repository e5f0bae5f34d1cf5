"""Failover benchmark: this project's LLM chain against LiteLLM's Router.

Both run in one process against the same local LLM server
(``local/llm_server.py``, started here as a child process). They use the
same providers: openai gpt-4o-mini first, anthropic claude-haiku-4-5 as the
fallback. The response cache is off, every request has a prompt of its own,
and every system writes a usage row to PostgreSQL inside the timing.

Scenarios: ``healthy``, ``primary_529``, ``primary_429_retry_after``
(Retry-After: 7), ``primary_hang`` (2 s attempt timeout) and
``after_breaker_open`` (a hanging primary after three failures, measured in
this process and in a fresh one). The systems take turns, one request
each per round, for ``--requests`` rounds (default 50; 100 after the breaker
opened). A system whose requests add up to ``--max-series-s`` seconds stops
early, and the output names its count. Baselines: the bare openai SDK call
(``healthy``) and the fallback alone, the bare anthropic SDK call.

LiteLLM runs twice: with retries off (``num_retries=0``) and with its
default retries. It is imported with ``LITELLM_LOCAL_MODEL_COST_MAP=True``,
so it does not fetch its price map from the internet.

Usage::

    python bench/llm_failover.py            # table of seconds and ratios
    python bench/llm_failover.py --json     # medians per scenario and system

PostgreSQL and Redis come from ``DATABASE_URL`` / ``REDIS_URL`` when set
(a scratch database is created and dropped), else from embedded servers.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "shared")]
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("LITELLM_TELEMETRY", "False")
os.environ.setdefault("POWERTOOLS_METRICS_NAMESPACE", "AgentResilienceBench")

import httpx  # noqa: E402

PRIMARY = ("openai", "gpt-4o-mini")
FALLBACK = ("anthropic", "claude-haiku-4-5")
ATTEMPT_TIMEOUT_S = 2.0
MAX_TOKENS = 64
SCENARIOS = (
    "healthy",
    "primary_529",
    "primary_429_retry_after",
    "primary_hang",
    "after_breaker_open",
)
# Failure rule of the primary in each scenario (None: healthy).
RULES: dict[str, dict[str, Any] | None] = {
    "healthy": None,
    "primary_529": {"mode": "529"},
    "primary_429_retry_after": {"mode": "429", "retryAfter": 7},
    "primary_hang": {"mode": "hang"},
    "after_breaker_open": {"mode": "hang"},
}
SYSTEMS = ("ours", "litellm_no_retries", "litellm_default_retries")


@dataclass
class Series:
    """Seconds per request of one system in one scenario."""

    samples: list[float] = field(default_factory=list)
    answered_by: dict[str, int] = field(default_factory=dict)

    @property
    def first(self) -> float:
        return self.samples[0]

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    def to_json(self) -> dict[str, Any]:
        return {"first": self.first, "median": self.median, "n": len(self.samples)}


# ---------------------------------------------------------------- systems


class Systems:
    """Builds each system under test against one server, database and Redis."""

    def __init__(self, base_url: str, database_url: str, redis_url: str) -> None:
        self.base_url = base_url
        self.database_url = database_url
        self.redis_url = redis_url
        from resilience.db import Database, DatabaseConfig

        self.database = Database(DatabaseConfig(url=database_url))

    def prompt(self) -> list[dict[str, str]]:
        return [{"role": "user", "content": f"benchmark prompt {uuid.uuid4()}"}]

    def record(self, provider: str, model: str, usage: Any, latency_s: float) -> None:
        """Write the usage row every system pays for, as the chain does."""
        from decimal import Decimal

        from resilience.llm.pricing import default_price_table
        from resilience.llm.usage import UsageRecord, record_usage

        price = default_price_table().price(provider, model)
        record = UsageRecord(
            task_run_id=f"bench-{uuid.uuid4()}",
            org_id="bench",
            provider=provider,
            model=model,
            tier="default",
            usage=usage,
            cost=price.cost(usage) if price else None,
            price_version=price.version if price else None,
            latency_ms=round(latency_s * 1000),
            degraded=provider != PRIMARY[0],
            cached=False,
        )
        record_usage(self.database, record, soft_budget=Decimal(10**9))

    # -- our chain

    def ours(self, prefix: str) -> Callable[[], str]:
        from resilience.kvstore import RedisStore
        from resilience.llm import ChainConfig, CompletionRequest, LLMChain, warm_up

        # As in the handler's init phase: the SDKs are imported before requests.
        preload = warm_up()
        if preload is not None:
            preload.join()

        store = RedisStore.from_url(self.redis_url, prefix=prefix, timeout_ms=500)
        chain = LLMChain(
            ChainConfig(
                attempt_timeout_s=ATTEMPT_TIMEOUT_S,
                cache_ttl_s=0,
                breaker_failures=3,
                breaker_reset_s=600,
            ),
            database=self.database,
            store=store,
        )

        def call() -> str:
            request = CompletionRequest(
                messages=self.prompt(),
                max_tokens=MAX_TOKENS,
                run_id=f"bench-{uuid.uuid4()}",
                org_id="bench",
                cache=False,
            )
            return chain.complete(request).provider

        return call

    # -- LiteLLM

    def litellm(self, *, retries: bool) -> Callable[[], str]:
        import litellm
        from litellm import Router

        from resilience.llm.types import Usage

        litellm.telemetry = False
        settings: dict[str, Any] = {} if retries else {"num_retries": 0}
        router = Router(
            model_list=[
                {
                    "model_name": "primary",
                    "litellm_params": {
                        "model": f"openai/{PRIMARY[1]}",
                        "api_base": f"{self.base_url}/v1",
                        "api_key": "bench-key",
                        "timeout": ATTEMPT_TIMEOUT_S,
                    },
                },
                {
                    "model_name": "fallback",
                    "litellm_params": {
                        "model": f"anthropic/{FALLBACK[1]}",
                        "api_base": self.base_url,
                        "api_key": "bench-key",
                        "timeout": ATTEMPT_TIMEOUT_S,
                    },
                },
            ],
            fallbacks=[{"primary": ["fallback"]}],
            timeout=ATTEMPT_TIMEOUT_S,
            **settings,
        )

        def call() -> str:
            started = time.perf_counter()
            response = router.completion(
                model="primary", messages=self.prompt(), max_tokens=MAX_TOKENS
            )
            provider, model = FALLBACK if "claude" in response.model else PRIMARY
            usage = Usage(
                input_tokens=response.usage.prompt_tokens,
                output_tokens=response.usage.completion_tokens,
            )
            self.record(provider, model, usage, time.perf_counter() - started)
            return provider

        return call

    # -- bare SDK calls

    def bare(self, provider: str) -> Callable[[], str]:
        from resilience.llm.providers import AnthropicProvider, OpenAIProvider

        if provider == "openai":
            import openai

            adapter: Any = OpenAIProvider(
                openai.OpenAI(
                    api_key="bench-key", base_url=f"{self.base_url}/v1", max_retries=0
                )
            )
            model = PRIMARY[1]
        else:
            import anthropic

            adapter = AnthropicProvider(
                anthropic.Anthropic(
                    api_key="bench-key", base_url=self.base_url, max_retries=0
                )
            )
            model = FALLBACK[1]

        def call() -> str:
            started = time.perf_counter()
            answer = adapter.complete(
                model, self.prompt(), max_tokens=MAX_TOKENS, timeout_s=ATTEMPT_TIMEOUT_S
            )
            self.record(provider, model, answer.usage, time.perf_counter() - started)
            return provider

        return call

    def build(self, system: str, prefix: str) -> Callable[[], str]:
        if system == "ours":
            return self.ours(prefix)
        if system == "litellm_no_retries":
            return self.litellm(retries=False)
        if system == "litellm_default_retries":
            return self.litellm(retries=True)
        if system == "bare_primary":
            return self.bare(PRIMARY[0])
        return self.bare(FALLBACK[0])


def point_clients_at(base_url: str) -> None:
    """Make the chain's SDK clients use the benchmark's LLM server."""
    os.environ["OPENAI_BASE_URL"] = f"{base_url}/v1"
    os.environ["ANTHROPIC_BASE_URL"] = base_url
    os.environ["LLM_MOCK"] = "1"


def measure(call: Callable[[], str], count: int, max_series_s: float) -> Series:
    return measure_interleaved({"only": call}, count, max_series_s)["only"]


def measure_interleaved(
    calls: dict[str, Callable[[], str]], count: int, max_series_s: float
) -> dict[str, Series]:
    """Call each system in turn, ``count`` rounds, so load changes hit all alike.

    A system whose samples add up to ``max_series_s`` stops early.
    """
    results = {name: Series() for name in calls}
    for _ in range(count):
        for name, call in calls.items():
            series = results[name]
            if sum(series.samples) > max_series_s:
                continue
            begin = time.perf_counter()
            provider = call()
            series.samples.append(time.perf_counter() - begin)
            series.answered_by[provider] = series.answered_by.get(provider, 0) + 1
    return results


# ---------------------------------------------------------------- servers


class Environment:
    """The LLM server child process, a scratch database and Redis."""

    def __init__(self) -> None:
        from local.embedded import (
            EmbeddedPostgres,
            EmbeddedRedis,
            free_port,
            wait_for_port,
        )

        self._embedded: list[Any] = []
        port = free_port()
        self.server = subprocess.Popen(
            [sys.executable, "-m", "local.llm_server", "--port", str(port)],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port(port)
        self.base_url = f"http://127.0.0.1:{port}"

        server_url = os.environ.get("DATABASE_URL")
        if not server_url:
            postgres = EmbeddedPostgres().start()
            self._embedded.append(postgres)
            server_url = postgres.url
        self.redis_url = os.environ.get("REDIS_URL") or ""
        if not self.redis_url:
            redis = EmbeddedRedis().start()
            self._embedded.append(redis)
            self.redis_url = redis.url
        self.admin_url = server_url
        self.database_url = self._create_database(server_url)
        # The breakers' transition recorder writes to DATABASE_URL: the scratch one.
        os.environ["DATABASE_URL"] = self.database_url
        os.environ["REDIS_URL"] = self.redis_url
        point_clients_at(self.base_url)

    def _create_database(self, server_url: str) -> str:
        import psycopg

        from resilience.db import Database, DatabaseConfig, apply_schema

        self.database_name = f"ar_bench_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(server_url, autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{self.database_name}"')
        url = psycopg.conninfo.make_conninfo(server_url, dbname=self.database_name)
        database = Database(DatabaseConfig(url=url))
        apply_schema(database)
        database.close()
        return url

    def fail(self, rule: dict[str, Any] | None) -> None:
        httpx.delete(f"{self.base_url}/_control/failures").raise_for_status()
        if rule is not None:
            body = {"provider": PRIMARY[0], "model": "*", **rule}
            httpx.post(
                f"{self.base_url}/_control/failures", json=body
            ).raise_for_status()

    def close(self) -> None:
        import psycopg

        self.server.terminate()
        self.server.wait(timeout=10)
        with psycopg.connect(self.admin_url, autocommit=True) as admin:
            admin.execute(
                f'DROP DATABASE IF EXISTS "{self.database_name}" WITH (FORCE)'
            )
        for server in reversed(self._embedded):
            server.close()


# ---------------------------------------------------------------- the run


def run_scenario(
    env: Environment, systems: Systems, scenario: str, args: argparse.Namespace
) -> dict[str, Series]:
    env.fail(RULES[scenario])
    count = 100 if scenario == "after_breaker_open" else args.requests
    baselines: tuple[str, ...] = ("bare_primary", "fallback_alone")
    if scenario != "healthy":
        baselines = ("fallback_alone",)
    results: dict[str, Series] = {}

    calls: dict[str, Callable[[], str]] = {}
    for system in (*baselines, *SYSTEMS):
        prefix = f"bench:{uuid.uuid4().hex[:8]}:"
        calls[system] = systems.build(system, prefix)
        if scenario == "after_breaker_open" and system not in baselines:
            # Three failures open our breaker (and LiteLLM's cooldown, if any).
            for _ in range(3):
                calls[system]()
            fresh = _fresh_process(env, system, prefix, args)
            results[f"{system}_fresh_process"] = fresh

    for system, series in measure_interleaved(calls, count, args.max_series_s).items():
        results[system] = series
        _progress(scenario, system, series)
    return results


def _fresh_process(
    env: Environment, system: str, prefix: str, args: argparse.Namespace
) -> Series:
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        system,
        "--prefix",
        prefix,
        "--base-url",
        env.base_url,
        "--database-url",
        env.database_url,
        "--redis-url",
        env.redis_url,
        "--requests",
        "100",
        "--max-series-s",
        str(args.max_series_s),
    ]
    output = subprocess.run(
        command, capture_output=True, text=True, check=True, timeout=600
    )
    data = json.loads(output.stdout.strip().splitlines()[-1])
    series = Series(samples=data["samples"], answered_by=data["answeredBy"])
    _progress("after_breaker_open", f"{system} (fresh process)", series)
    return series


def _progress(scenario: str, system: str, series: Series) -> None:
    sys.stderr.write(
        f"  {scenario:<24} {system:<36} n={len(series.samples):<3} "
        f"first={series.first:.3f}s median={series.median:.3f}s "
        f"answered_by={series.answered_by}\n"
    )


def child_main(args: argparse.Namespace) -> int:
    """Measure one system in a fresh process (after_breaker_open)."""
    point_clients_at(args.base_url)
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
        systems = Systems(args.base_url, args.database_url, args.redis_url)
        call = systems.build(args.child, args.prefix)
        series = measure(call, args.requests, args.max_series_s)
    print(json.dumps({"samples": series.samples, "answeredBy": series.answered_by}))
    return 0


def print_report(results: dict[str, dict[str, Series]]) -> None:
    print("Graceful degradation failover: seconds per request (first / median)")
    print(
        f"attempt timeout {ATTEMPT_TIMEOUT_S} s; LiteLLM with retries off and default"
    )
    for scenario, series in results.items():
        baseline_name = "bare_primary" if scenario == "healthy" else "fallback_alone"
        baseline = series[baseline_name]
        print(f"\n{scenario}")
        for name, one in series.items():
            ratio = one.median / baseline.median if baseline.median else float("nan")
            print(
                f"  {name:<40} n={len(one.samples):<3} first={one.first:7.3f}  "
                f"median={one.median:7.3f}  x{ratio:6.2f} of {baseline_name}"
            )
        ours = series["ours"]
        for other in ("litellm_no_retries", "litellm_default_retries"):
            theirs = series[other]
            print(
                f"  ours / {other}: first x{ours.first / theirs.first:.3f}, "
                f"median x{ours.median / theirs.median:.3f}"
            )
        extra = ours.median - baseline.median
        print(f"  ours - {baseline_name} (median): {extra * 1000:+.1f} ms")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--requests", type=int, default=50, help="requests per series")
    parser.add_argument(
        "--max-series-s",
        type=float,
        default=40.0,
        help="stop a series after this many seconds (its count is printed)",
    )
    parser.add_argument("--scenario", choices=SCENARIOS, action="append")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--prefix", help=argparse.SUPPRESS)
    parser.add_argument("--base-url", help=argparse.SUPPRESS)
    parser.add_argument("--database-url", help=argparse.SUPPRESS)
    parser.add_argument("--redis-url", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    # Provider failures are the point of the run: keep their log lines quiet.
    logging.basicConfig(level=logging.CRITICAL)
    if args.child:
        return child_main(args)

    env = Environment()
    try:
        # The chain prints its metrics as EMF lines on stdout; keep them out
        # of the report.
        with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
            systems = Systems(env.base_url, env.database_url, env.redis_url)
            results = {
                scenario: run_scenario(env, systems, scenario, args)
                for scenario in (args.scenario or SCENARIOS)
            }
            systems.database.close()
    finally:
        env.close()

    if args.json:
        summary = {
            scenario: {
                "ours": series["ours"].median,
                "litellm": series["litellm_no_retries"].median,
                "fallback_alone": series["fallback_alone"].median,
            }
            for scenario, series in results.items()
        }
        print(json.dumps(summary))
    else:
        print_report(results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
