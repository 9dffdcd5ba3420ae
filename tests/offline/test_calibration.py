"""`jisi-bank calibrate` and `evaluate --calibrate`: the choice is made on the train split alone (these tests
fail if a test question is embedded or replayed during calibration), it lands in the bank's manifest, and the
evaluator reports the calibrated router, its shortcut and the cost-weight frontier."""

from __future__ import annotations

import json

import numpy as np
import pytest

import bank_builder.evaluate.calibrate as calibrate_module
import bank_builder.evaluate.economy as economy_module
import bank_builder.evaluate.folds as folds_module
import bank_builder.evaluate.calibrate_cli as calibrate_cli
from app.bank.format import read_manifest
from app.engine import JiSiParams
from bank_builder.cli import main
from bank_builder.evaluate.calibrate import (
    NOT_DISTINGUISHABLE, SEARCH_SPACE, describe, sample_settings, setting_params,
)
from bank_builder.evaluate.folds import stratified_folds
from bank_builder.evaluate.split import train_test_split
from bank_builder.records import load_records
from tests.conftest import PRICES

SMALL = ["--max-queries", "30", "--settings", "6", "--folds", "3"]


def test_the_search_starts_from_the_papers_defaults_and_is_seeded():
    first, *rest = sample_settings(10, seed=1)
    assert setting_params(JiSiParams(), first) == JiSiParams()
    assert sample_settings(10, seed=1) == [first, *rest] != sample_settings(10, seed=2)
    assert all(all(s[k] in SEARCH_SPACE[k] for k in SEARCH_SPACE) for s in rest) and len(rest) == 9
    folds = stratified_folds(["a"] * 9 + ["b"] * 6, 3, seed=0)
    assert sorted(np.concatenate(folds).tolist()) == list(range(15)) and all(len(f) == 5 for f in folds)


def test_calibrate_embeds_no_test_question(tmp_path, mini_bench, embedding_cache_dir, monkeypatch):
    embedded: list[str] = []
    real = calibrate_cli.embed_unique

    def spy(embedder, texts, *, progress):
        embedded.extend(texts)
        return real(embedder, texts, progress=progress)

    monkeypatch.setattr(calibrate_cli, "embed_unique", spy)
    out = tmp_path / "cal"
    assert main(["calibrate", "--records", str(mini_bench), "--out", str(out), "--cache-dir", str(embedding_cache_dir),
                 "--prices", str(PRICES), *SMALL]) == 0
    matrix = load_records([mini_bench], max_queries_per_dataset=30, seed=42)
    train, test = train_test_split(matrix.datasets, matrix.indices, seed=42, train_ratio=0.7)
    test_questions = {matrix.queries[i] for i in test} - {matrix.queries[i] for i in train}
    assert embedded and not test_questions & set(embedded)  # the test part was never embedded
    assert set(embedded) == {matrix.queries[i] for i in train}
    calibration = json.loads((out / "calibration.json").read_text())
    assert calibration["train_queries"] == len(train) and calibration["settings_tried"] == 6
    assert len(calibration["tried"]) == 6 and calibration["top"][0]["accuracy"] >= calibration["paper"]["accuracy"]
    assert set(calibration["params"]) >= {"n_base", "lam", "shortcut"} and "Top settings" in (out / "calibration.md").read_text()


def test_evaluate_calibrate_replays_only_train_questions_while_calibrating(tmp_path, mini_bench, embedding_cache_dir,
                                                                          monkeypatch):
    replayed: list[np.ndarray] = []
    real = folds_module.replay_queries

    def spy(bank, queries, params, **kwargs):
        replayed.append(np.asarray(queries.e))
        return real(bank, queries, params, **kwargs)

    monkeypatch.setattr(folds_module, "replay_queries", spy)
    out = tmp_path / "eval"
    assert main(["evaluate", "--records", str(mini_bench), "--out", str(out), "--cache-dir", str(embedding_cache_dir),
                 "--prices", str(PRICES), "--calibrate", "--no-plots", "--resamples", "200", *SMALL]) == 0
    from app.bank.reader import Bank

    bank_rows = {row.tobytes() for row in np.asarray(Bank.load(out / "bank").e)}
    assert replayed and all(row.tobytes() in bank_rows for e in replayed for row in e)
    results = json.loads((out / "results.json").read_text())
    methods = results["methods"]
    assert {"jisi_route_calibrated", "jisi_shortcut", "jisi_cascade", "jisi_economy"} <= set(methods)
    cascade = results["calibration"]["cascade"]  # the cheapest threshold within the budget of fanning out
    fan_out = cascade["by_threshold"]["None"]["accuracy"]
    kept = {c: v for c, v in cascade["by_threshold"].items() if c != "None" and v["accuracy"] >= fan_out - 0.0035}
    assert (cascade["threshold"] is None) == (not kept)
    if kept:
        assert str(cascade["threshold"]) == min(kept, key=lambda c: kept[c]["cost_per_query_usd"])
    assert results["choices"]["jisi_cascade"] == {"threshold": cascade["threshold"]}
    assert results["choices"]["jisi_economy"]["params"] == results["calibration"]["profiles"]["economy"]["params"]
    assert "points" not in results["calibration"]["profiles"]["economy"]  # calibration.json keeps them
    assert 1.0 <= methods["jisi_shortcut"]["calls_per_query"] <= methods["jisi_route_calibrated"]["calls_per_query"]
    frontier = results["cost_frontier"]
    assert {r["cost_weight"] for r in frontier} >= {0.0, 0.5, 1.0}
    assert set(frontier[0]) >= {"cost_weight", "average", "cost_per_query_usd", "calls_per_query"}
    cheapest = min(frontier, key=lambda r: r["cost_per_query_usd"])
    assert cheapest["cost_weight"] >= 0.5  # more weight on cost, less cost
    assert results["calibration"]["objective"] == "accuracy"
    gain = results["calibration"]["gain_over_paper"]  # the same folds: chosen minus the paper's defaults
    chosen, paper = results["calibration"]["chosen"], results["calibration"]["paper"]
    assert gain["mean"] == pytest.approx(chosen["accuracy"] - paper["accuracy"]) and gain["mean"] >= 0
    assert gain["distinguishable"] == (gain["mean"] > gain["noise_level"])
    shortcut = results["shortcut"]  # what the shortcut did on test, against the same setting fanning out
    assert 0.0 <= shortcut["share"] <= 1.0
    assert shortcut["calls_per_query"] == methods["jisi_shortcut"]["calls_per_query"]
    assert shortcut["calls_per_query_without"] == methods["jisi_route_calibrated"]["calls_per_query"]
    change = shortcut["accuracy_change"]
    assert change["mean"] == pytest.approx(methods["jisi_shortcut"]["average"]
                                           - methods["jisi_route_calibrated"]["average"])
    assert change["ci95"][0] <= change["mean"] <= change["ci95"][1]
    markdown = (out / "results.md").read_text()
    assert "## The confident shortcut" in markdown and "## Accuracy against cost" in markdown


def test_calibrate_bank_writes_the_choice_into_the_manifest(tmp_path, mini_bench, embedding_cache_dir):
    bank = tmp_path / "bank"
    assert main(["build", "--records", str(mini_bench), "--out", str(bank), "--max-queries", "30",
                 "--cache-dir", str(embedding_cache_dir)]) == 0
    assert read_manifest(bank).calibration is None
    assert main(["calibrate", "--records", str(mini_bench), "--out", str(tmp_path / "cal"), "--bank", str(bank),
                 "--cache-dir", str(embedding_cache_dir), "--objective", "cost:0.3", *SMALL]) == 0
    calibration = read_manifest(bank).calibration
    assert calibration["objective"] == "cost:0.3" and calibration["params"]["cost_weight"] == 0.3
    assert "max_support" not in calibration["params"] and 0 <= calibration["cv_accuracy"] <= 1
    # only what the folds scored is written as calibrated (issue 18): t, read by the adaptive switch alone, is not
    assert set(calibration["params"]) == set(calibration["scored"]) and "t" in calibration["unscored"]


@pytest.mark.parametrize("objective", ["speed", "cost:2", "cost:cheap", "savings:-1", "savings:x"])
def test_a_bad_objective_is_a_clear_error(tmp_path, mini_bench, objective, capsys):
    assert main(["calibrate", "--records", str(mini_bench), "--out", str(tmp_path), "--objective", objective,
                 "--max-queries", "5"]) == 2
    err = capsys.readouterr().err
    assert "--objective must be accuracy, cost:ALPHA with ALPHA in [0, 1] or savings[:MARGIN]" in err


def test_a_gain_within_noise_is_said_so():
    setting = {"n_base": 50, "gamma": 0.95, "lam": 0.0, "lam_fine": 0.0, "beta": 0.5, "mix": [0.5, 0.3, 0.2], "k": 3,
               "from_candidates": False}
    row = {"setting": setting, "accuracy": 0.8, "accuracy_std": 0.05, "calls_per_query": 3.0,
           "cost_per_query_usd": 1e-3}
    calibration = {"objective": "accuracy", "settings_tried": 40, "folds": 5, "train_queries": 315, "top": [row],
                   "paper": row, "shortcut": {"None": row}, "params": {},
                   "gain_over_paper": {"mean": 0.0159, "standard_error": 0.0071, "noise_level": 0.0193,
                                       "distinguishable": False}}
    assert NOT_DISTINGUISHABLE in describe(calibration)
    calibration["gain_over_paper"] |= {"mean": 0.0178, "noise_level": 0.0057, "distinguishable": True}
    assert NOT_DISTINGUISHABLE not in describe(calibration) and "+1.78 points" in describe(calibration)


def test_savings_chooses_the_cheapest_point_at_best_singles_fold_accuracy(tmp_path, mini_bench, embedding_cache_dir):
    bank = tmp_path / "bank"
    assert main(["build", "--records", str(mini_bench), "--out", str(bank), "--max-queries", "30",
                 "--cache-dir", str(embedding_cache_dir)]) == 0
    out = tmp_path / "cal"
    assert main(["calibrate", "--records", str(mini_bench), "--out", out.as_posix(), "--bank", str(bank),
                 "--cache-dir", str(embedding_cache_dir), "--prices", str(PRICES), "--objective", "savings:1",
                 *SMALL]) == 0
    calibration = json.loads((out / "calibration.json").read_text())
    assert calibration["choice"] == "economy"
    economy = calibration["profiles"]["economy"]
    reference, points = economy["best_single"], economy["points"]
    assert economy["objective"] == "savings:1" and economy["floor_accuracy"] == pytest.approx(
        reference["accuracy"] - 0.01)
    # the grid: every cost weight, K and from_candidates, with every shortcut threshold (and cascade when K > 1)
    assert {p["setting"]["cost_weight"] for p in points} == set(economy_module.ECONOMY_SPACE["cost_weight"])
    assert {p["setting"]["cascade"] for p in points if p["setting"]["k"] > 1} == set(
        calibrate_module.CASCADE_THRESHOLDS)
    assert {p["setting"]["cascade"] for p in points if p["setting"]["k"] == 1} == {None}
    eligible = [p for p in points if p["accuracy"] >= economy["floor_accuracy"]]
    assert economy["meets_target"] is bool(eligible)
    if eligible:  # the cheapest of them (ties: the more accurate)
        assert economy["chosen"]["cost_per_query_usd"] == min(p["cost_per_query_usd"] for p in eligible)
    chosen = economy["chosen"]["setting"]
    assert {k: economy["params"][k] for k in chosen} == chosen
    # the quality profile is the accuracy choice, untouched; both go into the bank
    manifest = read_manifest(bank).calibration
    assert manifest["params"] == {k: v for k, v in calibration["params"].items() if k in manifest["scored"]}
    assert manifest["profiles"]["economy"]["params"]["cascade"] == economy["params"]["cascade"]
    assert manifest["profiles"]["economy"]["objective"] == "savings:1"
    assert "The economy profile (savings:1)" in (out / "calibration.md").read_text()


def test_no_economy_skips_the_economy_profile(tmp_path, mini_bench, embedding_cache_dir, capsys):
    bank = tmp_path / "bank"
    assert main(["build", "--records", str(mini_bench), "--out", str(bank), "--max-queries", "30",
                 "--cache-dir", str(embedding_cache_dir)]) == 0
    assert main(["calibrate", "--records", str(mini_bench), "--out", str(tmp_path / "cal"), "--bank", str(bank),
                 "--cache-dir", str(embedding_cache_dir), "--no-economy", *SMALL]) == 0
    calibration = read_manifest(bank).calibration
    assert calibration["params"] and calibration["profiles"] == {}
    assert main(["calibrate", "--records", str(mini_bench), "--out", str(tmp_path / "cal2"), "--no-economy",
                 "--objective", "savings", "--cache-dir", str(embedding_cache_dir), *SMALL]) == 2
    assert "cannot go without it (--no-economy)" in capsys.readouterr().err
