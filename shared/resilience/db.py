"""PostgreSQL access: one connection per container, reused across invocations.

A Lambda container handles one invocation at a time, so one connection per
container is the right pool size: it is opened on first use, kept between
invocations, and dropped after any connection-level failure so that the next
call opens a fresh one. Work that runs on several threads of one container
shares the connection under a lock.

The connection works behind PgBouncer (transaction pooling) and RDS Proxy:
psycopg's server-side prepared statements are off (``prepare_threshold=None``),
and the statement timeout is set with ``SET LOCAL`` inside each transaction
instead of as a startup option, which transaction poolers reject.

Settings (environment, read by :meth:`DatabaseConfig.from_env`):

- ``DATABASE_URL``: a libpq connection string or URI.
- ``DATABASE_URL_SECRET``: instead of ``DATABASE_URL``, the name of a Secrets
  Manager secret holding it (read through Powertools Parameters, cached).
- ``DATABASE_STATEMENT_TIMEOUT_MS``: per-statement limit, default 5000.
- ``DATABASE_CONNECT_TIMEOUT_S``: connect limit, default 3.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import dict_row

from resilience.errors import ConfigError, DatabaseUnavailableError

__all__ = [
    "Database",
    "DatabaseConfig",
    "apply_schema",
    "get_database",
    "reset_database",
]

logger = logging.getLogger(__name__)

ENV_DATABASE_URL = "DATABASE_URL"
ENV_DATABASE_URL_SECRET = "DATABASE_URL_SECRET"
ENV_STATEMENT_TIMEOUT_MS = "DATABASE_STATEMENT_TIMEOUT_MS"
ENV_CONNECT_TIMEOUT_S = "DATABASE_CONNECT_TIMEOUT_S"

# Errors after which the connection cannot be trusted any more. Errors in the
# SQL itself (constraint violations, syntax) leave the connection usable.
_CONNECTION_ERRORS = (psycopg.OperationalError, psycopg.InterfaceError)


@dataclass(frozen=True)
class DatabaseConfig:
    """Connection settings; times in milliseconds and seconds as named."""

    url: str
    statement_timeout_ms: int = 5000
    connect_timeout_s: float = 3.0
    application_name: str = "agent-resilience"

    def __post_init__(self) -> None:
        if not self.url:
            raise ConfigError(
                "database URL is empty: set DATABASE_URL or DATABASE_URL_SECRET",
                setting=ENV_DATABASE_URL,
            )
        if self.statement_timeout_ms <= 0:
            raise ConfigError(
                f"statement_timeout_ms must be positive, got "
                f"{self.statement_timeout_ms}",
                setting=ENV_STATEMENT_TIMEOUT_MS,
            )
        if self.connect_timeout_s <= 0:
            raise ConfigError(
                f"connect_timeout_s must be positive, got {self.connect_timeout_s}",
                setting=ENV_CONNECT_TIMEOUT_S,
            )

    @classmethod
    def from_env(cls) -> DatabaseConfig:
        """Build the settings from the environment (see the module docstring)."""
        url = os.environ.get(ENV_DATABASE_URL, "")
        secret_name = os.environ.get(ENV_DATABASE_URL_SECRET, "")
        if not url and secret_name:
            from aws_lambda_powertools.utilities import parameters

            url = str(parameters.get_secret(secret_name, max_age=300))
        return cls(
            url=url,
            statement_timeout_ms=_int_env(ENV_STATEMENT_TIMEOUT_MS, 5000),
            connect_timeout_s=float(os.environ.get(ENV_CONNECT_TIMEOUT_S, "3")),
        )


def _int_env(name: str, default: int) -> int:
    raw = os.environ.get(name, "")
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(
            f"{name} must be an integer, got {raw!r}", setting=name
        ) from None


class Database:
    """One lazily opened, self-healing PostgreSQL connection.

    Use :meth:`transaction` for every piece of work: it opens (or reopens) the
    connection, applies the statement timeout, commits on success and rolls
    back on error. Connection-level failures are raised as
    :class:`~resilience.errors.DatabaseUnavailableError` and drop the
    connection, so the next transaction reconnects.
    """

    def __init__(self, config: DatabaseConfig) -> None:
        self.config = config
        self._connection: psycopg.Connection[dict[str, Any]] | None = None
        self._lock = threading.RLock()

    def __repr__(self) -> str:
        state = "open" if self._is_open() else "closed"
        timeout_ms = self.config.statement_timeout_ms
        return f"<Database {state} statement_timeout_ms={timeout_ms}>"

    def _is_open(self) -> bool:
        return self._connection is not None and not self._connection.closed

    def _connect(self) -> psycopg.Connection[dict[str, Any]]:
        logger.info("db.connecting")
        try:
            connection = psycopg.connect(
                self.config.url,
                autocommit=False,
                connect_timeout=max(1, round(self.config.connect_timeout_s)),
                application_name=self.config.application_name,
                prepare_threshold=None,
                row_factory=dict_row,
            )
        except _CONNECTION_ERRORS as exc:
            raise DatabaseUnavailableError(
                f"cannot connect to PostgreSQL: {exc}",
                sqlstate=getattr(exc, "sqlstate", None),
            ) from exc
        return connection

    def close(self) -> None:
        """Close the connection; the next transaction opens a new one."""
        with self._lock:
            if self._connection is not None:
                try:
                    self._connection.close()
                finally:
                    self._connection = None

    @contextmanager
    def transaction(
        self, *, statement_timeout_ms: int | None = None
    ) -> Iterator[psycopg.Connection[dict[str, Any]]]:
        """Run the block in one transaction on the container's connection."""
        timeout_ms = statement_timeout_ms or self.config.statement_timeout_ms
        with self._lock:
            if not self._is_open():
                self._connection = self._connect()
            connection = self._connection
            assert connection is not None
            try:
                with connection.transaction():
                    connection.execute(
                        f"SET LOCAL statement_timeout = {int(timeout_ms)}"
                    )
                    yield connection
            except psycopg.errors.QueryCanceled as exc:
                # A statement timeout leaves the connection usable; keep it.
                raise DatabaseUnavailableError(
                    f"PostgreSQL statement timed out after {timeout_ms} ms",
                    sqlstate=exc.sqlstate,
                ) from exc
            except (
                psycopg.errors.DeadlockDetected,
                psycopg.errors.SerializationFailure,
            ) as exc:
                # PostgreSQL rolled the transaction back and the connection is
                # fine, so keep it. The caller may run the transaction again
                # (sqlstate 40P01 or 40001).
                raise DatabaseUnavailableError(
                    f"PostgreSQL rolled the transaction back: {exc}",
                    sqlstate=exc.sqlstate,
                ) from exc
            except _CONNECTION_ERRORS as exc:
                logger.warning(
                    "db.connection_failed", extra={"error": type(exc).__name__}
                )
                self.close()
                raise DatabaseUnavailableError(
                    f"PostgreSQL connection failed: {exc}",
                    sqlstate=getattr(exc, "sqlstate", None),
                ) from exc


_database: Database | None = None
_database_lock = threading.Lock()


def get_database() -> Database:
    """Return the container's :class:`Database`, built from the environment once."""
    global _database
    with _database_lock:
        if _database is None:
            _database = Database(DatabaseConfig.from_env())
        return _database


def reset_database() -> None:
    """Forget the container's connection, so the next call re-reads settings."""
    global _database
    with _database_lock:
        if _database is not None:
            _database.close()
        _database = None


SCHEMA_PATH = Path(__file__).resolve().parent / "schema.sql"


def apply_schema(database: Database, schema_sql: str | None = None) -> None:
    """Apply ``schema.sql`` (safe to repeat) in one transaction."""
    sql = schema_sql if schema_sql is not None else _read_schema()
    with database.transaction(statement_timeout_ms=60_000) as connection:
        connection.execute(sql.encode())
    logger.info("db.schema_applied")


def _read_schema() -> str:
    # The layer ships a copy of the repository's schema.sql next to this module;
    # in a checkout the repository file is the source.
    repo_schema = Path(__file__).resolve().parents[2] / "schema.sql"
    for path in (repo_schema, SCHEMA_PATH):
        if path.is_file():
            return path.read_text()
    raise ConfigError(
        f"schema.sql not found at {repo_schema} or {SCHEMA_PATH}",
        setting="schema.sql",
    )
