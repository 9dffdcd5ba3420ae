"""The per-request cost cap (`jisi.max_cost_usd`): forecasts calls and refuses the ones that overspend."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Budget:
    cap_usd: float | None
    spent_usd: float = 0.0

    def fits(self, estimate_usd: float) -> bool:
        return self.cap_usd is None or self.spent_usd + estimate_usd <= self.cap_usd

    def spend(self, cost_usd: float) -> None:
        self.spent_usd += cost_usd
