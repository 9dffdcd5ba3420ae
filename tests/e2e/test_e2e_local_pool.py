"""End to end against real LLMs: three llama.cpp servers on loopback, a bank collected from them, the
gateway served by uvicorn, and the official `openai` package as the client."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from pathlib import Path
from typing import Iterator

import httpx
import openai
import pytest
import uvicorn
import yaml

from app.engine import JiSiParams
from app.http.app import create_app
from app.config import Settings
from bank_builder.build import build_bank
from bank_builder.collect import CollectOptions, collect, load_questions
from localpool.servers import kill_server
from bank_builder.records import load_records
from tests.conftest import REPO


POOL = ["gemma3-270m", "smollm2-concise", "smollm2-stepwise"]
QUESTION = "Tom has 3 apples and buys 4 more. How many apples does he have now?"


def gateway_settings(bank: Path) -> Settings:
    config = yaml.safe_load((REPO / "config" / "gateway.yaml").read_text())
    config["bank_path"] = str(bank)
    return Settings(**config)


@pytest.fixture(scope="module")
def pool_bank(module_pool, tmp_path_factory: pytest.TempPathFactory, minilm) -> Path:
    """A bank collected from the real pool: 6 demo questions of each kind, answered by all three models.

    module_pool, not pool_session: a test run before this module (tests/test_pool.py) may have stopped it."""
    out = tmp_path_factory.mktemp("collected")
    questions = load_questions([REPO / "config" / "demo-questions.jsonl"], max_queries=6)
    settings = gateway_settings(out / "unused")
    summary = asyncio.run(collect(questions, settings, POOL, out, options=CollectOptions(max_tokens=48),
                                  progress=False))
    assert not summary.failures, summary.failures
    bank = out / "bank"
    build_bank(load_records([out]), minilm, bank, params=JiSiParams(), split={"part": "all"}, progress=False)
    return bank


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def gateway_url(pool_bank: Path, minilm) -> Iterator[str]:
    settings = gateway_settings(pool_bank)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings, embedder=minilm), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    else:
        pytest.fail("the gateway did not become ready")
    yield url
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture()
def client(gateway_url: str, local_pool) -> openai.OpenAI:  # local_pool: every server up for each test
    return openai.OpenAI(base_url=gateway_url + "/v1", api_key="unused", timeout=300, max_retries=0)


def prices() -> dict[str, tuple[float, float]]:
    config = yaml.safe_load((REPO / "config" / "gateway.yaml").read_text())
    return {u["name"]: (u["input_usd_per_mtok"], u["output_usd_per_mtok"]) for u in config["upstreams"]}


def check_accounting(jisi: dict, usage, cost_header: str | None = None) -> None:
    """usage is the sum of what the upstreams reported (or streamed); cost follows the configured prices."""
    calls = jisi["calls"]
    assert usage.prompt_tokens == sum(c["usage"]["prompt_tokens"] for c in calls)
    assert usage.completion_tokens == sum(c["usage"]["completion_tokens"] for c in calls)
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    expected = sum((c["usage"]["prompt_tokens"] * prices()[c["model"]][0]
                    + c["usage"]["completion_tokens"] * prices()[c["model"]][1]) / 1e6 for c in calls)
    assert jisi["total_cost_usd"] == pytest.approx(expected, rel=1e-9)
    if cost_header is not None:
        assert float(cost_header) == pytest.approx(expected, abs=1e-8)


def ask(client: openai.OpenAI, model: str, **extra):
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": QUESTION}], max_tokens=48, **extra)
    return raw.parse(), raw.headers


@pytest.mark.parametrize("model", ["jisi", "jisi-route"])
def test_routed_answer_comes_from_the_pool(client: openai.OpenAI, model: str) -> None:
    completion, headers = ask(client, model, extra_body={"jisi": {"mode": "route"}} if model == "jisi" else None)
    jisi = completion.model_extra["jisi"]
    assert completion.object == "chat.completion" and completion.choices[0].message.role == "assistant"
    assert completion.choices[0].message.content.strip()
    assert completion.model in POOL and jisi["mode"] == "route" and headers["x-jisi-mode"] == "route"
    assert jisi["answered_by"] == completion.model and headers["x-jisi-models"] == completion.model
    assert len(jisi["candidates"]) == 3 and len(jisi["calls"]) >= 3  # the fan-out really happened
    check_accounting(jisi, completion.usage, headers["x-jisi-cost-usd"])
    assert int(headers["x-jisi-upstream-calls"]) == len(jisi["calls"])


def test_aggregate_answer_is_written_by_the_chosen_aggregator(client: openai.OpenAI) -> None:
    completion, headers = ask(client, "jisi-aggregate")
    jisi = completion.model_extra["jisi"]
    assert jisi["mode"] == "aggregate" and headers["x-jisi-mode"] == "aggregate"
    assert completion.model == jisi["aggregator"] == headers["x-jisi-aggregator"] and completion.model in POOL
    aggregator_calls = [c for c in jisi["calls"] if c["role"] == "aggregator"]
    assert len(aggregator_calls) == 1 and aggregator_calls[0]["model"] == completion.model
    assert len(jisi["final"]) >= 2
    check_accounting(jisi, completion.usage, headers["x-jisi-cost-usd"])


def test_passthrough_is_accounted(client: openai.OpenAI) -> None:
    completion, headers = ask(client, "smollm2-concise")
    jisi = completion.model_extra["jisi"]
    assert completion.model == "smollm2-concise" and headers["x-jisi-mode"] == "passthrough"
    assert completion.choices[0].message.content.strip()
    check_accounting(jisi, completion.usage, headers["x-jisi-cost-usd"])
    assert jisi["upstream_calls"] == 1


@pytest.mark.parametrize("model", ["jisi-route", "jisi-aggregate", "gemma3-270m"])
def test_streaming_through_the_sdk(client: openai.OpenAI, model: str) -> None:
    stream = client.chat.completions.create(model=model, messages=[{"role": "user", "content": QUESTION}],
                                            max_tokens=48, stream=True, stream_options={"include_usage": True})
    text, usage, summary, models = [], None, None, set()
    for chunk in stream:
        models.add(chunk.model)
        if chunk.choices and chunk.choices[0].delta.content:
            text.append(chunk.choices[0].delta.content)
        if chunk.usage is not None:
            usage, summary = chunk.usage, chunk.model_extra["jisi"]
    assert "".join(text).strip() and usage is not None and summary is not None
    # llama.cpp streams carry no usage: the gateway counted what they sent
    check_accounting(summary, usage)
    assert usage.completion_tokens > 0
    if model == "jisi-aggregate":
        assert summary["mode"] == "aggregate" and summary["answered_by"] == summary["aggregator"]
        assert any(c["role"] == "aggregator" and c["usage_estimated"] for c in summary["calls"])
    elif model == "jisi-route":
        assert summary["mode"] == "route" and summary["answered_by"] in POOL
    else:
        assert summary["mode"] == "passthrough" and models == {"gemma3-270m"}


def test_async_sdk(gateway_url: str, local_pool) -> None:
    async def run() -> openai.types.chat.ChatCompletion:
        async with openai.AsyncOpenAI(base_url=gateway_url + "/v1", api_key="x", timeout=300) as aclient:
            return await aclient.chat.completions.create(
                model="jisi", messages=[{"role": "user", "content": QUESTION}], max_tokens=48)

    completion = asyncio.run(run())
    assert completion.choices[0].message.content and completion.model in POOL


def test_an_upstream_killed_mid_request_degrades_but_answers(client: openai.OpenAI, pool_session: Path) -> None:
    result: dict = {}

    def request_in_background() -> None:
        result["completion"], result["headers"] = ask(client, "jisi-aggregate", extra_body={"jisi": {"k": 3}})

    request = threading.Thread(target=request_in_background)
    request.start()
    time.sleep(0.4)  # the three candidates are generating (each takes a second or more)
    kill_server(pool_session, "smollm2-stepwise")
    request.join(timeout=300)
    completion, headers = result["completion"], result["headers"]
    jisi = completion.model_extra["jisi"]
    assert completion.choices[0].message.content.strip()
    assert jisi["degraded"] is True and headers["x-jisi-degraded"] == "true" and jisi["degraded_reasons"]
    assert any(e["model"] == "smollm2-stepwise" for e in jisi["errors"])
    assert "smollm2-stepwise" not in jisi["answered"] and "smollm2-stepwise" not in jisi["final"]
    check_accounting(jisi, completion.usage, headers["x-jisi-cost-usd"])
    # and the gateway keeps serving
    completion, _ = ask(client, "jisi-route")
    assert completion.choices[0].message.content.strip()
