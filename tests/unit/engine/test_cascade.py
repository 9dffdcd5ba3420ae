"""The response-aware cascade's rules (app/engine/cascade.py): the call order, the lead rho and when it stops."""

from __future__ import annotations

import math

import numpy as np

from app.engine import cascade_done, cascade_lead, cascade_order
from bank_builder.evaluate.replay import CascadeStep, cascade_stop


def test_the_candidates_are_called_cheapest_forecast_first() -> None:
    forecast = np.array([0.3, 0.1, np.nan, 0.1, 0.05])
    # 4 is cheapest; 1 and 3 tie (the coarse order decides: 3 came first); an unknown forecast goes last
    assert cascade_order([2, 3, 0, 1, 4], forecast) == [4, 3, 1, 0, 2]
    assert cascade_order([0], forecast) == [0]


def test_the_lead_is_the_best_answer_over_the_best_waiting_candidate() -> None:
    gf = np.array([2.0, 4.0, 1.0, 0.0])
    assert cascade_lead(gf, said=[0], waiting=[1, 2]) == 0.5
    assert cascade_lead(gf, said=[0, 1], waiting=[2]) == 4.0
    assert cascade_lead(gf, said=[0], waiting=[]) == math.inf  # nothing left to call
    assert cascade_lead(gf, said=[0], waiting=[3]) == math.inf  # the one left scores nothing
    assert cascade_lead(gf, said=[], waiting=[1]) == -math.inf  # only empty answers so far: never stop


def test_it_stops_at_the_threshold_or_when_no_candidate_is_left() -> None:
    assert cascade_done(1.0, 1.0, waiting=[2]) and not cascade_done(0.99, 1.0, waiting=[2])
    assert cascade_done(-math.inf, 1.0, waiting=[])
    steps = [CascadeStep((4,), 4, 0.5), CascadeStep((4, 1), 1, 1.2), CascadeStep((4, 1, 0), 1, math.inf)]
    assert cascade_stop(steps, 0.5).calls == (4,)
    assert cascade_stop(steps, 1.0).calls == (4, 1) and cascade_stop(steps, 1.0).choice == 1
    assert cascade_stop(steps, 2.0).calls == (4, 1, 0)  # walked to the end
    assert cascade_stop([], 1.0) is None  # every call failed
