"""OpenTelemetry traces, off by default and free when off.

On (`OTEL_TRACES_EXPORTER=otlp|console`, comma-separated; `OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_SERVICE_NAME` and
the SDK's other standard variables as the SDK reads them), every HTTP request is a server span that continues
the caller's W3C `traceparent`; each upstream attempt is a client span under it (model, role, attempt, status,
tokens, cost) whose `traceparent` goes to the upstream; and the request's phases (embed, search, plan, fan-out,
live response embeddings, decide, aggregate) are child spans drawn from the trace's own phase clock when the
request is done, so the pipeline carries no tracing code. Off (the default, or `none`), nothing is created: the
middleware, the pool and the gateway test one attribute."""

from __future__ import annotations

import os
import time
from typing import Any, Mapping

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.propagate import extract, inject
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode

from app.upstream.call import CallResult, UpstreamError
from app.upstream.hooks import AttemptSpan, NoTracer


class TracingError(ValueError):
    """OTEL_TRACES_EXPORTER names an exporter this gateway does not ship."""


def exporters_from_env(environ: Mapping[str, str] = os.environ) -> list[SpanExporter]:
    """The exporters OTEL_TRACES_EXPORTER names (default none)."""
    out: list[SpanExporter] = []
    for name in (part.strip() for part in environ.get("OTEL_TRACES_EXPORTER", "none").split(",")):
        if name in ("", "none"):
            continue
        if name == "otlp":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            out.append(OTLPSpanExporter())  # reads OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT, headers, timeout
        elif name == "console":
            from opentelemetry.sdk.trace.export import ConsoleSpanExporter

            out.append(ConsoleSpanExporter())
        else:
            raise TracingError(f"OTEL_TRACES_EXPORTER: unknown exporter {name!r} (otlp, console or none)")
    return out


class Tracing:
    """The gateway's tracer, or nothing. `Tracing.from_env()` in production; tests pass an in-memory exporter."""

    def __init__(self, exporters: list[SpanExporter] | None = None, *, batch: bool = True) -> None:
        self.enabled = bool(exporters)
        self.provider: TracerProvider | None = None
        if not exporters:
            return
        # Resource.create reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES; ours is the default name
        self.provider = TracerProvider(resource=Resource.create({"service.name": "jisi-gateway"} | (
            {"service.name": os.environ["OTEL_SERVICE_NAME"]} if os.environ.get("OTEL_SERVICE_NAME") else {})))
        for exporter in exporters:
            # batched off the request path for a collector; simple (synchronous) for tests and the console
            self.provider.add_span_processor(BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter))
        self.tracer = self.provider.get_tracer("jisi.gateway")

    @classmethod
    def from_env(cls) -> Tracing:
        return cls(exporters_from_env())

    def shutdown(self) -> None:
        if self.provider is not None:
            self.provider.shutdown()  # flushes what the batch processor still holds

    # -- the request span (app/http/middleware.py)

    def start_request(self, method: str, path: str, headers: list[tuple[bytes, bytes]],
                      request_id: str) -> tuple[trace.Span, object]:
        """The server span of one request, current until `end_request`, under the caller's traceparent."""
        carrier = {k.decode("latin-1"): v.decode("latin-1") for k, v in headers
                   if k in (b"traceparent", b"tracestate")}
        span = self.tracer.start_span(f"{method} {path}", context=extract(carrier), kind=SpanKind.SERVER,
                                      attributes={"http.request.method": method, "url.path": path,
                                                  "jisi.request_id": request_id})
        token = otel_context.attach(trace.set_span_in_context(span))
        return span, token

    @staticmethod
    def end_request(span: trace.Span, token: object, status: int) -> None:
        span.set_attribute("http.response.status_code", status)
        if status >= 500:
            span.set_status(Status(StatusCode.ERROR))
        otel_context.detach(token)  # type: ignore[arg-type]
        span.end()

    # -- upstream attempts (app/upstream/pool.py, through its AttemptTracer hook)

    def attempt(self, model: str, role: str, attempt: int) -> AttemptSpan:
        if not self.enabled:
            return NoTracer.span
        return _Attempt(self.tracer.start_span(f"upstream {model}", kind=SpanKind.CLIENT, attributes={
            "jisi.upstream": model, "jisi.role": role, "jisi.attempt": attempt}))

    # -- the request's phases and summary (app/serving/gateway.py, when the request is done)

    def phases(self, intervals: list[tuple[str, float, float]], attributes: dict[str, Any]) -> None:
        """Child spans of the current (request) span from the trace's phase clock (perf_counter seconds), and
        the request's summary on the request span."""
        if not self.enabled:
            return
        offset = time.time_ns() - time.perf_counter_ns()  # perf_counter -> epoch nanoseconds
        for name, start, end in intervals:
            span = self.tracer.start_span(name, start_time=offset + int(start * 1e9))
            span.end(end_time=offset + int(end * 1e9))
        current = trace.get_current_span()
        if current.is_recording():
            current.set_attributes({k: v for k, v in attributes.items() if v is not None})


class _Attempt:
    """One upstream attempt's client span: started when the attempt is, not current (the attempt may be a
    stream consumed elsewhere), its traceparent sent to the upstream."""

    recording = True

    def __init__(self, span: trace.Span) -> None:
        self.span = span

    def inject(self, headers: dict[str, str]) -> None:
        inject(headers, context=trace.set_span_in_context(self.span))

    def finish(self, result: CallResult | None = None, error: BaseException | None = None) -> None:
        if result is not None:
            self.span.set_attributes({
                "jisi.status": "ok", "jisi.finish_reason": result.finish_reason or "",
                "gen_ai.usage.input_tokens": result.usage.prompt_tokens,
                "gen_ai.usage.output_tokens": result.usage.completion_tokens, "jisi.cost_usd": result.cost_usd})
        if isinstance(error, UpstreamError):
            self.span.set_attributes({"jisi.status": "error", "jisi.error": error.message,
                                      **({"http.response.status_code": error.status} if error.status else {})})
            self.span.set_status(Status(StatusCode.ERROR, error.message))
        elif error is not None:
            self.span.set_attributes({"jisi.status": "cancelled"})
        self.span.end()
