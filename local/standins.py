"""Local stand-ins for the outside world: a demo downstream, Slack and PagerDuty.

Each is a small HTTP server on 127.0.0.1 that runs in a thread of the local
stack (or of a test):

- :class:`DemoService`: the downstream behind the breaker, registered as the
  ``demo`` service. ``POST /_control`` switches it between ``ok``, ``fail``
  (with a status) and ``hang``. ``GET /_control`` shows the mode and how
  many times each ``Idempotency-Key`` caused an effect, and ``DELETE
  /_control`` resets both. ``/fail`` always fails with 500 and ``/status/{code}`` always
  answers with that status.
- :class:`SlackStandIn`: an incoming webhook (``POST /services/...``) and the
  Web API methods ``chat.postMessage`` and ``chat.update`` under ``/api/``.
- :class:`PagerDutyStandIn`: the Events API v2 (``POST /v2/enqueue``).

Slack and PagerDuty record every request; ``GET /_recorded`` lists them and
``DELETE /_recorded`` clears the list.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

__all__ = ["DemoService", "PagerDutyStandIn", "SlackStandIn", "StandIn"]

logger = logging.getLogger(__name__)

Response = tuple[int, dict[str, str], Any]

# Headers worth keeping in a recording; the rest is transport noise.
_RECORDED_HEADERS = (
    "authorization",
    "content-type",
    "idempotency-key",
    "user-agent",
    "x-resilience-signature",
    "x-resilience-timestamp",
)


class StandIn:
    """A threaded HTTP server whose ``route`` method builds each response."""

    name = "stand-in"

    def __init__(self, port: int = 0) -> None:
        self._lock = threading.Lock()
        self.recorded: list[dict[str, Any]] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", port), self._handler_class())
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])

    def __repr__(self) -> str:
        return f"<{type(self).__name__} port={self.port} recorded={len(self.recorded)}>"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> StandIn:
        thread = threading.Thread(
            target=self.server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name=self.name,
            daemon=True,
        )
        thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def route(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> Response:
        raise NotImplementedError

    def record(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> dict[str, Any]:
        entry = {
            "at": time.time(),
            "method": method,
            "path": path,
            "headers": {k: v for k, v in headers.items() if k in _RECORDED_HEADERS},
            "body": _parse_body(headers, body),
        }
        with self._lock:
            self.recorded.append(entry)
        return entry

    def recorded_response(self, method: str) -> Response:
        with self._lock:
            if method == "DELETE":
                self.recorded.clear()
            return 200, {}, {"requests": list(self.recorded)}

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = {k.lower(): v for k, v in self.headers.items()}
                status, extra_headers, payload = stand_in.route(
                    self.command, self.path, headers, body
                )
                if isinstance(payload, str):
                    data, content_type = payload.encode(), "text/plain; charset=utf-8"
                else:
                    data, content_type = (
                        json.dumps(payload).encode(),
                        "application/json",
                    )
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                for name, value in extra_headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _serve

            def log_message(self, format: str, *args: Any) -> None:
                logger.debug("%s.request %s", stand_in.name, format % args)

        return Handler


def _parse_body(headers: dict[str, str], body: bytes) -> Any:
    if not body:
        return None
    text = body.decode("utf-8", errors="replace")
    if "application/x-www-form-urlencoded" in headers.get("content-type", ""):
        return dict(parse_qsl(text, keep_blank_values=True))
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


class DemoService(StandIn):
    """A downstream service that can be switched to fail, hang or recover."""

    name = "demo"

    def __init__(self, port: int = 0) -> None:
        super().__init__(port)
        self.mode = "ok"
        self.status = 503
        self.hang_s = 60.0
        self.retry_after_s: float | None = None
        self.requests = 0
        self.effects: Counter[str] = Counter()
        self.attempts: Counter[str] = Counter()

    def control_state(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "status": self.status if self.mode == "fail" else None,
            "hangSeconds": self.hang_s if self.mode == "hang" else None,
            "requests": self.requests,
            "effects": dict(self.effects),
            "attempts": dict(self.attempts),
        }

    def configure(self, settings: dict[str, Any]) -> Response:
        mode = settings.get("mode", "ok")
        if mode not in ("ok", "fail", "hang"):
            return 400, {}, {"error": f"mode must be ok, fail or hang, got {mode!r}"}
        status = int(settings.get("status", 503))
        if not 100 <= status <= 599:
            return 400, {}, {"error": f"status must be 100-599, got {status}"}
        with self._lock:
            self.mode = mode
            self.status = status
            self.hang_s = float(settings.get("seconds", 60))
            retry_after = settings.get("retryAfter")
            self.retry_after_s = float(retry_after) if retry_after is not None else None
        logger.info("demo.mode_changed mode=%s status=%s", mode, status)
        return 200, {}, self.control_state()

    def route(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> Response:
        route_path = urlsplit(path).path
        if route_path == "/_control":
            if method == "POST":
                settings = _parse_body(headers, body)
                return self.configure(settings if isinstance(settings, dict) else {})
            if method == "DELETE":
                with self._lock:
                    self.mode, self.requests = "ok", 0
                    self.effects.clear()
                    self.attempts.clear()
            return 200, {}, self.control_state()
        return self._serve_call(method, route_path, headers)

    def _serve_call(self, method: str, path: str, headers: dict[str, str]) -> Response:
        key = headers.get("idempotency-key")
        with self._lock:
            self.requests += 1
            if key:
                self.attempts[key] += 1
            mode, status, hang_s = self.mode, self.status, self.hang_s

        forced = re.fullmatch(r"/status/(\d{3})", path)
        if path == "/fail":
            return 500, {}, {"error": "the /fail path always fails"}
        if forced:
            code = int(forced.group(1))
            return code, {}, {"status": code}
        if mode == "fail":
            extra = (
                {"Retry-After": f"{self.retry_after_s:g}"} if self.retry_after_s else {}
            )
            return status, extra, {"error": f"demo service told to fail with {status}"}
        if mode == "hang":
            time.sleep(hang_s)

        with self._lock:
            if key:
                self.effects[key] += 1
            effect = self.effects[key] if key else None
        return 200, {}, {"ok": True, "method": method, "path": path, "effects": effect}


class SlackStandIn(StandIn):
    """Slack's incoming webhook and the chat.postMessage / chat.update methods."""

    name = "slack"

    def __init__(self, port: int = 0) -> None:
        super().__init__(port)
        self.messages: dict[str, dict[str, Any]] = {}
        self._sequence = 0

    def route(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> Response:
        route_path = urlsplit(path).path
        if route_path == "/_recorded":
            return self.recorded_response(method)
        if method != "POST":
            return 405, {}, {"ok": False, "error": "method_not_allowed"}

        entry = self.record(method, route_path, headers, body)
        if route_path.startswith("/services/"):
            # Incoming webhooks return plain text.
            return 200, {}, "ok"
        if not route_path.startswith("/api/"):
            return 404, {}, {"ok": False, "error": "not_found"}

        api_method = route_path.removeprefix("/api/")
        if not headers.get("authorization", "").startswith("Bearer "):
            return 200, {}, {"ok": False, "error": "not_authed"}
        arguments = entry["body"] if isinstance(entry["body"], dict) else {}
        return 200, {}, self._call(api_method, arguments)

    def _call(self, api_method: str, arguments: dict[str, Any]) -> dict[str, Any]:
        channel = arguments.get("channel")
        if api_method == "auth.test":
            return {"ok": True, "team": "local", "user": "agent-resilience"}
        if api_method not in ("chat.postMessage", "chat.update"):
            return {"ok": False, "error": "unknown_method"}
        if not channel:
            return {"ok": False, "error": "channel_not_found"}

        with self._lock:
            if api_method == "chat.postMessage":
                self._sequence += 1
                ts = f"{int(time.time())}.{self._sequence:06d}"
            else:
                ts = str(arguments.get("ts") or "")
                if ts not in self.messages:
                    return {"ok": False, "error": "message_not_found"}
            message = {"ts": ts, "text": arguments.get("text", "")}
            message["blocks"] = arguments.get("blocks")
            self.messages[ts] = message
        return {"ok": True, "channel": channel, "ts": ts, "message": message}


class PagerDutyStandIn(StandIn):
    """PagerDuty's Events API v2 enqueue endpoint."""

    name = "pagerduty"

    def route(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> Response:
        route_path = urlsplit(path).path
        if route_path == "/_recorded":
            return self.recorded_response(method)
        if method != "POST" or route_path != "/v2/enqueue":
            return 404, {}, {"status": "not found"}

        entry = self.record(method, route_path, headers, body)
        event = entry["body"] if isinstance(entry["body"], dict) else {}
        errors = []
        if not event.get("routing_key"):
            errors.append("'routing_key' is missing.")
        if event.get("event_action") not in ("trigger", "acknowledge", "resolve"):
            errors.append("'event_action' must be trigger, acknowledge or resolve.")
        if errors:
            body_out = {"status": "invalid event", "message": "Event object is invalid"}
            return 400, {}, {**body_out, "errors": errors}
        dedup_key = event.get("dedup_key") or f"local-{len(self.recorded)}"
        return (
            202,
            {},
            {"status": "success", "message": "Event processed", "dedup_key": dedup_key},
        )
