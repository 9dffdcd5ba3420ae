"""Prometheus metrics, on a registry of the app's own (so several apps in one process never clash)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from app.upstream import CallResult

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

    def observe_calls(self, calls: list[CallResult]) -> None:
        for call in calls:
            self.upstream_seconds.labels(call.model, call.role).observe(call.latency_s)
            self.tokens.labels(call.model, "prompt").inc(call.usage.prompt_tokens)
            self.tokens.labels(call.model, "completion").inc(call.usage.completion_tokens)
            self.cost.labels(call.model).inc(call.cost_usd)

    def observe_error(self, upstream: str, status: int | None, timeout: bool) -> None:
        kind = "timeout" if timeout else (f"http_{status}" if status else "connection")
        self.upstream_errors.labels(upstream, kind).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
