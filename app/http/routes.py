"""HTTP routes: thin translations between the wire protocol and the gateway service.

The routes read the app's state through `state(request)`, typed (AppState), never app.state's bare attributes.
"""

from __future__ import annotations

import hmac
import uuid
from dataclasses import dataclass, field
from typing import AsyncIterator

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

from app.errors import ErrorKind, GatewayError
from app.http.reload import Reloader
from app.observability.logs import current_request_id
from app.observability.metrics import Metrics
from app.protocol.common import ErrorResponse
from app.protocol.chat import ChatCompletion, ChatCompletionRequest, ModelList, RouteRequest
from app.protocol.responses import ResponseObject, ResponsesRequest
from app.serving.gateway import Gateway

router = APIRouter()


@dataclass
class AppState:
    """What the routes use, set up by the app factory and its lifespan (app/http/app.py)."""

    metrics: Metrics
    api_keys: list[bytes] = field(default_factory=list)  # none: no auth
    gateway: Gateway | None = None  # None until the bank, the embedder and the upstreams are loaded
    draining: bool = False  # SIGTERM received (app/http/server.py): out of rotation, finishing what is in flight
    admin_keys: list[bytes] = field(default_factory=list)  # none: the admin endpoints answer 404
    reloader: Reloader | None = None  # the bank's hot-swap (app/http/reload.py), once loaded


def state(request: Request) -> AppState:
    return request.app.state.jisi


def gateway(request: Request) -> Gateway:
    loaded = state(request).gateway
    if loaded is None:
        raise GatewayError(ErrorKind.UNAVAILABLE, "the gateway is still loading; retry shortly", code="loading")
    return loaded
ERRORS = {code: {"model": ErrorResponse} for code in (400, 401, 404, 413, 502, 503, 504)}
# with `stream: true` the 200 is an event stream, not JSON (documented so clients and fuzzers expect it)
STREAM_200 = {200: {"description": "A chat.completion, or with `stream: true` an SSE stream of "
                                   "chat.completion.chunk events ending with `data: [DONE]`",
                    "content": {"text/event-stream": {"schema": {  # OpenAPI 3.1: the schema of one event
                        "type": "object", "required": ["data"],
                        "properties": {"data": {"type": "string", "description": "a chat.completion.chunk or an "
                                                "OpenAI error object as JSON, or the final `[DONE]`"}}}}}}}


RESPONSES_STREAM_200 = {200: {
    "description": "A response object, or with `stream: true` an SSE stream of Responses API events "
                   "(`response.created` ... `response.completed`), each an `event:` line and its JSON `data:`",
    "content": {"text/event-stream": {"schema": {
        "type": "object", "required": ["data"],
        "properties": {"event": {"type": "string", "description": "the event's type, e.g. response.output_text.delta"},
                       "data": {"type": "string", "description": "the event as JSON, with its `type` and "
                                "`sequence_number`"}}}}}}}


def request_id(request: Request) -> str:
    """The id RequestContext gave this request (the client's x-request-id when usable)."""
    return current_request_id.get() or uuid.uuid4().hex


def event_stream(stream: AsyncIterator[bytes], rid: str) -> StreamingResponse:
    return StreamingResponse(stream, media_type="text/event-stream",
                             headers={"x-request-id": rid, "cache-control": "no-cache"})


def _bearer_matches(request: Request, keys: list[bytes]) -> bool:
    """The request's bearer token is one of `keys`, compared with every key in constant time so the time taken
    does not tell which (or whether any) matched."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    presented = token.strip().encode()
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(presented, key)
    return scheme.lower() == "bearer" and matched


async def authorize(request: Request) -> None:
    """Bearer keys from settings; none configured means no auth.

    async although it never awaits: FastAPI runs a plain `def` dependency on a worker thread, a thread hop
    on every request that cost ~9% of the event loop's time under pass-through load."""
    keys = state(request).api_keys
    if keys and not _bearer_matches(request, keys):
        raise GatewayError(ErrorKind.UNAUTHENTICATED, "invalid or missing API key (send Authorization: Bearer "
                           "<key>)", code="invalid_api_key")


async def authorize_admin(request: Request) -> None:
    """The admin key (settings: admin.api_key_env), never a client key; no admin key configured: no admin API."""
    keys = state(request).admin_keys
    if not keys:
        raise GatewayError(ErrorKind.NOT_FOUND, "the admin endpoints are off: set admin.api_key_env to the name "
                           "of a variable holding the admin key", code="admin_disabled")
    if not _bearer_matches(request, keys):
        raise GatewayError(ErrorKind.UNAUTHENTICATED, "invalid or missing admin key (send Authorization: Bearer "
                           "<admin key>)", code="invalid_admin_key")


@router.post("/v1/chat/completions", response_model=ChatCompletion, responses={**STREAM_200, **ERRORS},
             dependencies=[Depends(authorize)])
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
    rid = request_id(request)
    if body.stream:
        return event_stream(await gateway(request).chat_stream(body, rid), rid)
    result, headers = await gateway(request).chat(body, rid)
    return JSONResponse(result.model_dump(exclude_none=True), headers=headers)


@router.post("/v1/responses", response_model=ResponseObject, responses={**RESPONSES_STREAM_200, **ERRORS},
             dependencies=[Depends(authorize)])
async def responses(body: ResponsesRequest, request: Request) -> Response:
    """OpenAI's Responses API, stateless: the same pipeline as chat completions, in the other wire format."""
    rid = request_id(request)
    if body.stream:
        return event_stream(await gateway(request).responses_stream(body, rid), rid)
    result, headers = await gateway(request).responses(body, rid)
    return JSONResponse(result.model_dump(mode="json"), headers=headers)


@router.get("/v1/models", response_model=ModelList, responses={401: {"model": ErrorResponse}},
            dependencies=[Depends(authorize)])
async def list_models(request: Request) -> ModelList:
    return gateway(request).models()


@router.post("/v1/jisi/route", responses=ERRORS, dependencies=[Depends(authorize)])
async def dry_run(body: RouteRequest, request: Request) -> dict:
    return await gateway(request).route(body)


@router.post("/admin/reload", responses={code: ERRORS[code] for code in (400, 401, 404, 503)},
             dependencies=[Depends(authorize_admin)])
async def reload_bank(request: Request) -> dict:
    """Load the bank at bank_path (and the settings that can change live) again and swap it in; requests in
    flight finish on the bank they started with. A bank that fails validation is refused (400 reload_refused)
    and the old one keeps serving. SIGHUP does the same."""
    reloader = state(request).reloader
    if reloader is None:
        raise GatewayError(ErrorKind.UNAVAILABLE, "the gateway is still loading; retry shortly", code="loading")
    return await reloader.reload("admin")


@router.get("/healthz")
async def healthz() -> dict:
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "still loading, or draining before a stop: "
                                                      "{\"status\": \"loading\" | \"draining\"}",
                                       "content": {"application/json": {"schema": {"type": "object"}}}}})
async def readyz(request: Request) -> JSONResponse:
    loaded = state(request).gateway
    draining = state(request).draining
    body: dict = {"status": "draining" if draining else "ready" if loaded else "loading"}
    if loaded is not None:
        manifest = loaded.pipeline.bank.manifest
        body |= {"bank": {"build_id": manifest.build_id, "queries": manifest.n_queries,
                          "models": len(manifest.models)},
                 "embedder": loaded.pipeline.embedder.name,
                 "response_embedder": loaded.pipeline.response_embedder.name}
    return JSONResponse(body, status_code=200 if loaded and not draining else 503)


@router.get("/metrics", response_class=PlainTextResponse)
async def metrics(request: Request) -> Response:
    return Response(state(request).metrics.render(), media_type="text/plain; version=0.0.4")


def openapi_without_422(app: FastAPI) -> None:
    """FastAPI documents a 422 on every route with a body, but the gateway answers invalid input with
    OpenAI's 400: drop the 422s (and their schemas) so the published schema says what really happens."""
    generate = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = generate()
            for path in schema.get("paths", {}).values():
                for operation in path.values():
                    operation.get("responses", {}).pop("422", None)
            for name in ("HTTPValidationError", "ValidationError"):
                schema.get("components", {}).get("schemas", {}).pop(name, None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
