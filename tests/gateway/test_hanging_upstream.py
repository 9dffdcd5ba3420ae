"""A hanging upstream costs a request one timeout at most (issue 11), over real loopback sockets.

The upstream accepts the connection and never answers. With the default resilience settings the request
proceeds once K - 1 candidates answered (plus the grace period), never calls the hung model a second time
in the same request (not as a retry, not as the aggregator, not as a final-set model), says it is degraded,
books the wait as upstream time (x-jisi-overhead-ms stays the gateway's own work) and, after repeated hangs,
the breaker leaves the model out of later requests.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import pytest

from app.config import ResilienceSettings
from fault_server import QUESTION, Fault, FaultServer, assert_openai_error, fault_settings, gateway, route
from gateway_helpers import chat_body, stream_chat

pytestmark = pytest.mark.anyio

TIMEOUT_S = 5.0  # each upstream's timeout_s: the bound a hung model must not cost the request
GRACE_S = ResilienceSettings().quorum_grace_s
OVERHEAD_LIMIT_MS = 100.0
# questions tried, in order, when a test needs a final-set model outside the candidates (mini bank, MiniLM)
FINAL_SET_QUESTIONS = [
    "def f(x): return x * 2\nassert f(3) == ??",
    "def f(s): return s[::-1]\nassert f('abc') == ??",
    "What is the output of f('hello') where f reverses a string and upper-cases it?",
]


def default_settings(mini_bank, models, tmp_path, server, **resilience: Any):
    """The defaults a new user gets, but for the upstreams' timeout_s (TIMEOUT_S)."""
    settings = fault_settings(mini_bank, models, tmp_path, server, timeout_s=TIMEOUT_S)
    return settings.model_copy(update={"resilience": ResilienceSettings(**resilience)})


async def ask(client: httpx.AsyncClient, model: str, stream: bool, question: str = QUESTION,
              ) -> tuple[int, dict[str, Any], float, float]:
    """(status, jisi summary, seconds taken, x-jisi-overhead-ms) of one plain or streamed request."""
    started = time.monotonic()
    if stream:
        response, sse = await stream_chat(client, chat_body(model, question, stream_options={"include_usage": True}))
        elapsed = time.monotonic() - started
        assert sse.events[-1] == "[DONE]" and sse.errors == [], sse.lines
        info = next(c["jisi"] for c in reversed(sse.chunks) if "jisi" in c)
        return response.status_code, info, elapsed, info["timings_ms"]["overhead"]
    response = await client.post("/v1/chat/completions", json=chat_body(model, question))
    elapsed = time.monotonic() - started
    assert response.status_code == 200, response.text
    info = response.json()["jisi"]
    assert response.headers["x-jisi-degraded"] == "true" or not info["degraded"]
    return response.status_code, info, elapsed, float(response.headers["x-jisi-overhead-ms"])


async def wait_disconnected(server: FaultServer, model: str) -> None:
    deadline = time.monotonic() + 3
    while not all(h.disconnected for h in server.hits_for(model)) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert all(h.disconnected for h in server.hits_for(model))  # its connection was really closed


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
@pytest.mark.parametrize("model", ["jisi-aggregate", "jisi", "jisi-route"])
async def test_a_hanging_natural_aggregator_costs_the_grace_period_not_a_timeout(
        mini_bank, bank_models, minilm, tmp_path, server, model, stream):
    async with gateway(default_settings(mini_bank, bank_models, tmp_path, server), minilm) as client:
        _, _, healthy_s, _ = await ask(client, model, stream)  # also warms the embedder up
        plan = await route(client)
        hung = plan["aggregator"]
        assert hung == plan["candidates"][0]  # A_agg = argmax g: the natural aggregator is a candidate too
        server.fail(hung, Fault("hang"))
        server.fail(hung, Fault("hang"), aggregation=True)
        server.hits.clear()

        status, info, elapsed, overhead_ms = await ask(client, model, stream)

        assert status == 200
        assert elapsed < healthy_s + GRACE_S + 1.0 and elapsed < TIMEOUT_S  # the grace, not the 5 s timeout
        assert len(server.hits_for(hung)) == 1  # called once as a candidate: no retry, not as the aggregator
        assert hung not in info["answered"] and info["answered_by"] != hung and hung not in info["final"]
        assert info["degraded"] is True
        assert f"candidate {hung} cancelled after quorum" in info["degraded_reasons"]
        assert [e["model"] for e in info["errors"]] == [hung] and info["errors"][0]["timeout"] is True
        if info["mode"] == "aggregate":
            assert info["aggregator"] != hung
            assert any(r.startswith(f"aggregator {hung} failed in this request") for r in info["degraded_reasons"])
        # the wait for the hung candidate is upstream time, not the gateway's own
        assert info["timings_ms"]["fanout"] >= 1000 * GRACE_S * 0.9
        assert overhead_ms < OVERHEAD_LIMIT_MS, info["timings_ms"]
        await wait_disconnected(server, hung)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
async def test_a_hanging_final_set_model_costs_one_timeout(mini_bank, bank_models, minilm, tmp_path, server, stream):
    settings = default_settings(mini_bank, bank_models, tmp_path, server)
    settings.upstreams[:] = [u.model_copy(update={"timeout_s": 2.0}) for u in settings.upstreams]
    async with gateway(settings, minilm) as client:
        for question in FINAL_SET_QUESTIONS:  # one whose final set holds a model that was not a candidate
            _, info, healthy_s, _ = await ask(client, "jisi-aggregate", stream, question)
            extra = [c["model"] for c in info["calls"] if c["role"] == "final"]
            if extra:
                break
        else:
            pytest.fail("no question gave a final-set model outside the candidates")
        hung = extra[0]
        server.fail(hung, Fault("hang"))
        server.fail(hung, Fault("hang"), aggregation=True)
        server.hits.clear()

        _, info, elapsed, overhead_ms = await ask(client, "jisi-aggregate", stream, question)

        assert elapsed < healthy_s + 2.0 + 1.0  # one timeout of the final call, not three
        assert len(server.hits_for(hung)) == 1
        assert hung not in info["final"] and info["answered_by"] != hung
        assert f"final {hung} failed" in info["degraded_reasons"]
        assert any(r.startswith(f"final set without {hung}") for r in info["degraded_reasons"])
        assert info["timings_ms"]["finals"] >= 1900
        assert overhead_ms < OVERHEAD_LIMIT_MS, info["timings_ms"]


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
async def test_a_hanging_passthrough_model_is_one_timeout_then_a_clean_504(mini_bank, bank_models, minilm, tmp_path,
                                                                           server, stream):
    settings = default_settings(mini_bank, bank_models, tmp_path, server)
    settings.upstreams[:] = [u.model_copy(update={"timeout_s": 1.0}) for u in settings.upstreams]
    target = bank_models[2]
    async with gateway(settings, minilm) as client:
        server.fail(target, Fault("hang"))
        started = time.monotonic()
        body = chat_body(target, QUESTION, stream=stream)
        if stream:  # nothing was sent yet: a plain HTTP error, as without stream (no 200 with an error event)
            async with client.stream("POST", "/v1/chat/completions", json=body) as r:
                await r.aread()
        else:
            r = await client.post("/v1/chat/completions", json=body)
        elapsed = time.monotonic() - started
        error = assert_openai_error(r, 504, "upstream_timeout")
        assert "timed out after 1s" in error["message"] and "attempts" not in error["message"]
        assert 0.9 < elapsed < 1.8  # one timeout of 1 s, not three
        assert len(server.hits_for(target)) == 1
        server.reset()
        r = await client.post("/v1/chat/completions", json=chat_body(target, QUESTION))
        assert r.status_code == 200, r.text  # the next request is served normally


async def test_repeated_hangs_open_the_breaker_and_later_requests_leave_the_model_out(
        mini_bank, bank_models, minilm, tmp_path, server):
    settings = default_settings(mini_bank, bank_models, tmp_path, server, breaker_failures=2, breaker_open_s=60,
                                quorum_grace_s=0.2)
    async with gateway(settings, minilm) as client:
        before = (await route(client))["candidates"]
        hung = before[1]
        server.fail(hung, Fault("hang"))
        for _ in range(2):  # each request leaves the hung candidate unanswered once: a failure for its breaker
            _, info, elapsed, _ = await ask(client, "jisi", False)
            assert hung not in info["answered"] and elapsed < TIMEOUT_S
        assert len(server.hits_for(hung)) == 2
        metrics = (await client.get("/metrics")).text
        assert f'jisi_upstream_circuit_open{{upstream="{hung}"}} 1.0' in metrics
        assert f'jisi_upstream_errors_total{{kind="timeout",upstream="{hung}"}} 2.0' in metrics

        plan = await route(client)
        assert hung not in plan["candidates"] and set(before) - {hung} < set(plan["candidates"])
        _, info, elapsed, _ = await ask(client, "jisi", False)
        assert hung not in info["candidates"] and info["degraded"] is False and info["errors"] == []
        assert len(server.hits_for(hung)) == 2  # not called again while its circuit is open
        assert elapsed < 1.0
        started = time.monotonic()  # asked for by name, the model is refused at once: a 503 to retry later
        r = await client.post("/v1/chat/completions", json=chat_body(hung, QUESTION))
        assert_openai_error(r, 503, "upstream_unavailable")
        assert time.monotonic() - started < 0.5 and len(server.hits_for(hung)) == 2
        metrics = (await client.get("/metrics")).text
        assert f'jisi_upstream_errors_total{{kind="circuit_open",upstream="{hung}"}} 1.0' in metrics


async def test_the_old_behaviour_stays_reachable_retry_timeouts_and_wait_for_every_candidate(
        mini_bank, bank_models, minilm, tmp_path, server):
    settings = default_settings(mini_bank, bank_models, tmp_path, server, retries=1, retry_timeouts=True,
                                quorum_slack=0, backoff_base_s=0.01)
    settings.upstreams[:] = [u.model_copy(update={"timeout_s": 0.5}) for u in settings.upstreams]
    async with gateway(settings, minilm) as client:
        hung = (await route(client))["candidates"][1]
        server.fail(hung, Fault("hang"))
        _, info, elapsed, _ = await ask(client, "jisi-route", False)
        assert elapsed >= 1.0  # two attempts of 0.5 s each were waited for
        assert len(server.hits_for(hung)) == 2
        assert "after 2 attempts" in info["errors"][0]["message"]
        assert json.dumps(info["errors"]).count(hung) == 1
