"""Prometheus metrics, on a registry of the app's own (so several apps in one process never clash)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from app.embedding.batcher import RequestPathEmbedder
from app.upstream.call import CallResult
from app.upstream.pool import UpstreamPool

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("jisi_requests", "Chat completion requests", ["model", "mode", "status"], registry=r)
        self.request_seconds = Histogram("jisi_request_seconds", "End-to-end request latency", ["model"],
                                         buckets=LATENCY_BUCKETS, registry=r)
        self.phase_seconds = Histogram("jisi_phase_seconds", "Time per request phase", ["phase"],
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.upstream_seconds = Histogram("jisi_upstream_seconds", "Upstream call latency", ["upstream", "role"],
                                          buckets=LATENCY_BUCKETS, registry=r)
        self.upstream_errors = Counter("jisi_upstream_errors", "Failed upstream calls", ["upstream", "kind"],
                                       registry=r)
        self.tokens = Counter("jisi_tokens", "Upstream tokens", ["upstream", "kind"], registry=r)
        self.cost = Counter("jisi_cost_usd", "Upstream cost in USD", ["upstream"], registry=r)
        self.switch = Counter("jisi_switch_decisions", "Adaptive switch outcomes", ["outcome"], registry=r)
        self.support_capped = Counter("jisi_support_capped", "Requests whose support set hit max_support",
                                      registry=r)
        self.degraded = Counter("jisi_degraded", "Requests answered in a degraded way", registry=r)
        self.shortcuts = Counter("jisi_shortcuts", "Requests whose confident coarse leader was called alone",
                                 registry=r)
        # every response, including those refused before the pipeline (404 model, 400 body, 401, 413)
        self.http_responses = Counter("jisi_http_responses", "HTTP responses by route and status",
                                      ["path", "status"], registry=r)
        self.known_paths: set[str] = set()  # the app's routes; any other path counts as "other"
        self.loop_lag_seconds = Histogram("jisi_event_loop_lag_seconds", "How late the event loop woke a timer",
                                          buckets=LATENCY_BUCKETS, registry=r)

        self.bank_info = Gauge("jisi_bank_info", "The bank serving requests (1 for its build id)", ["build_id"],
                               registry=r)
        self.reloads = Counter("jisi_bank_reloads", "Bank reloads by trigger and outcome (ok, refused)",
                               ["trigger", "outcome"], registry=r)

    def serving_bank(self, build_id: str) -> None:
        self.bank_info.clear()
        self.bank_info.labels(build_id).set(1)

    def observe_http(self, path: str, status: int) -> None:
        # unknown paths share one label, so a scanner probing random URLs cannot grow the series without bound
        self.http_responses.labels(path if path in self.known_paths else "other", str(status)).inc()

    def watch_embedders(self, *embedders: RequestPathEmbedder) -> None:
        """Report the micro-batchers' model calls, requests and texts (requests per call = batching at work)."""
        self.registry.register(_EmbedderCollector(list(dict.fromkeys(embedders))))

    def watch_pool(self, pool: UpstreamPool) -> None:
        """Report each upstream's calls in flight, calls waiting and circuit state at every scrape."""
        self.registry.register(_PoolCollector(pool))

    def observe_calls(self, calls: list[CallResult]) -> None:
        for call in calls:
            self.upstream_seconds.labels(call.model, call.role).observe(call.latency_s)
            self.tokens.labels(call.model, "prompt").inc(call.usage.prompt_tokens)
            self.tokens.labels(call.model, "completion").inc(call.usage.completion_tokens)
            self.cost.labels(call.model).inc(call.cost_usd)

    def observe_error(self, error: dict[str, Any]) -> None:
        """One failed upstream call, as UpstreamError.summary() describes it."""
        status = error.get("status")
        kind = ("overloaded" if error.get("overloaded") else "circuit_open" if error.get("circuit_open")
                else "timeout" if error.get("timeout")
                else f"http_{status}" if status else "connection")
        self.upstream_errors.labels(error["model"], kind).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _PoolCollector(Collector):
    def __init__(self, pool: UpstreamPool) -> None:
        self.pool = pool

    def collect(self):  # type: ignore[override]
        in_flight = GaugeMetricFamily("jisi_upstream_in_flight", "Upstream calls in flight", labels=["upstream"])
        waiting = GaugeMetricFamily("jisi_upstream_waiting", "Upstream calls waiting for a slot",
                                    labels=["upstream"])
        circuit = GaugeMetricFamily("jisi_upstream_circuit_open", "1 while the upstream's circuit is not closed",
                                    labels=["upstream"])
        for name, limit in self.pool.limits.items():
            in_flight.add_metric([name], limit.in_flight)
            waiting.add_metric([name], limit.waiting)
            circuit.add_metric([name], float(self.pool.breakers[name].state != "closed"))
        yield from (in_flight, waiting, circuit)


class _EmbedderCollector(Collector):
    """Totals over the gateway's embedders (the query embedder's and, when separate, the responses')."""

    def __init__(self, embedders: list[RequestPathEmbedder]) -> None:
        self.embedders = embedders

    def collect(self):  # type: ignore[override]
        total = lambda attribute: sum(getattr(e, attribute) for e in self.embedders)  # noqa: E731
        yield CounterMetricFamily("jisi_embedding_model_calls", "Embedding model calls", value=total("calls"))
        yield CounterMetricFamily("jisi_embedding_requests", "Embedding requests served",
                                  value=total("batched_requests"))
        yield CounterMetricFamily("jisi_embedding_texts", "Texts embedded", value=total("texts"))
        yield CounterMetricFamily("jisi_embedding_model_seconds", "Time spent inside the embedding model",
                                  value=total("model_seconds"))
