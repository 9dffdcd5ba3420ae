"""The trace of one request: every decision, call, error, degradation and phase time that the response's
`jisi` object, its headers, the access log line and the metrics report."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from app.upstream.call import CallResult

# phases spent waiting on upstreams: the gateway's own overhead is the rest of the request's time
UPSTREAM_PHASES = ("fanout", "finals", "aggregate")


@dataclass
class Trace:
    requested_mode: str
    mode: str = "route"
    candidates: list[str] = field(default_factory=list)
    answered: list[str] = field(default_factory=list)
    final: list[str] = field(default_factory=list)
    aggregator: str | None = None
    answered_by: str | None = None
    finish_reason: str | None = None
    support: dict[str, Any] = field(default_factory=dict)
    g: dict[str, float] = field(default_factory=dict)
    gf: dict[str, float] = field(default_factory=dict)
    calls: list[CallResult] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    degraded: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    timings_ms: dict[str, float] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)
    deadline: float | None = None  # time.monotonic() by which the whole request must be answered
    shortcut: bool = False  # the coarse leader was called alone (params.shortcut)
    cascade: list[dict[str, Any]] = field(default_factory=list)  # the cascade's steps: model, lead, leader
    bank: str | None = None  # the build id of the bank that answered (banks are swapped live: app/http/reload.py)
    intervals: list[tuple[str, float, float]] = field(default_factory=list)  # (phase, start, end): the spans

    def remaining_s(self) -> float:
        return float("inf") if self.deadline is None else self.deadline - time.monotonic()

    def phase(self, name: str, since: float) -> float:
        now = time.perf_counter()
        self.timings_ms[name] = self.timings_ms.get(name, 0.0) + 1000 * (now - since)
        self.intervals.append((name, since, now))
        return now

    def answered_with(self, call: CallResult, mode: str = "route") -> None:
        """`call` is the answer the client gets (routed to its model, or the aggregator's)."""
        self.mode, self.answered_by, self.finish_reason = mode, call.model, call.finish_reason

    @property
    def cost_usd(self) -> float:
        return sum(call.cost_usd for call in self.calls)

    def finish(self) -> None:
        self.timings_ms["total"] = 1000 * (time.perf_counter() - self.started)
        upstream = sum(self.timings_ms.get(p, 0.0) for p in UPSTREAM_PHASES)
        self.timings_ms["overhead"] = max(0.0, self.timings_ms["total"] - upstream)

    def summary(self) -> dict[str, Any]:
        return {
            **({"bank": self.bank} if self.bank else {}),
            "mode": self.mode, "requested_mode": self.requested_mode, "candidates": self.candidates,
            "answered": self.answered, "final": self.final, "aggregator": self.aggregator,
            "answered_by": self.answered_by, "shortcut": self.shortcut,
            **({"cascade": self.cascade} if self.cascade else {}), "support": self.support,
            "scores": {"g": self.g, "gf": self.gf},
            "calls": [c.summary() for c in self.calls], "upstream_calls": len(self.calls),
            "total_cost_usd": self.cost_usd, "degraded": bool(self.degraded),
            "degraded_reasons": self.degraded, "errors": self.errors, "notes": self.notes,
            "timings_ms": {k: round(v, 2) for k, v in self.timings_ms.items()},
        }


def named_scores(models: list[str], values: np.ndarray) -> dict[str, float]:
    return {m: round(float(v), 6) for m, v in zip(models, values)}
