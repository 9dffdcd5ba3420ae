"""The routing inspector's server side (app/http/inspector.py): off by default, its page and assets served from the
package, its settings, and the relay to the grader (a replay upstream) with the grader's failures as OpenAI
errors. The page itself runs in a real browser in tests/browser/."""

from __future__ import annotations

import httpx
import pytest
import respx

from app.config import InspectorSettings
from app.http.app import ConfigError, create_app
from gateway_helpers import running_gateway

pytestmark = pytest.mark.anyio

GRADER = "http://grader.test:9"
EXAMPLES = [{"question": "What is 6 x 12?", "dataset": "gsm8k", "record": "gsm8k/test/1"}]


def with_inspector(settings, **kw):
    return settings.model_copy(update={"inspector": InspectorSettings(enabled=True, **kw)})


async def test_the_inspector_is_off_unless_enabled(settings, fake, minilm):
    async with running_gateway(settings, minilm, fake) as (_, client):
        for path in ("/inspector/", "/inspector/inspector.js", "/inspector/api/config"):
            r = await client.get(path)
            assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error", path


async def test_the_page_and_its_assets_are_served_from_the_package(settings, fake, minilm, bank_models):
    settings = with_inspector(settings, baseline_model=bank_models[0])
    async with running_gateway(settings, minilm, fake) as (_, client):
        redirect = await client.get("/inspector")
        page = await client.get("/inspector/")
        script = await client.get("/inspector/inspector.js")
        style = await client.get("/inspector/inspector.css")
        config = await client.get("/inspector/api/config")
        schema = (await client.get("/openapi.json")).json()
    assert redirect.status_code == 307 and redirect.headers["location"].endswith("/inspector/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    # nothing from a CDN: every script and stylesheet is the package's own
    assert 'src="inspector.js"' in page.text and 'href="inspector.css"' in page.text and "://" not in page.text
    assert "/v1/jisi/route" in script.text and "/v1/chat/completions" in script.text
    assert style.status_code == 200 and "text/css" in style.headers["content-type"]
    assert config.json() == {"baseline_model": bank_models[0], "grading": False, "examples": []}
    assert not any(path.startswith("/inspector") for path in schema["paths"])  # not part of the API


async def test_the_grader_is_relayed_and_its_failures_are_openai_errors(settings, fake, minilm):
    settings = with_inspector(settings, grader_url=GRADER + "/")
    graded = {"record": "gsm8k/test/1", "graded": True, "model": "m", "score": 1.0, "correct": True,
              "ground_truth": "72"}
    async with running_gateway(settings, minilm, fake) as (_, client):
        with respx.mock(using="httpx", assert_all_called=False) as grader:
            grader.route(host="gw").pass_through()
            questions = grader.get(f"{GRADER}/questions").mock(
                return_value=httpx.Response(200, json={"object": "list", "data": EXAMPLES}))
            grade = grader.post(f"{GRADER}/grade").mock(return_value=httpx.Response(200, json=graded))
            config = (await client.get("/inspector/api/config")).json()
            again = (await client.get("/inspector/api/config")).json()
            relayed = await client.post("/inspector/api/grade", json={"question": "q", "content": "72"})
            grade.mock(return_value=httpx.Response(404, json={"error": {
                "message": "no recorded question", "type": "invalid_request_error", "param": "question",
                "code": "question_not_found"}}))
            unknown = await client.post("/inspector/api/grade", json={"question": "other", "content": "x"})
            grade.mock(side_effect=httpx.ConnectError("refused"))
            down = await client.post("/inspector/api/grade", json={"question": "q", "content": "72"})
            not_json = await client.post("/inspector/api/grade", content=b"{", headers={
                "content-type": "application/json"})
    assert config == again == {"baseline_model": None, "grading": True, "examples": EXAMPLES}
    assert questions.call_count == 1 and questions.calls[0].request.url.params["n"] == "30"  # fetched once
    assert relayed.status_code == 200 and relayed.json() == graded
    assert grade.calls[0].request.content == b'{"question":"q","content":"72"}'
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "question_not_found"
    assert down.status_code == 502 and down.json()["error"]["code"] == "grader_unavailable"
    assert "refused" in down.json()["error"]["message"]
    assert not_json.status_code == 400 and not_json.json()["error"]["type"] == "invalid_request_error"


async def test_the_inspector_helpers_need_the_api_key_when_one_is_set(settings, fake, minilm, monkeypatch):
    monkeypatch.setenv("GW_KEYS", "k1")
    settings = with_inspector(settings).model_copy(update={"auth": settings.auth.model_copy(
        update={"api_keys_env": "GW_KEYS"})})
    async with running_gateway(settings, minilm, fake) as (_, client):
        page = await client.get("/inspector/")
        refused = await client.get("/inspector/api/config")
        allowed = await client.get("/inspector/api/config", headers={"authorization": "Bearer k1"})
    assert page.status_code == 200  # the page holds no data; what it asks for needs the key
    assert refused.status_code == 401 and allowed.status_code == 200


async def test_a_baseline_that_is_not_an_upstream_is_a_configuration_error(settings, minilm):
    app = create_app(with_inspector(settings, baseline_model="no-such-model"), embedder=minilm)
    with pytest.raises(ConfigError, match="inspector.baseline_model 'no-such-model' is not a configured upstream"):
        async with app.router.lifespan_context(app):
            pass
