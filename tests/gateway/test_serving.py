"""What the serving layer renders: ids that match the request id (plain and streamed alike), the headers."""

from __future__ import annotations

import pytest

from gateway_helpers import chat_body, running_gateway, stream_chat

pytestmark = pytest.mark.anyio

QUESTION = "Janet has 3 apples and buys 5 more at the market. How many apples does she have now?"


async def test_plain_and_streamed_completions_take_their_id_from_the_request_id(settings, fake, minilm):
    async with running_gateway(settings, minilm, fake) as (app, client):
        plain = await client.post("/v1/chat/completions", json=chat_body("jisi", QUESTION),
                                  headers={"x-request-id": "req-123-abc"})
        response, sse = await stream_chat(client, chat_body("jisi", QUESTION), headers={"x-request-id": "req-9"})
        other = await client.post("/v1/chat/completions", json=chat_body("jisi", QUESTION))
    assert plain.status_code == 200 and plain.headers["x-request-id"] == "req-123-abc"
    assert plain.json()["id"] == "chatcmpl-req123abc"
    assert {c["id"] for c in sse.chunks} == {"chatcmpl-req9"} and response.headers["x-request-id"] == "req-9"
    assert other.json()["id"] == "chatcmpl-" + other.headers["x-request-id"].replace("-", "")


async def test_the_jisi_headers_say_what_happened(settings, fake, minilm):
    async with running_gateway(settings, minilm, fake) as (app, client):
        r = await client.post("/v1/chat/completions", json=chat_body("jisi-aggregate", QUESTION))
    info = r.json()["jisi"]
    assert r.headers["x-jisi-mode"] == info["mode"] == "aggregate"
    assert r.headers["x-jisi-models"] == ",".join(info["final"])
    assert r.headers["x-jisi-aggregator"] == info["answered_by"] == r.json()["model"]
    assert r.headers["x-jisi-upstream-calls"] == str(info["upstream_calls"]) == str(len(fake.calls))
    assert float(r.headers["x-jisi-cost-usd"]) == pytest.approx(info["total_cost_usd"], abs=1e-8)
    assert r.headers["x-jisi-degraded"] == "false"
