"""Records joined across models into the query x model matrix the bank and the evaluator read."""

from __future__ import annotations

import itertools
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from tqdm import tqdm

from bank_builder.records.sources import ImportReport, RecordError, iter_records, source_digest

_ROW_LISTS = ("datasets", "splits", "queries", "prompts", "ground_truth")  # per query row
_CELL_LISTS = ("responses", "predictions")  # N x M nested lists
_CELL_ARRAYS = ("score", "present", "prompt_tokens", "completion_tokens", "cost")  # N x M arrays


@dataclass
class RecordMatrix:
    """Records joined across models by (dataset, split, index); rows sorted so, models sorted.

    A dataset's splits (LLMRouterBench's results/bench/<dataset>/<split>/...) stay apart: indices restart per
    split, so (dataset, index) alone would join a train question with a test one. `splits` is "" for records
    that name none (JSONL without a split)."""

    models: list[str]
    datasets: list[str]
    splits: list[str]
    indices: np.ndarray
    queries: list[str]
    prompts: list[str | None]
    ground_truth: list[str | None]
    responses: list[list[str | None]]
    predictions: list[list[str | None]]
    score: np.ndarray
    present: np.ndarray
    prompt_tokens: np.ndarray
    completion_tokens: np.ndarray
    cost: np.ndarray
    report: ImportReport

    def subset(self, rows: np.ndarray | list[int]) -> RecordMatrix:
        """Keep these query rows (positions or a boolean mask), in the given order."""
        idx = np.asarray(rows)
        idx = np.flatnonzero(idx) if idx.dtype == bool else idx.astype(np.int64).reshape(-1)
        lists = {f: [getattr(self, f)[i] for i in idx.tolist()] for f in _ROW_LISTS + _CELL_LISTS}
        return replace(self, indices=self.indices[idx], **lists, **{f: getattr(self, f)[idx] for f in _CELL_ARRAYS})

    def select_models(self, models: Sequence[str]) -> RecordMatrix:
        """Keep these model columns, in the given order."""
        pos = {m: j for j, m in enumerate(self.models)}
        unknown = [m for m in models if m not in pos]
        if unknown or len(set(models)) != len(models):
            raise ValueError(f"unknown or repeated model(s) {unknown or list(models)}; available: {self.models}")
        cols = [pos[m] for m in models]
        lists = {f: [[row[j] for j in cols] for row in getattr(self, f)] for f in _CELL_LISTS}
        return replace(self, models=list(models), **lists, **{f: getattr(self, f)[:, cols] for f in _CELL_ARRAYS})

    def key(self, row: int) -> tuple[str, int]:
        return self.datasets[row], int(self.indices[row])


# ---------------------------------------------------------------- join


def subsample(keys: list[tuple], n: int, seed: int) -> list[tuple]:
    """Per group (the key without its last element: dataset, or dataset and split), the first n of a seeded
    permutation of its sorted keys, re-sorted."""
    kept: list[tuple] = []
    for _group, members in itertools.groupby(keys, key=lambda k: k[:-1]):  # keys are sorted: groups are whole
        members = list(members)
        # a fresh generator per group: a dataset's subset does not depend on which others were loaded
        kept += sorted(members[i] for i in np.random.default_rng(seed).permutation(len(members))[:n])
    return kept


def _join_unsplit(rows: dict[tuple[str, str, int], int], heads: list[tuple[str, str | None, str | None]],
                  cells: dict[str, dict[int, tuple[Any, ...]]], keep_latest: bool, report: ImportReport) -> None:
    """Records that name no split (JSONL without one) join the dataset's split when it has exactly one: a
    model's JSONL records extend a results/bench folder. With several named splits they stay apart ("")."""
    named: dict[str, set[str]] = {}
    for dataset, split, _ in rows:
        if split:
            named.setdefault(dataset, set()).add(split)
    for key in [k for k in rows if not k[1] and len(named.get(k[0], ())) == 1]:
        dataset, _, index = key
        source = rows.pop(key)
        target_key = (dataset, next(iter(named[dataset])), index)
        target = rows.setdefault(target_key, source)
        if target == source:
            continue
        report.skipped["query_text_mismatch"] += heads[source][0] != heads[target][0]
        report.skipped["ground_truth_mismatch"] += heads[source][2] != heads[target][2]
        for model, column in cells.items():
            if source not in column:
                continue
            if target in column and not keep_latest:
                raise RecordError(f"duplicate record (dataset={dataset!r}, index={index}, model={model!r}) in "
                                  f"{column[target][-1]} and {column[source][-1]}; pass keep_latest=True to keep "
                                  "the later one")
            report.duplicates_replaced += target in column
            column[target] = column.pop(source)


def load_records(paths: Sequence[str | Path] | str | Path, *, datasets: Sequence[str] | None = None,
                 models: Sequence[str] | None = None, keep_latest: bool = False,
                 max_queries_per_dataset: int | None = None, seed: int = 42,
                 progress: bool = False) -> RecordMatrix:
    """Read every source, join records by (dataset, index) and return the query x model matrix."""
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    if not paths:
        raise RecordError("no input paths given")
    if max_queries_per_dataset is not None and max_queries_per_dataset < 1:
        raise ValueError(f"max_queries_per_dataset must be >= 1, got {max_queries_per_dataset}")
    wanted = {"dataset": None if datasets is None else set(datasets),
              "model": None if models is None else set(models)}
    seen: dict[str, set[str]] = {"dataset": set(), "model": set()}
    report = ImportReport()
    rows: dict[tuple[str, str, int], int] = {}
    heads: list[tuple[str, str | None, str | None]] = []  # per row: query, prompt, ground truth
    # per model: row -> (response, prediction, score, prompt_tokens, completion_tokens, cost, source); only
    # per-record values are kept, so a query text is stored once however many models answered it
    cells: dict[str, dict[int, tuple[Any, ...]]] = {}
    bar = tqdm(unit="file", desc="reading records", disable=not progress)
    with bar:
        for p in paths:
            report.sources[str(p)] = source_digest(p) if Path(p).exists() else ""
            for rec in iter_records(p, report=report, on_file=lambda name: bar.update(1)):
                seen["dataset"].add(rec.dataset)
                seen["model"].add(rec.model)
                dropped = [kind for kind, value in (("dataset", rec.dataset), ("model", rec.model))
                           if wanted[kind] is not None and value not in wanted[kind]]  # type: ignore[operator]
                if dropped:
                    report.skipped[f"filtered_{dropped[0]}"] += 1
                    continue
                row = rows.setdefault((rec.dataset, rec.split, rec.index), len(heads))
                if row == len(heads):
                    heads.append((rec.query, rec.prompt, rec.ground_truth))
                else:
                    report.skipped["query_text_mismatch"] += rec.query != heads[row][0]
                    report.skipped["ground_truth_mismatch"] += rec.ground_truth != heads[row][2]
                column = cells.setdefault(rec.model, {})
                if row in column:
                    if not keep_latest:
                        raise RecordError(
                            f"duplicate record (dataset={rec.dataset!r}, split={rec.split!r}, index={rec.index}, "
                            f"model={rec.model!r}) "
                            f"in {column[row][-1]} and {rec.source}; pass keep_latest=True to keep the later one")
                    report.duplicates_replaced += 1
                column[row] = (rec.response, rec.prediction, rec.score, rec.prompt_tokens,
                               rec.completion_tokens, rec.cost, rec.source)
    _join_unsplit(rows, heads, cells, keep_latest, report)
    report.skipped = +report.skipped  # drop the zero counts added above
    for kind in ("dataset", "model"):
        if wanted[kind] is not None and not wanted[kind] <= seen[kind]:  # type: ignore[operator]
            raise RecordError(f"unknown {kind}(s) {sorted(wanted[kind] - seen[kind])}; "  # type: ignore[operator]
                              f"available: {sorted(seen[kind])}")
    if not rows:
        raise RecordError(f"no records loaded from {[str(p) for p in paths]}\n{report.summary()}")

    keys = sorted(rows)
    if max_queries_per_dataset is not None:
        kept = subsample(keys, max_queries_per_dataset, seed)
        dropped_rows = {rows[k] for k in set(keys) - set(kept)}
        n_dropped = sum(r in dropped_rows for col in cells.values() for r in col)
        if n_dropped:
            report.skipped["max_queries_per_dataset"] += n_dropped
        keys = kept
    pos = {rows[k]: i for i, k in enumerate(keys)}
    names = sorted(cells)
    n, m = len(keys), len(names)
    responses: list[list[str | None]] = [[None] * m for _ in range(n)]
    predictions: list[list[str | None]] = [[None] * m for _ in range(n)]
    score, present = np.zeros((n, m), np.float32), np.zeros((n, m), bool)
    prompt_tokens, completion_tokens, cost = (np.full((n, m), np.nan) for _ in range(3))
    for j, model in enumerate(names):
        for row, (resp, pred, sc, pt, ct, co, _src) in cells[model].items():
            if (i := pos.get(row)) is not None:
                responses[i][j], predictions[i][j], score[i, j], present[i, j] = resp, pred, sc, True
                prompt_tokens[i, j], completion_tokens[i, j], cost[i, j] = (
                    np.nan if v is None else v for v in (pt, ct, co))
    report.queries = n
    report.missing = {model: int(n - present[:, j].sum()) for j, model in enumerate(names)}
    head = [heads[rows[k]] for k in keys]
    return RecordMatrix(
        models=names, datasets=[k[0] for k in keys], splits=[k[1] for k in keys],
        indices=np.array([k[2] for k in keys], dtype=np.int64),
        queries=[h[0] for h in head], prompts=[h[1] for h in head], ground_truth=[h[2] for h in head],
        responses=responses, predictions=predictions, score=score, present=present,
        prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, cost=cost, report=report)


@dataclass(frozen=True)
class RecordSelection:
    """Which records to load: the sources and the filters (`jisi-bank`'s --records, --datasets, --models,
    --max-queries, --keep-latest, --seed)."""

    paths: tuple[Path, ...]
    datasets: tuple[str, ...] | None = None
    models: tuple[str, ...] | None = None
    max_queries_per_dataset: int | None = None
    keep_latest: bool = False
    seed: int = 42

    def load(self, *, progress: bool = False) -> RecordMatrix:
        """The matrix; with `progress`, a progress bar and the import report on stderr."""
        started = time.perf_counter()
        matrix = load_records(list(self.paths), datasets=self.datasets, models=self.models,
                              keep_latest=self.keep_latest, max_queries_per_dataset=self.max_queries_per_dataset,
                              seed=self.seed, progress=progress)
        if progress:
            print(matrix.report.summary(), file=sys.stderr)
            print(f"loaded {len(matrix.queries)} queries x {len(matrix.models)} models "
                  f"in {time.perf_counter() - started:.1f}s", file=sys.stderr)
        return matrix

    def describe(self) -> dict[str, Any]:
        """For results and manifests: what was selected."""
        return {"records": [str(p) for p in self.paths], "datasets": list(self.datasets) if self.datasets else None,
                "models": list(self.models) if self.models else None,
                "max_queries_per_dataset": self.max_queries_per_dataset, "seed": self.seed}
