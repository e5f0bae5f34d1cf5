"""Metrics, Sentry and logging set-up shared by every handler.

The library logs with ``logging.getLogger(__name__)``; handlers create a
Powertools ``Logger``, which formats those records as JSON with the Lambda
context. Metrics are CloudWatch Embedded Metric Format lines written by
:func:`emit_metric`, so library code can emit one without a handler's flush
decorator.

Settings: ``POWERTOOLS_METRICS_NAMESPACE`` (default ``AgentResilience``),
``POWERTOOLS_METRICS_DISABLED`` and ``POWERTOOLS_DEV`` (metrics off, by the
same rules as Powertools), ``POWERTOOLS_SERVICE_NAME``, ``SENTRY_DSN``
(Sentry is off when unset), ``ENVIRONMENT`` (Sentry environment, default
``dev``).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.logging.utils import copy_config_to_registered_loggers
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.shared.functions import strtobool

__all__ = [
    "MetricUnit",
    "capture_exception",
    "capture_message",
    "emit_metric",
    "init_sentry",
    "route_library_logs",
]

logger = logging.getLogger(__name__)

DEFAULT_NAMESPACE = "AgentResilience"

_invalid_switches_logged: set[str] = set()
_sentry_lock = threading.Lock()
_sentry_ready = False


def emit_metric(
    name: str,
    value: float = 1,
    unit: MetricUnit = MetricUnit.Count,
    **dimensions: str,
) -> None:
    """Write one metric as a CloudWatch Embedded Metric Format line.

    The metric carries exactly the dimensions given, none by default: the
    alarms in template.yaml match metrics without dimensions. Powertools
    ``single_metric`` would add a ``service`` dimension from
    ``POWERTOOLS_SERVICE_NAME``, so the line is built here. Failures are
    logged, never raised: a metric must not fail the work it describes.
    ``POWERTOOLS_METRICS_DISABLED`` turns the lines off as it does for
    Powertools' own metrics, so a command whose output is read by a program
    (a benchmark's ``--json``) prints nothing else.
    """
    if _metrics_disabled():
        return
    namespace = os.environ.get("POWERTOOLS_METRICS_NAMESPACE", DEFAULT_NAMESPACE)
    document: dict[str, Any] = {
        "_aws": {
            "Timestamp": int(time.time() * 1000),
            "CloudWatchMetrics": [
                {
                    "Namespace": namespace,
                    "Dimensions": [sorted(dimensions)],
                    "Metrics": [{"Name": name, "Unit": unit.value}],
                }
            ],
        },
        name: value,
    }
    document.update({key: str(item) for key, item in dimensions.items()})
    try:
        line = json.dumps(document)
        # Lambda sends stdout to CloudWatch Logs, which extracts EMF lines.
        print(line, flush=True)
    except (TypeError, ValueError, OSError):
        logger.warning("metric.emit_failed", extra={"metric": name}, exc_info=True)


def _metrics_disabled() -> bool:
    """Apply Powertools' rules: an explicit switch wins, else POWERTOOLS_DEV."""
    explicit = _env_switch("POWERTOOLS_METRICS_DISABLED")
    if explicit is not None:
        return explicit
    return _env_switch("POWERTOOLS_DEV") is True


def _env_switch(name: str) -> bool | None:
    """Return a true/false setting, or None when it is unset, empty or invalid.

    Powertools raises ValueError for a value such as "maybe", which must not
    fail the work a metric describes, so it counts as unset and the container
    logs it once.
    """
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    try:
        return strtobool(raw)
    except ValueError:
        if name not in _invalid_switches_logged:
            _invalid_switches_logged.add(name)
            logger.warning(
                "metric.invalid_switch",
                extra={
                    "setting": name,
                    "value": raw[:32],
                    "expected": "true or false (also 1/0, yes/no, on/off)",
                },
            )
        return None


def init_sentry() -> bool:
    """Initialise Sentry once per container when ``SENTRY_DSN`` is set."""
    global _sentry_ready
    dsn = os.environ.get("SENTRY_DSN", "")
    if not dsn:
        return False
    with _sentry_lock:
        if not _sentry_ready:
            import sentry_sdk
            from sentry_sdk.integrations.aws_lambda import AwsLambdaIntegration

            sentry_sdk.init(
                dsn=dsn,
                environment=os.environ.get("ENVIRONMENT", "dev"),
                integrations=[AwsLambdaIntegration(timeout_warning=True)],
                send_default_pii=False,
                traces_sample_rate=0.0,
            )
            _sentry_ready = True
    return True


def capture_exception(error: BaseException, **tags: Any) -> None:
    """Send an error to Sentry with tags when Sentry is configured."""
    if not init_sentry():
        return
    import sentry_sdk

    with sentry_sdk.new_scope() as scope:
        for key, value in tags.items():
            scope.set_tag(key, str(value))
        sentry_sdk.capture_exception(error)


def capture_message(message: str, level: str = "warning", **tags: Any) -> None:
    """Send a message event to Sentry with tags when Sentry is configured."""
    if not init_sentry():
        return
    import sentry_sdk

    with sentry_sdk.new_scope() as scope:
        for key, value in tags.items():
            scope.set_tag(key, str(value))
        sentry_sdk.capture_message(message, level=level)  # type: ignore[arg-type]


def route_library_logs(handler_logger: Logger) -> None:
    """Send the library's log records through a handler's Powertools Logger.

    The library logs to ``logging.getLogger("resilience.<module>")``. Giving the
    ``resilience`` logger the handler's JSON handler and level puts those
    records, with their ids, in the function's structured log.
    """
    logging.getLogger("resilience")
    copy_config_to_registered_loggers(
        source_logger=handler_logger, include={"resilience"}
    )
