"""Structured JSON logs: every line is one JSON object carrying the request id the client sees."""

from __future__ import annotations

import io
import json
import logging
from typing import Any, Iterator

import pytest

from app.logs import JsonFormatter, configure_logging
from gateway_helpers import (  # noqa: F401  (fixtures)
    FakeUpstreams, anyio_backend, bank_models, chat_body, fake, running_gateway, settings,
)

pytestmark = pytest.mark.anyio


@pytest.fixture
def json_logs() -> Iterator[io.StringIO]:
    """The root logger's output, formatted as in production."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    previous = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    yield out
    root.removeHandler(handler)
    root.setLevel(previous)


def lines(out: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.getvalue().splitlines() if line.strip()]


async def test_each_request_logs_json_lines_with_its_request_id(settings, fake: FakeUpstreams, minilm,
                                                                json_logs: io.StringIO) -> None:
    async with running_gateway(settings, minilm, fake) as (_, client):
        r = await client.post("/v1/chat/completions", json=chat_body("jisi", "What is 2 + 3?"),
                              headers={"x-request-id": "req-abc-123"})
        assert r.status_code == 200 and r.headers["x-request-id"] == "req-abc-123"
        anonymous = await client.post("/v1/chat/completions", json=chat_body("jisi", "Name a prime."))
    entries = lines(json_logs)
    mine = [e for e in entries if e.get("request_id") == "req-abc-123"]
    access = next(e for e in mine if e["logger"] == "jisi.access")
    assert access["status"] == 200 and access["path"] == "/v1/chat/completions" and access["duration_ms"] > 0
    completion = next(e for e in mine if e["logger"] == "jisi.gateway")
    assert completion["model"] == "jisi" and completion["outcome"] == "ok"
    assert completion["mode"] in ("route", "aggregate") and completion["cost_usd"] > 0
    generated = anonymous.headers["x-request-id"]
    assert len(generated) == 32 and generated != "req-abc-123"
    assert any(e.get("request_id") == generated and e["logger"] == "jisi.access" for e in entries)
    assert "What is 2 + 3?" not in json_logs.getvalue()  # user text is not logged


async def test_errors_carry_the_request_id_too(settings, fake: FakeUpstreams, minilm, json_logs: io.StringIO):
    async with running_gateway(settings, minilm, fake) as (_, client):
        unknown = await client.post("/v1/chat/completions", json=chat_body("no-such-model", "hi"),
                                    headers={"x-request-id": "bad-1"})
        missing = await client.get("/nowhere", headers={"x-request-id": "bad\x01id"})  # unprintable: replaced
    assert unknown.status_code in (400, 404) and unknown.headers["x-request-id"] == "bad-1"
    assert missing.status_code == 404 and missing.headers["x-request-id"] != "bad\x01id"
    access = [e for e in lines(json_logs) if e["logger"] == "jisi.access"]
    assert next(e for e in access if e["request_id"] == "bad-1")["status"] == unknown.status_code


async def test_every_response_is_counted_refused_ones_included(settings, fake: FakeUpstreams, minilm):
    async with running_gateway(settings, minilm, fake) as (_, client):
        assert (await client.post("/v1/chat/completions", json=chat_body("jisi", "What is 2 + 3?"))).status_code == 200
        assert (await client.post("/v1/chat/completions", json=chat_body("no-such-model", "hi"))).status_code == 404
        assert (await client.post("/v1/chat/completions", json={"model": "jisi"})).status_code == 400
        for path in ("/nowhere", "/wp-login.php"):
            assert (await client.get(path)).status_code == 404
        text = (await client.get("/metrics")).text
    counted = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("jisi_http_responses_total{")}
    chat = "/v1/chat/completions"
    assert counted[f'jisi_http_responses_total{{path="{chat}",status="200"}}'] == 1
    assert counted[f'jisi_http_responses_total{{path="{chat}",status="404"}}'] == 1
    assert counted[f'jisi_http_responses_total{{path="{chat}",status="400"}}'] == 1
    assert counted['jisi_http_responses_total{path="other",status="404"}'] == 2  # probes share one series


def test_configure_logging_routes_uvicorn_through_the_json_handler(capsys: pytest.CaptureFixture) -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        configure_logging("info", "json")
        logging.getLogger("uvicorn.error").info("started on port %d", 8000)
        line = capsys.readouterr().err.strip().splitlines()[-1]
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    entry = json.loads(line)
    assert entry["message"] == "started on port 8000" and entry["logger"] == "uvicorn.error"
    assert entry["level"] == "info" and entry["ts"].endswith("Z")
