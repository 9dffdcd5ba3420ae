"""Error kinds the core raises, in OpenAI's error format, without any web framework.

The pipeline, the upstream pool and the bank tools say *what* went wrong (an ErrorKind); only app.http
turns a kind into an HTTP status. So `jisi-bank collect` never loads FastAPI, and the one table that maps
kinds to statuses lives next to the handlers that use it (app/http/errors.py).
"""

from __future__ import annotations

from enum import Enum
from typing import Any

from app.protocol.common import ErrorBody, ErrorResponse


class ErrorKind(str, Enum):
    INVALID_REQUEST = "invalid_request"  # the request itself is wrong: never retry it as is
    UNAUTHENTICATED = "unauthenticated"
    NOT_FOUND = "not_found"
    TOO_LARGE = "too_large"
    UPSTREAM_FAILED = "upstream_failed"  # the upstream(s) answered with errors
    UNAVAILABLE = "unavailable"  # refused before calling: open circuits, full queues (retry later)
    TIMEOUT = "timeout"  # an upstream or the request deadline ran out
    INTERNAL = "internal"  # a bug in the gateway


# the OpenAI `type` of each kind's error body (part of the wire format, not of HTTP)
OPENAI_TYPE: dict[ErrorKind, str] = {
    ErrorKind.INVALID_REQUEST: "invalid_request_error", ErrorKind.UNAUTHENTICATED: "authentication_error",
    ErrorKind.NOT_FOUND: "not_found_error", ErrorKind.TOO_LARGE: "invalid_request_error",
    ErrorKind.UPSTREAM_FAILED: "upstream_error", ErrorKind.UNAVAILABLE: "upstream_error",
    ErrorKind.TIMEOUT: "upstream_error", ErrorKind.INTERNAL: "api_error",
}


class GatewayError(Exception):
    """A failure the client is told about: its kind, message, offending parameter, code and details."""

    def __init__(self, kind: ErrorKind, message: str, param: str | None = None, code: str | None = None,
                 details: Any = None, type_: str | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.body = ErrorBody(message=message, type=type_ or OPENAI_TYPE[kind], param=param, code=code)
        self.details = details

    def payload(self) -> dict[str, Any]:
        data = ErrorResponse(error=self.body).model_dump()
        if self.details is not None:
            data["error"]["details"] = self.details
        return data


def bad_request(message: str, param: str | None = None, code: str | None = None) -> GatewayError:
    return GatewayError(ErrorKind.INVALID_REQUEST, message, param, code)
