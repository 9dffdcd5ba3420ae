"""A call's cost at its upstream's configured prices (the formula itself, shared with the evaluator and every
forecast, is app/engine/cost.py's cost_usd)."""

from __future__ import annotations

from app.config import UpstreamSettings
from app.engine.cost import cost_usd


def upstream_cost_usd(upstream: UpstreamSettings, prompt_tokens: float, completion_tokens: float) -> float:
    """A call's cost (or, before the call, its forecast) at the upstream's configured prices; an upstream without a
    configured price books its calls at 0 USD (the gateway says so once at start-up)."""
    return float(cost_usd(prompt_tokens, completion_tokens, upstream.input_usd_per_mtok or 0.0,
                          upstream.output_usd_per_mtok or 0.0))
