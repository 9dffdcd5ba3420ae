"""OpenTelemetry traces with the SDK's in-memory exporter: a request span continuing the caller's traceparent,
child spans for the phases and each upstream attempt, the traceparent passed on to the upstreams; nothing when
tracing is off."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from app.observability.tracing import Tracing, TracingError, exporters_from_env
from gateway_helpers import chat_body, running_gateway

pytestmark = pytest.mark.anyio

QUESTION = "Janet has 3 apples and buys 5 more. How many apples does she have now?"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


def tree(spans) -> list[str]:
    """The spans as an indented tree, in start order: `name  attributes`."""
    children: dict[int | None, list] = {}
    for s in sorted(spans, key=lambda s: s.start_time):
        children.setdefault(s.parent.span_id if s.parent else None, []).append(s)
    ids = {s.context.span_id for s in spans}
    lines: list[str] = []

    def walk(span, depth: int) -> None:
        attrs = {k: v for k, v in span.attributes.items() if k.startswith(("jisi.", "gen_ai.", "http."))}
        ms = (span.end_time - span.start_time) / 1e6
        lines.append(f"{'  ' * depth}{span.name} ({ms:.1f} ms) {attrs}")
        for child in children.get(span.context.span_id, []):
            walk(child, depth + 1)

    for root in [s for s in spans if not s.parent or s.parent.span_id not in ids]:
        walk(root, 0)
    return lines


async def test_a_jisi_request_is_one_trace_under_the_callers(settings, fake, minilm, capsys):
    exporter = InMemorySpanExporter()
    tracing = Tracing([exporter], batch=False)
    async with running_gateway(settings, minilm, fake, tracing=tracing) as (_, client):
        response = await client.post("/v1/chat/completions", headers={"traceparent": CALLER},
                                     json=chat_body("jisi", QUESTION, jisi={"mode": "aggregate", "shortcut": None}))
    assert response.status_code == 200
    info = response.json()["jisi"]
    spans = exporter.get_finished_spans()
    (root,) = [s for s in spans if s.name == "POST /v1/chat/completions"]
    assert format(root.context.trace_id, "032x") == TRACE_ID and root.parent.span_id == 0x00f067aa0ba902b7
    assert all(s.context.trace_id == root.context.trace_id for s in spans)  # one trace
    assert root.attributes["http.response.status_code"] == 200 and root.attributes["jisi.mode"] == "aggregate"
    assert root.attributes["jisi.bank"] == info["bank"]
    children = [s for s in spans if s.parent and s.parent.span_id == root.context.span_id]
    names = {s.name for s in children}
    assert {"embed_query", "search", "plan", "fanout", "embed_responses", "decide", "aggregate"} <= names
    attempts = [s for s in children if s.name.startswith("upstream ")]
    assert sorted(s.attributes["jisi.upstream"] for s in attempts) == sorted(c["model"] for c in info["calls"])
    for span in attempts:
        call = next(c for c in info["calls"] if c["model"] == span.attributes["jisi.upstream"]
                    and c["role"] == span.attributes["jisi.role"])
        assert span.attributes["gen_ai.usage.input_tokens"] == call["usage"]["prompt_tokens"]
        assert span.attributes["jisi.cost_usd"] == pytest.approx(call["cost_usd"])
    # each upstream got its own attempt's span as parent (W3C traceparent)
    sent = {c.traceparent for c in fake.calls}
    assert sent == {f"00-{TRACE_ID}-{s.context.span_id:016x}-01" for s in attempts}
    with capsys.disabled():
        print("\n" + "\n".join(tree(spans)))


async def test_tracing_off_creates_nothing_and_sends_no_traceparent(settings, fake, minilm):
    async with running_gateway(settings, minilm, fake, tracing=Tracing()) as (app, client):
        response = await client.post("/v1/chat/completions", headers={"traceparent": CALLER},
                                     json=chat_body("jisi", QUESTION))
    assert response.status_code == 200 and fake.calls
    assert all(c.traceparent is None for c in fake.calls)
    assert app.state.jisi.gateway is None or not app.state.jisi.gateway.tracing.enabled


def test_exporters_come_from_the_standard_variables(monkeypatch):
    assert exporters_from_env({}) == [] and exporters_from_env({"OTEL_TRACES_EXPORTER": "none"}) == []
    names = [type(e).__name__ for e in exporters_from_env({"OTEL_TRACES_EXPORTER": "otlp,console"})]
    assert names == ["OTLPSpanExporter", "ConsoleSpanExporter"]
    with pytest.raises(TracingError, match="zipkin"):
        exporters_from_env({"OTEL_TRACES_EXPORTER": "zipkin"})
