"""What the pool tells an observer about each upstream attempt, without knowing who listens: a tracer
(app/observability/tracing.py) gets a span per attempt, which may add headers (W3C traceparent) to the call."""

from __future__ import annotations

from typing import Protocol

from app.upstream.call import CallResult


class AttemptSpan(Protocol):
    recording: bool  # False: a no-op (tracing off), so callers skip work done only for the span

    def inject(self, headers: dict[str, str]) -> None:
        """Add what the upstream should receive about this attempt's trace (W3C traceparent)."""

    def finish(self, result: CallResult | None = None, error: BaseException | None = None) -> None:
        """The attempt ended: its answer (tokens, cost) or its error."""


class AttemptTracer(Protocol):
    def attempt(self, model: str, role: str, attempt: int) -> AttemptSpan: ...


class _NoSpan:
    recording = False

    def inject(self, headers: dict[str, str]) -> None:
        pass

    def finish(self, result: CallResult | None = None, error: BaseException | None = None) -> None:
        pass


class NoTracer:
    """Tracing off: one shared no-op span, nothing allocated per call."""

    span = _NoSpan()

    def attempt(self, model: str, role: str, attempt: int) -> AttemptSpan:
        return self.span
