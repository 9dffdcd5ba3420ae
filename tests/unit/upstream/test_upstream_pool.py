"""UpstreamPool, the one retry loop of every upstream call (gateway and `jisi-bank collect`): what is retried,
how usage and cost are accounted when the server reports none, and the breaker's refusals."""

from __future__ import annotations

import httpx
import pytest
import respx

from app.config import ResilienceSettings, UpstreamSettings
from app.errors import ErrorKind
from app.upstream.call import UpstreamError
from app.upstream.pool import UpstreamPool

pytestmark = pytest.mark.anyio

URL = "http://up.test/v1/chat/completions"
BODY = {"messages": [{"role": "user", "content": "What is 2 + 2?"}]}


def ok(content: str = "4", usage: dict | None = None) -> httpx.Response:
    payload = {"choices": [{"message": {"role": "assistant", "content": content}, "finish_reason": "stop"}]}
    if usage is not None:
        payload["usage"] = usage
    return httpx.Response(200, json=payload)


def pool(client: httpx.AsyncClient, **resilience) -> UpstreamPool:
    upstream = UpstreamSettings(name="m", base_url="http://up.test/v1", input_usd_per_mtok=1.0,
                                output_usd_per_mtok=3.0, timeout_s=2.0)
    return UpstreamPool([upstream], client, ResilienceSettings(backoff_base_s=0.001, backoff_max_s=0.002,
                                                               **resilience))


async def test_a_5xx_is_retried_and_the_answer_is_priced_as_reported():
    with respx.mock() as mock:
        route = mock.post(URL).mock(side_effect=[httpx.Response(503), ok(usage={"prompt_tokens": 100,
                                                                                "completion_tokens": 10})])
        async with httpx.AsyncClient() as client:
            result = await pool(client, retries=2).complete("m", BODY, "candidate")
    assert route.call_count == 2
    assert (result.text, result.usage.total_tokens, result.usage_estimated) == ("4", 110, False)
    assert result.cost_usd == pytest.approx((100 * 1.0 + 10 * 3.0) / 1e6)


async def test_a_timeout_is_one_attempt_unless_retry_timeouts():
    for retry_timeouts, calls in ((False, 1), (True, 3)):
        with respx.mock() as mock:
            route = mock.post(URL).mock(side_effect=httpx.ReadTimeout("silent"))
            async with httpx.AsyncClient() as client:
                with pytest.raises(UpstreamError) as raised:
                    await pool(client, retries=2, retry_timeouts=retry_timeouts).complete("m", BODY, "candidate")
        assert route.call_count == calls
        assert raised.value.timeout and raised.value.client_error().kind is ErrorKind.TIMEOUT


async def test_a_missing_usage_is_estimated_from_the_texts_and_priced():
    with respx.mock() as mock:
        mock.post(URL).mock(return_value=ok("x" * 40))
        async with httpx.AsyncClient() as client:
            result = await pool(client).complete("m", BODY, "candidate")
    assert result.usage_estimated and result.usage.completion_tokens == 10
    assert result.usage.prompt_tokens == (len("What is 2 + 2?") + 3) // 4
    assert result.cost_usd == pytest.approx((result.usage.prompt_tokens + 3 * 10) / 1e6)


async def test_the_open_circuit_refuses_without_calling_and_is_a_503():
    with respx.mock() as mock:
        route = mock.post(URL).mock(return_value=httpx.Response(500))
        async with httpx.AsyncClient() as client:
            p = pool(client, retries=0, breaker_failures=2, breaker_open_s=60)
            for _ in range(2):
                with pytest.raises(UpstreamError):
                    await p.complete("m", BODY, "candidate")
            assert not p.available("m")
            with pytest.raises(UpstreamError) as raised:
                await p.complete("m", BODY, "candidate")
    assert route.call_count == 2  # the third was never sent
    error = raised.value.client_error()
    assert raised.value.circuit_open and error.kind is ErrorKind.UNAVAILABLE
    assert error.body.code == "upstream_unavailable"


async def test_calls_cancelled_unanswered_count_against_the_circuit():
    async with httpx.AsyncClient() as client:
        p = pool(client, breaker_failures=3)
        for _ in range(3):
            assert p.available("m")
            p.record_unanswered("m")
        assert not p.available("m")


async def test_a_4xx_is_not_retried_and_not_the_upstreams_fault():
    with respx.mock() as mock:
        route = mock.post(URL).mock(return_value=httpx.Response(400, json={"error": {"message": "bad field"}}))
        async with httpx.AsyncClient() as client:
            p = pool(client, retries=3, breaker_failures=1)
            with pytest.raises(UpstreamError) as raised:
                await p.complete("m", BODY, "candidate")
            assert p.available("m")  # our request's fault: the breaker stays closed
    assert route.call_count == 1 and "bad field" in raised.value.message
    assert raised.value.client_error().kind is ErrorKind.UPSTREAM_FAILED
