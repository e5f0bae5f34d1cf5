"""Functions, events and environments of the local stack, read from template.yaml.

Functions, their events (HTTP API routes, SQS event source mappings,
schedules, SNS subscriptions) and their environment all come from the
template, so the local stack never keeps a second list of routes or queues.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from local.cfn import IntrinsicResolver, TemplateError

__all__ = [
    "FunctionSpec",
    "HttpRoute",
    "ScheduleEvent",
    "SnsEvent",
    "SqsEvent",
    "read_functions",
    "resources_of_type",
]

logger = logging.getLogger(__name__)

_RATE = re.compile(r"^rate\(\s*(\d+)\s+(minute|minutes|hour|hours|day|days)\s*\)$")
_RATE_UNITS = {"minute": 60, "hour": 3600, "day": 86400}


@dataclass(frozen=True)
class HttpRoute:
    """One HttpApi event: ``method`` is upper case or ``ANY``."""

    function: str
    event_name: str
    method: str
    path: str

    @property
    def route_key(self) -> str:
        return f"{self.method} {self.path}"


@dataclass(frozen=True)
class SqsEvent:
    """One SQS event source mapping with Lambda's defaults filled in."""

    function: str
    event_name: str
    queue_arn: str
    batch_size: int
    batching_window_s: float
    report_batch_item_failures: bool
    enabled: bool = True


@dataclass(frozen=True)
class ScheduleEvent:
    function: str
    event_name: str
    expression: str
    interval_s: float | None
    input: Any = None
    enabled: bool = True


@dataclass(frozen=True)
class SnsEvent:
    function: str
    event_name: str
    topic_arn: str


@dataclass(frozen=True)
class FunctionSpec:
    """An AWS::Serverless::Function with Globals applied and intrinsics resolved."""

    logical_id: str
    code_uri: Path
    handler: str
    timeout_s: int
    memory_mb: int
    environment: dict[str, str]
    routes: list[HttpRoute] = field(default_factory=list)
    sqs_events: list[SqsEvent] = field(default_factory=list)
    schedules: list[ScheduleEvent] = field(default_factory=list)
    sns_events: list[SnsEvent] = field(default_factory=list)


def resources_of_type(
    resolver: IntrinsicResolver, resource_type: str
) -> dict[str, dict[str, Any]]:
    """Return the enabled resources of one type, by logical id (unresolved)."""
    resources = resolver.template.get("Resources") or {}
    return {
        logical_id: resource
        for logical_id, resource in resources.items()
        if resource.get("Type") == resource_type
        and resolver.resource_enabled(logical_id)
    }


def read_functions(resolver: IntrinsicResolver, root: Path) -> list[FunctionSpec]:
    """Read every function of the template; resources must be registered first."""
    globals_ = ((resolver.template.get("Globals") or {}).get("Function")) or {}
    global_env = (globals_.get("Environment") or {}).get("Variables") or {}
    functions = []
    for logical_id, resource in resources_of_type(
        resolver, "AWS::Serverless::Function"
    ).items():
        properties = resource.get("Properties") or {}
        own_env = (properties.get("Environment") or {}).get("Variables") or {}
        environment = resolver.resolve({**global_env, **own_env})
        code_uri = properties.get("CodeUri", globals_.get("CodeUri"))
        if not isinstance(code_uri, str):
            raise TemplateError(f"{logical_id}: CodeUri must be a local path")
        spec = FunctionSpec(
            logical_id=logical_id,
            code_uri=(root / code_uri).resolve(),
            handler=properties.get("Handler", globals_.get("Handler", "")),
            timeout_s=int(properties.get("Timeout", globals_.get("Timeout", 3))),
            memory_mb=int(
                properties.get("MemorySize", globals_.get("MemorySize", 128))
            ),
            environment={key: _env_text(value) for key, value in environment.items()},
        )
        _read_events(resolver, spec, properties.get("Events") or {})
        functions.append(spec)
    return functions


def _env_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _read_events(
    resolver: IntrinsicResolver, spec: FunctionSpec, events: dict[str, Any]
) -> None:
    for name, event in events.items():
        event_type = event.get("Type")
        properties = resolver.resolve(event.get("Properties") or {})
        if event_type == "HttpApi":
            spec.routes.append(
                HttpRoute(
                    function=spec.logical_id,
                    event_name=name,
                    method=str(properties.get("Method", "ANY")).upper(),
                    path=str(properties.get("Path", "/{proxy+}")),
                )
            )
        elif event_type == "SQS":
            spec.sqs_events.append(_sqs_event(spec.logical_id, name, properties))
        elif event_type in ("Schedule", "ScheduleV2"):
            spec.schedules.append(_schedule_event(spec.logical_id, name, properties))
        elif event_type == "SNS":
            spec.sns_events.append(
                SnsEvent(spec.logical_id, name, str(properties["Topic"]))
            )
        else:
            logger.warning(
                "event.skipped function=%s event=%s type=%s: the local stack runs "
                "HttpApi, SQS, Schedule and SNS events only",
                spec.logical_id,
                name,
                event_type,
            )


def _sqs_event(function: str, name: str, properties: dict[str, Any]) -> SqsEvent:
    # Lambda's defaults: 10 messages, no batching window.
    response_types = properties.get("FunctionResponseTypes") or []
    return SqsEvent(
        function=function,
        event_name=name,
        queue_arn=str(properties["Queue"]),
        batch_size=int(properties.get("BatchSize", 10)),
        batching_window_s=float(properties.get("MaximumBatchingWindowInSeconds", 0)),
        report_batch_item_failures="ReportBatchItemFailures" in response_types,
        enabled=bool(properties.get("Enabled", True)),
    )


def _schedule_event(
    function: str, name: str, properties: dict[str, Any]
) -> ScheduleEvent:
    expression = str(
        properties.get("Schedule") or properties.get("ScheduleExpression") or ""
    )
    match = _RATE.match(expression)
    interval = None
    if match:
        unit = match.group(2).rstrip("s")
        interval = float(int(match.group(1)) * _RATE_UNITS[unit])
    raw_input = properties.get("Input")
    return ScheduleEvent(
        function=function,
        event_name=name,
        expression=expression,
        interval_s=interval,
        input=raw_input,
        enabled=bool(properties.get("Enabled", True))
        and properties.get("State", "ENABLED") != "DISABLED",
    )
