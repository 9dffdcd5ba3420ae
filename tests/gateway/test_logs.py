"""Structured JSON logs: every line is one JSON object carrying the request id the client sees."""

from __future__ import annotations

import io
import json
import logging
import sys
import threading
from typing import Any, Iterator

import pytest

from app.observability.logs import JsonFormatter, configure_logging, current_request_id, stop_logging
from gateway_helpers import FakeUpstreams, chat_body, running_gateway

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
        streamed = await client.post("/v1/chat/completions", json={**chat_body("jisi-route", "Name a colour."),
                                                                    "stream": True},
                                     headers={"x-request-id": "req-stream"})
        assert streamed.status_code == 200 and streamed.text.rstrip().endswith("data: [DONE]")
    entries = lines(json_logs)
    (stream_line,) = [e for e in entries if e.get("request_id") == "req-stream" and e["logger"] == "jisi.access"]
    assert stream_line["model"] == "jisi-route" and stream_line["outcome"] == "ok" and stream_line["status"] == 200
    mine = [e for e in entries if e.get("request_id") == "req-abc-123"]
    (access,) = [e for e in mine if e["logger"] == "jisi.access"]  # one line per request, summary included
    assert access["status"] == 200 and access["path"] == "/v1/chat/completions" and access["duration_ms"] > 0
    assert access["model"] == "jisi" and access["outcome"] == "ok"
    assert access["mode"] in ("route", "aggregate") and access["cost_usd"] > 0 and access["final"]
    assert not [e for e in mine if e["logger"] == "jisi.gateway"]
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
        stop_logging()  # the writer thread writes out what is queued
        line = capsys.readouterr().err.strip().splitlines()[-1]
    finally:
        stop_logging()
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    entry = json.loads(line)
    assert entry["message"] == "started on port 8000" and entry["logger"] == "uvicorn.error"
    assert not logging.getLogger("httpx").isEnabledFor(logging.INFO)  # no line per upstream call
    assert entry["level"] == "info" and entry["ts"].endswith("Z")


@pytest.fixture
def restored_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    yield
    stop_logging()
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])


def test_a_stalled_stderr_does_not_block_the_code_that_logs(monkeypatch, restored_root_logger) -> None:
    # e.g. a full pipe to a log collector: the event loop must keep serving while the writer waits
    release, written = threading.Event(), []

    class Stalled(io.StringIO):
        def write(self, text: str) -> int:
            release.wait(10)
            written.append(text)
            return len(text)

    monkeypatch.setattr(sys, "stderr", Stalled())
    configure_logging("info", "json")
    logged = threading.Event()
    threading.Thread(target=lambda: (logging.getLogger("jisi.test").info("hello %s", "there"), logged.set()),
                     daemon=True).start()
    assert logged.wait(5), "logging blocked on the stalled stream"
    assert written == []
    release.set()
    stop_logging()
    assert json.loads(written[0])["message"] == "hello there"


def test_the_request_id_and_the_traceback_survive_the_writer_thread(capsys, restored_root_logger) -> None:
    configure_logging("info", "json")
    token = current_request_id.set("req-in-thread")
    try:
        try:
            raise ValueError("boom")
        except ValueError:
            logging.getLogger("jisi.test").exception("failed for %d items", 3)
    finally:
        current_request_id.reset(token)
    stop_logging()
    entry = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert entry["request_id"] == "req-in-thread" and entry["message"] == "failed for 3 items"
    assert entry["level"] == "error" and "ValueError: boom" in entry["exception"]


async def test_start_up_says_once_how_each_unpriced_upstream_is_costed(mini_bank, bank_models, tmp_path, minilm,
                                                                        json_logs: io.StringIO):
    """Issue 18: a model without a configured price is neither silently free nor silently priced."""
    from gateway_helpers import make_settings

    settings = make_settings(mini_bank, bank_models, tmp_path / "cache")
    unpriced = settings.upstreams[1].model_copy(update={"input_usd_per_mtok": None, "output_usd_per_mtok": None})
    settings = settings.model_copy(update={"upstreams": [settings.upstreams[0], unpriced, *settings.upstreams[2:]]})
    async with running_gateway(settings, minilm, FakeUpstreams(bank_models)) as (app, _):
        cost = app.state.jisi.gateway.pipeline.costs
    said = [line["message"] for line in lines(json_logs) if "no configured price" in line["message"]]
    assert len(said) == 1 and bank_models[1] in said[0] and "recorded costs" in said[0]
    assert cost.unpriced.tolist() == [j == 1 for j in range(len(bank_models))]
