"""The gateway's use cases behind the HTTP routes: the model catalogue, chat completions (JiSi or
pass-through, plain or streamed) with their limits and metrics, the Responses API over them, and the dry run."""

from __future__ import annotations

import logging
import time
from typing import Any, AsyncIterator

from app.errors import ErrorKind, GatewayError, bad_request
from app.observability.logs import current_access_fields
from app.observability.metrics import Metrics
from app.observability.tracing import Tracing
from app.pipeline.prepare import VIRTUAL_MODELS, Pipeline
from app.pipeline.trace import Trace
from app.protocol.chat import ChatCompletion, ChatCompletionRequest, ModelCard, ModelList, RouteRequest
from app.protocol.responses import ResponseObject, ResponsesRequest
from app.serving import chat, passthrough
from app.serving.dry_run import dry_run
from app.serving.render import ChunkWriter, StreamWriter, completion, completion_id, jisi_headers
from app.serving.responses import ResponseWriter, in_responses_terms, response_id, response_object, to_chat
from app.upstream.call import UpstreamError
from app.upstream.pool import UpstreamPool

log = logging.getLogger("jisi.gateway")

VIRTUAL_DESCRIPTIONS = {
    "jisi": "JiSi: query-response mixed routing with the adaptive routing-aggregation switch",
    "jisi-route": "JiSi router-only: the top-1 model by fine score answers",
    "jisi-aggregate": "JiSi without the adaptive switch: always aggregate the top-K",
    "jisi-economy": "JiSi router-only with the bank's economy profile: the cheapest setting calibrated at best "
                    "single's accuracy or above",
}


class Gateway:
    def __init__(self, pipeline: Pipeline, pool: UpstreamPool, metrics: Metrics, keepalive_s: float = 2.0, *,
                 max_messages: int = 512, max_requested_tokens: int = 65_536, tracing: Tracing | None = None) -> None:
        self.pipeline = pipeline
        self.tracing = tracing or Tracing()  # off unless given
        self.pool = pool
        self.metrics = metrics
        self.keepalive_s = keepalive_s
        self.max_messages = max_messages
        self.max_requested_tokens = max_requested_tokens

    # -- catalogue -------------------------------------------------------------------------------

    def models(self) -> ModelList:
        cards = [ModelCard(id=name, description=text, jisi=self.parameters(name))
                 for name, text in VIRTUAL_DESCRIPTIONS.items() if self.pipeline.serves(name)]
        for u in self.pool.upstreams.values():
            cards.append(ModelCard(id=u.name, owned_by="upstream", description=f"pass-through to {u.base_url}",
                                   pricing={"input_usd_per_mtok": u.input_usd_per_mtok,
                                            "output_usd_per_mtok": u.output_usd_per_mtok}))
        return ModelList(data=cards)

    def parameters(self, model: str = "jisi") -> dict[str, Any]:
        """The hyperparameters a virtual model runs with by default and where each comes from (settings, bank or
        bank:PROFILE, default)."""
        p = self.pipeline
        profile = p.profile_of(model)
        params, sources = p.profiles[profile]
        calibration = p.bank.manifest.calibration or {}
        objective = calibration.get("objective") if profile == "quality" else \
            (calibration.get("profiles") or {}).get(profile, {}).get("objective")
        return {"profile": profile, "params": params.__dict__, "sources": sources, "calibration": objective}

    def check_request(self, request: ChatCompletionRequest) -> None:
        """The model exists and the request stays within the configured limits (else 404 / 400)."""
        if request.model in VIRTUAL_MODELS and not self.pipeline.serves(request.model):
            profile = self.pipeline.profile_of(request.model)
            raise GatewayError(ErrorKind.NOT_FOUND, f"the model {request.model!r} serves the bank's {profile} "
                               f"profile, and the bank at {self.pipeline.bank.path} has none: `jisi-bank calibrate "
                               "--bank` writes it", "model", "model_not_found")
        if request.model not in VIRTUAL_MODELS and request.model not in self.pool:
            raise GatewayError(ErrorKind.NOT_FOUND, f"the model {request.model!r} does not exist; GET /v1/models "
                               "lists the available ones", "model", "model_not_found")
        if len(request.messages) > self.max_messages:
            raise bad_request(f"too many messages: {len(request.messages)} (at most {self.max_messages})",
                              "messages", "too_many_messages")
        for field in ("max_tokens", "max_completion_tokens"):
            asked = getattr(request, field)
            if asked is not None and asked > self.max_requested_tokens:
                raise bad_request(f"{field} {asked} exceeds the gateway's limit of {self.max_requested_tokens}",
                                  field, "too_many_tokens")

    # -- chat completions ------------------------------------------------------------------------

    async def chat(self, request: ChatCompletionRequest, request_id: str) -> tuple[ChatCompletion, dict[str, str]]:
        self.check_request(request)
        started = time.perf_counter()
        status = "error"
        trace: Trace | None = None
        try:
            if request.model in VIRTUAL_MODELS:
                answer, trace = await chat.answer(self.pipeline, request)
            else:
                answer, trace = await passthrough.answer(self.pool, request, self.metrics)
            status = "ok"
            return completion(answer, trace, completion_id(request_id)), jisi_headers(trace, request_id)
        finally:
            self._observe(request.model, trace, status, started)

    async def chat_stream(self, request: ChatCompletionRequest, request_id: str,
                          writer: StreamWriter | None = None) -> AsyncIterator[bytes]:
        """SSE: keep-alives while the candidates run, then the answer and its summary, framed by `writer`
        (chat.completion.chunk events ending with [DONE] unless another wire format's writer is given).

        Nothing is sent until the stream has its first event (an answer chunk, or a keep-alive once the
        candidates have run for keepalive_s), so a request that fails before that (a bad parameter, a cost
        cap below any model, every candidate failing, an upstream 429 or timeout on a pass-through) is a plain
        HTTP error with its status, which SDKs know how to retry. After the first byte, an error is an event.
        """
        self.check_request(request)
        if request.model in VIRTUAL_MODELS:  # invalid input is a 400 before the stream starts, not an event in it
            self.pipeline.params_for(request)
            self.pipeline.query_text(request)
        stream = self._stream(request, writer or ChunkWriter(completion_id(request_id), request.model))
        try:
            first = await anext(stream)  # raises the GatewayError of a request that failed before its first byte
        except BaseException:
            await stream.aclose()
            raise
        return _prepend(first, stream)

    async def _stream(self, request: ChatCompletionRequest, writer: StreamWriter) -> AsyncIterator[bytes]:
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
            if isinstance(exc, GatewayError):
                error = exc
            elif isinstance(exc, UpstreamError):
                error = exc.client_error()
            else:  # a bug: still answer properly instead of cutting the connection
                log.exception("stream failed")
                error = GatewayError(ErrorKind.INTERNAL, "internal error in the gateway")
            if not sent:
                raise error from None
            for data in writer.error(error):
                yield data
        finally:
            self._observe(request.model, progress["trace"], status, started)
        for data in writer.end():
            yield data

    async def _events(self, request: ChatCompletionRequest, writer: StreamWriter,
                      progress: dict[str, Any]) -> AsyncIterator[bytes]:
        """The stream's events before its end; `progress["trace"]` is the trace once there is one."""
        if request.model in VIRTUAL_MODELS:
            async for data in chat.events(self.pipeline, request, writer, self.keepalive_s, progress):
                yield data
        else:
            progress["trace"] = passthrough.passthrough_trace()
            async for data in passthrough.events(self.pool, request, writer, progress["trace"]):
                yield data
        trace: Trace = progress["trace"]
        trace.finish()
        for data in writer.finish(trace, request.wants_usage_in_stream):
            yield data

    # -- the Responses API: the same chat completions, in another wire format ------------------------------

    async def responses(self, request: ResponsesRequest, request_id: str) -> tuple[ResponseObject, dict[str, str]]:
        with in_responses_terms():
            answer, headers = await self.chat(to_chat(request), request_id)
        return response_object(request, answer, response_id(request_id)), headers

    async def responses_stream(self, request: ResponsesRequest, request_id: str) -> AsyncIterator[bytes]:
        with in_responses_terms():
            return await self.chat_stream(to_chat(request), request_id,
                                          ResponseWriter(request, response_id(request_id)))

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
        if self.tracing.enabled:  # off: not even the attributes are built
            self.tracing.phases(trace.intervals, {
                "jisi.model": model, "jisi.mode": trace.mode, "jisi.bank": trace.bank,
                "jisi.answered_by": trace.answered_by, "jisi.cost_usd": trace.cost_usd,
                "jisi.upstream_calls": len(trace.calls),
                "jisi.degraded": bool(trace.degraded)})
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
        if trace.shortcut:
            self.metrics.shortcuts.inc()

    # -- dry run ---------------------------------------------------------------------------------

    async def route(self, request: RouteRequest) -> dict[str, Any]:
        return await dry_run(self.pipeline, request)


async def _prepend(first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    try:
        yield first
        async for data in rest:
            yield data
    finally:
        await rest.aclose()  # type: ignore[attr-defined]  # the client left: end the upstream call now
