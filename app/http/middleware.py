"""ASGI middleware: the request context (request id, the one access line, HTTP metrics) and the body size
limit (413 before the body is parsed)."""

from __future__ import annotations

import json
import logging
import time
import uuid
from typing import Any, Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.observability.logs import current_access_fields, current_request_id
from app.observability.tracing import Tracing

access_log = logging.getLogger("jisi.access")


def request_id_from(headers: list[tuple[bytes, bytes]]) -> str:
    for key, value in headers:
        if key == b"x-request-id":
            supplied = value.decode("latin-1")[:128]
            if supplied and supplied.isprintable():
                return supplied
    return uuid.uuid4().hex


class RequestContext:
    """ASGI middleware: sets the request id for the request's logs and response, logs one access line.

    One line per request, not one per layer: handlers add their summary (model, mode, cost, ...) to it
    through `current_access_fields`, which halves what logging costs a request."""

    def __init__(self, app: ASGIApp, observe: Callable[[str, int], None] | None = None,
                 tracing: Tracing | None = None) -> None:
        self.app = app
        self.observe = observe  # (path, status) of every response, for metrics
        self.tracing = tracing  # a server span per request, when tracing is on

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_from(scope.get("headers", []))
        token = current_request_id.set(request_id)
        fields: dict[str, Any] = {}
        fields_token = current_access_fields.set(fields)
        started = time.perf_counter()
        status = 500  # what the client sees if the app dies before answering
        span = None
        if self.tracing is not None and self.tracing.enabled:
            span, span_token = self.tracing.start_request(scope["method"], scope["path"], scope.get("headers", []),
                                                          request_id)

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
                message = {**message, "headers": [*headers, (b"x-request-id", request_id.encode("latin-1"))]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            access_log.info("%s %s %d", scope["method"], scope["path"], status, extra={
                **fields, "method": scope["method"], "path": scope["path"], "status": status,
                "duration_ms": round(1000 * (time.perf_counter() - started), 2)})
            if self.observe is not None:
                self.observe(scope["path"], status)
            if span is not None:
                Tracing.end_request(span, span_token, status)
            current_access_fields.reset(fields_token)
            current_request_id.reset(token)


class BodySizeLimit:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._reject(send)
            return
        seen = 0
        rejected = False

        async def limited_receive() -> Message:
            nonlocal seen, rejected
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    rejected = True
                    raise _TooLarge()
            return message

        started = False

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if rejected:  # the app may catch _TooLarge and answer itself (FastAPI: a 400); ours replaces it
                return
            started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except _TooLarge:
            pass
        if rejected and not started:
            await self._reject(send)

    async def _reject(self, send: Send) -> None:
        body = json.dumps({"error": {"message": f"request body exceeds {self.max_bytes} bytes",
                                     "type": "invalid_request_error", "param": None,
                                     "code": "request_too_large"}}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


class _TooLarge(Exception):
    pass
