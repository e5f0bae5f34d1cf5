"""The local stack: template.yaml run on one machine, with no AWS account or Docker.

:class:`LocalStack` starts these in order:

1. PostgreSQL and Redis, the configured ones or embedded servers;
2. the stand-ins: demo downstream, Slack, PagerDuty, the local LLM server;
3. a moto server with the template's queues, topic and state machine;
4. one worker pool per function, the HTTP gateway, and the pollers;
5. a supervisor that restarts the embedded servers when they exit.

It writes every URL to ``stack.json`` in its state directory, which
``python -m local send|fail|receive`` and the end-to-end tests read.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import secrets
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from local import environment
from local.aws import MotoServer, create_resources
from local.cfn import IntrinsicResolver, load_template
from local.embedded import EmbeddedPostgres, EmbeddedRedis
from local.functions import FunctionPool
from local.gateway import Gateway
from local.model import FunctionSpec, read_functions
from local.pollers import SchedulePoller, SnsPoller, SqsPoller
from local.standins import DemoService, PagerDutyStandIn, SlackStandIn, StandIn
from local.supervisor import EmbeddedServer, EmbeddedSupervisor

__all__ = ["LocalStack", "StackOptions", "StackStartError", "read_state"]

logger = logging.getLogger(__name__)

STATE_FILE = "stack.json"


@dataclass(frozen=True)
class StackOptions:
    """Settings of one local stack; times in seconds."""

    root: Path
    state_dir: Path
    port: int = 3000
    moto_port: int | None = None
    template: str = "template.yaml"
    stack_name: str = "agent-resilience"
    region: str = "us-east-1"
    parameters: dict[str, str] = field(default_factory=dict)
    # Set in every function's environment, after the local overrides.
    extra_env: dict[str, str] = field(default_factory=dict)
    max_workers: int = 2
    # Local speed-ups; None keeps the template's timing.
    retry_visibility_s: int | None = None
    schedule_interval_s: float | None = None
    demo_reset_timeout_s: float = 10.0
    # How often the supervisor checks that the embedded servers still run.
    embedded_check_interval_s: float = 1.0


class LocalStack:
    """Start and stop every part of the local stack; see the module docstring."""

    def __init__(self, options: StackOptions) -> None:
        self.options = options
        self._stoppers: list[tuple[str, Any]] = []
        self.pools: dict[str, FunctionPool] = {}
        self.info: dict[str, Any] = {}
        self.embedded: dict[str, EmbeddedServer] = {}
        self._stopped = threading.Event()
        # The supervisor's thread rewrites stack.json after a restart.
        self._state_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<LocalStack port={self.options.port} functions={len(self.pools)}>"

    def start(self) -> dict[str, Any]:
        """Start everything; return what ``stack.json`` contains."""
        options = self.options
        _require_free_port(options.port, "--port (env PORT)")
        if options.moto_port is not None:
            _require_free_port(options.moto_port, "--moto-port (env LOCAL_MOTO_PORT)")
        options.state_dir.mkdir(parents=True, exist_ok=True)
        (options.state_dir / STATE_FILE).unlink(missing_ok=True)

        database_url = self._database_url()
        redis_url = self._redis_url()
        stand_ins = self._start_stand_ins()
        llm_url = self._start_llm_server()

        moto = MotoServer(options.moto_port, region=options.region).start(
            options.state_dir / "moto.log"
        )
        self._stoppers.append(("moto", moto.stop))
        resolver = IntrinsicResolver(
            load_template(options.root / options.template),
            parameters=options.parameters,
            region=options.region,
            stack_name=options.stack_name,
        )
        queue_urls = create_resources(moto, resolver, options.root)
        functions = read_functions(resolver, options.root)

        gateway_url = f"http://127.0.0.1:{options.port}"
        local_values = environment.LocalValues(
            root=options.root,
            region=options.region,
            moto_url=moto.url,
            app_url=gateway_url,
            database_url=database_url,
            redis_url=redis_url,
            llm_url=llm_url,
            demo_url=stand_ins["demo"].url,
            slack_url=stand_ins["slack"].url,
            pagerduty_url=stand_ins["pagerduty"].url,
            secrets=self._local_secrets(),
            demo_reset_timeout_s=options.demo_reset_timeout_s,
            extra_env=options.extra_env,
        )
        self._start_functions(functions, local_values)

        gateway = Gateway(
            [r for f in functions for r in f.routes], self.pools, options.port
        )
        gateway.start()
        self._stoppers.append(("gateway", gateway.stop))
        self._start_pollers(functions, moto, queue_urls, resolver)

        self.info = {
            "pid": os.getpid(),
            "gateway": gateway.url,
            "moto": moto.url,
            "llm": llm_url,
            "demo": stand_ins["demo"].url,
            "slack": stand_ins["slack"].url,
            "pagerduty": stand_ins["pagerduty"].url,
            "database": database_url,
            "redis": redis_url,
            "region": options.region,
            "queues": queue_urls,
            "stateMachines": {
                name: arn
                for name, arn in resolver.refs.items()
                if str(arn).startswith("arn:aws:states:")
            },
            "routes": sorted(r.route_key for f in functions for r in f.routes),
            "embedded": {
                name: _embedded_info(server) for name, server in self.embedded.items()
            },
        }
        self._write_state()
        self._start_supervisor()
        return self.info

    def _database_url(self) -> str:
        from resilience.db import Database, DatabaseConfig, apply_schema

        url = os.environ.get("DATABASE_URL", "")
        if not url:
            data_dir = self.options.state_dir / "postgres"
            data_dir.mkdir(exist_ok=True)
            server = EmbeddedPostgres(data_dir=str(data_dir))
            server.start()
            self._stoppers.append(("postgres", server.stop))
            self.embedded["postgres"] = server
            url = server.url
        database = Database(DatabaseConfig(url=url))
        try:
            apply_schema(database)
        finally:
            database.close()
        logger.info(
            "database.ready schema=applied embedded=%s",
            "DATABASE_URL" not in os.environ,
        )
        return url

    def _redis_url(self) -> str | None:
        url = os.environ.get("REDIS_URL", "")
        if url:
            return url
        if os.environ.get("UPSTASH_REDIS_REST_URL") or os.environ.get(
            "UPSTASH_REDIS_URL"
        ):
            return None
        server = EmbeddedRedis().start()
        self._stoppers.append(("redis", server.close))
        self.embedded["redis"] = server
        return server.url

    def _start_stand_ins(self) -> dict[str, StandIn]:
        stand_ins: dict[str, StandIn] = {
            "demo": DemoService(),
            "slack": SlackStandIn(),
            "pagerduty": PagerDutyStandIn(),
        }
        for name, stand_in in stand_ins.items():
            stand_in.start()
            self._stoppers.append((name, stand_in.stop))
        return stand_ins

    def _start_llm_server(self) -> str | None:
        try:
            from local.llm_server import serve_llm
        except ImportError:
            logger.warning("llm_server.missing: completions use real providers or fail")
            return None
        server, _thread = serve_llm("127.0.0.1", 0)
        self._stoppers.append(("llm", server.shutdown))
        return f"http://127.0.0.1:{server.server_port}"

    def _local_secrets(self) -> dict[str, str]:
        # Kept in the state directory so that links, signatures and encrypted
        # rows stay valid when the stack restarts on the same database.
        path = self.options.state_dir / "secrets.json"
        stored = json.loads(path.read_text()) if path.exists() else {}
        generators = {
            "LINK_SIGNING_KEY": lambda: secrets.token_urlsafe(48),
            "ESCALATION_LOCAL_KEY": lambda: base64.b64encode(os.urandom(32)).decode(),
            "WEBHOOK_SIGNING_SECRET": lambda: secrets.token_urlsafe(32),
            "SLACK_SIGNING_SECRET": lambda: secrets.token_hex(16),
        }
        changed = False
        for name, make in generators.items():
            if name not in stored:
                stored[name] = make()
                changed = True
        if changed:
            path.write_text(json.dumps(stored, indent=2))
            path.chmod(0o600)
        return stored

    def _start_functions(
        self, functions: list[FunctionSpec], values: environment.LocalValues
    ) -> None:
        for spec in functions:
            env = environment.function_environment(spec, values)
            # Workers restart when the handler's or the layer's code changes.
            watch = [spec.code_uri, self.options.root / "shared" / "resilience"]
            self.pools[spec.logical_id] = FunctionPool(
                spec, env, self.options.max_workers, watch=watch
            )
        self._stoppers.append(("functions", self._close_pools))

        # Cold starts in parallel: each import takes a second or two.
        with ThreadPoolExecutor(max_workers=4) as executor:
            list(executor.map(lambda pool: pool.warm(), self.pools.values()))

    def _close_pools(self) -> None:
        for pool in self.pools.values():
            pool.close()

    def _start_pollers(
        self,
        functions: list[FunctionSpec],
        moto: MotoServer,
        queue_urls: dict[str, str],
        resolver: IntrinsicResolver,
    ) -> None:
        pollers: list[Any] = []
        for spec in functions:
            pool = self.pools[spec.logical_id]
            for sqs_event in spec.sqs_events:
                if not sqs_event.enabled:
                    continue
                queue_name = sqs_event.queue_arn.rsplit(":", 1)[-1]
                pollers.append(
                    SqsPoller(
                        sqs_event,
                        pool,
                        moto.client("sqs"),
                        queue_urls[queue_name],
                        region=self.options.region,
                        retry_visibility_s=self.options.retry_visibility_s,
                    )
                )
            for schedule in spec.schedules:
                interval = self.options.schedule_interval_s or schedule.interval_s
                if not schedule.enabled or interval is None:
                    logger.warning(
                        "schedule.skipped function=%s expression=%r: only rate() runs",
                        spec.logical_id,
                        schedule.expression,
                    )
                    continue
                pollers.append(
                    SchedulePoller(
                        schedule,
                        pool,
                        region=self.options.region,
                        account_id=resolver.account_id,
                        interval_s=interval,
                    )
                )
            for sns_event in spec.sns_events:
                pollers.append(
                    SnsPoller(sns_event, pool, moto.client("sqs"), moto.client("sns"))
                )

        for poller in pollers:
            poller.start()

        def stop_pollers() -> None:
            for poller in pollers:
                poller.stop()
            for poller in pollers:
                poller.join(timeout=5)

        self._stoppers.append(("pollers", stop_pollers))

    def _start_supervisor(self) -> None:
        if not self.embedded:
            return
        supervisor = EmbeddedSupervisor(
            self.embedded,
            interval_s=self.options.embedded_check_interval_s,
            on_restart=self._record_restart,
        ).start()
        # Stoppers run newest first, so the supervisor stops before the
        # servers and does not start them again during shutdown.
        self._stoppers.append(("supervisor", supervisor.stop))

    def _record_restart(self, name: str, server: EmbeddedServer) -> None:
        # The new PID goes to stack.json, where tools and tests look it up.
        with self._state_lock:
            if self._stopped.is_set():
                return
            self.info["embedded"][name] = _embedded_info(server)
            self._write_state()

    def _write_state(self) -> None:
        path = self.options.state_dir / STATE_FILE
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(self.info, indent=2))
        # The database URL may carry a password.
        temporary.chmod(0o600)
        temporary.replace(path)

    def stop(self) -> None:
        """Stop everything that was started, newest first; safe to call twice."""
        with self._state_lock:
            if self._stopped.is_set():
                return
            self._stopped.set()
            (self.options.state_dir / STATE_FILE).unlink(missing_ok=True)
        for name, stop in reversed(self._stoppers):
            try:
                stop()
            except Exception:
                logger.exception("stack.stop_failed part=%s", name)
        logger.info("stack.stopped")


def _embedded_info(server: EmbeddedServer) -> dict[str, Any]:
    return {"pid": server.pid, "port": server.port, "url": server.url}


class StackStartError(RuntimeError):
    """The stack cannot start. The message names the setting to change."""


def _require_free_port(port: int, setting: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # As the servers do, so that connections in TIME_WAIT do not count.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            raise StackStartError(
                f"port {port} on 127.0.0.1 is already in use (another local "
                f"stack?): stop that process or choose another port with {setting}"
            ) from None


def read_state(state_dir: Path) -> dict[str, Any]:
    """Return the ``stack.json`` of a running stack."""
    path = state_dir / STATE_FILE
    if not path.exists():
        raise FileNotFoundError(
            f"no local stack is running with state in {state_dir}: start one with "
            "`make dev` (or pass the --state-dir it uses)"
        )
    state: dict[str, Any] = json.loads(path.read_text())
    return state
