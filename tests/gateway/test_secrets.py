"""Upstream API keys are read from the environment and never appear in logs, responses, headers or errors."""

from __future__ import annotations

import logging

import httpx
import pytest

from app.http.app import ConfigError, validate
from app.bank.reader import Bank
from gateway_helpers import FakeUpstreams, chat_body, host_of, make_settings, running_gateway

pytestmark = pytest.mark.anyio

SECRET = "sk-test-7f3a9c1e5b2d4f6a8c0e"


@pytest.fixture
def keyed_settings(mini_bank, bank_models, tmp_path, monkeypatch):
    monkeypatch.setenv("JISI_TEST_UPSTREAM_KEY", SECRET)
    settings = make_settings(mini_bank, bank_models, tmp_path / "cache")
    for upstream in settings.upstreams:
        upstream.api_key_env = "JISI_TEST_UPSTREAM_KEY"
    return settings


async def test_keys_are_sent_upstream_but_never_echoed(keyed_settings, fake: FakeUpstreams, minilm, bank_models,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    leaky = bank_models[2]
    original = fake.handle

    async def echo_the_key(request: httpx.Request) -> httpx.Response:
        if request.url.host == host_of(2):  # the upstream of bank_models[2]
            await original(request)  # recorded like any call
            return httpx.Response(401, json={"error": {"message": f"Incorrect API key provided: {SECRET}"}})
        return await original(request)

    fake.handle = echo_the_key
    seen: list[str] = []
    caplog.set_level(logging.DEBUG)
    async with running_gateway(keyed_settings, minilm, fake) as (app, client):
        for body in (chat_body("jisi", "What is 2 + 3?"), chat_body(leaky, "What is 2 + 3?"),
                     chat_body(leaky, "What is 2 + 3?", stream=True), chat_body("jisi-aggregate", "Name a prime.")):
            response = await client.post("/v1/chat/completions", json=body)
            seen.append(response.text + repr(dict(response.headers)))
        for path in ("/v1/models", "/metrics", "/readyz"):
            seen.append((await client.get(path)).text)
    assert all(call.authorization == f"Bearer {SECRET}" for call in fake.calls)  # the key did reach the upstreams
    assert any("Incorrect API key provided: ***" in text for text in seen)  # the echo came back, masked
    everything = "\n".join(seen) + "\n".join(r.getMessage() for r in caplog.records) + caplog.text
    assert SECRET not in everything


def test_a_missing_key_variable_names_the_variable_not_a_value(mini_bank, bank_models, tmp_path, monkeypatch):
    monkeypatch.delenv("JISI_TEST_UPSTREAM_KEY", raising=False)
    settings = make_settings(mini_bank, bank_models, tmp_path / "cache")
    settings.upstreams[0].api_key_env = "JISI_TEST_UPSTREAM_KEY"
    with pytest.raises(ConfigError, match="JISI_TEST_UPSTREAM_KEY"):
        validate(settings, Bank.load(mini_bank).models)
