"""Hyperparameters of the method (paper §4.1 defaults), as a plain immutable value.

The engine takes this object and nothing else from the outside world; app.settings builds it
from the YAML file and environment, and per-request overrides replace single fields.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np

Mode = Literal["adaptive", "route", "aggregate"]


@dataclass(frozen=True)
class JiSiParams:
    k: int = 3  # K: candidates fanned out to, and the most aggregatees
    n_base: int = 50  # N^base: the rank whose similarity sets the support threshold
    gamma: float = 0.95  # γ: tau = γ · (N^base-th largest similarity)
    beta: float = 0.5  # β: the filter keeps floor(β · |I|) support queries
    eps: float = 0.5  # ε: weight of query similarity in s^flt
    sigma: float = 0.3  # σ: weight of response similarity in s^flt
    delta: float = 0.2  # δ: weight of completion-length similarity in s^flt
    t: float = 0.8  # t: switch threshold on g^f_j / max g^f
    max_support: int = 512  # cap on |I|; the paper's rule alone can admit the whole bank
    max_aggregate_tokens: int = 13_000  # aggregatee responses above this total are truncated ...
    min_aggregatees: int = 2  # ... down to this many (paper: 3 -> 2 above 13,000 tokens)

    def __post_init__(self) -> None:
        problems = []
        for name in ("k", "n_base", "max_support", "max_aggregate_tokens", "min_aggregatees"):
            if not isinstance(getattr(self, name), (int, np.integer)) or isinstance(getattr(self, name), bool):
                problems.append(f"{name} must be an integer, got {getattr(self, name)!r}")
        if problems:
            raise ValueError("invalid JiSi parameters: " + "; ".join(problems))
        if self.k < 1:
            problems.append("k must be >= 1")
        if self.n_base < 1:
            problems.append("n_base must be >= 1")
        if self.max_support < 1:
            problems.append("max_support must be >= 1")
        for name in ("gamma", "beta", "eps", "sigma", "delta", "t"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                problems.append(f"{name} must be in [0, 1], got {value}")
        if self.min_aggregatees < 1:
            problems.append("min_aggregatees must be >= 1")
        if self.max_aggregate_tokens < 0:
            problems.append("max_aggregate_tokens must be >= 0")
        if problems:
            raise ValueError("invalid JiSi parameters: " + "; ".join(problems))

    def with_overrides(self, overrides: dict[str, Any]) -> "JiSiParams":
        """A copy with the given fields replaced (unknown names are a ValueError)."""
        unknown = set(overrides) - set(self.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown JiSi parameter(s): {', '.join(sorted(unknown))}")
        return replace(self, **overrides)
