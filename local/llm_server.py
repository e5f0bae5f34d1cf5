"""A local stand-in for the OpenAI and Anthropic HTTP APIs, with failures on demand.

The real ``openai`` and ``anthropic`` SDKs work against it:

- ``POST /v1/chat/completions`` (OpenAI; ``stream: true`` sends Server-Sent
  Events and, with ``stream_options.include_usage``, a last chunk with usage).
- ``POST /v1/messages`` (Anthropic; ``stream: true`` sends the
  ``message_start`` ... ``message_stop`` event sequence).

Responses are deterministic: the text is derived from the last user message, and
token counts are about one token per four characters. Point the SDKs at it
with ``base_url="http://127.0.0.1:PORT/v1"`` (OpenAI) and
``base_url="http://127.0.0.1:PORT"`` (Anthropic).

Control API (JSON):

- ``POST /_control/failures`` sets a failure rule for a provider and model::

      {"provider": "openai", "model": "*", "mode": "429", "retryAfter": 7}

  ``mode`` is one of :data:`MODES`. Options: ``status`` (for ``error``,
  default 500), ``retryAfter`` (seconds, for ``429``), ``delayS`` (wait before
  answering, for ``slow`` and ``hang``), ``chunkDelayS`` (wait between stream
  chunks, for ``slow_stream``), ``afterChunks`` (text chunks sent before
  ``error_event_after`` or ``broken_stream`` strike, default 2), ``times``
  (apply to that many requests, then answer normally; default every request),
  ``promptTokens`` / ``completionTokens`` (override the reported usage).
  A rule for a named model wins over the provider's ``"*"`` rule.
- ``DELETE /_control/failures`` removes every rule.
- ``GET /_control/failures`` lists the rules.
- ``GET /_control/requests`` lists the API calls received (provider, model,
  stream flag, mode applied, the first 80 characters of the prompt);
  ``DELETE /_control/requests`` empties the list.

Run it with ``python -m local.llm_server --port 8788`` or, in tests,
``server, thread = serve_llm("127.0.0.1", 0)``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import math
import select
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["MODES", "FailureRule", "LLMServer", "main", "serve_llm"]

logger = logging.getLogger(__name__)

MODES = (
    "ok",
    "error",
    "429",
    "529",
    "hang",
    "slow",
    "slow_stream",
    "broken_stream",
    "error_event_first",
    "error_event_after",
    "malformed",
    "context_length",
    "content_policy",
    "bad_key",
    "unknown_model",
)
PROVIDERS = ("openai", "anthropic")

# A hung request gives up after this long even if the client never closes.
MAX_HANG_S = 600.0


@dataclass
class FailureRule:
    """How the server responds to requests for one (provider, model)."""

    provider: str
    model: str = "*"
    mode: str = "ok"
    status: int = 500
    retry_after: float | None = None
    delay_s: float = 0.0
    chunk_delay_s: float = 0.5
    after_chunks: int = 2
    times: int | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    applied: int = 0

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> FailureRule:
        provider = body.get("provider")
        if provider not in PROVIDERS:
            raise ValueError(f"provider must be one of {PROVIDERS}, got {provider!r}")
        mode = str(body.get("mode", "ok"))
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        times = body.get("times")
        return cls(
            provider=provider,
            model=str(body.get("model") or "*"),
            mode=mode,
            status=int(body.get("status", 500)),
            retry_after=_optional_float(body.get("retryAfter")),
            delay_s=float(body.get("delayS", 0.0)),
            chunk_delay_s=float(body.get("chunkDelayS", 0.5)),
            after_chunks=int(body.get("afterChunks", 2)),
            times=int(times) if times is not None else None,
            prompt_tokens=_optional_int(body.get("promptTokens")),
            completion_tokens=_optional_int(body.get("completionTokens")),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "provider": self.provider,
            "model": self.model,
            "mode": self.mode,
            "status": self.status,
            "retryAfter": self.retry_after,
            "delayS": self.delay_s,
            "chunkDelayS": self.chunk_delay_s,
            "afterChunks": self.after_chunks,
            "times": self.times,
            "promptTokens": self.prompt_tokens,
            "completionTokens": self.completion_tokens,
            "applied": self.applied,
        }


def _optional_float(value: Any) -> float | None:
    return float(value) if value is not None else None


def _optional_int(value: Any) -> int | None:
    return int(value) if value is not None else None


@dataclass
class _State:
    rules: dict[tuple[str, str], FailureRule] = field(default_factory=dict)
    requests: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def rule_for(self, provider: str, model: str) -> FailureRule:
        """Pick the rule for a request and count it (a used-up rule responds ok)."""
        with self.lock:
            rule = self.rules.get((provider, model)) or self.rules.get((provider, "*"))
            if rule is None:
                return FailureRule(provider=provider, model=model)
            if rule.times is not None and rule.applied >= rule.times:
                return FailureRule(
                    provider=provider,
                    model=model,
                    prompt_tokens=rule.prompt_tokens,
                    completion_tokens=rule.completion_tokens,
                )
            rule.applied += 1
            return rule


class LLMServer(ThreadingHTTPServer):
    """The HTTP server. ``state`` contains the failure rules and the request log."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int]) -> None:
        super().__init__(address, _Handler)
        self.state = _State()
        self.stopping = threading.Event()

    def shutdown(self) -> None:
        self.stopping.set()
        super().shutdown()


def serve_llm(
    host: str = "127.0.0.1", port: int = 0
) -> tuple[LLMServer, threading.Thread]:
    """Start the server in a daemon thread. ``server.server_port`` is its port."""
    server = LLMServer((host, port))
    thread = threading.Thread(
        target=server.serve_forever, name="llm-server", daemon=True
    )
    thread.start()
    return server, thread


# ---------------------------------------------------------------- answers


def count_tokens(text: str) -> int:
    """Estimate tokens as one per four characters, at least one."""
    return max(1, math.ceil(len(text) / 4))


def answer_text(provider: str, model: str, prompt: str, max_tokens: int) -> str:
    """Build the deterministic answer to a prompt, cut to ``max_tokens``."""
    digest = hashlib.sha256(prompt.encode()).hexdigest()[:8]
    words = prompt.split()
    topic = " ".join(words[:12]) if words else "an empty prompt"
    text = f"Answer {digest} from {provider}/{model} about: {topic}."
    return text[: max(4, max_tokens * 4)]


def _message_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [
            str(part.get("text", ""))
            for part in content
            if isinstance(part, dict) and part.get("type") in ("text", None)
        ]
        return " ".join(parts)
    return ""


def _prompt_of(body: dict[str, Any]) -> tuple[str, str]:
    """Return (last user message, every message joined) of a request body."""
    messages = body.get("messages") or []
    texts = [_message_text(message.get("content")) for message in messages]
    system = body.get("system")
    if system:
        texts.insert(0, _message_text(system))
    users = [
        _message_text(message.get("content"))
        for message in messages
        if message.get("role") == "user"
    ]
    return (users[-1] if users else ""), "\n".join(texts)


def _chunks(text: str, size: int = 12) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


# ---------------------------------------------------------------- handler


class _Handler(BaseHTTPRequestHandler):
    server: LLMServer
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in separate writes: without TCP_NODELAY,
        # Nagle's algorithm holds the body until the client's delayed ACK
        # (about 40 ms on Linux).
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("llm_server.request %s", format % args)

    # -- plumbing

    def _read_json(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        return json.loads(raw or b"{}")

    def _send_json(
        self, status: int, body: Any, headers: dict[str, str] | None = None
    ) -> None:
        data = json.dumps(body).encode()
        self._send_raw(status, data, "application/json", headers)

    def _send_raw(
        self,
        status: int,
        data: bytes,
        content_type: str,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _start_stream(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def _write_chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _end_stream(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _break_connection(self) -> None:
        # Close without the final chunk, so the client sees a truncated body.
        self.wfile.flush()
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def _wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; return False once the client disconnects."""
        deadline = time.monotonic() + seconds
        while not self.server.stopping.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return True
            readable, _, _ = select.select(
                [self.connection], [], [], min(0.1, remaining)
            )
            if readable:
                try:
                    peeked = self.connection.recv(1, socket.MSG_PEEK)
                except OSError:
                    peeked = b""
                if not peeked:
                    self.close_connection = True
                    return False
        return False

    # -- routes

    def do_GET(self) -> None:
        state = self.server.state
        if self.path == "/_control/failures":
            with state.lock:
                rules = [rule.to_json() for rule in state.rules.values()]
            self._send_json(200, {"failures": rules})
        elif self.path == "/_control/requests":
            with state.lock:
                requests = list(state.requests)
            self._send_json(200, {"requests": requests})
        elif self.path in ("/", "/health"):
            self._send_json(200, {"ok": True, "modes": list(MODES)})
        else:
            self._send_json(404, {"error": {"message": f"no route {self.path}"}})

    def do_DELETE(self) -> None:
        state = self.server.state
        with state.lock:
            if self.path == "/_control/failures":
                state.rules.clear()
            elif self.path == "/_control/requests":
                state.requests.clear()
            else:
                self._send_json(404, {"error": {"message": f"no route {self.path}"}})
                return
        self._send_json(200, {"ok": True})

    def do_POST(self) -> None:
        try:
            body = self._read_json()
        except json.JSONDecodeError:
            self._send_json(400, {"error": {"message": "request body is not JSON"}})
            return
        if self.path == "/_control/failures":
            self._set_failure(body)
        elif self.path.rstrip("/") in ("/v1/chat/completions", "/chat/completions"):
            _OpenAIResponder(self, body).respond()
        elif self.path.rstrip("/") in ("/v1/messages", "/messages"):
            _AnthropicResponder(self, body).respond()
        else:
            self._send_json(404, {"error": {"message": f"no route {self.path}"}})

    def _set_failure(self, body: Any) -> None:
        try:
            rule = FailureRule.from_json(body if isinstance(body, dict) else {})
        except (TypeError, ValueError) as exc:
            self._send_json(400, {"error": str(exc)})
            return
        state = self.server.state
        with state.lock:
            state.rules[(rule.provider, rule.model)] = rule
        self._send_json(200, {"ok": True, "failure": rule.to_json()})


class _Responder:
    """Shared flow of one API call. Each subclass writes one provider's format."""

    provider = ""

    def __init__(self, handler: _Handler, body: dict[str, Any]) -> None:
        self.handler = handler
        self.body = body if isinstance(body, dict) else {}
        self.model = str(self.body.get("model") or "")
        self.stream = bool(self.body.get("stream"))
        self.last_user, self.all_text = _prompt_of(self.body)
        self.max_tokens = int(self.body.get(self.max_tokens_field) or 1024)
        self.id = uuid.uuid4().hex[:24]

    max_tokens_field = "max_tokens"
    malformed_frame = b""

    def respond(self) -> None:
        state = self.handler.server.state
        rule = state.rule_for(self.provider, self.model)
        with state.lock:
            state.requests.append(
                {
                    "provider": self.provider,
                    "model": self.model,
                    "stream": self.stream,
                    "mode": rule.mode,
                    "prompt": self.last_user[:80],
                    "at": time.time(),
                }
            )

        self.rule = rule
        self.text = answer_text(
            self.provider, self.model, self.last_user, self.max_tokens
        )
        self.prompt_tokens = rule.prompt_tokens or count_tokens(self.all_text)
        self.completion_tokens = rule.completion_tokens or count_tokens(self.text)
        if not self.authorized():
            self.send_error_status(401, "authentication_error", "invalid x-api-key")
            return

        mode = rule.mode
        if mode == "hang":
            self.handler._wait(rule.delay_s or MAX_HANG_S)
            self.handler.close_connection = True
            return
        if mode == "slow" and not self.handler._wait(rule.delay_s):
            return
        if mode in _STATUS_MODES:
            self.send_mode_error(mode)
        elif mode == "malformed":
            self.send_malformed()
        elif self.stream:
            self.send_stream()
        else:
            self.handler._send_json(200, self.complete_body())

    def authorized(self) -> bool:
        return self.rule.mode != "bad_key" and bool(self.api_key())

    def send_mode_error(self, mode: str) -> None:
        rule = self.rule
        if mode == "error":
            self.send_error_status(rule.status, "api_error", "internal server error")
        elif mode == "429":
            headers = {}
            if rule.retry_after is not None:
                headers["Retry-After"] = _format_seconds(rule.retry_after)
            self.send_error_status(429, "rate_limit_error", "rate limited", headers)
        elif mode == "529":
            self.send_error_status(529, "overloaded_error", "Overloaded")
        elif mode == "context_length":
            self.send_context_length()
        elif mode == "content_policy":
            self.send_content_policy()
        elif mode == "unknown_model":
            self.send_error_status(
                404, "not_found_error", f"model: {self.model} does not exist"
            )

    def send_malformed(self) -> None:
        if self.stream:
            self.handler._start_stream()
            self.handler._write_chunk(self.malformed_frame)
            self.handler._end_stream()
            return
        self.handler._send_raw(
            200, b'{"id": "broken", "choices": [', "application/json"
        )

    def send_stream(self) -> None:
        handler = self.handler
        handler._start_stream()
        try:
            for frame in self.stream_frames():
                if frame is _PAUSE:
                    if not handler._wait(self.rule.chunk_delay_s):
                        return
                    continue
                if frame is _BREAK:
                    handler._break_connection()
                    return
                handler._write_chunk(frame)
            handler._end_stream()
        except (BrokenPipeError, ConnectionResetError):
            handler.close_connection = True

    def text_chunks(self) -> list[str]:
        return _chunks(self.text)

    def mid_stream_failure(self, index: int) -> bytes | object | None:
        """Return what replaces the stream after ``index`` text chunks, if anything."""
        mode = self.rule.mode
        if index != self.rule.after_chunks:
            return None
        if mode == "error_event_after":
            return self.error_event("overloaded_error", "Overloaded")
        if mode == "broken_stream":
            return _BREAK
        return None

    # Provider-specific parts.
    def api_key(self) -> str:
        raise NotImplementedError

    def send_error_status(
        self,
        status: int,
        kind: str,
        message: str,
        headers: dict[str, str] | None = None,
    ) -> None:
        raise NotImplementedError

    def send_context_length(self) -> None:
        raise NotImplementedError

    def send_content_policy(self) -> None:
        raise NotImplementedError

    def complete_body(self) -> dict[str, Any]:
        raise NotImplementedError

    def stream_frames(self) -> Any:
        raise NotImplementedError

    def error_event(self, kind: str, message: str) -> bytes:
        raise NotImplementedError


_STATUS_MODES = {
    "error",
    "429",
    "529",
    "context_length",
    "content_policy",
    "unknown_model",
}
_PAUSE = object()
_BREAK = object()


def _format_seconds(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _sse(data: Any, event: str | None = None) -> bytes:
    prefix = f"event: {event}\n" if event else ""
    return f"{prefix}data: {json.dumps(data)}\n\n".encode()


class _OpenAIResponder(_Responder):
    provider = "openai"
    malformed_frame = b'data: {"id": "broken\n\n'

    def __init__(self, handler: _Handler, body: dict[str, Any]) -> None:
        self.max_tokens_field = (
            "max_completion_tokens"
            if body.get("max_completion_tokens")
            else "max_tokens"
        )
        super().__init__(handler, body)

    def api_key(self) -> str:
        header = self.handler.headers.get("Authorization") or ""
        return header.removeprefix("Bearer ").strip()

    def send_error_status(
        self,
        status: int,
        kind: str,
        message: str,
        headers: dict[str, str] | None = None,
    ) -> None:
        codes = {
            401: "invalid_api_key",
            404: "model_not_found",
            429: "rate_limit_exceeded",
        }
        types = {401: "invalid_request_error", 404: "invalid_request_error"}
        error = {
            "message": message,
            "type": types.get(status, "server_error" if status >= 500 else kind),
            "param": None,
            "code": codes.get(status),
        }
        self.handler._send_json(status, {"error": error}, headers)

    def send_context_length(self) -> None:
        error = {
            "message": "This model's maximum context length is 128000 tokens. "
            f"However, your messages resulted in {self.prompt_tokens + 128000} tokens.",
            "type": "invalid_request_error",
            "param": "messages",
            "code": "context_length_exceeded",
        }
        self.handler._send_json(400, {"error": error})

    def send_content_policy(self) -> None:
        error = {
            "message": "Your request was rejected as a result of our safety system.",
            "type": "invalid_request_error",
            "param": None,
            "code": "content_policy_violation",
        }
        self.handler._send_json(400, {"error": error})

    def usage(self) -> dict[str, Any]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": 0},
        }

    def complete_body(self) -> dict[str, Any]:
        return {
            "id": f"chatcmpl-{self.id}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": self.text},
                    "finish_reason": "stop",
                    "logprobs": None,
                }
            ],
            "usage": self.usage(),
        }

    def chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        return _sse(
            {
                "id": f"chatcmpl-{self.id}",
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": self.model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
        )

    def error_event(self, kind: str, message: str) -> bytes:
        return _sse({"error": {"message": message, "type": kind, "code": kind}})

    def stream_frames(self) -> Any:
        rule = self.rule
        if rule.mode == "error_event_first":
            yield self.error_event("overloaded_error", "Overloaded")
            return
        yield self.chunk({"role": "assistant", "content": ""})
        for index, piece in enumerate(self.text_chunks()):
            failure = self.mid_stream_failure(index)
            if failure is not None:
                yield failure
                return
            if rule.mode == "slow_stream":
                yield _PAUSE
            yield self.chunk({"content": piece})
        yield self.chunk({}, finish="stop")
        options = self.body.get("stream_options") or {}
        if options.get("include_usage"):
            yield _sse(
                {
                    "id": f"chatcmpl-{self.id}",
                    "object": "chat.completion.chunk",
                    "created": int(time.time()),
                    "model": self.model,
                    "choices": [],
                    "usage": self.usage(),
                }
            )
        yield b"data: [DONE]\n\n"


class _AnthropicResponder(_Responder):
    provider = "anthropic"
    malformed_frame = b'event: message_start\ndata: {"type": "mess\n\n'

    def api_key(self) -> str:
        direct = self.handler.headers.get("x-api-key") or ""
        bearer = (self.handler.headers.get("Authorization") or "").removeprefix(
            "Bearer "
        )
        return (direct or bearer).strip()

    def send_error_status(
        self,
        status: int,
        kind: str,
        message: str,
        headers: dict[str, str] | None = None,
    ) -> None:
        body = {"type": "error", "error": {"type": kind, "message": message}}
        all_headers = {"request-id": f"req_{self.id}", **(headers or {})}
        self.handler._send_json(status, body, all_headers)

    def send_context_length(self) -> None:
        self.send_error_status(
            400,
            "invalid_request_error",
            f"prompt is too long: {self.prompt_tokens + 200000} tokens "
            "> 200000 maximum",
        )

    def send_content_policy(self) -> None:
        self.send_error_status(
            400,
            "invalid_request_error",
            "Output blocked by content filtering policy",
        )

    def usage(self, output_tokens: int) -> dict[str, Any]:
        return {
            "input_tokens": self.prompt_tokens,
            "output_tokens": output_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        }

    def complete_body(self) -> dict[str, Any]:
        return {
            "id": f"msg_{self.id}",
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [{"type": "text", "text": self.text}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": self.usage(self.completion_tokens),
        }

    def error_event(self, kind: str, message: str) -> bytes:
        return _sse(
            {"type": "error", "error": {"type": kind, "message": message}}, "error"
        )

    def stream_frames(self) -> Any:
        rule = self.rule
        if rule.mode == "error_event_first":
            yield self.error_event("overloaded_error", "Overloaded")
            return
        message = {**self.complete_body(), "content": [], "stop_reason": None}
        message["usage"] = self.usage(1)
        yield _sse({"type": "message_start", "message": message}, "message_start")
        yield _sse(
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
            "content_block_start",
        )
        yield _sse({"type": "ping"}, "ping")
        for index, piece in enumerate(self.text_chunks()):
            failure = self.mid_stream_failure(index)
            if failure is not None:
                yield failure
                return
            if rule.mode == "slow_stream":
                yield _PAUSE
            yield _sse(
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "text_delta", "text": piece},
                },
                "content_block_delta",
            )
        yield _sse({"type": "content_block_stop", "index": 0}, "content_block_stop")
        yield _sse(
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": self.completion_tokens},
            },
            "message_delta",
        )
        yield _sse({"type": "message_stop"}, "message_stop")


# ---------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m local.llm_server",
        description="Serve the OpenAI and Anthropic HTTP APIs locally, with "
        "failures switchable at /_control/failures.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind")
    parser.add_argument("--port", type=int, default=8788, help="TCP port (0: any)")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    server = LLMServer((args.host, args.port))
    logger.info(
        "llm_server.started",
        extra={"host": args.host, "port": server.server_port},
    )
    print(
        f"LLM server listening on http://{args.host}:{server.server_port}", flush=True
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
