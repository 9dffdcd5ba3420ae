"""Issue 14 in the gateway: the confident shortcut (one call, said so in the trace, the headers, the metrics and
the dry run), the cost weight and the prior per request, an empty answer never chosen, and the bank's
calibration as the defaults, under the settings and the request."""

from __future__ import annotations

import json

import pytest

from app.bank import writer as bank_writer
from app.bank.format import read_manifest
from app.config import JiSiSettings
from gateway_helpers import Behaviour, FakeUpstreams, chat_body, make_settings, running_gateway

pytestmark = pytest.mark.anyio

QUESTION = "Janet has 3 apples and buys 5 more at the market. How many apples does she have now?"


async def dry_run(client, **jisi):
    body = {"messages": [{"role": "user", "content": QUESTION}], **({"jisi": jisi} if jisi else {})}
    return (await client.post("/v1/jisi/route", json=body)).json()


async def test_the_shortcut_calls_the_confident_leader_alone_and_says_so(settings, fake, minilm):
    async with running_gateway(settings, minilm, fake) as (app, client):
        plan = await dry_run(client, shortcut=0.0)  # any confidence clears 0: it always fires
        assert plan["shortcut"]["would_fire"] is True and 0.0 <= plan["shortcut"]["leader_confidence"] <= 1.0
        r = await client.post("/v1/chat/completions", json=chat_body("jisi", QUESTION, jisi={"shortcut": 0.0}))
        off = await dry_run(client)
        metrics = (await client.get("/metrics")).text
    assert r.status_code == 200, r.text
    info = r.json()["jisi"]
    assert info["shortcut"] is True and info["mode"] == "route" and r.headers["x-jisi-shortcut"] == "true"
    assert [c.model for c in fake.calls] == [plan["candidates"][0]] == info["final"]
    assert info["upstream_calls"] == 1 and r.json()["model"] == plan["candidates"][0]
    assert "jisi_shortcuts_total 1.0" in metrics
    assert off["shortcut"] == {"would_fire": False, "leader_confidence": None, "threshold": None}


async def test_an_unsure_leader_is_not_called_alone(settings, fake, minilm):
    async with running_gateway(settings, minilm, fake) as (app, client):
        plan = await dry_run(client, shortcut=1.0)
        r = await client.post("/v1/chat/completions", json=chat_body("jisi-route", QUESTION, jisi={"shortcut": 1.0}))
    sure = plan["shortcut"]["leader_confidence"] == 1.0
    assert plan["shortcut"]["would_fire"] is sure
    assert r.json()["jisi"]["shortcut"] is sure and r.headers["x-jisi-shortcut"] == ("true" if sure else "false")
    assert len({c.model for c in fake.calls}) == (1 if sure else 3)


async def test_an_empty_answer_from_the_shortcut_leader_calls_the_next_candidate(settings, fake, minilm):
    async with running_gateway(settings, minilm, fake) as (app, client):
        leader, runner_up = (await dry_run(client))["candidates"][:2]
        fake.behaviour[leader] = Behaviour(text="")
        r = await client.post("/v1/chat/completions", json=chat_body("jisi", QUESTION, jisi={"shortcut": 0.0}))
    info = r.json()["jisi"]
    assert [c.model for c in fake.calls] == [leader, runner_up] and r.json()["model"] == runner_up
    assert r.json()["choices"][0]["message"]["content"] and info["shortcut"] is True
    assert any("answered empty" in note for note in info["notes"])


async def test_an_empty_answer_is_not_routed_to_when_another_candidate_answered(settings, fake, minilm):
    async with running_gateway(settings, minilm, fake) as (app, client):
        first = await client.post("/v1/chat/completions", json=chat_body("jisi-route", QUESTION))
        chosen = first.json()["model"]
        fake.behaviour[chosen] = Behaviour(text="")
        fake.calls.clear()
        r = await client.post("/v1/chat/completions", json=chat_body("jisi-route", QUESTION))
    assert r.json()["model"] != chosen and r.json()["choices"][0]["message"]["content"]
    assert f"candidate {chosen} answered empty: not chosen" in r.json()["jisi"]["notes"]


async def test_the_cost_weight_moves_the_candidates_toward_cheaper_upstreams(mini_bank, bank_models, minilm, tmp_path):
    # prices rise steeply with the model's position: at cost_weight 1 the cheapest models are the candidates
    settings = make_settings(mini_bank, bank_models, tmp_path / "c", price=lambda i: (10.0 ** i, 10.0 ** i))
    async with running_gateway(settings, minilm, FakeUpstreams(list(bank_models))) as (app, client):
        quality = (await dry_run(client))["candidates"]
        thrifty = (await dry_run(client, cost_weight=1.0))["candidates"]
    assert thrifty == bank_models[:3] and quality != thrifty


async def test_the_prior_and_cost_weight_per_request_are_shown_as_the_requests(settings, fake, minilm):
    async with running_gateway(settings, minilm, fake) as (app, client):
        plan = await dry_run(client, lam=30.0, cost_weight=0.2)
    assert plan["params"]["lam"] == 30.0 and plan["params"]["cost_weight"] == 0.2
    assert plan["param_sources"]["lam"] == "request" and plan["param_sources"]["n_base"] == "default"


async def test_the_banks_calibration_is_the_default_under_the_settings_and_the_request(mini_bank, bank_models,
                                                                                      minilm, tmp_path):
    calibrated = tmp_path / "calibrated-bank"
    for f in mini_bank.iterdir():
        (calibrated / f.name).parent.mkdir(exist_ok=True)
        (calibrated / f.name).write_bytes(f.read_bytes())
    manifest = read_manifest(calibrated)
    bank_writer.commit(calibrated, manifest.model_copy(update={"calibration": {
        "params": {"n_base": 100, "gamma": 0.8, "lam": 10.0, "k": 2}, "objective": "accuracy"}}))
    settings = make_settings(calibrated, bank_models, tmp_path / "c", jisi=JiSiSettings(k=3))
    async with running_gateway(settings, minilm, FakeUpstreams(list(bank_models))) as (app, client):
        plan = await dry_run(client, gamma=0.9)
        models = (await client.get("/v1/models")).json()
    assert plan["params"]["n_base"] == 100 and plan["params"]["lam"] == 10.0  # the bank's
    assert plan["params"]["k"] == 3 and len(plan["candidates"]) == 3  # the settings file's, over the bank's 2
    assert plan["params"]["gamma"] == 0.9  # the request's
    assert {k: plan["param_sources"][k] for k in ("n_base", "k", "gamma", "t")} == {
        "n_base": "bank", "k": "settings", "gamma": "request", "t": "default"}
    card = next(m for m in models["data"] if m["id"] == "jisi")
    assert card["jisi"]["params"]["n_base"] == 100 and card["jisi"]["sources"]["n_base"] == "bank"
    assert card["jisi"]["calibration"] == "accuracy"
    assert json.dumps(card)  # plain JSON


def economy_bank(mini_bank, tmp_path, economy: dict | None):
    bank = tmp_path / "profiled-bank"
    for f in mini_bank.iterdir():
        (bank / f.name).parent.mkdir(exist_ok=True)
        (bank / f.name).write_bytes(f.read_bytes())
    calibration = {"params": {"n_base": 100, "k": 3}, "objective": "accuracy"}
    if economy is not None:
        calibration["profiles"] = {"economy": {"params": economy, "objective": "savings:0"}}
    bank_writer.commit(bank, read_manifest(bank).model_copy(update={"calibration": calibration}))
    return bank


async def test_jisi_economy_serves_the_banks_economy_profile(mini_bank, bank_models, minilm, tmp_path):
    bank = economy_bank(mini_bank, tmp_path, {"k": 2, "cost_weight": 0.5, "cascade": 1.0, "shortcut": None})
    settings = make_settings(bank, bank_models, tmp_path / "c", jisi=JiSiSettings(lam=3.0))
    fake = FakeUpstreams(list(bank_models))
    async with running_gateway(settings, minilm, fake) as (app, client):
        models = {m["id"]: m for m in (await client.get("/v1/models")).json()["data"]}
        plan = (await client.post("/v1/jisi/route", json={"model": "jisi-economy", "messages": [
            {"role": "user", "content": QUESTION}]})).json()
        r = await client.post("/v1/chat/completions", json=chat_body("jisi-economy", QUESTION))
    card = models["jisi-economy"]["jisi"]
    assert card["profile"] == "economy" and card["calibration"] == "savings:0"
    assert card["params"]["k"] == 2 and card["sources"]["k"] == "bank:economy"
    assert card["params"]["lam"] == 3.0 and card["sources"]["lam"] == "settings"  # settings still win
    assert card["params"]["n_base"] == 50 and card["sources"]["n_base"] == "default"  # not the quality profile's
    assert models["jisi"]["jisi"]["profile"] == "quality" and models["jisi"]["jisi"]["params"]["n_base"] == 100
    assert plan["profile"] == "economy" and plan["param_sources"]["cascade"] == "bank:economy"
    assert len(plan["candidates"]) == 2
    info = r.json()["jisi"]
    assert r.status_code == 200 and info["cascade"] and info["mode"] == "route"
    assert [c.model for c in fake.calls] == [step["model"] for step in info["cascade"]]


async def test_jisi_economy_is_not_found_without_an_economy_profile(mini_bank, bank_models, minilm, tmp_path):
    settings = make_settings(economy_bank(mini_bank, tmp_path, None), bank_models, tmp_path / "c")
    async with running_gateway(settings, minilm, FakeUpstreams(list(bank_models))) as (app, client):
        ids = [m["id"] for m in (await client.get("/v1/models")).json()["data"]]
        r = await client.post("/v1/chat/completions", json=chat_body("jisi-economy", QUESTION))
    assert "jisi-economy" not in ids and "jisi" in ids
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    assert "economy profile" in r.json()["error"]["message"]


async def test_the_cascade_calls_the_cheapest_candidate_first_and_stops_on_its_rule(mini_bank, bank_models, minilm,
                                                                                    tmp_path):
    # prices fall with the model's position: the candidates are called from the highest bank index down
    settings = make_settings(mini_bank, bank_models, tmp_path / "c", price=lambda i: (10.0 - i, 10.0 - i))
    fake = FakeUpstreams(list(bank_models))
    async with running_gateway(settings, minilm, fake) as (app, client):
        candidates = (await dry_run(client))["candidates"]
        cheapest_first = sorted(candidates, key=lambda m: -bank_models.index(m))
        never = await client.post("/v1/chat/completions", json=chat_body("jisi-route", QUESTION,
                                                                         jisi={"cascade": 10.0}))
        walked = [c.model for c in fake.calls]
        fake.calls.clear()
        first = await client.post("/v1/chat/completions", json=chat_body("jisi", QUESTION, jisi={"cascade": 0.0}))
        once = [c.model for c in fake.calls]
        fake.calls.clear()
        fake.behaviour[cheapest_first[0]] = Behaviour(status=500)
        failed = await client.post("/v1/chat/completions", json=chat_body("jisi-route", QUESTION,
                                                                          jisi={"cascade": 0.0}))
    # a threshold no lead reaches: every candidate, one at a time, cheapest first; the choice among them
    assert walked == cheapest_first == never.json()["jisi"]["answered"]
    leads = [s["lead"] for s in never.json()["jisi"]["cascade"]]
    assert leads[-1] is None and all(isinstance(x, float) for x in leads[:-1])  # +inf (none waiting) shown as null
    assert never.json()["model"] in candidates and never.json()["jisi"]["mode"] == "route"
    # threshold 0: the first answer stops it (the cascade routes, in `jisi` mode too)
    assert once == cheapest_first[:1] and first.json()["model"] == cheapest_first[0]
    assert first.json()["jisi"]["mode"] == "route" and first.json()["jisi"]["upstream_calls"] == 1
    # a failed call is skipped: the next cheapest answers
    assert [c.model for c in fake.calls] == cheapest_first[:2] and failed.json()["model"] == cheapest_first[1]
    assert failed.json()["jisi"]["degraded"] is True
