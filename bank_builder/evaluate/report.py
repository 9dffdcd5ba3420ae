"""results.json and results.md of `jisi-bank evaluate`, and the same table for the terminal."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping

import numpy as np

# Table 1 order: references first, then routers, then the multi-model methods and JiSi.
METHOD_ORDER = [
    "oracle", "best_single", "best_per_dataset", "random", "retrieval", "knn", "cluster", "logistic", "mf",
    "majority_vote", "majority_vote_per_dataset", "jisi_route", "jisi_route_calibrated", "jisi_shortcut",
    "jisi_cascade", "jisi_economy", "jisi_aggregate", "jisi",
]
REQUIRED_METHOD_KEYS = ("average", "datasets", "cost_per_query_usd", "calls_per_query", "ci95",
                        "delta_vs_best_single", "gain_over_random", "gain_over_best_single", "gap_to_oracle",
                        "pareto_distance", "cost_save")
REQUIRED_TOP_KEYS = ("methods", "jisi_switch", "support", "config", "timing")
REQUIRED_SWITCH_KEYS = (
    "aggregate_share", "aggregators", "final_set_sizes", "calls_per_query", "cost_per_query_usd",
    "route_accuracy_on_routed", "oracle_of_final_set_on_aggregated", "per_dataset",
)
REQUIRED_SUPPORT_KEYS = ("mean_size", "cap", "cap_binding_share")


def validate_results(results: Mapping[str, Any]) -> None:
    """Raise ValueError naming the first required key that is missing."""
    for key in REQUIRED_TOP_KEYS:
        if key not in results:
            raise ValueError(f"results: missing {key!r}")
    for name, method in results["methods"].items():
        for key in REQUIRED_METHOD_KEYS:
            if key not in method:
                raise ValueError(f"results.methods.{name}: missing {key!r}")
    for block, keys in (("jisi_switch", REQUIRED_SWITCH_KEYS), ("support", REQUIRED_SUPPORT_KEYS)):
        for key in keys:
            if key not in results[block]:
                raise ValueError(f"results.{block}: missing {key!r}")


def plain(obj: Any) -> Any:
    """numpy scalars/arrays to Python, NaN to null, dict keys to str: strict JSON."""
    if isinstance(obj, Mapping):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, np.ndarray)):
        return [plain(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def ordered_methods(results: Mapping[str, Any]) -> list[str]:
    names = list(results["methods"])
    return [m for m in METHOD_ORDER if m in names] + sorted(m for m in names if m not in METHOD_ORDER)


def _datasets(results: Mapping[str, Any]) -> list[str]:
    return sorted({ds for m in results["methods"].values() for ds in m["datasets"]})


def _pct(x: Any) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.2f}"


def _usd(x: Any) -> str:
    # per-query costs span 1e-6 .. 1e-1 USD: scientific keeps 3 significant digits for all
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.2e}"


def _num(x: Any, digits: int = 2) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _interval(ci: Any) -> str:
    return "-" if not ci else f"[{_pct(ci[0])}, {_pct(ci[1])}]"


def _delta(d: Mapping[str, Any] | None) -> str:
    if not d:
        return "-"
    return f"{100 * d['mean']:+.2f} {_interval(d['ci95'])} ({100 * d['win_share']:.0f}%)"


def _rel(x: Any) -> str:
    return "-" if x is None else f"{100 * x:+.1f}%"


def _rows(results: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    datasets = _datasets(results)
    header = ["method", *datasets, "Avg", "95% CI", "cost/query (USD)", "calls/query"]
    rows = []
    for name in ordered_methods(results):
        m = results["methods"][name]
        rows.append([
            name, *(_pct(m["datasets"].get(ds)) for ds in datasets), _pct(m["average"]), _interval(m.get("ci95")),
            _usd(m["cost_per_query_usd"]), _num(m["calls_per_query"]),
        ])
    return header, rows


def _metric_rows(results: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    header = ["method", "Δ vs best_single [95% CI] (wins)", "Gain@R", "Gain@B", "Gap@O", "ParetoDist", "CostSave"]
    rows = []
    for name in ordered_methods(results):
        m = results["methods"][name]
        dist = m.get("pareto_distance")
        rows.append([name, _delta(m.get("delta_vs_best_single")), _rel(m.get("gain_over_random")),
                     _rel(m.get("gain_over_best_single")), _rel(m.get("gap_to_oracle")),
                     "-" if dist is None else f"{100 * dist:.2f}", _rel(m.get("cost_save"))])
    return header, rows


def format_table(results: Mapping[str, Any]) -> str:
    """Aligned plain-text table (accuracy in %, Avg = mean over datasets) for the terminal."""
    header, rows = _rows(results)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    return "\n".join([line(header), "  ".join("-" * w for w in widths), *(line(r) for r in rows)])


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    sep = ["---"] + ["---:"] * (len(header) - 1)
    return ["| " + " | ".join(r) + " |" for r in [header, sep, *rows]]


def format_markdown(results: Mapping[str, Any]) -> str:
    """results.md: the method table, then the adaptive switch and support-set statistics."""
    header, rows = _rows(results)
    sw, sup = results["jisi_switch"], results["support"]
    config = results.get("config", {})
    boot = config.get("bootstrap") or {}
    out = [
        "# JiSi offline evaluation", "",
        f"Split: {config.get('split', '-')}; {config.get('train_queries', '-')} bank (train) and "
        f"{config.get('test_queries', '-')} test questions"
        + (f"; {config['duplicates_grouped']} questions that have an identical twin in their dataset (whitespace "
           "and case aside) kept on one side with it." if config.get("duplicates_grouped") else "."), "",
        "Accuracy in %; Avg is the mean of the per-dataset accuracies (as Table 1), with its 95 % bootstrap",
        f"interval ({boot.get('resamples', '-')} resamples of the test questions, stratified by dataset). Costs in",
        "USD per query, unknown prices counted as 0 (see `unpriced_calls_per_query` in results.json); the",
        "JiSi aggregator call is an estimate (see bank_builder/evaluate/scores.py).", "",
        *_md_table(header, rows), "",
        "## Against best single, and LLMRouterBench's metrics", "",
        "Δ: the paired difference to best_single on the same resampled questions (points), its 95 % interval and",
        "the share of resamples in which the method is ahead. Gain@R / Gain@B: relative gain over random / best",
        "single; Gap@O: relative gap to the oracle; ParetoDist: accuracy points below the accuracy-cost frontier",
        "at no more cost; CostSave: the largest relative saving against best single among the method's operating",
        "points at least as accurate (formulas: docs/evaluation.md).", "",
        *_md_table(*_metric_rows(results)), "",
        "## Adaptive switch", "",
        f"- aggregate share: {_pct(sw['aggregate_share'])} %",
        f"- calls/query: {_num(sw['calls_per_query'])}; cost/query: {_usd(sw['cost_per_query_usd'])} USD",
        f"- route accuracy on routed queries: {_pct(sw['route_accuracy_on_routed'])} %",
        f"- oracle of the final set on aggregated queries (aggregator upper bound): "
        f"{_pct(sw['oracle_of_final_set_on_aggregated'])} %",
        "- final set sizes: " + ", ".join(f"{k}: {v}" for k, v in sw["final_set_sizes"].items()),
        "- aggregators: " + (", ".join(f"{k} ({v})" for k, v in sw["aggregators"].items()) or "none"),
        "",
    ]
    per_ds = sw.get("per_dataset") or {}
    if per_ds:
        ds_rows = [
            [ds, _pct(s.get("aggregate_share")), _num(s.get("calls_per_query")),
             _pct(s.get("route_accuracy_on_routed")), _pct(s.get("oracle_of_final_set_on_aggregated"))]
            for ds, s in per_ds.items()
        ]
        out += _md_table(["dataset", "aggregate %", "calls/query", "route acc on routed %",
                          "final-set oracle on aggregated %"], ds_rows) + [""]
    if results.get("not_replayable"):
        out += ["## Not replayable offline", "",
                *(f"- {name}: {why}" for name, why in results["not_replayable"].items()), ""]
    out += _cost_sections(results)
    out += [
        "## Support set", "",
        f"- mean size: {_num(sup['mean_size'], 1)}; cap: {sup['cap']}; "
        f"cap binding on {_pct(sup['cap_binding_share'])} % of queries", "",
    ]
    timing = results["timing"]
    out += ["## Timing", "",
            "- " + "; ".join(f"{k} {v}" for k, v in timing.items()), ""]
    return "\n".join(out)


def _cost_sections(results: Mapping[str, Any]) -> list[str]:
    """The cost weight α's operating points against best single, then the accuracy-cost frontier."""
    best = results["methods"].get("best_single")
    out: list[str] = []
    sc = results.get("shortcut")
    if sc:
        change = sc["accuracy_change"]
        out += ["## The confident shortcut", "",
                f"- threshold p (chosen on the train folds): {sc['threshold']}; taken on {_pct(sc['share'])} % of the "
                "test questions",
                f"- calls/query: {_num(sc['calls_per_query'])} (always fanning out: "
                f"{_num(sc['calls_per_query_without'])})",
                f"- accuracy change against always fanning out: {100 * change['mean']:+.2f} points "
                f"{_interval(change['ci95'])}", ""]
    rows = results.get("cost_frontier") or []
    if rows and best:
        b_acc, b_cost = best["average"], best["cost_per_query_usd"]
        table = [[_num(r["cost_weight"]), "-" if r["shortcut"] is None else _num(r["shortcut"]), _pct(r["average"]),
                  f"{100 * (r['average'] - b_acc):+.2f}", _usd(r["cost_per_query_usd"]),
                  "-" if not b_cost else f"{100 * r['cost_per_query_usd'] / b_cost:.0f}", _num(r["calls_per_query"])]
                 for r in rows]
        out += ["## Accuracy against cost (the cost weight α)", "",
                "Each row replays the calibrated setting with s_cost weighted by α in the coarse score and the",
                "shortcut threshold p (α and p are swept here for the frontier; the chosen setting's were fixed on",
                "the train folds). Cost relative to best single in %.", "",
                *_md_table(["α", "shortcut p", "Avg", "Δ vs best_single", "cost/query (USD)", "cost % of best",
                            "calls/query"], table), ""]
    frontier = results.get("pareto_frontier") or []
    if frontier:
        out += ["## Accuracy-cost frontier", "",
                "The non-dominated points over every method and operating point (cheapest first).", "",
                *_md_table(["method", "point", "cost/query (USD)", "Avg"],
                           [[p["method"], p.get("label") or "-", _usd(p["cost"]), _pct(p["accuracy"])]
                            for p in frontier]), ""]
    return out


def write_results(out_dir: str | Path, results: Mapping[str, Any]) -> tuple[Path, Path]:
    """Validate, then write results.json and results.md into out_dir; returns both paths."""
    validate_results(results)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / "results.json", out / "results.md"
    json_path.write_text(json.dumps(plain(results), indent=2, allow_nan=False) + "\n", encoding="utf-8")
    md_path.write_text(format_markdown(results), encoding="utf-8")
    return json_path, md_path
