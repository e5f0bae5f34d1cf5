"""Transition listeners: PostgreSQL records and the alerts sent on opening.

Both run on the instance that made the transition, once per transition, so a
breaker opened by one instance is recorded and announced once, not once per
instance. Neither raises: a failure is logged and counted, because the
guarded call must go on while PostgreSQL or Slack is down.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from resilience.alerts import Alert, send_alert
from resilience.audit import write_audit
from resilience.breaker.config import BreakerState
from resilience.breaker.core import Transition
from resilience.db import Database, DatabaseConfig
from resilience.observability import capture_message, emit_metric

__all__ = ["OpeningNotifier", "PostgresRecorder", "transition_dedupe_key"]

logger = logging.getLogger(__name__)

_UPSERT_STATE = """
    INSERT INTO circuit_breaker_state AS current
        (service_name, state, generation, consecutive_fails, last_failure,
         last_success, opened_until, updated_at)
    VALUES (%(service)s, %(state)s, %(generation)s, %(fails)s,
            CASE WHEN %(failed)s THEN %(at)s END,
            CASE WHEN %(succeeded)s THEN %(at)s END,
            %(opened_until)s, now())
    ON CONFLICT (service_name) DO UPDATE SET
        state = EXCLUDED.state,
        generation = EXCLUDED.generation,
        consecutive_fails = EXCLUDED.consecutive_fails,
        last_failure = COALESCE(EXCLUDED.last_failure, current.last_failure),
        last_success = COALESCE(EXCLUDED.last_success, current.last_success),
        opened_until = EXCLUDED.opened_until,
        updated_at = now()
    WHERE current.generation < EXCLUDED.generation
"""


def transition_dedupe_key(service: str, generation: int) -> str:
    """Return the audit_log dedupe key of the transition to ``generation``."""
    return f"breaker:{service}:generation:{generation}"


@dataclass
class PostgresRecorder:
    """Upsert ``circuit_breaker_state`` and write one audit row per transition.

    The state row only moves forward (a higher generation wins), and the audit
    row is unique per (service, generation), so a retried write is harmless.
    Transitions of the in-memory fallback state are not recorded: their
    generations belong to one instance.
    """

    database: Database | None = None
    statement_timeout_ms: int = 1000

    def _database(self) -> Database:
        if self.database is None:
            config = DatabaseConfig.from_env()
            self.database = Database(
                DatabaseConfig(
                    url=config.url,
                    statement_timeout_ms=self.statement_timeout_ms,
                    connect_timeout_s=1.0,
                    application_name="agent-resilience-breaker",
                )
            )
        return self.database

    def __call__(self, transition: Transition) -> None:
        if transition.local:
            return
        params: dict[str, Any] = {
            "service": transition.name,
            "state": transition.state.value,
            "generation": transition.generation,
            "fails": transition.failure_count,
            "failed": transition.state is BreakerState.OPEN,
            "succeeded": transition.reason == "probe_succeeded",
            "at": transition.at,
            "opened_until": transition.opened_until,
        }
        try:
            with self._database().transaction() as connection:
                connection.execute(_UPSERT_STATE, params)
                write_audit(
                    connection,
                    pattern="breaker",
                    action=f"breaker.{transition.previous.value}_to_{transition.state.value}",
                    task_id=transition.name,
                    actor=transition.actor,
                    metadata={
                        "service": transition.name,
                        "previous": transition.previous.value,
                        "state": transition.state.value,
                        "generation": transition.generation,
                        "reason": transition.reason,
                        "failureCount": transition.failure_count,
                        "openedUntil": transition.opened_until.isoformat()
                        if transition.opened_until
                        else None,
                    },
                    dedupe_key=transition_dedupe_key(
                        transition.name, transition.generation
                    ),
                )
        except Exception as exc:
            logger.warning(
                "breaker.record_failed",
                extra={
                    "service": transition.name,
                    "generation": transition.generation,
                    "error": f"{type(exc).__name__}: {exc}",
                },
            )
            emit_metric("BreakerRecordFailed", 1, service=transition.name)


@dataclass
class OpeningNotifier:
    """Announce each opening: metric BreakerOpened, Slack (+ PagerDuty), Sentry."""

    critical: bool = False

    def __call__(self, transition: Transition) -> None:
        if transition.local or transition.state is not BreakerState.OPEN:
            return
        # The alarm in template.yaml watches BreakerOpened without dimensions.
        emit_metric("BreakerOpened", 1)

        until = transition.opened_until.isoformat() if transition.opened_until else "-"
        title = f"Circuit breaker {transition.name} opened"
        text = (
            f"{transition.name} moved from {transition.previous.value} to open "
            f"({transition.reason}) after {transition.failure_count} consecutive "
            f"failures; calls are rejected until {until}."
        )
        send_alert(
            Alert(
                title=title,
                text=text,
                severity="critical" if self.critical else "warning",
                source="breaker",
                dedupe_key=transition_dedupe_key(
                    transition.name, transition.generation
                ),
                details={
                    "service": transition.name,
                    "generation": transition.generation,
                    "reason": transition.reason,
                    "openedUntil": until,
                },
                page=self.critical,
            )
        )
        try:
            capture_message(
                title,
                level="error" if self.critical else "warning",
                service=transition.name,
                generation=transition.generation,
                reason=transition.reason,
            )
        except Exception as exc:
            logger.warning(
                "breaker.sentry_failed",
                extra={
                    "service": transition.name,
                    "error": f"{type(exc).__name__}: {exc}",
                },
            )
