"""`jisi-pool demo` (localpool/demo.py): the calibrated bank of the train split, cached; the best single model
as the evaluator chooses it; the gateway's settings (every model an upstream at the replay, priced as the
evaluator prices it, the inspector on); the banner."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from app.bank.format import read_manifest
from bank_builder.evaluate.scores import load_prices
from bank_builder.records import RecordSelection
from localpool import demo
from localpool.replay import load_served
from tests.conftest import PRICES


def test_the_demo_bank_is_the_calibrated_train_split(demo_bank: demo.DemoBank, mini_bench: Path) -> None:
    manifest = read_manifest(demo_bank.bank)
    assert manifest.split["part"] == "train" and manifest.split["kind"] == "random"
    assert manifest.calibration and manifest.calibration["params"]  # calibrate --bank wrote its choice
    assert manifest.calibration["profiles"]["economy"]["params"]  # --economy: the second profile too
    test = load_served(RecordSelection(paths=(mini_bench,)), "test").matrix
    train = load_served(RecordSelection(paths=(mini_bench,)), "train").matrix
    assert manifest.n_queries == len(train.queries)
    # the bank holds no question the replay serves (the demo's test questions)
    from app.bank.reader import Bank

    bank_questions = {Bank.load(demo_bank.bank).query_info(i).text for i in range(manifest.n_queries)}
    assert not bank_questions & set(test.queries)
    # best single: the highest mean train score over each model's present records
    accuracy = [train.score[train.present[:, j], j].mean() for j in range(len(train.models))]
    assert demo_bank.best_single == train.models[int(np.argmax(accuracy))]
    assert demo_bank.models == train.models


def test_a_prepared_demo_is_found_in_the_cache(demo_bank: demo.DemoBank, mini_bench: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_a: object, **_k: object) -> None:
        raise AssertionError("the cached demo ran a command")

    monkeypatch.setattr(subprocess, "run", refuse)
    again = demo.prepare([mini_bench], PRICES, demo_bank.folder.parent, economy=True)
    assert again.built_s is None and again.bank == demo_bank.bank and again.best_single == demo_bank.best_single


def test_the_gateway_serves_every_model_at_the_replay_priced_like_the_evaluator(demo_bank: demo.DemoBank) -> None:
    settings = demo.gateway_settings(demo_bank, "http://127.0.0.1:9", PRICES)
    prices = load_prices(PRICES)
    assert [u["name"] for u in settings["upstreams"]] == demo_bank.models
    for u in settings["upstreams"]:
        assert u["base_url"] == "http://127.0.0.1:9/v1"
        assert u["input_usd_per_mtok"] == prices[u["name"]]["input_per_million_usd"]
        assert u["output_usd_per_mtok"] == prices[u["name"]]["output_per_million_usd"]
    assert settings["inspector"] == {"enabled": True, "grader_url": "http://127.0.0.1:9",
                                     "baseline_model": demo_bank.best_single}
    assert settings["bank_path"] == str(demo_bank.bank)


def test_the_banner_names_the_inspector_and_three_questions(demo_bank: demo.DemoBank) -> None:
    questions = [{"question": "What is\n6 x 12?", "dataset": "gsm8k", "record": "gsm8k/test/1"},
                 {"question": "x" * 300, "dataset": "crux", "record": "crux/test/2"}]
    text = demo.banner(demo_bank, "http://127.0.0.1:8000", questions, 12.3)
    assert "http://127.0.0.1:8000/inspector/" in text and "ready in 12 s" in text
    assert "  [gsm8k] What is 6 x 12?" in text and "[crux] " + "x" * 160 + "…" in text
    assert """-d '{"model": "jisi", "messages": [{"role": "user", "content": "What is\\n6 x 12?"}]}'""" in text


def test_missing_records_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from localpool.cli import main

    assert main(["demo", "--records", str(tmp_path / "nothing.tar.xz")]) == 1
    assert "no records at" in capsys.readouterr().err
