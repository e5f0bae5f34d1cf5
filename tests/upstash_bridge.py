"""A test server that speaks the Upstash REST protocol, backed by a real Redis.

It serves what ``upstash-redis`` 1.8 sends: a POST of one JSON command array
to ``/``, arrays of arrays to ``/pipeline`` and ``/multi-exec``, a bearer
token, and base64-encoded string results when ``Upstash-Encoding: base64`` is
set (every string except the status ``OK``). Redis is spoken in RESP2 because
RESP3 would return hashes as maps, a shape Upstash never sends.

Failure modes for outage tests, switched with :meth:`UpstashBridge.set_mode`:
``ok``, ``error`` (HTTP 500 with a JSON error body), ``html_error`` (HTTP 500
with an HTML body) and ``hang`` (the request is held until the mode changes or
the bridge stops).
"""

from __future__ import annotations

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import redis

__all__ = ["UpstashBridge"]

MODES = ("ok", "error", "html_error", "hang")


class _Server(ThreadingHTTPServer):
    # The default backlog of 5 drops connections when 20 callers start at once.
    request_queue_size = 128
    daemon_threads = True


class UpstashBridge:
    """Serve the Upstash REST API on 127.0.0.1, executing commands on Redis."""

    def __init__(self, redis_url: str, token: str = "test-token") -> None:
        self.redis_url = redis_url
        self.token = token
        self.mode = "ok"
        self.request_count = 0
        self._resume = threading.Event()
        self._resume.set()
        self._local = threading.local()
        self._server = _Server(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_port}"

    def start(self) -> UpstashBridge:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._resume.set()
        self._server.shutdown()
        self._server.server_close()

    def set_mode(self, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.mode = mode
        if mode == "hang":
            self._resume.clear()
        else:
            self._resume.set()

    def _connection(self) -> redis.Connection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            pool = redis.ConnectionPool.from_url(self.redis_url, protocol=2)
            connection = pool.make_connection()
            self._local.connection = connection
        return connection

    def execute(self, command: list[Any]) -> dict[str, Any]:
        """Run one command on Redis and shape the response as Upstash does."""
        connection = self._connection()
        try:
            connection.send_command(*command)
            result = connection.read_response()
        except redis.ResponseError as exc:
            return {"error": _error_text(exc)}
        except redis.ConnectionError as exc:
            connection.disconnect()
            return {"error": f"ERR backend unavailable: {exc}"}
        if isinstance(result, redis.ResponseError):
            return {"error": _error_text(result)}
        return {"result": result}

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        bridge = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                return

            def do_POST(self) -> None:
                bridge.request_count += 1
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                if bridge.mode == "hang":
                    bridge._resume.wait()
                    return
                if bridge.mode == "error":
                    self._send(500, {"error": "ERR internal server error"})
                    return
                if bridge.mode == "html_error":
                    self._send_raw(500, b"<html>502 Bad Gateway</html>", "text/html")
                    return
                if self.headers.get("Authorization") != f"Bearer {bridge.token}":
                    self._send(401, {"error": "Unauthorized"})
                    return

                encode = self.headers.get("Upstash-Encoding") == "base64"
                body = json.loads(raw or b"null")
                if self.path.rstrip("/") in ("/pipeline", "/multi-exec"):
                    answers = [bridge.execute(command) for command in body]
                    self._send(200, [_encode(answer, encode) for answer in answers])
                else:
                    answer = bridge.execute(body)
                    status = 400 if "error" in answer else 200
                    self._send(status, _encode(answer, encode))

            def _send(self, status: int, payload: Any) -> None:
                self._send_raw(status, json.dumps(payload).encode(), "application/json")

            def _send_raw(self, status: int, data: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        return Handler


def _error_text(error: redis.ResponseError) -> str:
    # redis-py strips the error code that Redis sends; Upstash keeps it.
    if isinstance(error, redis.exceptions.NoScriptError):
        return f"NOSCRIPT {error}"
    return f"ERR {error}"


def _encode(answer: dict[str, Any], use_base64: bool) -> dict[str, Any]:
    if "result" not in answer:
        return answer
    return {"result": _encode_value(answer["result"], use_base64)}


def _encode_value(value: Any, use_base64: bool) -> Any:
    if isinstance(value, list):
        return [_encode_value(item, use_base64) for item in value]
    if isinstance(value, bytes | str):
        data = value.encode() if isinstance(value, str) else value
        if data == b"OK" or not use_base64:
            return data.decode("utf-8", errors="replace")
        return base64.b64encode(data).decode()
    return value
