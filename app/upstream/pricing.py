"""The cost of LLM calls from per-million-token prices: the one formula, used by the gateway (each call's
cost, the cost cap's forecasts) and by the offline evaluator (costs of records without a recorded cost)."""

from __future__ import annotations

from typing import TypeVar

import numpy as np

from app.config import UpstreamSettings

Number = TypeVar("Number", float, np.ndarray)


def cost_usd(prompt_tokens: Number, completion_tokens: Number, input_usd_per_mtok: float,
             output_usd_per_mtok: float) -> Number:
    """USD of calls with these token counts at these prices; scalars or numpy arrays (NaN propagates)."""
    return (prompt_tokens * input_usd_per_mtok + completion_tokens * output_usd_per_mtok) / 1_000_000


def upstream_cost_usd(upstream: UpstreamSettings, prompt_tokens: float, completion_tokens: float) -> float:
    """A call's cost (or, before the call, its forecast) at the upstream's configured prices."""
    return float(cost_usd(prompt_tokens, completion_tokens, upstream.input_usd_per_mtok,
                          upstream.output_usd_per_mtok))
