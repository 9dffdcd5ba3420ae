"""The configured upstreams: async calls to OpenAI-compatible models over one shared httpx client, each
call in the one retry loop (backoff, Retry-After, the request deadline), behind a concurrency limit and a
circuit breaker per upstream. The policies are app/upstream/resilience.py; what a call yields, call.py."""

from __future__ import annotations

import asyncio
import json
import os
import time
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

import httpx

from app.config import ResilienceSettings, UpstreamSettings
from app.upstream.call import CallResult, StreamState, UpstreamError, estimated_usage, reported_usage
from app.upstream.hooks import AttemptSpan, AttemptTracer, NoTracer
from app.upstream.pricing import upstream_cost_usd
from app.upstream.resilience import (
    CircuitBreaker, ConcurrencyLimit, QueueFull, RetryPolicy, parse_retry_after, retryable_status,
)


def _http_error(name: str, response: httpx.Response, secret: str) -> UpstreamError:
    status = response.status_code
    return UpstreamError(name, f"HTTP {status}: {_error_text(response, secret)}", status,
                         retry_after=parse_retry_after(response.headers.get("retry-after")),
                         breaker=retryable_status(status))


class UpstreamPool:
    """The configured upstreams: one shared client, a concurrency limit, retries and a circuit breaker each."""

    def __init__(self, upstreams: list[UpstreamSettings], client: httpx.AsyncClient,
                 resilience: ResilienceSettings | None = None, tracer: AttemptTracer | None = None) -> None:
        self.client = client
        self.tracer = tracer or NoTracer()  # a span per attempt (app/observability/tracing.py), when on
        self.upstreams = {u.name: u for u in upstreams}
        self.resilience = resilience or ResilienceSettings()
        self.retry = RetryPolicy(self.resilience)
        self.breakers = {u.name: CircuitBreaker.from_settings(self.resilience) for u in upstreams}
        self.limits = {u.name: ConcurrencyLimit(u.max_concurrency, u.max_queue) for u in upstreams}

    def __contains__(self, name: str) -> bool:
        return name in self.upstreams

    def available(self, name: str) -> bool:
        """False while the upstream's circuit is open: it is left out of candidate selection."""
        return self.breakers[name].available()

    def record_unanswered(self, name: str) -> None:
        """A call this request cancelled because it had not answered in time (a straggler after the quorum's
        grace, or at the request deadline): as good as a timeout for the breaker, so repeated hangs open the
        circuit and later requests leave the model out instead of waiting for it again."""
        self.breakers[name].record_failure()

    def deadline(self) -> float:
        """A fresh request deadline (time.monotonic) for calls made outside a pipeline request."""
        return time.monotonic() + self.resilience.request_deadline_s

    def _timeouts(self, upstream: UpstreamSettings, deadline: float, *,
                  streaming: bool) -> tuple[float, httpx.Timeout]:
        """This attempt's total budget (the upstream's timeout_s within the deadline) and httpx's timeouts.

        The first-byte timeout bounds the wait between stream chunks; a non-streamed answer sends its first
        byte only when it is complete, so there the read may take the whole budget.
        """
        budget = max(0.001, min(upstream.timeout_s, deadline - time.monotonic()))
        r = self.resilience
        connect = min(r.connect_timeout_s, budget)
        read = min(r.first_byte_timeout_s, budget) if streaming else budget
        return budget, httpx.Timeout(connect=connect, read=read, write=connect, pool=connect)

    def _request(self, name: str, body: dict[str, Any],
                 span: AttemptSpan) -> tuple[UpstreamSettings, str, dict[str, str], dict[str, Any]]:
        upstream = self.upstreams[name]
        headers = {"content-type": "application/json"}
        span.inject(headers)
        if upstream.api_key_env:
            key = os.environ.get(upstream.api_key_env, "")
            if key:
                headers["authorization"] = f"Bearer {key}"
        body = {**upstream.defaults, **body, "model": upstream.upstream_model}
        if upstream.system_prompt:
            body["messages"] = [{"role": "system", "content": upstream.system_prompt}, *body.get("messages", [])]
        return upstream, upstream.base_url.rstrip("/") + "/chat/completions", headers, body

    @asynccontextmanager
    async def _slot(self, name: str, budget: float) -> AsyncIterator[float]:
        """Hold one of the upstream's slots; yields the attempt's budget left after waiting for it."""
        limit, started = self.limits[name], time.monotonic()
        try:
            await limit.acquire(budget)
        except QueueFull as exc:
            raise UpstreamError(name, f"overloaded: {exc}; not called", breaker=False, overloaded=True) from None
        except TimeoutError:
            raise UpstreamError(name, f"no free slot within {budget:g}s ({limit.limit} calls in flight); "
                                "not called", timeout=True, breaker=False) from None
        try:
            yield max(0.001, budget - (time.monotonic() - started))
        finally:
            limit.release()

    def _admit(self, name: str, last: UpstreamError | None) -> None:
        if not self.breakers[name].allow():  # a retry that just tripped the breaker reports the real error
            raise last or UpstreamError(name, "circuit open after repeated failures; not called", breaker=False,
                                        circuit_open=True)

    def _settle(self, exc: UpstreamError, attempt: int, deadline: float) -> float:
        """Record a failed attempt; the wait before retrying, or re-raise when it is not retried."""
        breaker = self.breakers[exc.model]
        breaker.record_failure() if exc.breaker else breaker.release()
        if exc.overloaded:  # retrying into our own full queue only adds load
            raise exc
        wait = self.retry.delay(attempt, exc.status, exc.retry_after, deadline - time.monotonic(),
                                timeout=exc.timeout)
        if wait is None:
            if attempt:
                exc.message = f"{exc.message} (after {attempt + 1} attempts)"
            raise exc
        return wait

    async def complete(self, name: str, body: dict[str, Any], role: str, deadline: float | None = None) -> CallResult:
        """One completion, retried on connection errors, 408/429/5xx (timeouts with retry_timeouts) until the
        deadline."""
        deadline = self.deadline() if deadline is None else deadline
        started = time.perf_counter()
        attempt, last = 0, None
        while True:
            self._admit(name, last)
            span = self.tracer.attempt(name, role, attempt)
            try:
                result = await self._complete_once(name, body, role, deadline, started, span)
            except BaseException as exc:
                span.finish(error=exc)
                if not isinstance(exc, UpstreamError):  # cancelled (e.g. a straggler after the quorum): no verdict
                    self.breakers[name].release()
                    raise
                await asyncio.sleep(self._settle(exc, attempt, deadline))
                attempt, last = attempt + 1, exc
                continue
            span.finish(result)
            self.breakers[name].record_success()
            return result

    async def _complete_once(self, name: str, body: dict[str, Any], role: str, deadline: float,
                             started: float, span: AttemptSpan) -> CallResult:
        upstream, url, headers, body = self._request(name, body, span)
        body.pop("stream", None)
        body.pop("stream_options", None)
        budget, timeouts = self._timeouts(upstream, deadline, streaming=False)
        async with self._slot(name, budget) as left:
            try:
                async with asyncio.timeout(left):  # the total, which httpx's per-read timeouts do not bound
                    response = await self.client.post(url, json=body, headers=headers, timeout=timeouts)
            except (httpx.TimeoutException, TimeoutError):
                raise UpstreamError(name, f"timed out after {budget:g}s", timeout=True) from None
            except httpx.HTTPError as exc:
                raise UpstreamError(name, f"connection failed: {type(exc).__name__}") from None
        latency = time.perf_counter() - started
        if response.status_code >= 400:
            raise _http_error(name, response, _bearer(headers))
        try:
            payload = response.json()
            choice = payload["choices"][0]
            message = dict(choice["message"])
        except (ValueError, KeyError, IndexError, TypeError):
            raise UpstreamError(name, "malformed response: no choices[0].message", response.status_code) from None
        usage = reported_usage(payload.get("usage"))
        estimated = usage is None
        if usage is None:
            usage = estimated_usage(body, message.get("content") or "")
        return CallResult(
            model=name, role=role, message=message, finish_reason=choice.get("finish_reason"), usage=usage,
            usage_estimated=estimated, latency_s=latency,
            cost_usd=upstream_cost_usd(upstream, usage.prompt_tokens, usage.completion_tokens),
        )

    async def stream(self, name: str, body: dict[str, Any], state: StreamState, deadline: float | None = None,
                     role: str = "stream") -> AsyncIterator[dict[str, Any]]:
        """Yield the upstream's chunks (parsed JSON) and record content and usage into `state`.

        Retried only while nothing was received: once a chunk is out, the upstream may have half-executed
        the request and a second try would duplicate or contradict what the client already has.
        """
        deadline = self.deadline() if deadline is None else deadline
        attempt, relayed, last = 0, False, None
        while True:
            self._admit(name, last)
            span = self.tracer.attempt(name, role, attempt)
            try:
                async for chunk in self._stream_once(name, body, state, deadline, span):
                    relayed = True
                    yield chunk
            except BaseException as exc:
                span.finish(error=exc)
                if not isinstance(exc, UpstreamError):
                    self.breakers[name].release()
                    raise
                if relayed:
                    self.breakers[name].record_failure()
                    raise
                await asyncio.sleep(self._settle(exc, attempt, deadline))
                attempt, last = attempt + 1, exc
                continue
            span.finish(self.stream_result(name, body, state, role, 0.0) if span.recording else None)
            self.breakers[name].record_success()
            return

    async def _stream_once(self, name: str, body: dict[str, Any], state: StreamState,
                           deadline: float, span: AttemptSpan) -> AsyncIterator[dict[str, Any]]:
        upstream, url, headers, body = self._request(name, body, span)
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}  # servers that ignore it are counted instead
        budget, timeouts = self._timeouts(upstream, deadline, streaming=True)
        async with self._slot(name, budget) as left:
            ends = time.monotonic() + left
            response: httpx.Response | None = None
            try:
                request = self.client.build_request("POST", url, json=body, headers=headers, timeout=timeouts)
                # asyncio.timeout only around awaits that do not yield to the consumer (safe in a generator)
                async with asyncio.timeout(left):
                    response = await self.client.send(request, stream=True)
                if response.status_code >= 400:
                    async with asyncio.timeout(max(0.001, ends - time.monotonic())):
                        await response.aread()
                    raise _http_error(name, response, _bearer(headers))
                async for line in response.aiter_lines():
                    if time.monotonic() > ends:
                        raise TimeoutError
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    try:
                        chunk = json.loads(data)
                    except ValueError:
                        raise UpstreamError(name, "malformed stream chunk") from None
                    state.record(chunk)
                    yield chunk
            except (httpx.TimeoutException, TimeoutError):
                raise UpstreamError(name, f"timed out after {budget:g}s", timeout=True) from None
            except httpx.HTTPError as exc:
                raise UpstreamError(name, f"stream failed: {type(exc).__name__}") from None
            finally:
                if response is not None:
                    await response.aclose()

    def stream_result(self, name: str, body: dict[str, Any], state: StreamState, role: str,
                      latency_s: float) -> CallResult:
        """Account for a finished stream: its reported usage, or tokens counted from what it sent."""
        usage, estimated = state.usage, state.usage is None
        if usage is None:
            usage = estimated_usage(body, "", stream_chunks=state.chunks)
        return CallResult(model=name, role=role, message=state.message(), finish_reason=state.finish_reason,
                          usage=usage, usage_estimated=estimated, latency_s=latency_s,
                          cost_usd=upstream_cost_usd(self.upstreams[name], usage.prompt_tokens,
                                                     usage.completion_tokens))


def _bearer(headers: dict[str, str]) -> str:
    return headers.get("authorization", "").removeprefix("Bearer ")


def _error_text(response: httpx.Response, secret: str) -> str:
    """The upstream's own error message, short, with our key masked (some servers echo the key back)."""
    try:
        payload = response.json()
        error = payload.get("error") if isinstance(payload, dict) else None
        message = error.get("message") if isinstance(error, dict) else None
    except ValueError:
        message = None
    text = str(message or response.text)
    if secret:
        text = text.replace(secret, "***")
    return text[:300]
