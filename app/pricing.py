"""Cost of an upstream call from the configured per-million-token prices."""

from __future__ import annotations

from app.protocol import Usage
from app.settings import UpstreamSettings


def call_cost_usd(upstream: UpstreamSettings, usage: Usage) -> float:
    return (
        usage.prompt_tokens * upstream.input_usd_per_mtok + usage.completion_tokens * upstream.output_usd_per_mtok
    ) / 1_000_000


def estimate_cost_usd(upstream: UpstreamSettings, prompt_tokens: float, completion_tokens: float) -> float:
    """A forecast (for the cost cap) before a call is made."""
    return (prompt_tokens * upstream.input_usd_per_mtok + completion_tokens * upstream.output_usd_per_mtok) / 1_000_000


def estimate_tokens(text: str) -> int:
    """Rough token count (~4 characters a token) for text whose real count nobody reported."""
    return max(1, (len(text) + 3) // 4) if text else 0
