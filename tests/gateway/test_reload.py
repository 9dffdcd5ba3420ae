"""Bank hot-swap in process (POST /admin/reload; SIGHUP does the same, tests/offline/test_operations.py): the new
bank serves the next request, a request in flight finishes on the bank it started with, a bank that fails
validation is refused and the old one keeps serving, and what cannot change live is named."""

from __future__ import annotations

import asyncio

import pytest

from app.config import AdminSettings, BatchingSettings
from gateway_helpers import Behaviour, chat_body, running_gateway

pytestmark = pytest.mark.anyio

ADMIN = {"authorization": "Bearer admin-secret"}
QUESTION = "Janet has 3 apples and buys 5 more. How many apples does she have now?"


@pytest.fixture(scope="module")
def small_bank(tmp_path_factory, mini_bench, minilm):
    """Another bank of the same models and embedder: 5 questions per dataset, so another build id."""
    from app.engine import JiSiParams
    from bank_builder.build import build_bank
    from bank_builder.records import load_records

    out = tmp_path_factory.mktemp("bank") / "small"
    build_bank(load_records([mini_bench], max_queries_per_dataset=5, seed=7), minilm, out, params=JiSiParams(),
               split={"part": "all", "seed": 7}, progress=False)
    return out


@pytest.fixture
def admin_env(monkeypatch):
    monkeypatch.setenv("JISI_TEST_ADMIN_KEY", "admin-secret")
    return AdminSettings(api_key_env="JISI_TEST_ADMIN_KEY")


def build_id(readyz) -> str:
    return readyz.json()["bank"]["build_id"]


async def test_admin_reload_is_off_without_an_admin_key_and_refuses_client_keys(settings, fake, minilm, admin_env,
                                                                                 monkeypatch):
    async with running_gateway(settings, minilm, fake) as (_, client):
        off = await client.post("/admin/reload", headers=ADMIN)
    assert off.status_code == 404 and off.json()["error"]["code"] == "admin_disabled"
    monkeypatch.setenv("JISI_TEST_CLIENT_KEYS", "client-key")
    protected = settings.model_copy(update={"admin": admin_env, "auth": settings.auth.model_copy(
        update={"api_keys_env": "JISI_TEST_CLIENT_KEYS"})})
    async with running_gateway(protected, minilm, fake) as (_, client):
        wrong = await client.post("/admin/reload", headers={"authorization": "Bearer client-key"})
        right = await client.post("/admin/reload", headers=ADMIN)
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_admin_key"
    assert right.status_code == 200 and right.json()["status"] == "reloaded"


async def test_the_new_bank_serves_the_next_request_and_the_one_in_flight_finishes_on_the_old(
        settings, fake, minilm, small_bank, admin_env, bank_models):
    current = {"settings": settings.model_copy(update={"admin": admin_env})}
    fake.behaviour.update({m: Behaviour(delay=0.5) for m in bank_models})  # a request in flight across the swap
    async with running_gateway(current["settings"], minilm, fake,
                               read_settings=lambda: current["settings"]) as (app, client):
        old = build_id(await client.get("/readyz"))
        in_flight = asyncio.create_task(client.post("/v1/chat/completions", json=chat_body(
            "jisi", QUESTION, jisi={"mode": "route", "shortcut": None})))
        await asyncio.sleep(0.2)
        repriced = [u.model_copy(update={"input_usd_per_mtok": 100.0, "output_usd_per_mtok": 100.0})
                    for u in settings.upstreams]
        current["settings"] = current["settings"].model_copy(update={"bank_path": small_bank, "upstreams": repriced})
        reloaded = await client.post("/admin/reload", headers=ADMIN)
        new = build_id(await client.get("/readyz"))
        after = await client.post("/v1/chat/completions", json=chat_body(bank_models[1], QUESTION))
        routed = await client.post("/v1/chat/completions", json=chat_body("jisi", QUESTION))
        finished = await in_flight
        metrics = (await client.get("/metrics")).text
    body = reloaded.json()
    assert reloaded.status_code == 200 and body["previous"] == old and body["bank"]["build_id"] == new != old
    assert body["bank"]["queries"] == 15 and body["needs_restart"] == []
    assert finished.status_code == 200 and finished.json()["jisi"]["bank"] == old  # started on the old bank
    assert routed.json()["jisi"]["bank"] == new
    usage = after.json()["usage"]  # prices changed live: 100 USD per million tokens either way
    assert float(after.headers["x-jisi-cost-usd"]) == pytest.approx(usage["total_tokens"] * 100 / 1e6)
    assert f'jisi_bank_info{{build_id="{new}"}} 1.0' in metrics and old not in metrics.split("jisi_bank_info")[2]
    assert 'jisi_bank_reloads_total{outcome="ok",trigger="admin"} 1.0' in metrics


async def test_a_bank_that_fails_validation_is_refused_and_the_old_one_keeps_serving(
        settings, fake, minilm, admin_env, tmp_path, monkeypatch):
    monkeypatch.delenv("JISI_TEST_UNSET_KEY", raising=False)
    current = {"settings": settings.model_copy(update={"admin": admin_env})}
    async with running_gateway(current["settings"], minilm, fake,
                               read_settings=lambda: current["settings"]) as (_, client):
        old = build_id(await client.get("/readyz"))
        current["settings"] = current["settings"].model_copy(update={"bank_path": tmp_path / "missing"})
        missing = await client.post("/admin/reload", headers=ADMIN)
        # a key variable that is not set: the settings fail validation
        keyless = settings.upstreams[0].model_copy(update={"api_key_env": "JISI_TEST_UNSET_KEY"})
        current["settings"] = settings.model_copy(update={"admin": admin_env,
                                                          "upstreams": [keyless, *settings.upstreams[1:]]})
        unknown = await client.post("/admin/reload", headers=ADMIN)
        still = await client.post("/v1/chat/completions", json=chat_body("jisi", QUESTION))
        metrics = (await client.get("/metrics")).text
        readyz = await client.get("/readyz")
    for refused in (missing, unknown):
        error = refused.json()["error"]
        assert refused.status_code == 400 and error["code"] == "reload_refused" and old in error["message"]
        assert "\n" not in error["message"]
    assert "no bank at" in missing.json()["error"]["message"]
    assert still.status_code == 200 and still.json()["jisi"]["bank"] == old and build_id(readyz) == old
    assert 'jisi_bank_reloads_total{outcome="refused",trigger="admin"} 2.0' in metrics


async def test_what_cannot_change_live_is_kept_and_named(settings, fake, minilm, admin_env):
    current = {"settings": settings.model_copy(update={"admin": admin_env})}
    async with running_gateway(current["settings"], minilm, fake,
                               read_settings=lambda: current["settings"]) as (app, client):
        current["settings"] = current["settings"].model_copy(update={
            "embedding_batching": BatchingSettings(max_batch=3), "max_messages": 2})
        reloaded = (await client.post("/admin/reload", headers=ADMIN)).json()
        too_many = await client.post("/v1/chat/completions", json={
            "model": "jisi", "messages": [{"role": "user", "content": "a"}] * 2 + [
                {"role": "user", "content": QUESTION}]})
        in_force = app.state.jisi.reloader.settings
    assert reloaded["needs_restart"] == ["embedding_batching"]
    assert in_force.embedding_batching == settings.embedding_batching and in_force.max_messages == 2
    assert too_many.status_code == 400 and too_many.json()["error"]["code"] == "too_many_messages"  # live
