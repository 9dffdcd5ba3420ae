"""OpenAI-format errors: every failure the gateway returns is {"error": {message, type, param, code}}."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.protocol import ErrorBody, ErrorResponse


class APIError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None, details: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.body = ErrorBody(message=message, type=type_, param=param, code=code)
        self.details = details

    def payload(self) -> dict[str, Any]:
        data = ErrorResponse(error=self.body).model_dump()
        if self.details is not None:
            data["error"]["details"] = self.details
        return data


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, "invalid_request_error", param, code)


def error_response(exc: APIError, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(exc.payload(), status_code=exc.status, headers=headers)


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
    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(exc)
        return error_response(bad_request(message, param))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kinds = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
                 405: "invalid_request_error", 413: "invalid_request_error", 429: "rate_limit_error"}
        # keep the exception's headers: a 405 must carry `Allow` (RFC 9110), a 401 `WWW-Authenticate`
        return error_response(APIError(exc.status_code, str(exc.detail), kinds.get(exc.status_code, "api_error")),
                              headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # a bug, not the user's fault; never leak internals
        return error_response(APIError(500, "internal error in the gateway", "api_error"))
