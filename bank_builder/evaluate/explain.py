"""`jisi-bank evaluate --explain`: why jisi_route wins or loses against best_single, per question and by
ablation (issue 14, item 1). Analysis on the test split, not tuning: nothing here feeds back into a choice.

- where the two disagree: who was right, which models the router picked there, the support sets' size and
  similarity, and the winner's curse (the coarse leader's support-set accuracy against its realised one);
- how each term of the mixed score moved the choice: the share of questions whose choice changes when ε·K·s,
  σ·s_res or δ·s_cost is removed, and what that does to accuracy;
- ablations over N_base/γ, β, K, ε/σ/δ, λ/λ_f and from_candidates: accuracy with its interval and the paired
  difference to the configuration explained.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from app.engine import JiSiParams
from bank_builder.evaluate.replay import FAILED, BankLike, Queries, ReplayResult, chosen, replay_queries
from bank_builder.evaluate.stats import Bootstrap
from bank_builder.records import RecordMatrix

ABLATIONS: list[tuple[str, dict[str, Any]]] = [
    ("N_base 25", {"n_base": 25}), ("N_base 100", {"n_base": 100}), ("N_base 200", {"n_base": 200}),
    ("γ 0.8", {"gamma": 0.8}), ("γ 1.0", {"gamma": 1.0}), ("N_base 100, γ 0.8", {"n_base": 100, "gamma": 0.8}),
    ("β 0.25", {"beta": 0.25}), ("β 1.0", {"beta": 1.0}),
    ("K 1", {"k": 1}), ("K 2", {"k": 2}), ("K 5", {"k": 5}),
    ("ε/σ/δ 1/0/0", {"eps": 1.0, "sigma": 0.0, "delta": 0.0}), ("ε/σ/δ 0/1/0", {"eps": 0.0, "sigma": 1.0, "delta": 0.0}),
    ("ε/σ/δ 0/0/1", {"eps": 0.0, "sigma": 0.0, "delta": 1.0}),
    ("λ 10", {"lam": 10.0}), ("λ 30", {"lam": 30.0}), ("λ_f 30", {"lam_fine": 30.0}),
    ("from candidates", {"from_candidates": True}),
]
TERMS = [("ε·K·s", "eps"), ("σ·s_res", "sigma"), ("δ·s_cost", "delta")]


def _mean(x: np.ndarray) -> float | None:
    return float(np.mean(x)) if len(x) else None


def explain(bank: BankLike, test: RecordMatrix, queries: Queries, params: JiSiParams, run: ReplayResult,
            best_single: np.ndarray, boot: Bootstrap, prices: tuple[np.ndarray, np.ndarray]) -> dict[str, Any]:
    score = np.where(test.present, test.score, 0.0)
    rows = np.arange(len(run.route_choice))
    route_ok, best_ok = chosen(score, run.route_choice) > 0.5, score[rows, best_single] > 0.5
    differ = run.route_choice != best_single
    models = bank.models
    leader_ok = score[rows, run.retrieval_choice]
    out: dict[str, Any] = {
        "params": params.__dict__,
        "disagreements": {
            "questions": int(differ.sum()), "of": len(rows),
            "router_right_best_single_wrong": int((differ & route_ok & ~best_ok).sum()),
            "router_wrong_best_single_right": int((differ & ~route_ok & best_ok).sum()),
            "both_right": int((differ & route_ok & best_ok).sum()), "both_wrong": int((differ & ~route_ok & ~best_ok).sum()),
            "models_picked": dict(Counter(models[j] if j >= 0 else FAILED for j in run.route_choice[differ]).most_common(8)),
            "models_picked_when_it_lost": dict(Counter(
                models[j] if j >= 0 else FAILED for j in run.route_choice[differ & ~route_ok & best_ok]).most_common(8)),
        },
        "support": {
            "size_mean": {"agree": _mean(run.support_sizes[~differ]), "disagree": _mean(run.support_sizes[differ])},
            "similarity_mean": {"agree": _mean(run.support_similarity[~differ]),
                                "disagree": _mean(run.support_similarity[differ])},
        },
        # the coarse leader's accuracy on its support set against how often it was right on these questions
        "winners_curse": {"leader_support_accuracy": _mean(run.leader_estimate), "leader_realised": _mean(leader_ok)},
        "datasets": sorted(set(test.datasets)),
    }
    reference = chosen(score, run.route_choice)
    terms = []
    for label, name in TERMS:
        weights = {"eps": params.eps, "sigma": params.sigma, "delta": params.delta, name: 0.0}
        if sum(weights.values()) == 0:
            continue
        without = replay_queries(bank, queries, params.with_overrides(weights), prices=prices)
        correct = chosen(score, without.route_choice)
        terms.append({"term": label, "choice_changed": float(np.mean(without.route_choice != run.route_choice)),
                      "delta_if_removed": boot.paired(correct, reference)})
    out["terms"] = terms
    ablations = []
    for label, change in ABLATIONS:
        variant = replay_queries(bank, queries, params.with_overrides(change), prices=prices)
        correct = chosen(score, variant.route_choice)
        ablations.append({"ablation": label, "change": change, "average": boot.point(correct),
                          "ci95": list(boot.interval(correct)), "delta": boot.paired(correct, reference),
                          "support_size_mean": float(variant.support_sizes.mean())})
    out["ablations"] = ablations
    return out


def _pt(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def _delta(d: dict[str, Any]) -> str:
    return f"{100 * d['mean']:+.2f} [{100 * d['ci95'][0]:+.2f}, {100 * d['ci95'][1]:+.2f}]"


def to_markdown(ex: dict[str, Any]) -> str:
    d, s, w = ex["disagreements"], ex["support"], ex["winners_curse"]
    lines = ["# Why jisi_route wins or loses against best_single", "",
             f"Parameters: {ex['params']}", "",
             f"The two pick different models on {d['questions']} of {d['of']} test questions: the router is right "
             f"and best single wrong on {d['router_right_best_single_wrong']}, the reverse on "
             f"{d['router_wrong_best_single_right']}; both right {d['both_right']}, both wrong {d['both_wrong']}.", "",
             "Models the router picked where they differ: " + ", ".join(f"{m} ({n})" for m, n in d["models_picked"].items()),
             "", "... and where that lost: " + (", ".join(f"{m} ({n})" for m, n in d["models_picked_when_it_lost"].items())
                                              or "none"), "",
             f"Support set: mean size {s['size_mean']['agree'] or 0:.0f} where they agree, "
             f"{s['size_mean']['disagree'] or 0:.0f} where they differ; mean similarity "
             f"{s['similarity_mean']['agree'] or 0:.3f} / {s['similarity_mean']['disagree'] or 0:.3f}.", "",
             f"Winner's curse: the coarse leader's accuracy on its support set is {_pt(w['leader_support_accuracy'])} %,"
             f" its accuracy on these questions {_pt(w['leader_realised'])} %.", "",
             "## The mixed score's terms", "", "| removed | choice changes | Δ accuracy [95 % CI] |", "|---|---:|---:|"]
    lines += [f"| {t['term']} | {100 * t['choice_changed']:.1f} % | {_delta(t['delta_if_removed'])} |" for t in ex["terms"]]
    lines += ["", "## Ablations", "", "| variant | Avg [95 % CI] | Δ vs the explained configuration | mean support size |",
              "|---|---:|---:|---:|"]
    lines += [f"| {a['ablation']} | {_pt(a['average'])} [{_pt(a['ci95'][0])}, {_pt(a['ci95'][1])}] | "
              f"{_delta(a['delta'])} | {a['support_size_mean']:.0f} |" for a in ex["ablations"]]
    return "\n".join(lines) + "\n"
