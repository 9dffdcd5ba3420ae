"""The HTTP face of errors: each ErrorKind's status, and the handlers that answer every failure in OpenAI's
format {"error": {message, type, param, code}}, framework errors (validation, 404 routes, 405) included."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.errors import ErrorKind, GatewayError, bad_request
from app.protocol.common import ErrorBody, ErrorResponse

STATUS: dict[ErrorKind, int] = {
    ErrorKind.INVALID_REQUEST: 400, ErrorKind.UNAUTHENTICATED: 401, ErrorKind.NOT_FOUND: 404,
    ErrorKind.TOO_LARGE: 413, ErrorKind.UPSTREAM_FAILED: 502, ErrorKind.UNAVAILABLE: 503,
    ErrorKind.TIMEOUT: 504, ErrorKind.INTERNAL: 500,
}
# framework errors carry a status, not a kind: their OpenAI type by status
_TYPE_OF_STATUS = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
                   405: "invalid_request_error", 413: "invalid_request_error", 429: "rate_limit_error"}


def status_of(exc: GatewayError) -> int:
    return STATUS[exc.kind]


def error_response(exc: GatewayError, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(exc.payload(), status_code=status_of(exc), headers=headers)


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    errors = exc.errors()
    if not errors:
        return "invalid request body", None
    first = errors[0]
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    # a whole-body check (protocol.valid_json_values) names the offending path in its context instead
    param = ".".join(loc) or (first.get("ctx") or {}).get("param") or None
    message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    if first.get("type") == "json_invalid":
        return "the request body is not valid JSON", None
    return (f"{param}: {message}" if param else message), param


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(GatewayError)
    async def _gateway_error(request: Request, exc: GatewayError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(exc)
        return error_response(bad_request(message, param))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        body = ErrorResponse(error=ErrorBody(message=str(exc.detail),
                                             type=_TYPE_OF_STATUS.get(exc.status_code, "api_error")))
        # keep the exception's headers: a 405 must carry `Allow` (RFC 9110), a 401 `WWW-Authenticate`
        return JSONResponse(body.model_dump(), status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # a bug, not the user's fault; never leak internals
        return error_response(GatewayError(ErrorKind.INTERNAL, "internal error in the gateway"))
