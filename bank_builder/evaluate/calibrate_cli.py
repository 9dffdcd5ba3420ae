"""`jisi-bank calibrate --records PATH --out DIR [--objective accuracy|cost:ALPHA] [--folds 5] [--bank BANK]`:
load the records, keep their train split (the records' own, or the seeded 70 %: the test part is dropped
before anything is embedded), embed it, calibrate (calibrate.py), write DIR/calibration.json and .md and,
with --bank, the choice into that bank's manifest, where the gateway reads its defaults."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from app.bank import writer as bank_writer
from app.bank.format import BankError, read_manifest
from app.config import EmbedderSettings
from app.embedding import make_embedder
from app.engine import JiSiParams, bank_accuracy
from bank_builder.build import embed_responses, embed_unique
from bank_builder.evaluate import report
from bank_builder.evaluate import scores as metrics
from bank_builder.evaluate.calibrate import SCORED, calibrate, describe
from bank_builder.evaluate.folds import TrainSet
from bank_builder.evaluate.replay import empty_answers, query_prompt_tokens
from bank_builder.evaluate.split import SplitKind, choose_split
from bank_builder.records import RecordMatrix, RecordSelection


@dataclass(frozen=True)
class CalibrateOptions:
    records: RecordSelection
    out: Path
    embedder: EmbedderSettings
    params: JiSiParams
    response_embedder: EmbedderSettings | None = None
    split: SplitKind | None = None
    train_ratio: float = 0.7
    prices: Path | None = None
    objective: str = "accuracy"
    folds: int = 5
    settings: int = 40
    bank: Path | None = None
    economy: bool = True  # also choose the economy profile (the bank's second profile, jisi-economy)


def embedded_train(train: RecordMatrix, embedder_settings: EmbedderSettings,
                   response_settings: EmbedderSettings | None, prices: dict[str, Any]) -> TrainSet:
    embedder = make_embedder(embedder_settings)
    responses_by = make_embedder(response_settings) if response_settings is not None else embedder
    cost, _ = metrics.cost_matrix(train.cost, train.prompt_tokens, train.completion_tokens, train.models, prices)
    p_in, p_out = metrics.price_arrays(train.models, prices)
    v = np.where(train.present, train.score, 0.0).astype(np.float32)
    return TrainSet(models=list(train.models), datasets=list(train.datasets),
                    e=embed_unique(embedder, train.queries, progress=True),
                    r=embed_responses(train, responses_by, progress=True), v=v, present=train.present,
                    c=np.nan_to_num(np.where(train.present, train.completion_tokens, 0.0), nan=0.0).astype(np.float32),
                    empty=empty_answers(train), prompt_tokens=query_prompt_tokens(train), cost=cost,
                    prices=(p_in, p_out), recorded=np.where(train.present, train.cost, np.nan).astype(np.float32))  # as the bank stores it


def write_into_bank(bank: Path, calibration: dict[str, Any], models: list[str]) -> None:
    """The choice becomes the bank's calibration: the gateway's defaults (settings and requests still win). Only the
    parameters the folds scored are written (calibrate.SCORED); the manifest lists the rest as unscored, and the
    gateway keeps their defaults."""
    manifest = read_manifest(bank)
    if manifest.models != models:
        raise BankError(f"bank at {bank} holds other models than the calibration's records "
                        f"({len(manifest.models)} vs {len(models)}); calibrate on the records the bank was built from")
    chosen = {k: v for k, v in calibration["params"].items() if k in SCORED}
    unscored = sorted(k for k in calibration["params"] if k not in SCORED)
    profiles = {}  # a calibration without the economy search leaves the bank without one (it was chosen on top of
    for name, cheap in calibration["profiles"].items():  # the quality choice this calibration replaces)
        point = cheap["chosen"]
        profiles[name] = {"params": {k: v for k, v in cheap["params"].items() if k in SCORED},
                          "objective": cheap["objective"], "cv_accuracy": point["accuracy"],
                          "cv_cost_per_query_usd": point["cost_per_query_usd"],
                          "cv_calls_per_query": point["calls_per_query"], "best_single": cheap["best_single"],
                          "meets_target": cheap["meets_target"]}
    kept = {"params": chosen, "scored": list(SCORED), "unscored": unscored,
            "objective": calibration["objective"], "folds": calibration["folds"],
            "train_queries": calibration["train_queries"], "cv_accuracy": calibration["chosen"]["accuracy"],
            "profiles": profiles, "created_at": bank_writer.now_iso()}
    bank_writer.commit(bank, manifest.model_copy(update={"calibration": kept}))


def run_calibration(options: CalibrateOptions) -> dict[str, Any]:
    matrix = options.records.load(progress=True)
    train_rows, _, kind = choose_split(matrix.datasets, matrix.splits, matrix.indices, options.split,
                                       seed=options.records.seed, train_ratio=options.train_ratio,
                                       queries=matrix.queries)
    train = matrix.subset(train_rows)  # the test part is gone before anything is embedded
    print(f"calibrating on the {kind} split's train part: {len(train.queries)} questions", file=sys.stderr)
    prices = metrics.load_prices(options.prices) if options.prices else {}
    data = embedded_train(train, options.embedder, options.response_embedder, prices)
    calibration = calibrate(data, options.params, objective=options.objective, folds=options.folds,
                            settings=options.settings, seed=options.records.seed, economy_profile=options.economy)
    calibration |= {"split": kind, "records": options.records.describe(),
                    "bank_accuracy": dict(zip(data.models, bank_accuracy(data.v, data.present).round(4).tolist()))}
    options.out.mkdir(parents=True, exist_ok=True)
    (options.out / "calibration.json").write_text(json.dumps(report.plain(calibration), indent=1) + "\n")
    (options.out / "calibration.md").write_text(describe(calibration) + "\n")
    if options.bank is not None:
        write_into_bank(options.bank, calibration, data.models)
    print(describe(calibration))
    print(f"\nwrote {options.out / 'calibration.json'}" + (f" and the choice into {options.bank}" if options.bank
                                                            else ""), file=sys.stderr)
    return calibration
