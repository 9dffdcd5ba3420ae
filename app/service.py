"""The gateway's use cases: JiSi completions (plain and streamed), pass-through, dry-run routing, models."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, AsyncIterator

import numpy as np

from app.errors import APIError, bad_request
from app.logs import current_access_fields
from app.metrics import Metrics
from app.pipeline import VIRTUAL_MODELS, Pipeline, Prepared, Trace
from app.protocol import ChatCompletion, ChatCompletionRequest, ModelCard, ModelList, RouteRequest
from app.responses import DONE, KEEPALIVE, ChunkWriter, completion, jisi_headers, sse_error, total_usage
from app.upstream import CallResult, StreamState, UpstreamError, UpstreamPool

log = logging.getLogger("jisi.gateway")

VIRTUAL_DESCRIPTIONS = {
    "jisi": "JiSi: query-response mixed routing with the adaptive routing-aggregation switch",
    "jisi-route": "JiSi router-only: the top-1 model by fine score answers",
    "jisi-aggregate": "JiSi without the adaptive switch: always aggregate the top-K",
}


class Gateway:
    def __init__(self, pipeline: Pipeline, pool: UpstreamPool, metrics: Metrics, keepalive_s: float = 2.0, *,
                 max_messages: int = 512, max_requested_tokens: int = 65_536) -> None:
        self.pipeline = pipeline
        self.pool = pool
        self.metrics = metrics
        self.keepalive_s = keepalive_s
        self.max_messages = max_messages
        self.max_requested_tokens = max_requested_tokens

    # -- catalogue -------------------------------------------------------------------------------

    def models(self) -> ModelList:
        cards = [ModelCard(id=name, description=text) for name, text in VIRTUAL_DESCRIPTIONS.items()]
        for u in self.pool.upstreams.values():
            cards.append(ModelCard(id=u.name, owned_by="upstream", description=f"pass-through to {u.base_url}",
                                   pricing={"input_usd_per_mtok": u.input_usd_per_mtok,
                                            "output_usd_per_mtok": u.output_usd_per_mtok}))
        return ModelList(data=cards)

    def check_request(self, request: ChatCompletionRequest) -> None:
        """The model exists and the request stays within the configured limits (else 404 / 400)."""
        if request.model not in VIRTUAL_MODELS and request.model not in self.pool:
            raise APIError(404, f"the model {request.model!r} does not exist; GET /v1/models lists the available "
                           "ones", "not_found_error", "model", "model_not_found")
        if len(request.messages) > self.max_messages:
            raise bad_request(f"too many messages: {len(request.messages)} (at most {self.max_messages})",
                              "messages", "too_many_messages")
        for field in ("max_tokens", "max_completion_tokens"):
            asked = getattr(request, field)
            if asked is not None and asked > self.max_requested_tokens:
                raise bad_request(f"{field} {asked} exceeds the gateway's limit of {self.max_requested_tokens}",
                                  field, "too_many_tokens")

    # -- non-streaming -----------------------------------------------------------------------------

    async def chat(self, request: ChatCompletionRequest, request_id: str) -> tuple[ChatCompletion, dict[str, str]]:
        self.check_request(request)
        started = time.perf_counter()
        status = "error"
        trace: Trace | None = None
        try:
            if request.model in VIRTUAL_MODELS:
                answer, trace = await self.pipeline.complete(request)
            else:
                answer, trace = await self._passthrough(request)
            status = "ok"
            return completion(answer, trace), jisi_headers(trace, request_id)
        finally:
            self._observe(request.model, trace, status, started)

    async def _passthrough(self, request: ChatCompletionRequest) -> tuple[CallResult, Trace]:
        trace = Trace(requested_mode="passthrough", mode="passthrough")
        t = time.perf_counter()
        try:
            answer = await self.pool.complete(request.model, request.upstream_body(request.model), "passthrough")
        except UpstreamError as exc:
            self.metrics.observe_error(exc.summary())
            raise exc.api_error() from None
        trace.phase("fanout", t)
        trace.calls.append(answer)
        trace.final, trace.answered, trace.answered_by = [answer.model], [answer.model], answer.model
        trace.finish_reason = answer.finish_reason
        trace.finish()
        return answer, trace

    def _observe(self, model: str, trace: Trace | None, status: str, started: float) -> None:
        elapsed = time.perf_counter() - started
        self.metrics.request_seconds.labels(model).observe(elapsed)
        mode = trace.mode if trace else "none"
        self.metrics.requests.labels(model, mode, status).inc()
        access_fields = current_access_fields.get()
        if access_fields is not None:  # the summary rides on the request's access line (RequestContext)
            access_fields.update({"model": model, "mode": mode, "outcome": status, **(
                {"final": trace.final, "cost_usd": trace.cost_usd, "degraded": trace.degraded,
                 "upstream_errors": trace.errors} if trace else {})})
        if trace is None:
            return
        self.metrics.observe_calls(trace.calls)
        for error in trace.errors:
            self.metrics.observe_error(error)
        for phase, ms in trace.timings_ms.items():
            self.metrics.phase_seconds.labels(phase).observe(ms / 1000)
        if model in VIRTUAL_MODELS:
            self.metrics.switch.labels(trace.mode).inc()
        if trace.support.get("capped"):
            self.metrics.support_capped.inc()
        if trace.degraded:
            self.metrics.degraded.inc()

    # -- streaming ---------------------------------------------------------------------------------

    async def chat_stream(self, request: ChatCompletionRequest, request_id: str) -> AsyncIterator[bytes]:
        """SSE: keep-alives while the candidates run, then the answer, a summary chunk and [DONE].

        Nothing is sent until the stream has its first event (an answer chunk, or a keep-alive once the
        candidates have run for keepalive_s), so a request that fails before that (a bad parameter, a cost
        cap below any model, every candidate failing, an upstream 429 or timeout on a pass-through) is a plain
        HTTP error with its status, which SDKs know how to retry. After the first byte, an error is an event.
        """
        self.check_request(request)
        if request.model in VIRTUAL_MODELS:  # invalid input is a 400 before the stream starts, not an event in it
            self.pipeline.params_for(request)
            self.pipeline.query_text(request)
        writer = ChunkWriter("chatcmpl-" + request_id.replace("-", ""), request.model)
        stream = self._stream(request, writer)
        try:
            first = await anext(stream)  # raises the APIError of a request that failed before its first byte
        except BaseException:
            await stream.aclose()
            raise
        return _prepend(first, stream)

    async def _stream(self, request: ChatCompletionRequest, writer: ChunkWriter) -> AsyncIterator[bytes]:
        started = time.perf_counter()
        progress: dict[str, Any] = {"trace": None}
        status = "error"
        sent = False
        try:
            async for data in self._events(request, writer, progress):
                sent = True
                yield data
            status = "ok"
        except Exception as exc:
            if isinstance(exc, APIError):
                error = exc
            elif isinstance(exc, UpstreamError):
                error = exc.api_error()
            else:  # a bug: still answer properly instead of cutting the connection
                log.exception("stream failed")
                error = APIError(500, "internal error in the gateway", "api_error")
            if not sent:
                raise error from None
            yield sse_error(error)
        finally:
            self._observe(request.model, progress["trace"], status, started)
        yield DONE

    async def _events(self, request: ChatCompletionRequest, writer: ChunkWriter,
                      progress: dict[str, Any]) -> AsyncIterator[bytes]:
        """The stream's events before [DONE]; `progress["trace"]` is the trace once there is one."""
        if request.model in VIRTUAL_MODELS:
            task = asyncio.create_task(self.pipeline.prepare(request))
            try:
                while not task.done():
                    done, _ = await asyncio.wait({task}, timeout=self.keepalive_s)
                    if not done:
                        yield KEEPALIVE
            finally:
                task.cancel()  # a no-op once done; stops the candidates if the client went away
            prepared = task.result()
            trace = progress["trace"] = prepared.trace
            async for data in self._stream_answer(prepared, writer):
                yield data
        else:
            trace = progress["trace"] = Trace(requested_mode="passthrough", mode="passthrough")
            async for data in self._relay(request.model, request.upstream_body(request.model), trace,
                                          writer, "passthrough", fallback=None):
                yield data
        trace.finish()
        finish_reason = trace.finish_reason or "stop"
        if request.wants_usage_in_stream:  # OpenAI's shape: usage in a last chunk with no choices
            yield writer.chunk(finish_reason=finish_reason, model=trace.answered_by)
            yield writer.chunk(usage=total_usage(trace.calls), jisi=trace.summary(), model=trace.answered_by,
                               empty=True)
        else:
            yield writer.chunk(finish_reason=finish_reason, jisi=trace.summary(), model=trace.answered_by)

    async def _stream_answer(self, prepared: Prepared, writer: ChunkWriter) -> AsyncIterator[bytes]:
        trace = prepared.trace
        if prepared.answer is not None:
            for data in writer.message(prepared.answer):
                yield data
            return
        async for data in self._relay(prepared.aggregator, prepared.aggregate_body, trace, writer, "aggregator",
                                      fallback=prepared):
            yield data

    async def _relay(self, model: str, body: dict[str, Any], trace: Trace, writer: ChunkWriter, role: str,
                     fallback: Prepared | None) -> AsyncIterator[bytes]:
        """Relay an upstream's stream chunk by chunk, then account for it."""
        state = StreamState()
        t = time.perf_counter()
        try:
            async for chunk in self.pool.stream(model, body, state, deadline=trace.deadline):
                for choice in chunk.get("choices") or []:
                    delta = {k: v for k, v in (choice.get("delta") or {}).items() if v is not None}
                    if delta:
                        yield writer.chunk(delta, model=model)
        except UpstreamError as exc:
            if fallback is None or state.chunks:
                # nothing to fall back on, or part of the answer is already out: fail loudly, never cut silently
                if state.chunks:
                    trace.calls.append(self.pool.stream_result(model, body, state, role, time.perf_counter() - t))
                raise
            answer = self.pipeline.fall_back(fallback, exc)
            for data in writer.message(answer):
                yield data
            trace.phase("aggregate", t)
            return
        trace.phase("aggregate" if role == "aggregator" else "fanout", t)
        call = self.pool.stream_result(model, body, state, role, time.perf_counter() - t)
        trace.calls.append(call)
        trace.finish_reason = state.finish_reason
        if role == "passthrough":
            trace.final, trace.answered, trace.answered_by = [model], [model], model

    # -- dry run -----------------------------------------------------------------------------------

    async def route(self, request: RouteRequest) -> dict[str, Any]:
        """Steps 1-3 without any upstream call: neighbours, coarse scores, candidates, aggregator."""
        chat = ChatCompletionRequest(model="jisi", messages=request.messages, jisi=request.jisi)
        pipeline = self.pipeline
        params = pipeline.params_for(chat)
        text = pipeline.query_text(chat)
        trace = Trace(requested_mode="route")
        planned, _ = await pipeline.plan(chat, params, trace)
        models = pipeline.bank.models
        neighbours = []
        for row, s in zip(planned.support.ids[: request.neighbours], planned.support.s):
            info = pipeline.bank.query_info(int(row))
            correct = [models[j] for j in np.flatnonzero(pipeline.bank.v[row] > 0.5)]
            neighbours.append({"text": info.text, "dataset": info.dataset, "index": info.index,
                               "similarity": round(float(s), 6), "correct_models": correct})
        g = planned.coarse.g
        return {
            "query": text,
            "support": {"size": int(planned.support.ids.size), "capped": planned.support.capped,
                        "tau": round(planned.support.tau, 6)},
            "neighbours": neighbours,
            "scores": {"g": {m: round(float(v), 6) for m, v in zip(models, g)}},
            "candidates": [models[j] for j in planned.candidates],
            "aggregator": models[planned.aggregator],
            "params": params.__dict__,
            "timings_ms": {k: round(v, 2) for k, v in trace.timings_ms.items()},
        }


async def _prepend(first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    try:
        yield first
        async for data in rest:
            yield data
    finally:
        await rest.aclose()  # type: ignore[attr-defined]  # the client left: end the upstream call now
