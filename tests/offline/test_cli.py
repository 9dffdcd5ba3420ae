"""`jisi-bank` end to end on the real mini-bench: build, info, add-model, evaluate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bank_builder.cli import main
from bank_builder.evaluate.report import format_markdown
from tests.conftest import PRICES

METHODS = ["best_single", "oracle", "random", "retrieval", "cluster", "majority_vote", "jisi_route"]


def test_build_info_add_model(tmp_path: Path, mini_bench: Path, embedding_cache_dir: Path,
                              capsys: pytest.CaptureFixture[str]) -> None:
    common = ["--records", str(mini_bench), "--max-queries", "20", "--cache-dir", str(embedding_cache_dir)]
    bank = tmp_path / "bank"
    assert main(["build", *common, "--out", str(bank), "--split", "train",
                 "--models", "gpt-4o-2024-08-06,Qwen2-7B-Instruct"]) == 0
    assert "42 queries, 2 models" in capsys.readouterr().out  # 3 datasets x int(20 x 0.7)
    assert main(["add-model", "--bank", str(bank), *common, "--models", "claude-3-haiku-20240307"]) == 0
    assert "now 3 models" in capsys.readouterr().out
    assert main(["info", str(bank)]) == 0
    info = capsys.readouterr().out
    assert "claude-3-haiku-20240307" in info and "static:all-MiniLM-L6-v2[pca=256] (d=256" in info and '"part": "train"' in info
    assert main(["info", str(bank), "--json"]) == 0
    manifest = json.loads(capsys.readouterr().out)
    assert manifest["n_queries"] == 42 and manifest["split"]["seed"] == 42


def test_errors_are_reported_not_raised(tmp_path: Path, mini_bench: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["build", "--records", str(mini_bench), "--models", "no-such-model", "--out", str(tmp_path)]) == 2
    assert "no-such-model" in capsys.readouterr().err
    assert main(["info", str(tmp_path / "missing")]) == 2
    assert "no bank at" in capsys.readouterr().err


def test_evaluate_on_mini_bench(tmp_path: Path, mini_bench: Path, embedding_cache_dir: Path) -> None:
    """The full evaluator on the whole mini-bench (450 questions x 8 models), as CI runs it."""
    out = tmp_path / "eval"
    assert main(["evaluate", "--records", str(mini_bench), "--out", str(out), "--prices", str(PRICES),
                 "--cache-dir", str(embedding_cache_dir)]) == 0
    results = json.loads((out / "results.json").read_text())
    methods = results["methods"]
    assert set(METHODS) <= set(methods)
    for name in METHODS:
        row = methods[name]
        assert 0.0 <= row["average"] <= 1.0 and set(row["datasets"]) == {"crux", "gsm8k", "math-l5"}
        assert row["cost_per_query_usd"] > 0 and row["calls_per_query"] >= 1
    acc = {name: methods[name]["average"] for name in METHODS}
    # the oracle bounds every router; a router that learned anything beats picking at random
    assert all(acc["oracle"] >= acc[m] for m in METHODS)
    assert acc["jisi_route"] > acc["random"] and acc["retrieval"] > acc["random"]
    assert methods["oracle"]["calls_per_query"] == 8 and methods["majority_vote"]["calls_per_query"] == 3
    assert methods["jisi_route"]["calls_per_query"] >= 3  # the K candidates, plus a final model outside them
    switch = results["jisi_switch"]
    # aggregators are counted over the queries the switch aggregates
    assert 0.0 <= switch["aggregate_share"] <= 1.0
    assert sum(switch["aggregators"].values()) == round(switch["aggregate_share"] * 135)
    assert results["config"]["test_queries"] == 135 and results["config"]["train_queries"] == 315
    assert results["support"]["mean_size"] >= 50  # N_base = 50 and the bank holds 315 queries
    markdown = (out / "results.md").read_text()
    assert markdown.count("jisi_route") >= 1
    # mini-bench has no question twice; where a set has, the report says how many the split kept together
    assert results["config"]["duplicates_grouped"] == 0 and "identical twin" not in markdown
    results["config"]["duplicates_grouped"] = 4
    assert "4 questions that have an identical twin" in format_markdown(results)
    assert (out / "accuracy_vs_cost.png").stat().st_size > 10_000
    assert (out / "model_selection.png").stat().st_size > 10_000
