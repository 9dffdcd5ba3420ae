"""Every error class the gateway returns, always as OpenAI JSON ({"error": {message, type, param, code}}):
400 invalid request, 401 bad key, 404 unknown model, 413 oversized body, 502 upstreams failed, 504 upstream
timeout; invalid input never gives a 500; and the startup validation of the configuration."""

from __future__ import annotations

import json

import pytest

from app.bank.reader import Bank
from app.http.app import ConfigError, create_app, validate
from app.config import AuthSettings, UpstreamSettings
from gateway_helpers import Behaviour, chat_body, make_settings, running_gateway

pytestmark = pytest.mark.anyio

QUESTION = "What is the capital of France? Answer in one word."
USER = [{"role": "user", "content": QUESTION}]


def assert_openai_error(response, status: int, type_: str, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert {"message", "type", "param", "code"} <= set(error)
    assert isinstance(error["message"], str) and error["message"]
    assert error["type"] == type_
    if code is not None:
        assert error["code"] == code
    return error


# ------------------------------------------------------------------------------------------------
# 400
# ------------------------------------------------------------------------------------------------

INVALID = {
    "missing messages": ({"model": "jisi"}, "messages"),
    "empty messages": ({"model": "jisi", "messages": []}, "messages"),
    "messages not a list": ({"model": "jisi", "messages": "hello"}, "messages"),
    "missing model": ({"messages": USER}, "model"),
    "model not a string": ({"model": 7, "messages": USER}, "model"),
    "unknown role": ({"model": "jisi", "messages": [{"role": "robot", "content": "hi"}]}, "messages.0.role"),
    "content a number": ({"model": "jisi", "messages": [{"role": "user", "content": 5}]}, None),
    "temperature a word": ({"model": "jisi", "messages": USER, "temperature": "hot"}, "temperature"),
    "temperature too high": ({"model": "jisi", "messages": USER, "temperature": 3}, "temperature"),
    "max_tokens zero": ({"model": "jisi", "messages": USER, "max_tokens": 0}, "max_tokens"),
    "n=2": ({"model": "jisi", "messages": USER, "n": 2}, "n"),
    "n=2 pass-through": ({"model": "Qwen2-7B-Instruct", "messages": USER, "n": 2}, "n"),
    "tools not a list": ({"model": "jisi", "messages": USER, "tools": "calculator"}, "tools"),
    "bad stream_options": ({"model": "jisi", "messages": USER, "stream": True,
                            "stream_options": {"include_usage": "maybe"}}, "stream_options.include_usage"),
    "jisi t=2": ({"model": "jisi", "messages": USER, "jisi": {"t": 2}}, "jisi.t"),
    "jisi t<0": ({"model": "jisi", "messages": USER, "jisi": {"t": -0.1}}, "jisi.t"),
    "jisi k=0": ({"model": "jisi", "messages": USER, "jisi": {"k": 0}}, "jisi.k"),
    "jisi k not int": ({"model": "jisi", "messages": USER, "jisi": {"k": 1.5}}, "jisi.k"),
    "jisi unknown field": ({"model": "jisi", "messages": USER, "jisi": {"temperature_boost": 1}},
                           "jisi.temperature_boost"),
    "jisi unknown mode": ({"model": "jisi", "messages": USER, "jisi": {"mode": "fastest"}}, "jisi.mode"),
    "jisi not an object": ({"model": "jisi", "messages": USER, "jisi": "aggregate"}, "jisi"),
    "jisi cost_weight 1.5": ({"model": "jisi", "messages": USER, "jisi": {"cost_weight": 1.5}}, "jisi.cost_weight"),
    "jisi cost_weight a word": ({"model": "jisi", "messages": USER, "jisi": {"cost_weight": "cheap"}},
                                "jisi.cost_weight"),
    "jisi shortcut 2": ({"model": "jisi", "messages": USER, "jisi": {"shortcut": 2}}, "jisi.shortcut"),
    "jisi lam < 0": ({"model": "jisi", "messages": USER, "jisi": {"lam": -1}}, "jisi.lam"),
    "jisi lam_fine a string": ({"model": "jisi", "messages": USER, "jisi": {"lam_fine": "10"}}, "jisi.lam_fine"),
    "jisi from_candidates 1": ({"model": "jisi", "messages": USER, "jisi": {"from_candidates": 1}},
                               "jisi.from_candidates"),
    "jisi max_cost_usd=0": ({"model": "jisi", "messages": USER, "jisi": {"max_cost_usd": 0}}, "jisi.max_cost_usd"),
    "no text to route on": ({"model": "jisi", "messages": [{"role": "user", "content": "   "}]}, "messages"),
    "only an image": ({"model": "jisi-route", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}]}, "messages"),
    # strict types, as the published schema says (found by fuzzing: these were silently coerced)
    "include_usage 0": ({"model": "jisi", "messages": USER, "stream_options": {"include_usage": 0}},
                        "stream_options.include_usage"),
    "temperature a numeric string": ({"model": "jisi", "messages": USER, "temperature": "0.5"}, "temperature"),
    "max_tokens a float": ({"model": "jisi", "messages": USER, "max_tokens": 5.0}, "max_tokens"),
    "n a string": ({"model": "jisi", "messages": USER, "n": "1"}, "n"),
}


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("name", list(INVALID))
async def test_invalid_requests_are_400(settings, fake, minilm, name, stream):
    body, param = INVALID[name]
    body = {**body, "stream": True} if stream else body
    async with running_gateway(settings, minilm, fake) as (app, client):
        r = await client.post("/v1/chat/completions", json=body)
    error = assert_openai_error(r, 400, "invalid_request_error")
    if param is not None:
        assert error["param"] == param
    assert fake.calls == []


# found by fuzzing (tests/test_fuzz.py): values that parse but could not be encoded again for the upstream (a 500)
NON_SENDABLE = {  # name: (body, the param the 400 names)
    "Infinity in an unknown field": (b'{"model": "gemini-1_5-flash", "messages": [{"role": "user", "content": '
                                     b'"hi"}], "logit_bias": {"42": Infinity}}', "logit_bias.42"),
    "1e999 in a tool schema": (b'{"model": "jisi", "messages": [{"role": "user", "content": "hi"}], "tools": [{"type": '
                               b'"function", "function": {"name": "f", "parameters": {"maximum": 1e999}}}]}',
                               "tools.0.function.parameters.maximum"),
    "NaN in a message's extra field": (b'{"model": "jisi-route", "messages": [{"role": "user", "content": "hi", '
                                       b'"weight": NaN}]}', "messages.0.weight"),
    "nested 910 deep": (b'{"model": "gemini-1_5-flash", "messages": [{"role": "user", "content": "hi"}], '
                        b'"metadata": ' + b"[" * 910 + b"]" * 910 + b"}", "metadata.0.0.0.0.0.0.0..."),
    "nested 101 deep": (b'{"model": "jisi", "messages": [{"role": "user", "content": "hi"}], "metadata": '
                        + b'{"a": ' * 101 + b"1" + b"}" * 101 + b"}", "metadata.a.a.a.a.a.a.a..."),
    "lone surrogate in a tool name": (b'{"model": "jisi", "messages": [{"role": "user", "content": "hi"}], '
                                      b'"tools": [{"type": "function", "function": {"name": "f\\udc00"}}]}',
                                      "tools.0.function.name"),
}

RAW_BODIES = {
    "invalid JSON": b'{"model": "jisi", "messages": [',
    "not UTF-8": b'\xff\xfe{"model": "jisi"}',
    "JSON null": b"null",
    "JSON array": b"[]",
    "JSON string": b'"hello"',
    "nested too deep": b"[" * 5000 + b"]" * 5000,
    "lone surrogate in content": b'{"model": "jisi", "messages": [{"role": "user", "content": "hi \\ud800"}]}',
    "lone surrogate pass-through": b'{"model": "gemini-1_5-flash", "messages": [{"role": "user", "content": "\\udfff"}]}',
    "lone surrogate in stop": b'{"model": "jisi", "messages": [{"role": "user", "content": "hi"}], "stop": "\\ud800"}',
    "lone surrogate in a key": b'{"model": "jisi", "messages": [{"role": "user", "content": "hi"}], "\\ud800": 1}',
    "NaN temperature": b'{"model": "jisi", "messages": [{"role": "user", "content": "hi"}], "temperature": NaN}',
    "NaN t": b'{"model": "jisi", "messages": [{"role": "user", "content": "hi"}], "jisi": {"t": NaN}}',
    "huge seed": b'{"model": "jisi", "messages": [{"role": "user", "content": "hi"}], "seed": 1e30}',
    **{name: raw for name, (raw, _) in NON_SENDABLE.items()},
}


@pytest.mark.parametrize("name", list(RAW_BODIES))
async def test_malformed_bodies_are_400_never_500(settings, fake, minilm, name):
    async with running_gateway(settings, minilm, fake, raise_app_exceptions=False) as (app, client):
        r = await client.post("/v1/chat/completions", content=RAW_BODIES[name],
                              headers={"content-type": "application/json"})
        dry = await client.post("/v1/jisi/route", content=RAW_BODIES[name],
                                headers={"content-type": "application/json"})
    error = assert_openai_error(r, 400, "invalid_request_error")
    if name == "invalid JSON":
        assert error["message"] == "the request body is not valid JSON"
    # the dry run ignores sampling fields, so some of these are fine there; none may be a 500
    assert dry.status_code in (200, 400) and ("error" in dry.json()) == (dry.status_code == 400)
    assert fake.calls == []


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("name", list(NON_SENDABLE))
async def test_values_that_cannot_be_sent_upstream_are_400_naming_their_path(settings, fake, minilm, name, stream):
    raw, param = NON_SENDABLE[name]
    if stream:
        raw = raw[:-1] + b', "stream": true}'
    async with running_gateway(settings, minilm, fake, raise_app_exceptions=False) as (app, client):
        r = await client.post("/v1/chat/completions", content=raw, headers={"content-type": "application/json"})
    error = assert_openai_error(r, 400, "invalid_request_error")
    assert error["param"] == param and error["message"].startswith(param + ": ")
    assert fake.calls == []


# ------------------------------------------------------------------------------------------------
# 401
# ------------------------------------------------------------------------------------------------


@pytest.fixture
def keyed_settings(settings, monkeypatch):
    monkeypatch.setenv("JISI_TEST_GATEWAY_KEYS", "key-one, key-two")
    return settings.model_copy(update={"auth": AuthSettings(api_keys_env="JISI_TEST_GATEWAY_KEYS")})


@pytest.mark.parametrize("authorization", [None, "Bearer wrong", "Bearer key-one-and-more", "Basic key-one",
                                           "key-one", "Bearer ", "Bearer key-one,key-two"])
async def test_bad_or_missing_key_is_401(keyed_settings, fake, minilm, authorization):
    headers = {"authorization": authorization} if authorization is not None else {}
    async with running_gateway(keyed_settings, minilm, fake) as (app, client):
        chat = await client.post("/v1/chat/completions", json=chat_body("jisi", QUESTION), headers=headers)
        # authentication comes first: an invalid body tells an unauthenticated caller nothing
        invalid = await client.post("/v1/chat/completions", json={"model": "jisi"}, headers=headers)
        models = await client.get("/v1/models", headers=headers)
        dry = await client.post("/v1/jisi/route", json={"messages": USER}, headers=headers)
        health = await client.get("/healthz", headers=headers)
    for r in (chat, invalid, models, dry):
        assert_openai_error(r, 401, "authentication_error", "invalid_api_key")
    assert health.status_code == 200  # probes need no key
    assert fake.calls == []


@pytest.mark.parametrize("key", ["key-one", "key-two"])
async def test_configured_keys_are_accepted(keyed_settings, fake, minilm, key):
    async with running_gateway(keyed_settings, minilm, fake) as (app, client):
        r = await client.post("/v1/chat/completions", json=chat_body("jisi-route", QUESTION),
                              headers={"authorization": f"bearer {key}"})
        models = await client.get("/v1/models", headers={"authorization": f"Bearer {key}"})
    assert r.status_code == 200, r.text
    assert models.status_code == 200
    # the gateway's own key is never forwarded to the upstreams
    assert all(c.authorization is None for c in fake.calls)


# ------------------------------------------------------------------------------------------------
# 404 and 405
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
async def test_unknown_model_is_404(settings, fake, minilm, stream):
    async with running_gateway(settings, minilm, fake) as (app, client):
        r = await client.post("/v1/chat/completions", json=chat_body("gpt-17-ultra", QUESTION, stream=stream))
    error = assert_openai_error(r, 404, "not_found_error", "model_not_found")
    assert error["param"] == "model" and "gpt-17-ultra" in error["message"]
    assert fake.calls == []


async def test_unknown_path_and_method_are_openai_errors(settings, fake, minilm):
    async with running_gateway(settings, minilm, fake) as (app, client):
        missing = await client.post("/v1/completions", json={"model": "jisi", "prompt": "hi"})
        method = await client.get("/v1/chat/completions")
    assert_openai_error(missing, 404, "not_found_error")
    assert_openai_error(method, 405, "invalid_request_error")


async def test_405_names_the_allowed_methods(settings, fake, minilm):
    """RFC 9110: a 405 carries `Allow` (found by fuzzing: the OpenAI-format handler dropped the header)."""
    async with running_gateway(settings, minilm, fake) as (app, client):
        chat = await client.put("/v1/chat/completions", json={"model": "jisi"})
        models = await client.delete("/v1/models")
    assert_openai_error(chat, 405, "invalid_request_error")
    assert chat.headers["allow"] == "POST"
    assert_openai_error(models, 405, "invalid_request_error")
    assert models.headers["allow"] == "GET"


# ------------------------------------------------------------------------------------------------
# 413
# ------------------------------------------------------------------------------------------------


async def test_oversized_body_is_413(settings, fake, minilm):
    small = settings.model_copy(update={"max_body_bytes": 2048})
    big = chat_body("jisi", "x" * 4000)
    payload = json.dumps(big).encode()

    async def chunked():  # no content-length: the limit must hold while the body streams in
        for start in range(0, len(payload), 512):
            yield payload[start:start + 512]

    async with running_gateway(small, minilm, fake) as (app, client):
        declared = await client.post("/v1/chat/completions", content=payload,
                                     headers={"content-type": "application/json"})
        streamed = await client.post("/v1/chat/completions", content=chunked(),
                                     headers={"content-type": "application/json"})
        fits = await client.post("/v1/chat/completions", json=chat_body("jisi-route", "x" * 1000))
    for r in (declared, streamed):
        error = assert_openai_error(r, 413, "invalid_request_error", "request_too_large")
        assert "2048" in error["message"]
    assert "content-length" not in streamed.request.headers
    assert fits.status_code == 200
    assert fake.calls and all(c.user_messages == ["x" * 1000] for c in fake.calls)  # only the one that fits


# ------------------------------------------------------------------------------------------------
# 502 and 504
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["jisi", "jisi-route", "jisi-aggregate"])
async def test_every_candidate_failing_is_502(settings, fake, minilm, bank_models, model):
    fake.behaviour = {m: Behaviour(status=500) for m in bank_models}
    fake.behaviour[bank_models[0]] = Behaviour(timeout=True)
    async with running_gateway(settings, minilm, fake) as (app, client):
        r = await client.post("/v1/chat/completions", json=chat_body(model, QUESTION))
    error = assert_openai_error(r, 502, "upstream_error", "upstreams_failed")
    assert len(fake.calls) == 3
    assert sorted(d["model"] for d in error["details"]) == sorted(c.model for c in fake.calls)
    for detail in error["details"]:
        assert detail["timeout"] is (detail["model"] == bank_models[0])
        assert detail["status"] == (None if detail["timeout"] else 500)
        assert detail["model"] in error["message"]


@pytest.mark.parametrize("failure, status, code", [
    (Behaviour(status=500), 502, "upstream_error"),
    (Behaviour(status=429), 502, "upstream_error"),
    (Behaviour(timeout=True), 504, "upstream_timeout"),
], ids=["http500", "http429", "timeout"])
async def test_passthrough_upstream_failure(settings, fake, minilm, bank_models, failure, status, code):
    model = bank_models[5]
    fake.behaviour[model] = failure
    async with running_gateway(settings, minilm, fake) as (app, client):
        r = await client.post("/v1/chat/completions", json=chat_body(model, QUESTION))
    error = assert_openai_error(r, status, "upstream_error", code)
    assert error["details"] == [{"model": model, "status": failure.status, "timeout": failure.timeout,
                                 "overloaded": False, "circuit_open": False,
                                 "message": error["details"][0]["message"]}]
    if failure.status:
        assert "overloaded" in error["message"]  # the upstream's own message, relayed
    else:
        assert "timed out after 5s" in error["message"]


async def test_malformed_upstream_answer_is_502_not_500(settings, fake, minilm, bank_models):
    model = bank_models[2]
    fake.behaviour[model] = Behaviour(raw={"object": "chat.completion", "choices": []})
    async with running_gateway(settings, minilm, fake, raise_app_exceptions=False) as (app, client):
        r = await client.post("/v1/chat/completions", json=chat_body(model, QUESTION))
    error = assert_openai_error(r, 502, "upstream_error", "upstream_error")
    assert "malformed" in error["message"]


# ------------------------------------------------------------------------------------------------
# startup validation
# ------------------------------------------------------------------------------------------------


def test_validate_lists_every_problem_at_once(mini_bank, bank_models, tmp_path, monkeypatch):
    monkeypatch.delenv("JISI_TEST_MISSING_UPSTREAM_KEY", raising=False)
    monkeypatch.delenv("JISI_TEST_MISSING_GATEWAY_KEYS", raising=False)
    settings = make_settings(mini_bank, bank_models, tmp_path)
    upstreams = [u for u in settings.upstreams if u.name != bank_models[6]]  # one bank model left unserved
    upstreams.append(UpstreamSettings(name="ghost-model", base_url="http://ghost.test/v1"))
    upstreams[0] = upstreams[0].model_copy(update={"api_key_env": "JISI_TEST_MISSING_UPSTREAM_KEY"})
    bad = settings.model_copy(update={"upstreams": upstreams,
                                      "auth": AuthSettings(api_keys_env="JISI_TEST_MISSING_GATEWAY_KEYS")})
    bank = Bank.load(mini_bank)
    with pytest.raises(ConfigError) as raised:
        validate(bad, bank.models)
    message = str(raised.value)
    assert "upstream(s) not in the bank" in message and "ghost-model" in message
    assert "bank model(s) with no upstream" in message and bank_models[6] in message
    assert "JISI_TEST_MISSING_UPSTREAM_KEY" in message and bank_models[0] in message
    assert "JISI_TEST_MISSING_GATEWAY_KEYS" in message
    assert message.count("\n  - ") == 4

    # each problem alone is enough
    validate(settings, bank.models)
    for upstreams_alone in ([*settings.upstreams, UpstreamSettings(name="ghost-model", base_url="http://g/v1")],
                            settings.upstreams[1:]):
        with pytest.raises(ConfigError):
            validate(settings.model_copy(update={"upstreams": upstreams_alone}), bank.models)
    with pytest.raises(ConfigError, match="no upstreams configured"):
        validate(settings.model_copy(update={"upstreams": [], "allow_unserved_models": True}), bank.models)
    monkeypatch.setenv("JISI_TEST_MISSING_GATEWAY_KEYS", " , ,")  # set, but holds no key: would mean no auth
    with pytest.raises(ConfigError, match="JISI_TEST_MISSING_GATEWAY_KEYS"):
        validate(settings.model_copy(update={"auth": AuthSettings(api_keys_env="JISI_TEST_MISSING_GATEWAY_KEYS")}),
                 bank.models)


async def test_app_refuses_to_start_with_an_invalid_configuration(mini_bank, bank_models, tmp_path, minilm):
    settings = make_settings(mini_bank, bank_models[:-1], tmp_path)  # the last bank model has no upstream
    app = create_app(settings, embedder=minilm)
    with pytest.raises(ConfigError, match=bank_models[-1]):
        async with app.router.lifespan_context(app):
            pass
    assert app.state.jisi.gateway is None


async def test_unserved_models_allowed_are_never_routed_to(mini_bank, bank_models, tmp_path, minilm, fake):
    top = "gpt-4o-2024-08-06"  # the best-scored model for this question on the mini bank
    served = [m for m in bank_models if m != top]
    settings = make_settings(mini_bank, bank_models, tmp_path, allow_unserved_models=True)
    settings = settings.model_copy(update={"upstreams": [u for u in settings.upstreams if u.name != top]})
    async with running_gateway(settings, minilm, fake) as (app, client):
        dry = (await client.post("/v1/jisi/route", json={"messages": USER})).json()
        r = await client.post("/v1/chat/completions", json=chat_body("jisi-aggregate", QUESTION))
        passthrough = await client.post("/v1/chat/completions", json=chat_body(top, QUESTION))
    assert top == max(dry["scores"]["g"], key=dry["scores"]["g"].get)  # it would have led
    assert top not in dry["candidates"] and dry["aggregator"] != top
    info = r.json()["jisi"]
    assert top not in info["candidates"] + info["final"] + [info["aggregator"]]
    assert set(c.model for c in fake.calls) <= set(served)
    assert_openai_error(passthrough, 404, "not_found_error", "model_not_found")


async def test_upstream_api_key_is_sent_to_its_upstream_only(settings, fake, minilm, bank_models, monkeypatch):
    monkeypatch.setenv("JISI_TEST_UPSTREAM_KEY", "sk-upstream-secret")
    upstreams = list(settings.upstreams)
    upstreams[3] = upstreams[3].model_copy(update={"api_key_env": "JISI_TEST_UPSTREAM_KEY"})
    keyed = settings.model_copy(update={"upstreams": upstreams})
    fake.behaviour[bank_models[4]] = Behaviour(status=401)
    async with running_gateway(keyed, minilm, fake) as (app, client):
        ok = await client.post("/v1/chat/completions", json=chat_body(bank_models[3], QUESTION))
        other = await client.post("/v1/chat/completions", json=chat_body(bank_models[4], QUESTION))
    assert ok.status_code == 200
    assert fake.calls[0].authorization == "Bearer sk-upstream-secret"
    assert fake.calls[1].authorization is None
    error = assert_openai_error(other, 502, "upstream_error")
    assert "sk-upstream-secret" not in other.text
    assert error["details"][0]["status"] == 401


@pytest.mark.parametrize("stream", [False, True])
async def test_request_limits_are_clear_400s(mini_bank, bank_models, tmp_path, fake, minilm, stream):
    settings = make_settings(mini_bank, bank_models, tmp_path / "cache", max_messages=4, max_requested_tokens=100)
    many = [{"role": "user", "content": f"message {i}"} for i in range(5)]
    async with running_gateway(settings, minilm, fake) as (app, client):
        too_many = await client.post("/v1/chat/completions", json={"model": "jisi", "messages": many,
                                                                   "stream": stream})
        too_long = await client.post("/v1/chat/completions", json=chat_body(
            bank_models[0], "hi", max_completion_tokens=101, stream=stream))
        within = await client.post("/v1/chat/completions", json=chat_body(bank_models[0], "hi", max_tokens=100))
    assert assert_openai_error(too_many, 400, "invalid_request_error", "too_many_messages")["param"] == "messages"
    error = assert_openai_error(too_long, 400, "invalid_request_error", "too_many_tokens")
    assert error["param"] == "max_completion_tokens"
    assert within.status_code == 200 and not fake.calls[1:]  # refused requests never reached an upstream


def test_jisi_gateway_fails_in_one_line_before_anything_slow_loads(mini_bank, bank_models, tmp_path, monkeypatch):
    """A missing bank, a missing key variable: one line and a non-zero exit, before the embedding model loads."""
    from app.http import app as app_module

    def no_model(*args, **kwargs):
        raise AssertionError("the embedding model was loaded before the configuration was checked")

    monkeypatch.setattr(app_module, "make_embedder", no_model)
    monkeypatch.delenv("JISI_TEST_MISSING_UPSTREAM_KEY", raising=False)
    upstreams = [{"name": m, "base_url": f"http://up{i}.test/v1"} for i, m in enumerate(bank_models)]
    missing = tmp_path / "no-bank"
    cases = {
        "missing bank": ({"bank_path": str(missing), "upstreams": upstreams},
                         f"jisi-gateway: no bank at {missing}: manifest.json not found"),
        "missing key": ({"bank_path": str(mini_bank), "embedder": {"backend": "local"},
                         "upstreams": [{**upstreams[0], "api_key_env": "JISI_TEST_MISSING_UPSTREAM_KEY"},
                                       *upstreams[1:]]},
                        f"jisi-gateway: invalid gateway configuration: upstream {bank_models[0]}: environment variable "
                        "JISI_TEST_MISSING_UPSTREAM_KEY (its API key) is not set"),
    }
    for name, (config, expected) in cases.items():
        path = tmp_path / f"{name}.yaml"
        path.write_text(json.dumps(config))  # JSON is YAML
        monkeypatch.setenv("JISI_CONFIG", str(path))
        with pytest.raises(SystemExit) as exited:
            app_module.run(["--log-format", "text"])
        message = str(exited.value)
        assert message.startswith(expected) and "\n" not in message, (name, message)
