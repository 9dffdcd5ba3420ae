"""The gateway end to end (non-streaming) with respx-mocked upstreams: route, aggregate, the adaptive switch,
forced modes, a final model outside the candidates, the 13,000-token truncation, a failing candidate,
pass-through, cost accounting and the cost cap.

Most tests run on the real mini bank (60 questions x 8 models, MiniLM); the test of a final-set model that
was not a candidate runs on a hand-made 3-model bank whose scores are computed by hand (the tiny bank of
tests/test_engine_flow.py), so every decision is known in advance.
"""

from __future__ import annotations

import asyncio
import gc
import json

import numpy as np
import pytest

from app.pipeline.aggregate import AGGREGATION_INSTRUCTIONS
from app.bank.format import FORMAT_VERSION, BankFiles, EmbedderInfo, Manifest, QueryInfo
from app.config import JiSiSettings
from app.bank import writer as bank_writer
from gateway_helpers import (
    Behaviour, FakeUpstreams, chat_body, expected_cost, make_settings, running_gateway, summed_usage,
)

pytestmark = pytest.mark.anyio

QUESTION = "Janet has 3 apples and buys 5 more at the market. How many apples does she have now?"


async def post(client, body, **kwargs):
    return await client.post("/v1/chat/completions", json=body, **kwargs)


def assert_usage_is_sum_of_calls(data: dict, fake: FakeUpstreams) -> None:
    """`usage` sums every upstream call, and each call's usage is what that upstream reported."""
    calls = data["jisi"]["calls"]
    assert data["usage"] == summed_usage(calls)
    assert len(calls) == len(fake.calls) == data["jisi"]["upstream_calls"]
    for call in calls:
        assert call["usage_estimated"] is False
        assert call["usage"] == fake.usage_of(call["model"], call["role"] == "aggregator")


# ------------------------------------------------------------------------------------------------
# catalogue and health
# ------------------------------------------------------------------------------------------------


async def test_startup_freezes_what_it_loaded_out_of_the_garbage_collectors_reach(settings, fake, minilm):
    # a full collection over the model's and libraries' ~500k objects stalled the event loop ~200 ms
    gc.unfreeze()
    async with running_gateway(settings, minilm, fake):
        assert gc.get_freeze_count() > 10_000


async def test_models_lists_virtual_models_and_every_upstream(settings, fake, minilm, bank_models):
    async with running_gateway(settings, minilm, fake) as (app, client):
        r = await client.get("/v1/models")
        assert r.status_code == 200
        cards = {c["id"]: c for c in r.json()["data"]}
        assert set(cards) == {"jisi", "jisi-route", "jisi-aggregate", *bank_models}
        assert cards[bank_models[2]]["pricing"] == {"input_usd_per_mtok": 2.5, "output_usd_per_mtok": 8.0}
        assert (await client.get("/healthz")).json() == {"status": "ok"}
        ready = await client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["bank"]["models"] == 8
        assert ready.json()["bank"]["queries"] == 60
    assert fake.calls == []


# ------------------------------------------------------------------------------------------------
# route and aggregate
# ------------------------------------------------------------------------------------------------


async def test_route_mode_answers_with_the_top_fine_score_model(settings, fake, minilm, bank_models):
    async with running_gateway(settings, minilm, fake) as (app, client):
        r = await post(client, chat_body("jisi-route", QUESTION), headers={"x-request-id": "req-route-1"})
    assert r.status_code == 200, r.text
    data = r.json()
    info = data["jisi"]
    assert data["object"] == "chat.completion"
    assert info["mode"] == info["requested_mode"] == "route"

    # coarse scores -> candidates (top-3 of g) and aggregator (argmax g)
    g = info["scores"]["g"]
    assert set(g) == set(bank_models)
    by_g = sorted(bank_models, key=lambda m: -g[m])
    assert info["candidates"] == by_g[:3]
    assert info["aggregator"] == by_g[0]
    # the routed model is the top-1 of the fine score over ALL models
    gf = info["scores"]["gf"]
    routed = max(bank_models, key=lambda m: gf[m])
    assert info["final"] == [routed]
    assert data["model"] == info["answered_by"] == routed
    assert data["choices"][0]["message"] == {"role": "assistant", "content": fake.answer(routed)}
    assert data["choices"][0]["finish_reason"] == "stop"

    # every candidate was called once with the user's messages; no aggregation
    assert sorted(fake.called_models[:3]) == sorted(info["candidates"])
    assert fake.aggregations == []
    for call in fake.calls:
        assert call.body["messages"] == [{"role": "user", "content": QUESTION}]
        assert "jisi" not in call.body and call.stream is False
    roles = [c["role"] for c in info["calls"]]
    assert roles[:3] == ["candidate"] * 3 and set(roles[3:]) <= {"final"}
    assert_usage_is_sum_of_calls(data, fake)

    assert r.headers["x-jisi-mode"] == "route"
    assert r.headers["x-jisi-models"] == routed
    assert r.headers["x-jisi-aggregator"] == ""
    assert r.headers["x-jisi-upstream-calls"] == str(len(fake.calls))
    assert r.headers["x-jisi-degraded"] == "false"
    assert r.headers["x-request-id"] == "req-route-1"
    assert float(r.headers["x-jisi-overhead-ms"]) >= 0
    for phase in ("embed_query", "search", "plan", "fanout", "embed_responses", "decide", "total", "overhead"):
        assert phase in info["timings_ms"]
    assert info["timings_ms"]["overhead"] <= info["timings_ms"]["total"]
    assert info["degraded"] is False and info["errors"] == []


async def test_aggregate_mode_gives_the_aggregator_the_conversation_and_every_final_answer(
        settings, fake, minilm, bank_models):
    conversation = [
        {"role": "system", "content": "You are a careful math tutor. Answer with one number."},
        {"role": "user", "content": "What is 2 + 2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": QUESTION},
    ]
    async with running_gateway(settings, minilm, fake) as (app, client):
        r = await post(client, {"model": "jisi-aggregate", "messages": conversation, "temperature": 0.3})
    assert r.status_code == 200, r.text
    data = r.json()
    info = data["jisi"]
    assert info["mode"] == info["requested_mode"] == "aggregate"
    gf = info["scores"]["gf"]
    assert info["final"] == sorted(bank_models, key=lambda m: -gf[m])[:3]
    aggregator = info["aggregator"]
    assert aggregator == max(bank_models, key=lambda m: info["scores"]["g"][m])
    assert data["model"] == info["answered_by"] == aggregator
    assert data["choices"][0]["message"]["content"] == fake.aggregate_answer(aggregator)

    # exactly one aggregation call, to the aggregator, holding the whole conversation plus every final answer
    assert [c.model for c in fake.aggregations] == [aggregator]
    agg = fake.aggregations[0]
    assert agg.body["messages"][1:] == conversation
    assert agg.body["temperature"] == 0.3
    system = agg.system_prompt
    assert system.startswith(AGGREGATION_INSTRUCTIONS)
    for n, model in enumerate(info["final"], start=1):
        assert f"[Answer {n}]\n{fake.answer(model)}" in system
    assert "[Answer 4]" not in system
    for model in set(info["answered"]) - set(info["final"]):
        assert fake.answer(model) not in system
    # candidates (and final-set models that were not candidates) got the conversation unchanged
    for call in fake.calls:
        if not call.aggregation:
            assert call.body["messages"] == conversation

    assert info["calls"][-1]["role"] == "aggregator" and info["calls"][-1]["model"] == aggregator
    assert_usage_is_sum_of_calls(data, fake)
    assert r.headers["x-jisi-mode"] == "aggregate"
    assert r.headers["x-jisi-aggregator"] == aggregator
    assert r.headers["x-jisi-models"] == ",".join(info["final"])
    assert r.headers["x-jisi-upstream-calls"] == str(len(fake.calls))
    assert "aggregate" in info["timings_ms"]


async def test_adaptive_switch_follows_t(settings, fake, minilm):
    """`jisi` with t=0 aggregates the top-K (every ratio is >= 0); with t=1 it routes to the best model."""
    async with running_gateway(settings, minilm, fake) as (app, client):
        low = (await post(client, chat_body("jisi", QUESTION, jisi={"t": 0}))).json()["jisi"]
        n_low = len(fake.calls)
        high = (await post(client, chat_body("jisi", QUESTION, jisi={"t": 1}))).json()["jisi"]
    assert low["requested_mode"] == high["requested_mode"] == "adaptive"
    assert low["mode"] == "aggregate" and len(low["final"]) == 3
    assert high["mode"] == "route" and len(high["final"]) == 1
    assert high["final"][0] == low["final"][0]  # same scores: the best model leads both
    assert [c.aggregation for c in fake.calls[:n_low]].count(True) == 1
    assert [c.aggregation for c in fake.calls[n_low:]].count(True) == 0


@pytest.mark.parametrize("forced", ["route", "aggregate"])
async def test_jisi_mode_override_forces_the_mode(settings, fake, minilm, forced):
    async with running_gateway(settings, minilm, fake) as (app, client):
        # the opposite extreme of t, so the override (not the switch) decides
        t = 1.0 if forced == "aggregate" else 0.0
        r = await post(client, chat_body("jisi", QUESTION, jisi={"mode": forced, "t": t}))
    info = r.json()["jisi"]
    assert info["requested_mode"] == forced and info["mode"] == forced
    assert r.headers["x-jisi-mode"] == forced
    assert len(fake.aggregations) == (1 if forced == "aggregate" else 0)


async def test_overrides_k_and_n_base_reach_the_engine(settings, fake, minilm):
    async with running_gateway(settings, minilm, fake) as (app, client):
        two = (await post(client, chat_body("jisi-aggregate", QUESTION, jisi={"k": 2}))).json()["jisi"]
        one = (await post(client, chat_body("jisi-aggregate", QUESTION, jisi={"k": 1}))).json()["jisi"]
        dry = (await client.post("/v1/jisi/route", json={"messages": [{"role": "user", "content": QUESTION}],
                                                         "jisi": {"k": 5, "n_base": 7}})).json()
    assert len(two["candidates"]) == 2 and len(two["final"]) == 2 and two["mode"] == "aggregate"
    # K = 1: the final set holds one model, so even the aggregate variant just routes to it
    assert len(one["candidates"]) == 1 and one["final"] == one["candidates"] and one["mode"] == "route"
    assert dry["params"]["k"] == 5 and dry["params"]["n_base"] == 7 and len(dry["candidates"]) == 5


@pytest.mark.parametrize("field", ["tools", "response_format"])
async def test_tools_or_response_format_force_route_mode(settings, fake, minilm, bank_models, field):
    extra = {
        "tools": {"tools": [{"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}]},
        "response_format": {"response_format": {"type": "json_object"}},
    }[field]
    tool_calls = [{"id": "call_1", "type": "function", "function": {"name": "add", "arguments": '{"a": 3, "b": 5}'}}]
    if field == "tools":
        fake.behaviour = {m: Behaviour(tool_calls=tool_calls) for m in bank_models}
    async with running_gateway(settings, minilm, fake) as (app, client):
        r = await post(client, chat_body("jisi-aggregate", QUESTION, **extra))
    assert r.status_code == 200, r.text
    info = r.json()["jisi"]
    assert info["requested_mode"] == "aggregate" and info["mode"] == "route"
    assert any("forced route" in note for note in info["notes"])
    assert fake.aggregations == []
    for call in fake.calls:  # forwarded to every upstream untouched
        assert call.body[field] == extra[field]
    message = r.json()["choices"][0]["message"]
    if field == "tools":
        assert message["tool_calls"] == tool_calls
        assert r.json()["choices"][0]["finish_reason"] == "tool_calls"


# ------------------------------------------------------------------------------------------------
# a final-set model outside the candidates (hand-made bank, every score known)
# ------------------------------------------------------------------------------------------------
#
# The tiny bank of tests/test_engine_flow.py: 6 queries, models m0 m1 m2, d = 2. The request embeds to
# [1, 0]; with k=2, n_base=3, gamma=0.5, beta=0.5: g = [1.70, 1.85, 1.75] -> candidates [m1, m2],
# aggregator m1. Live answers: m1 embeds to [1, 0] with 5 tokens, m2 to [0, 1] with 20 tokens ->
# gf = [1.9, 3.165, 1.265]. t = 0.8 routes to m1; t = 0.6 keeps m0 too (1.9 / 3.165 = 0.6003), and m0
# was never a candidate: it must be called, then m1 aggregates the answers of m1 and m0.

COS = np.array([0.8, 0.35, 0.9, -0.1, 0.2, 0.6])
TINY_E = np.stack([COS, np.sqrt(1.0 - COS**2)], axis=1).astype(np.float32)
TINY_V = np.array([[1, 0, 1], [0, 1, 1], [1, 1, 0], [0, 0, 1], [0, 0, 1], [0, 1, 1]], dtype=np.float32)
TINY_C = np.array([[7, 15, 10], [7, 0, 20], [7, 5, 20], [7, 1000, 1000], [7, 1000, 1000], [7, 10, 0]],
                  dtype=np.float32)
TINY_R = np.array([
    [[1, 0], [0, 1], [1, 0]],
    [[1, 0], [0.8, 0.6], [0, 1]],
    [[1, 0], [1, 0], [0, 1]],
    [[1, 0], [1, 0], [0, 1]],
    [[1, 0], [1, 0], [0, 1]],
    [[1, 0], [0.6, 0.8], [0.6, 0.8]],
], dtype=np.float32)
TINY_MODELS = ["m0", "m1", "m2"]
TINY_QUESTION = "Which of the three tiny models knows the answer?"
TINY_ANSWERS = {"m0": "m0 thinks it is blue.", "m1": "m1 says it is red.", "m2": "m2 says it is green."}


class TinyEmbedder:
    """A deterministic 2-d embedder: known texts map to fixed unit vectors, anything else to [1, 0]."""

    name = "tiny-2d-test-embedder"
    dim = 2
    table = {TINY_QUESTION: [1.0, 0.0], TINY_ANSWERS["m1"]: [1.0, 0.0], TINY_ANSWERS["m2"]: [0.0, 1.0]}

    def embed(self, texts, *, progress: bool = False) -> np.ndarray:
        return np.array([self.table.get(t, [1.0, 0.0]) for t in texts], dtype=np.float32).reshape(-1, 2)


@pytest.fixture(scope="module")
def tiny_bank(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny-bank")
    build_id = bank_writer.new_build_id()
    files = BankFiles(
        query_emb=bank_writer.save_array(out, f"query_emb-{build_id}.npy", TINY_E),
        responses=[bank_writer.save_array(out, f"resp-{build_id}-{j}.npy", TINY_R[:, j, :]) for j in range(3)],
        v=bank_writer.save_array(out, f"v-{build_id}.npy", TINY_V),
        c=bank_writer.save_array(out, f"c-{build_id}.npy", TINY_C),
        present=bank_writer.save_array(out, f"present-{build_id}.npy", np.ones((6, 3), dtype=bool)),
        queries=bank_writer.save_queries(out, f"queries-{build_id}.jsonl",
                                         [QueryInfo(text=f"tiny question {i}", dataset="tiny", index=i)
                                          for i in range(6)]),
        index=bank_writer.save_index(out, f"index-{build_id}.faiss", TINY_E),
    )
    manifest = Manifest(format_version=FORMAT_VERSION, build_id=build_id, created_at=bank_writer.now_iso(),
                        models=TINY_MODELS, datasets={"tiny": 6}, n_queries=6, n_records=18,
                        embedder=EmbedderInfo(name=TinyEmbedder.name, dim=2), params={}, split={}, sources=[],
                        files=files)
    bank_writer.commit(out, manifest)
    return out


def tiny_setup(tiny_bank, tmp_path):
    jisi = JiSiSettings(k=2, n_base=3, gamma=0.5, beta=0.5, eps=0.5, sigma=0.3, delta=0.2, t=0.8)
    settings = make_settings(tiny_bank, TINY_MODELS, tmp_path / "cache", jisi=jisi)
    fake = FakeUpstreams(list(TINY_MODELS), behaviour={
        "m0": Behaviour(text=TINY_ANSWERS["m0"], completion_tokens=9),
        "m1": Behaviour(text=TINY_ANSWERS["m1"], completion_tokens=5),
        "m2": Behaviour(text=TINY_ANSWERS["m2"], completion_tokens=20),
    })
    return settings, fake


async def test_final_set_model_outside_the_candidates_is_called_and_aggregated(tiny_bank, tmp_path):
    settings, fake = tiny_setup(tiny_bank, tmp_path)
    async with running_gateway(settings, TinyEmbedder(), fake) as (app, client):
        routed = await post(client, chat_body("jisi", TINY_QUESTION))
        n_routed = len(fake.calls)
        r = await post(client, chat_body("jisi", TINY_QUESTION, jisi={"t": 0.6}))
    # t = 0.8: route to m1, the two candidates only
    info = routed.json()["jisi"]
    assert info["scores"]["g"] == pytest.approx({"m0": 1.70, "m1": 1.85, "m2": 1.75}, abs=1e-5)
    assert info["scores"]["gf"] == pytest.approx({"m0": 1.9, "m1": 3.165, "m2": 1.265}, abs=1e-5)
    assert info["candidates"] == ["m1", "m2"] and info["final"] == ["m1"] and info["mode"] == "route"
    assert routed.json()["choices"][0]["message"]["content"] == TINY_ANSWERS["m1"]
    assert sorted(c.model for c in fake.calls[:n_routed]) == ["m1", "m2"]

    # t = 0.6: A^fm = [m1, m0]; m0 was not a candidate
    assert r.status_code == 200, r.text
    data = r.json()
    info = data["jisi"]
    assert info["candidates"] == ["m1", "m2"]
    assert info["final"] == ["m1", "m0"]
    assert "m0" not in info["candidates"]
    assert info["mode"] == "aggregate" and info["aggregator"] == "m1"
    assert [(c["model"], c["role"]) for c in info["calls"]] == [
        ("m1", "candidate"), ("m2", "candidate"), ("m0", "final"), ("m1", "aggregator")]
    late = fake.calls[n_routed:]
    assert [(c.model, c.aggregation) for c in late][2:] == [("m0", False), ("m1", True)]
    system = late[-1].system_prompt
    assert f"[Answer 1]\n{TINY_ANSWERS['m1']}" in system and f"[Answer 2]\n{TINY_ANSWERS['m0']}" in system
    assert TINY_ANSWERS["m2"] not in system  # answered, but not in the final set
    assert late[-1].user_messages == [TINY_QUESTION]
    assert data["model"] == "m1" and data["choices"][0]["message"]["content"] == fake.aggregate_answer("m1")
    assert data["usage"] == summed_usage(info["calls"])
    assert r.headers["x-jisi-models"] == "m1,m0" and r.headers["x-jisi-upstream-calls"] == "4"
    assert "finals" in info["timings_ms"]


async def test_failed_candidate_drops_out_of_the_fine_score(tiny_bank, tmp_path):
    """m2 fails: K becomes 1 in the mixed score (hand-computed gf = [0.95, 1.555, 0.605]); with t = 0.6,
    0.95 / 1.555 = 0.611 keeps m0, which is called and aggregated with m1; m2's failure is reported."""
    settings, fake = tiny_setup(tiny_bank, tmp_path)
    fake.behaviour["m2"].status = 503
    async with running_gateway(settings, TinyEmbedder(), fake) as (app, client):
        r = await post(client, chat_body("jisi", TINY_QUESTION, jisi={"t": 0.6}))
    assert r.status_code == 200, r.text
    info = r.json()["jisi"]
    assert info["scores"]["gf"] == pytest.approx({"m0": 0.95, "m1": 1.555, "m2": 0.605}, abs=1e-5)
    assert info["answered"] == ["m1"] and info["final"] == ["m1", "m0"] and info["mode"] == "aggregate"
    assert [e["model"] for e in info["errors"]] == ["m2"] and info["errors"][0]["status"] == 503
    assert info["degraded"] is True and r.headers["x-jisi-degraded"] == "true"
    assert [(c["model"], c["role"]) for c in info["calls"]] == [("m1", "candidate"), ("m0", "final"),
                                                                ("m1", "aggregator")]
    assert TINY_ANSWERS["m2"] not in fake.aggregations[0].system_prompt


# ------------------------------------------------------------------------------------------------
# the 13,000-token truncation of the aggregatees
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tokens, kept", [(4333, 3), (4334, 2), (5000, 2)])
async def test_aggregatees_over_13000_tokens_are_truncated_to_two(settings, fake, minilm, bank_models, tokens, kept):
    fake.behaviour = {m: Behaviour(completion_tokens=tokens) for m in bank_models}  # 3 x tokens in total
    async with running_gateway(settings, minilm, fake) as (app, client):
        r = await post(client, chat_body("jisi-aggregate", QUESTION))
    assert r.status_code == 200, r.text
    info = r.json()["jisi"]
    assert info["mode"] == "aggregate"
    assert len(info["final"]) == kept
    system = fake.aggregations[0].system_prompt
    assert system.count("[Answer ") == kept
    for n, model in enumerate(info["final"], start=1):
        assert f"[Answer {n}]\n{fake.answer(model)}" in system
    # the dropped one is the lowest-ranked of the top 3 by fine score
    gf = info["scores"]["gf"]
    top3 = sorted(bank_models, key=lambda m: -gf[m])[:3]
    assert info["final"] == top3[:kept]
    if kept == 2:
        assert fake.answer(top3[2]) not in system
    assert r.json()["usage"]["completion_tokens"] == sum(c["usage"]["completion_tokens"] for c in info["calls"])


# ------------------------------------------------------------------------------------------------
# one candidate failing (real bank)
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("failure", [Behaviour(status=500), Behaviour(timeout=True)], ids=["http500", "timeout"])
async def test_one_candidate_failing_still_answers_and_says_degraded(settings, fake, minilm, failure):
    async with running_gateway(settings, minilm, fake) as (app, client):
        dry = (await client.post("/v1/jisi/route", json={"messages": [{"role": "user", "content": QUESTION}]})).json()
        assert fake.calls == []  # the dry run calls no upstream
        broken = dry["candidates"][1]
        fake.behaviour[broken] = failure
        r = await post(client, chat_body("jisi-aggregate", QUESTION))
    assert r.status_code == 200, r.text
    data = r.json()
    info = data["jisi"]
    assert info["candidates"] == dry["candidates"]
    assert broken not in info["answered"] and len(info["answered"]) == 2
    assert broken not in info["final"]
    assert info["degraded"] is True and r.headers["x-jisi-degraded"] == "true"
    assert any(broken in reason for reason in info["degraded_reasons"])
    # called once: a candidate that just failed is not called again as a final-set model (a timeout would
    # otherwise be waited for twice)
    assert fake.called_models.count(broken) == 1
    errors = [e for e in info["errors"] if e["model"] == broken]
    assert len(errors) == 1 and errors[0]["timeout"] is failure.timeout
    assert errors[0]["status"] == failure.status
    # only successful calls are counted and billed
    assert all(c["model"] != broken for c in info["calls"])
    assert data["usage"] == summed_usage(info["calls"])
    assert fake.answer(broken) not in json.dumps(data)
    if info["mode"] == "aggregate":
        assert fake.answer(broken) not in fake.aggregations[0].system_prompt


async def test_aggregator_failure_falls_back_to_the_best_candidate(settings, fake, minilm):
    async with running_gateway(settings, minilm, fake) as (app, client):
        dry = (await client.post("/v1/jisi/route", json={"messages": [{"role": "user", "content": QUESTION}]})).json()
        fake.aggregator_behaviour[dry["aggregator"]] = Behaviour(status=500)
        r = await post(client, chat_body("jisi-aggregate", QUESTION))
    assert r.status_code == 200, r.text
    data = r.json()
    info = data["jisi"]
    best = info["final"][0]
    assert len(fake.aggregations) == 1
    assert info["mode"] == "route" and data["model"] == info["answered_by"] == best
    assert data["choices"][0]["message"]["content"] == fake.answer(best)
    assert info["degraded"] is True and any("aggregator" in x for x in info["degraded_reasons"])
    assert r.headers["x-jisi-mode"] == "route" and r.headers["x-jisi-degraded"] == "true"
    assert all(c["role"] != "aggregator" for c in info["calls"])


# ------------------------------------------------------------------------------------------------
# pass-through
# ------------------------------------------------------------------------------------------------


async def test_passthrough_forwards_the_request_and_accounts_for_the_call(settings, fake, minilm, bank_models):
    model = bank_models[4]
    body = chat_body(model, QUESTION, temperature=0.2, max_tokens=50, seed=7, custom_field={"x": 1},
                     jisi={"k": 2})
    async with running_gateway(settings, minilm, fake) as (app, client):
        r = await post(client, body)
    assert r.status_code == 200, r.text
    data = r.json()
    assert [c.model for c in fake.calls] == [model]
    sent = fake.calls[0].body
    assert sent["messages"] == body["messages"] and sent["model"] == model
    assert sent["temperature"] == 0.2 and sent["max_tokens"] == 50 and sent["seed"] == 7
    assert sent["custom_field"] == {"x": 1}  # unknown fields go through untouched
    assert "jisi" not in sent and "stream" not in sent
    assert data["model"] == model
    assert data["choices"][0]["message"]["content"] == fake.answer(model)
    assert data["usage"] == fake.usage_of(model, False)
    info = data["jisi"]
    assert info["mode"] == "passthrough" and info["final"] == [model] and info["calls"][0]["role"] == "passthrough"
    p_in, p_out = 0.5 + 4, 2.0 + 12
    usage = fake.usage_of(model, False)
    cost = (usage["prompt_tokens"] * p_in + usage["completion_tokens"] * p_out) / 1e6
    assert info["total_cost_usd"] == pytest.approx(cost)
    assert r.headers["x-jisi-cost-usd"] == f"{cost:.8f}"
    assert r.headers["x-jisi-mode"] == "passthrough" and r.headers["x-jisi-models"] == model
    assert r.headers["x-jisi-upstream-calls"] == "1"


async def test_passthrough_without_upstream_usage_counts_tokens(settings, fake, minilm, bank_models):
    model = bank_models[0]
    fake.behaviour[model] = Behaviour(usage=False, text="x" * 40)  # 40 characters ~ 10 tokens
    question = "y" * 80  # ~ 20 tokens
    async with running_gateway(settings, minilm, fake) as (app, client):
        r = await post(client, chat_body(model, question))
    data = r.json()
    assert data["usage"] == {"prompt_tokens": 20, "completion_tokens": 10, "total_tokens": 30}
    call = data["jisi"]["calls"][0]
    assert call["usage_estimated"] is True
    assert call["cost_usd"] == pytest.approx((20 * 0.5 + 10 * 2.0) / 1e6)


# ------------------------------------------------------------------------------------------------
# cost accounting and the cost cap
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["jisi-aggregate", "jisi-route"])
async def test_cost_header_is_the_sum_over_every_call_at_the_configured_prices(settings, fake, minilm,
                                                                              bank_models, model):
    async with running_gateway(settings, minilm, fake) as (app, client):
        r = await post(client, chat_body(model, QUESTION))
    info = r.json()["jisi"]
    # independently of the gateway: what the fake upstreams reported, at the configured prices
    reported = [{"model": c.model, "usage": fake.usage_of(c.model, c.aggregation)} for c in fake.calls]
    cost = expected_cost(reported, bank_models)
    assert cost > 0
    assert float(r.headers["x-jisi-cost-usd"]) == pytest.approx(cost, abs=1e-8)
    assert r.headers["x-jisi-cost-usd"] == f"{cost:.8f}"
    assert info["total_cost_usd"] == pytest.approx(cost, rel=1e-9)
    for call in info["calls"]:
        assert call["cost_usd"] == pytest.approx(expected_cost([call], bank_models), rel=1e-9)
        assert call["latency_ms"] >= 0


def input_only_prices(i: int) -> tuple[float, float]:
    """For the cost cap: output free, so a call's forecast is (prompt tokens) x (input price) exactly."""
    return 1.0 + i, 0.0


async def test_cost_cap_degrades_aggregate_to_route_to_a_single_model_then_refuses(mini_bank, bank_models,
                                                                                   minilm, tmp_path):
    settings = make_settings(mini_bank, bank_models, tmp_path / "cache", price=input_only_prices)
    question = "A train leaves at 3 pm and travels 120 km at 60 km per hour. When does it arrive?"
    tokens = (len(question) + 3) // 4  # the gateway's forecast of the prompt
    fake = FakeUpstreams(list(bank_models), behaviour={m: Behaviour(prompt_tokens=tokens) for m in bank_models})

    def estimate(model: str) -> float:
        return tokens * input_only_prices(bank_models.index(model))[0] / 1e6

    async with running_gateway(settings, minilm, fake) as (app, client):
        dry = (await client.post("/v1/jisi/route", json={"messages": [{"role": "user", "content": question}]})).json()
        candidates = dry["candidates"]
        fan_out = sum(estimate(m) for m in candidates)

        async def ask(cap):
            fake.calls.clear()
            jisi = {} if cap is None else {"max_cost_usd": cap}
            return await post(client, chat_body("jisi-aggregate", question, jisi=jisi))

        free = await ask(None)
        # the fan-out fits, but nothing after it (the cheapest model costs tokens x $1/Mtok): no aggregation
        routed = await ask(fan_out + 0.5 * tokens / 1e6)
        n_routed = list(fake.calls)
        # the fan-out does not fit: one call, to the best-g model whose forecast fits
        single = await ask(0.99 * fan_out)
        n_single = list(fake.calls)
        # below the cheapest model
        refused = await ask(0.5 * tokens / 1e6)
        n_refused = list(fake.calls)

    assert free.status_code == 200 and free.json()["jisi"]["mode"] == "aggregate"
    assert free.headers["x-jisi-degraded"] == "false"

    assert routed.status_code == 200, routed.text
    info = routed.json()["jisi"]
    assert info["mode"] == "route" and info["requested_mode"] == "aggregate"
    assert info["degraded"] is True and routed.headers["x-jisi-degraded"] == "true"
    assert any(r.startswith("cost cap") for r in info["degraded_reasons"])
    assert sorted(c.model for c in n_routed) == sorted(candidates) and not any(c.aggregation for c in n_routed)
    assert routed.json()["model"] in candidates
    assert float(routed.headers["x-jisi-cost-usd"]) <= fan_out + 0.5 * tokens / 1e6

    assert single.status_code == 200, single.text
    info = single.json()["jisi"]
    assert info["mode"] == "route" and info["degraded"] is True
    assert any("no fan-out" in r for r in info["degraded_reasons"])
    assert [c.model for c in n_single] == [candidates[0]]  # the top-g model fits alone
    assert [(c["model"], c["role"]) for c in info["calls"]] == [(candidates[0], "final")]
    assert single.json()["model"] == candidates[0]
    assert single.headers["x-jisi-degraded"] == "true" and single.headers["x-jisi-upstream-calls"] == "1"
    assert float(single.headers["x-jisi-cost-usd"]) == pytest.approx(estimate(candidates[0]), abs=1e-8)

    assert refused.status_code == 400
    error = refused.json()["error"]
    assert error["code"] == "cost_cap_too_low" and error["param"] == "jisi.max_cost_usd"
    assert error["type"] == "invalid_request_error"
    assert n_refused == []


async def test_cost_cap_picks_the_best_model_that_fits(mini_bank, bank_models, minilm, tmp_path):
    """A cap that the top-g model exceeds but a cheaper one fits: the best-scored fitting model answers."""
    settings = make_settings(mini_bank, bank_models, tmp_path / "cache", price=input_only_prices)
    tokens = (len(QUESTION) + 3) // 4
    fake = FakeUpstreams(list(bank_models), behaviour={m: Behaviour(prompt_tokens=tokens) for m in bank_models})
    async with running_gateway(settings, minilm, fake) as (app, client):
        dry = (await client.post("/v1/jisi/route", json={"messages": [{"role": "user", "content": QUESTION}]})).json()
        g = dry["scores"]["g"]
        top = dry["aggregator"]
        price = {m: input_only_prices(bank_models.index(m))[0] for m in bank_models}
        cap = (price[top] - 0.5) * tokens / 1e6  # just below the top model's forecast
        expected = max((m for m in bank_models if price[m] * tokens / 1e6 <= cap), key=lambda m: g[m])
        r = await post(client, chat_body("jisi", QUESTION, jisi={"max_cost_usd": cap}))
    assert r.status_code == 200, r.text
    assert r.json()["model"] == expected != top
    assert [c.model for c in fake.calls] == [expected]


async def test_metrics_count_requests_modes_tokens_cost_and_errors(settings, fake, minilm, bank_models):
    fake.behaviour[bank_models[1]] = Behaviour(status=500)
    async with running_gateway(settings, minilm, fake) as (app, client):
        routed = (await post(client, chat_body("jisi", QUESTION, jisi={"mode": "route"}))).json()
        passed = (await post(client, chat_body(bank_models[0], QUESTION))).json()
        failed = await post(client, chat_body(bank_models[1], QUESTION))
        text = (await client.get("/metrics")).text
    assert failed.status_code == 502
    assert 'jisi_requests_total{mode="route",model="jisi",status="ok"} 1.0' in text
    assert f'jisi_requests_total{{mode="passthrough",model="{bank_models[0]}",status="ok"}} 1.0' in text
    assert f'jisi_requests_total{{mode="none",model="{bank_models[1]}",status="error"}} 1.0' in text
    assert 'jisi_switch_decisions_total{outcome="route"} 1.0' in text
    assert f'jisi_upstream_errors_total{{kind="http_500",upstream="{bank_models[1]}"}} 1.0' in text
    for phase in ("embed_query", "search", "embed_responses", "decide"):  # the JiSi request only
        assert f'jisi_phase_seconds_count{{phase="{phase}"}} 1.0' in text
    assert 'jisi_phase_seconds_count{phase="fanout"} 2.0' in text  # ... and the successful pass-through
    cost = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("jisi_cost_usd_total{"))
    assert cost == pytest.approx(routed["jisi"]["total_cost_usd"] + passed["jisi"]["total_cost_usd"])
    tokens = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("jisi_tokens_total{"))
    assert tokens == routed["usage"]["total_tokens"] + passed["usage"]["total_tokens"]


async def test_metrics_show_embedding_batching_upstream_slots_and_loop_lag(settings, fake, minilm, bank_models):
    async with running_gateway(settings, minilm, fake) as (app, client):
        routed = (await post(client, chat_body("jisi", QUESTION, jisi={"mode": "route"}))).json()
        await asyncio.sleep(0.06)  # at least one loop-lag sample (every 25 ms)
        text = (await client.get("/metrics")).text
    answered = len(routed["jisi"]["answered"])
    totals = {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines()
              if line.startswith("jisi_embedding_")}
    # the query, then each response as it arrives; responses arriving together share a model call
    assert totals["jisi_embedding_texts_total"] == 1 + answered
    assert 2 <= totals["jisi_embedding_requests_total"] <= 1 + answered
    assert totals["jisi_embedding_model_calls_total"] <= totals["jisi_embedding_requests_total"]
    assert 0 < totals["jisi_embedding_model_seconds_total"] < routed["jisi"]["timings_ms"]["total"] / 1000
    for model in bank_models:
        assert f'jisi_upstream_in_flight{{upstream="{model}"}} 0.0' in text
        assert f'jisi_upstream_circuit_open{{upstream="{model}"}} 0.0' in text
    count = next(line for line in text.splitlines() if line.startswith("jisi_event_loop_lag_seconds_count"))
    assert float(count.rsplit(" ", 1)[1]) >= 1
