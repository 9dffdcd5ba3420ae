"""Issue 18: the gateway makes the decisions the evaluator scored. bench/parity.py on the real mini-bench records:
the evaluator's decisions.jsonl against the served gateway's answers through HTTP, over the replay upstream, for
every test question (135) and each of jisi_route (paper defaults), jisi_route_calibrated and jisi_shortcut (the bank
`jisi-bank calibrate --bank` wrote)."""

from __future__ import annotations

import json

from bench import parity


def test_the_gateway_makes_every_decision_the_evaluator_scored(tmp_path, mini_bench, embedding_cache_dir):
    code = parity.main(["--records", str(mini_bench), "--out", str(tmp_path), "--cache-dir", str(embedding_cache_dir),
                        "--settings", "12", "--show", "5"])
    report = json.loads((tmp_path / "parity.json").read_text())
    assert report["calibration_matches_evaluator"]  # `calibrate --bank` chose what the evaluator scored
    for method in parity.METHODS:
        result = report["methods"][method]
        assert result["questions"] >= 100, method
        assert result["agreement"] == 1.0, (method, result["mismatches"][:5])
    assert code == 0
    decisions = [json.loads(line) for line in (tmp_path / "eval" / "decisions.jsonl").read_text().splitlines()]
    assert {d["method"] for d in decisions} == set(parity.METHODS)
    assert all(d["answered_by"] in d["calls"] for d in decisions)
