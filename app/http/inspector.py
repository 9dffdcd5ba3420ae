"""The routing inspector: one static page (static/inspector/, no build step, nothing from a CDN) that asks the gateway's
public endpoints — the dry run (POST /v1/jisi/route) and chat completions with their `jisi` object — and draws
what they answer. Nothing the page shows is computed a second way: the support set, the scores, the candidates,
the shortcut, the calls and their costs are the gateway's own.

Two helpers serve the page besides: its settings (which model to compare with, whether answers can be graded,
questions to try), and a relay to the grader, a replay upstream that knows from its records whether an answer is
right (`jisi-pool replay`'s /questions and /grade). The relay keeps the page on one origin, so a demo reached
through one forwarded port still grades.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
from fastapi import APIRouter, Body, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

from app.config import InspectorSettings
from app.errors import ErrorKind, GatewayError
from app.http.routes import authorize

STATIC = Path(__file__).parent / "static" / "inspector"
EXAMPLES = 30  # questions the page offers (the demo's tally in the note is over 30)
GRADER_TIMEOUT_S = 10.0


def _grader_error(exc: Exception, url: str) -> GatewayError:
    return GatewayError(ErrorKind.UPSTREAM_FAILED, f"the grader at {url} did not answer: {exc}",
                        code="grader_unavailable")


def install_inspector(app: FastAPI, settings: InspectorSettings) -> None:
    """Serve the page at /inspector/ and its two helpers at /inspector/api/ (before the static mount, which would
    take every path under /inspector otherwise)."""
    router = APIRouter(prefix="/inspector/api", dependencies=[Depends(authorize)], include_in_schema=False)
    grader = settings.grader_url.rstrip("/") if settings.grader_url else None
    examples: list[dict[str, Any]] = []  # fetched once from the grader, when it first answers

    async def ask_grader(method: str, path: str, **kwargs: Any) -> httpx.Response:
        assert grader is not None
        try:
            async with httpx.AsyncClient(timeout=GRADER_TIMEOUT_S) as client:
                return await client.request(method, f"{grader}{path}", **kwargs)
        except httpx.HTTPError as exc:
            raise _grader_error(exc, grader) from None

    @router.get("/config")
    async def config() -> dict[str, Any]:
        if grader is not None and not examples:
            response = await ask_grader("GET", "/questions", params={"n": EXAMPLES})
            if response.status_code == 200:
                examples.extend(response.json().get("data", []))
        return {"baseline_model": settings.baseline_model, "grading": grader is not None, "examples": examples}

    @router.post("/grade")
    async def grade(body: dict[str, Any] = Body(...)) -> JSONResponse:
        if grader is None:
            raise GatewayError(ErrorKind.NOT_FOUND, "no grader configured (inspector.grader_url)", code="no_grader")
        response = await ask_grader("POST", "/grade", json=body)
        try:
            payload = response.json()
        except ValueError as exc:
            raise _grader_error(exc, grader) from None
        return JSONResponse(payload, status_code=response.status_code)

    @app.get("/inspector", include_in_schema=False)
    async def inspector_root(request: Request) -> RedirectResponse:
        return RedirectResponse(str(request.url.replace(path="/inspector/")))

    app.include_router(router)
    app.mount("/inspector", StaticFiles(directory=STATIC, html=True), name="inspector")
