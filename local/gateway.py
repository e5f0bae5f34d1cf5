"""The local API Gateway: HTTP requests in, HTTP API (payload format 2.0) events out.

Only the HttpApi routes declared in template.yaml are served. A route with
``{param}`` segments matches one path segment per parameter, ``{proxy+}``
matches the rest of the path, and a literal route wins over a parameterised
one, as in API Gateway. Unknown routes get API Gateway's 404 JSON. The
Lambda response (``statusCode``, ``headers``, ``cookies``, ``body``,
``isBase64Encoded``) goes back as the HTTP response.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from local.functions import FunctionPool, Invocation
from local.model import HttpRoute

__all__ = ["Gateway", "build_http_event", "match_route"]

logger = logging.getLogger(__name__)

# Lambda's limit on a synchronous request payload.
MAX_BODY_BYTES = 6 * 1024 * 1024

# Bodies of these types reach the function as text; anything else (forms,
# binary) is base64-encoded with isBase64Encoded=true, as API Gateway does.
_TEXT_TYPES = re.compile(
    r"^(text/|application/(json|.*\+json|xml|.*\+xml|javascript|graphql))",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class _CompiledRoute:
    route: HttpRoute
    pattern: re.Pattern[str]
    names: tuple[str, ...]
    specificity: tuple[int, int, int]


def _compile(route: HttpRoute) -> _CompiledRoute:
    names: list[str] = []
    parts = []
    greedy = 0
    for segment in route.path.strip("/").split("/"):
        match = re.fullmatch(r"\{([^}+]+)(\+?)\}", segment)
        if match is None:
            parts.append(re.escape(segment))
            continue
        names.append(match.group(1))
        if match.group(2):
            greedy = 1
            parts.append(f"(?P<p{len(names) - 1}>.+)")
        else:
            parts.append(f"(?P<p{len(names) - 1}>[^/]+)")
    pattern = re.compile("^/" + "/".join(parts) + "$")
    # Fewer greedy and fewer parameter segments first, then longer paths.
    specificity = (greedy, len(names), -len(route.path))
    return _CompiledRoute(route, pattern, tuple(names), specificity)


def match_route(
    routes: list[_CompiledRoute], method: str, path: str
) -> tuple[HttpRoute, dict[str, str]] | None:
    """Return the route for a request and its path parameters, or None."""
    for compiled in routes:
        if compiled.route.method not in (method, "ANY"):
            continue
        match = compiled.pattern.match(path)
        if match is None:
            continue
        values = {
            name: unquote(match.group(f"p{index}"))
            for index, name in enumerate(compiled.names)
        }
        return compiled.route, values
    return None


def build_http_event(
    *,
    route: HttpRoute,
    path_parameters: dict[str, str],
    method: str,
    raw_path: str,
    raw_query: str,
    headers: list[tuple[str, str]],
    body: bytes,
    source_ip: str,
    domain_name: str,
    request_id: str,
) -> dict[str, Any]:
    """Build an API Gateway HTTP API payload-format-2.0 event."""
    merged: dict[str, str] = {}
    cookies: list[str] = []
    for name, value in headers:
        key = name.lower()
        if key == "cookie":
            cookies.extend(part.strip() for part in value.split(";") if part.strip())
            continue
        # Repeated headers are joined with commas in format 2.0.
        merged[key] = f"{merged[key]},{value}" if key in merged else value
    merged.setdefault("x-forwarded-for", source_ip)
    merged.setdefault("x-forwarded-proto", "http")
    merged.setdefault("x-forwarded-port", domain_name.rsplit(":", 1)[-1])

    query: dict[str, str] = {}
    for key, value in parse_qsl(raw_query, keep_blank_values=True):
        query[key] = f"{query[key]},{value}" if key in query else value

    now = datetime.now(UTC)
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": route.route_key,
        "rawPath": raw_path,
        "rawQueryString": raw_query,
        "headers": merged,
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "local",
            "domainName": domain_name,
            "domainPrefix": domain_name.split(".", 1)[0],
            "http": {
                "method": method,
                "path": raw_path,
                "protocol": "HTTP/1.1",
                "sourceIp": source_ip,
                "userAgent": merged.get("user-agent", ""),
            },
            "requestId": request_id,
            "routeKey": route.route_key,
            "stage": "$default",
            "time": now.strftime("%d/%b/%Y:%H:%M:%S +0000"),
            "timeEpoch": int(now.timestamp() * 1000),
        },
        "isBase64Encoded": False,
    }
    if cookies:
        event["cookies"] = cookies
    if query:
        event["queryStringParameters"] = query
    if path_parameters:
        event["pathParameters"] = path_parameters
    if body:
        content_type = merged.get("content-type", "")
        text = _utf8_or_none(body) if _TEXT_TYPES.match(content_type) else None
        if text is not None:
            event["body"] = text
        else:
            # Binary types, and text that is not UTF-8, reach the function as
            # the bytes sent, so that it rejects bad text instead of storing
            # U+FFFD in its place.
            event["body"] = base64.b64encode(body).decode("ascii")
            event["isBase64Encoded"] = True
    return event


def _utf8_or_none(body: bytes) -> str | None:
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _http_response(invocation: Invocation) -> tuple[int, list[tuple[str, str]], bytes]:
    if invocation.timed_out:
        return _json_error(HTTPStatus.GATEWAY_TIMEOUT, "Gateway Timeout")
    if not invocation.ok:
        return _json_error(HTTPStatus.INTERNAL_SERVER_ERROR, "Internal Server Error")

    result = invocation.result
    # Format 2.0: a result without statusCode is a 200 JSON body.
    if not isinstance(result, dict) or "statusCode" not in result:
        body = result if isinstance(result, str) else json.dumps(result)
        return 200, [("Content-Type", "application/json")], body.encode()

    headers = [(str(k), str(v)) for k, v in (result.get("headers") or {}).items()]
    for name, values in (result.get("multiValueHeaders") or {}).items():
        headers.extend((str(name), str(value)) for value in values)
    headers.extend(
        ("Set-Cookie", str(cookie)) for cookie in result.get("cookies") or []
    )
    raw_body = result.get("body") or ""
    if result.get("isBase64Encoded"):
        body_bytes = base64.b64decode(raw_body)
    elif isinstance(raw_body, str):
        body_bytes = raw_body.encode("utf-8")
    else:
        # API Gateway expects a string body: serialise it, and warn so the
        # handler gets fixed.
        logger.warning("gateway.body_not_a_string type=%s", type(raw_body).__name__)
        body_bytes = json.dumps(raw_body).encode("utf-8")
    if not any(name.lower() == "content-type" for name, _ in headers):
        headers.append(("Content-Type", "application/json"))
    return int(result["statusCode"]), headers, body_bytes


def _json_error(
    status: HTTPStatus, message: str
) -> tuple[int, list[tuple[str, str]], bytes]:
    body = json.dumps({"message": message}).encode()
    return int(status), [("Content-Type", "application/json")], body


class Gateway:
    """An HTTP server on 127.0.0.1 that invokes the functions behind the routes."""

    def __init__(
        self, routes: list[HttpRoute], pools: dict[str, FunctionPool], port: int
    ) -> None:
        self.routes = sorted(
            (_compile(route) for route in routes), key=lambda c: c.specificity
        )
        self.pools = pools
        self.server = ThreadingHTTPServer(("127.0.0.1", port), self._handler_class())
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"<Gateway port={self.port} routes={len(self.routes)}>"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Gateway:
        self._thread = threading.Thread(
            target=self.server.serve_forever,
            # A short poll interval lets stop() return within 0.1 s.
            kwargs={"poll_interval": 0.1},
            name="gateway",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def handle(
        self,
        method: str,
        target: str,
        headers: list[tuple[str, str]],
        body: bytes,
        client_ip: str,
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        """Route one request to its function and return status, headers and body."""
        started = time.monotonic()
        request_id = str(uuid.uuid4())
        split = urlsplit(target)
        raw_path = split.path or "/"
        matched = match_route(self.routes, method, raw_path)
        if matched is None:
            logger.info("gateway.not_found method=%s path=%s", method, raw_path)
            return _json_error(HTTPStatus.NOT_FOUND, "Not Found")
        if len(body) > MAX_BODY_BYTES:
            return _json_error(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "Request Entity Too Large"
            )

        route, path_parameters = matched
        host = next(
            (v for k, v in headers if k.lower() == "host"), f"127.0.0.1:{self.port}"
        )
        event = build_http_event(
            route=route,
            path_parameters=path_parameters,
            method=method,
            raw_path=raw_path,
            raw_query=split.query,
            headers=headers,
            body=body,
            source_ip=client_ip,
            domain_name=host,
            request_id=request_id,
        )
        invocation = self.pools[route.function].invoke(event, request_id=request_id)
        status, response_headers, response_body = _http_response(invocation)
        response_headers.append(("apigw-requestid", request_id))
        logger.info(
            "gateway.request route=%r function=%s status=%s duration_ms=%s "
            "request_id=%s",
            route.route_key,
            route.function,
            status,
            int((time.monotonic() - started) * 1000),
            request_id,
        )
        if not invocation.ok and invocation.error:
            logger.error(
                "gateway.function_error function=%s request_id=%s error=%s: %s",
                route.function,
                request_id,
                invocation.error.get("errorType"),
                invocation.error.get("errorMessage"),
            )
        return status, response_headers, response_body

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            server_version = "local-gateway"

            def _serve(self) -> None:
                body = self._read_body()
                try:
                    status, headers, response_body = gateway.handle(
                        self.command,
                        self.path,
                        list(self.headers.items()),
                        body,
                        self.client_address[0],
                    )
                except Exception:
                    # A bug in the gateway itself: return 500 as API Gateway does
                    # for an internal failure rather than cutting the connection.
                    logger.exception("gateway.failed path=%s", self.path)
                    status, headers, response_body = _json_error(
                        HTTPStatus.INTERNAL_SERVER_ERROR, "Internal Server Error"
                    )
                self.send_response(status)
                for name, value in headers:
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(response_body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(response_body)

            def _read_body(self) -> bytes:
                if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                    chunks: list[bytes] = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                        if size == 0:
                            self.rfile.readline()
                            return b"".join(chunks)
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else b""

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve
            do_HEAD = do_OPTIONS = _serve

            def log_message(self, format: str, *args: Any) -> None:
                # Requests are logged once, with their ids, by Gateway.handle.
                return

        return Handler
