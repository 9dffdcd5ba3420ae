"""`jisi-bank evaluate --decisions`: every JiSi decision the evaluator scored, one JSON line per test question and
method, so the gateway's decisions on the same questions can be compared with them one by one (bench/parity.py).

Fields: method, dataset, index, query, candidates (the models fanned out to, best first), answered_by, final,
calls (the models called, in call order), cost_usd (the recorded cost of those calls; unknown costs count 0),
shortcut (whether the confident shortcut was taken), correct.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from bank_builder.evaluate.folds import path_calls
from bank_builder.evaluate.replay import ReplayResult
from bank_builder.records import RecordMatrix


def decision_rows(method: str, test: RecordMatrix, run: ReplayResult, cost: np.ndarray,
                  threshold: float | None, cascade: float | None = None) -> Iterable[dict[str, Any]]:
    """One row per test question of the router-only path of `run` (the shortcut where P >= threshold, else the
    cascade with its threshold when one is given)."""
    models = test.models
    score = np.where(test.present, test.score, 0.0)
    choice, called, take = path_calls(run, threshold, cascade)
    for q in range(len(test.queries)):
        cands = run.candidates[q][run.candidates[q] >= 0]
        calls = [int(j) for j in called[q]]
        j = int(choice[q])  # -1: every call failed (online: a 502)
        yield {"method": method, "dataset": test.datasets[q], "index": int(test.indices[q]), "query": test.queries[q],
               "candidates": [models[c] for c in cands], "answered_by": models[j] if j >= 0 else None,
               "final": [models[j]] if j >= 0 else [], "calls": [models[c] for c in calls],
               "cost_usd": float(np.nansum(cost[q, calls])), "shortcut": bool(take[q]),
               "correct": float(score[q, j]) if j >= 0 else 0.0}


def write_decisions(path: Path, rows: Iterable[dict[str, Any]]) -> int:
    """Write the rows as JSON lines; returns how many."""
    n = 0
    with open(path, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n


def read_decisions(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
