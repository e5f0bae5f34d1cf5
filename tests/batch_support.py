"""Helpers of the batch tests: Lambda contexts, SQS records, a counting downstream.

Imported by the batch test modules; nothing here replaces a part of the
project. The downstream is a real HTTP server on 127.0.0.1 that applies each
``Idempotency-Key`` once, as a payment API would.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx

from resilience.batch import ItemContext
from resilience.db import Database, DatabaseConfig
from resilience.errors import UpstreamServerError

__all__ = [
    "ClockProcessor",
    "CountingDatabase",
    "CountingDownstream",
    "FakeClock",
    "FakeLambdaContext",
    "KeyedHttpProcessor",
    "http_event",
    "sqs_event",
    "sqs_record",
]


class FakeClock:
    """A clock that advances only through :meth:`advance`."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeLambdaContext:
    """The attributes of a Lambda context that the handlers and runner read."""

    function_name = "partial-success"
    function_version = "$LATEST"
    memory_limit_in_mb = 512
    invoked_function_arn = (
        "arn:aws:lambda:us-east-1:123456789012:function:partial-success"
    )
    log_group_name = "/aws/lambda/partial-success"
    log_stream_name = "test"

    def __init__(
        self,
        remaining_ms: float | None = 29_000,
        clock: FakeClock | None = None,
        *,
        raw: Any = "unset",
    ) -> None:
        self.aws_request_id = uuid.uuid4().hex
        self._clock = clock
        self._start = clock() if clock else 0.0
        self._remaining_ms = remaining_ms
        self._raw = raw

    def get_remaining_time_in_millis(self) -> Any:
        if self._raw != "unset":
            return self._raw
        if self._remaining_ms is None:
            return None
        elapsed_ms = (self._clock() - self._start) * 1000 if self._clock else 0.0
        return int(self._remaining_ms - elapsed_ms)


class ClockProcessor:
    """Take ``seconds`` of fake time per call and count the calls per item."""

    side_effects = False
    takeover_policy = "retry"

    def __init__(self, clock: FakeClock, seconds: float, name: str = "clock") -> None:
        self.name = name
        self.clock = clock
        self.seconds = seconds
        self.expected_duration_s = seconds
        self.calls: Counter[str] = Counter()

    def process(self, context: ItemContext) -> Any:
        self.calls[context.item_id] += 1
        self.clock.advance(self.seconds)
        return {"item": context.item_id}


class CountingDownstream:
    """An HTTP server that applies each Idempotency-Key once and counts calls.

    ``POST /effects`` applies the effect of its key, or returns the stored
    response when the key was applied before. Requests whose key is in
    ``fail_keys`` get 503 until the key is removed.
    """

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.effects: Counter[str] = Counter()
        self.fail_keys: set[str] = set()
        self._lock = threading.Lock()
        downstream = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                key = self.headers.get("Idempotency-Key") or ""
                status, body = downstream._apply(key)
                payload = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}"

    def _apply(self, key: str) -> tuple[int, dict[str, Any]]:
        with self._lock:
            self.calls[key] += 1
            if not key:
                return 400, {"error": "Idempotency-Key header is required"}
            if key in self.fail_keys:
                return 503, {"error": "unavailable"}
            if self.effects[key] == 0:
                self.effects[key] = 1
                return 201, {"applied": key}
            return 200, {"applied": key, "replayed": True}

    def start(self) -> CountingDownstream:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class KeyedHttpProcessor:
    """POST to the counting downstream with the item's Idempotency-Key."""

    side_effects = True
    expected_duration_s = 0.0

    def __init__(
        self, base_url: str, name: str = "keyed", takeover_policy: str = "retry"
    ) -> None:
        self.name = name
        self.takeover_policy = takeover_policy
        self._client = httpx.Client(base_url=base_url, timeout=5.0)

    def process(self, context: ItemContext) -> Any:
        response = self._client.post(
            "/effects",
            json=context.data,
            headers={"Idempotency-Key": context.idempotency_key},
        )
        if response.status_code >= 500:
            raise UpstreamServerError(
                f"downstream answered {response.status_code}",
                status=response.status_code,
            )
        return response.json()


def sqs_record(
    message_id: str,
    body: Any,
    *,
    group_id: str | None = None,
    org_id: str | None = None,
    raw_body: str | None = None,
) -> dict[str, Any]:
    """Build one SQS record as Lambda delivers it."""
    attributes: dict[str, Any] = {
        "ApproximateReceiveCount": "1",
        "SentTimestamp": "1796400000000",
        "SenderId": "AIDAEXAMPLE",
        "ApproximateFirstReceiveTimestamp": "1796400000001",
    }
    if group_id is not None:
        attributes["MessageGroupId"] = group_id
        attributes["SequenceNumber"] = "1"
    message_attributes: dict[str, Any] = {}
    if org_id is not None:
        message_attributes["orgId"] = {"stringValue": org_id, "dataType": "String"}
    queue = "batch-items.fifo" if group_id else "batch-items"
    return {
        "messageId": message_id,
        "receiptHandle": f"AQEB{message_id}receipt",
        "body": raw_body if raw_body is not None else json.dumps(body),
        "attributes": attributes,
        "messageAttributes": message_attributes,
        "md5OfBody": "0" * 32,
        "eventSource": "aws:sqs",
        "eventSourceARN": f"arn:aws:sqs:us-east-1:123456789012:{queue}",
        "awsRegion": "us-east-1",
    }


def sqs_event(*records: dict[str, Any]) -> dict[str, Any]:
    return {"Records": list(records)}


def http_event(
    method: str,
    path: str,
    body: Any = None,
    *,
    path_parameters: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Build an API Gateway HTTP API (v2) event."""
    route = "/batches/{batchId}" if path_parameters else path
    return {
        "version": "2.0",
        "routeKey": f"{method} {route}",
        "rawPath": path,
        "rawQueryString": "",
        "headers": {"content-type": "application/json", **(headers or {})},
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "api",
            "domainName": "localhost",
            "http": {
                "method": method,
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": "127.0.0.1",
                "userAgent": "pytest",
            },
            "requestId": uuid.uuid4().hex,
            "routeKey": f"{method} {route}",
            "stage": "$default",
            "timeEpoch": 1796400000000,
        },
        "pathParameters": path_parameters or {},
        "body": json.dumps(body) if body is not None else None,
        "isBase64Encoded": False,
    }


class _CountingConnection:
    """A psycopg connection that counts the statements sent through it."""

    def __init__(self, connection: Any, counter: CountingDatabase) -> None:
        self._connection = connection
        self._counter = counter

    def execute(self, *args: Any, **kwargs: Any) -> Any:
        self._counter.statements += 1
        return self._connection.execute(*args, **kwargs)

    def cursor(self, *args: Any, **kwargs: Any) -> Any:
        return _CountingConnection(
            self._connection.cursor(*args, **kwargs), self._counter
        )

    def __getattr__(self, name: str) -> Any:
        return getattr(self._connection, name)


class CountingDatabase(Database):
    """A Database that counts statements, ``SET LOCAL`` of each transaction included."""

    def __init__(self, config: DatabaseConfig) -> None:
        super().__init__(config)
        self.statements = 0

    @contextmanager
    def transaction(self, *, statement_timeout_ms: int | None = None) -> Iterator[Any]:
        with super().transaction(statement_timeout_ms=statement_timeout_ms) as conn:
            self.statements += 1
            yield _CountingConnection(conn, self)
