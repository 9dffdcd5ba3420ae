"""Import benchmark records and join them across models into a query x model matrix.

Sources (one per input path): a directory or a tar archive (.tar, .tar.gz/.tgz, .tar.xz/.txz, .tar.bz2; streamed
member by member, never extracted) holding LLMRouterBench ``results/bench/<dataset>/<split>/<model>/*.json``; a
single such ``.json`` file; or a ``.jsonl`` file, one record per line with keys ``dataset, index, query, model,
response, score`` (required; ``response`` may be null) and optional ``prompt_tokens, completion_tokens, cost,
prompt, prediction, ground_truth, split``. Dataset and model names come from ``dataset_name`` / ``model_name``
(falling back to the path); the split from the path (falling back to ``split``).

Fatal, a RecordError naming the file (plus record position or line number, and the field): an unreadable archive,
a .json/.jsonl that does not parse, a result file without a ``records`` list, a record without an integer
``index``, a non-numeric ``score`` or one outside [0, 1], a non-string text, a negative or non-numeric token
count or cost, no dataset/model name, a duplicate (dataset, index, model) row unless ``keep_latest`` (both
sources named), one dataset read from two splits, an unknown name in the ``datasets``/``models`` filters, and
nothing loaded at all.

Counted in ``ImportReport.skipped`` (reason -> count), shown by ``summary()``: files under results/bench that are
not .json ("not_json"), files outside results/bench ("outside_results_bench"), .json files at the wrong depth
("unexpected_layout"), links/devices in archives ("not_regular_file"), blank JSONL lines ("blank_line"), result
files with no records ("empty_records_file"); records left out on request ("filtered_dataset", "filtered_model",
"max_queries_per_dataset"); and records kept but disagreeing with the first model seen for that query
("query_text_mismatch", "ground_truth_mismatch": the first text is kept).

Kept as given: empty or null responses (response "", score as given); null tokens / cost (None, nan in the
matrix). A model missing some queries is kept and the gaps are masked (present False, score 0, tokens/cost nan).
"""

from __future__ import annotations

import collections
import hashlib
import json
import lzma
import itertools
import math
import tarfile
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterator, Sequence

import numpy as np
from tqdm import tqdm

OnFile = Callable[[str], None]


class RecordError(ValueError):
    """A fatal input problem; the message names the file and, where there is one, the record and field."""


@dataclass(frozen=True, slots=True)
class Record:
    """One (dataset, index, model) row."""

    dataset: str
    index: int
    model: str
    query: str
    prompt: str | None
    response: str
    score: float
    prompt_tokens: float | None
    completion_tokens: float | None
    cost: float | None
    prediction: str | None
    ground_truth: str | None
    source: str
    split: str = ""  # "" when unknown (JSONL without a split); used to refuse mixing splits of a dataset


@dataclass
class ImportReport:
    """What was read, skipped (reason -> count) and replaced, plus a checksum of every input path."""

    files: int = 0
    records: int = 0
    skipped: collections.Counter[str] = field(default_factory=collections.Counter)
    duplicates_replaced: int = 0
    sources: dict[str, str] = field(default_factory=dict)
    queries: int = 0
    missing: dict[str, int] = field(default_factory=dict)  # model -> masked queries, filled by load_records

    def summary(self) -> str:
        lines = [f"read {self.records} records from {self.files} files in {len(self.sources)} source(s)"]
        if self.missing:
            masked = sum(self.missing.values())
            lines.append(f"matrix: {self.queries} queries x {len(self.missing)} models, {masked} masked cells")
            lines += [f"  {m}: {n} queries missing (masked)" for m, n in sorted(self.missing.items()) if n]
        if self.duplicates_replaced:
            lines.append(f"duplicates replaced by a later source (keep_latest): {self.duplicates_replaced}")
        lines += [f"skipped {reason}: {n}" for reason, n in sorted(self.skipped.items())]
        lines += [f"source {path} sha256 {digest}" for path, digest in self.sources.items()]
        return "\n".join(lines)


_ROW_LISTS = ("datasets", "queries", "prompts", "ground_truth")  # per query row
_CELL_LISTS = ("responses", "predictions")  # N x M nested lists
_CELL_ARRAYS = ("score", "present", "prompt_tokens", "completion_tokens", "cost")  # N x M arrays


@dataclass
class RecordMatrix:
    """Records joined across models by (dataset, index); rows sorted by (dataset, index), models sorted."""

    models: list[str]
    datasets: list[str]
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


# ---------------------------------------------------------------- one record


def _index(rec: dict[str, Any], where: str) -> int:
    v = rec.get("index")
    if isinstance(v, float) and v.is_integer() or isinstance(v, str) and v.strip().lstrip("-").isdigit():
        v = int(v)
    if isinstance(v, int) and not isinstance(v, bool):
        return v
    problem = "is missing" if "index" not in rec else f"expected an integer, got {v!r:.60}"
    raise RecordError(f"{where}: field 'index' {problem}")


def _number(rec: dict[str, Any], key: str, where: str, hi: float, nullable: bool) -> float | None:
    v = rec.get(key)
    if v is None and nullable:
        return None
    if key not in rec:
        raise RecordError(f"{where}: field '{key}' is missing")
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise RecordError(f"{where}: field '{key}': expected a number, got {v!r:.60}")
    if not (math.isfinite(v) and 0 <= v <= hi):
        raise RecordError(f"{where}: field '{key}': {v!r} is outside [0, {hi}]")
    return float(v)


def _text(rec: dict[str, Any], key: str, where: str, *, coerce: bool = False) -> str | None:
    v = rec.get(key)
    if v is None or isinstance(v, str):
        return v
    if coerce:  # answers may be numbers or lists in other benchmarks; keep them as JSON text
        return json.dumps(v, ensure_ascii=False)
    raise RecordError(f"{where}: field '{key}': expected a string, got {type(v).__name__}")


def _build(rec: Any, where: str, dataset: str, model: str, split: str, source: str,
           query_key: str, response_key: str) -> Record:
    if not isinstance(rec, dict):
        raise RecordError(f"{where}: expected a JSON object, got {type(rec).__name__}")
    prompt = _text(rec, "prompt", where)
    query = _text(rec, query_key, where)
    if query is None and prompt is None:
        raise RecordError(f"{where}: field '{query_key}' is missing or null (and there is no 'prompt')")
    amount = lambda key: _number(rec, key, where, math.inf, True)  # noqa: E731
    return Record(
        dataset=dataset, index=_index(rec, where), model=model, query=prompt if query is None else query,
        prompt=prompt, response=_text(rec, response_key, where) or "",
        score=_number(rec, "score", where, 1.0, False),  # type: ignore[arg-type]
        prompt_tokens=amount("prompt_tokens"), completion_tokens=amount("completion_tokens"), cost=amount("cost"),
        prediction=_text(rec, "prediction", where, coerce=True),
        ground_truth=_text(rec, "ground_truth", where, coerce=True), source=source, split=split)


# ---------------------------------------------------------------- sources


def _layout(parts: Sequence[str], report: ImportReport) -> list[str] | None:
    """[dataset, split, model] for .../results/bench/<dataset>/<split>/<model>/*.json; else count a skip."""
    for i in range(len(parts) - 3, -1, -1):  # the last results/bench wins
        if parts[i] == "results" and parts[i + 1] == "bench":
            rest = list(parts[i + 2:])
            reason = "not_json" if not rest[-1].endswith(".json") else "unexpected_layout" if len(rest) != 4 else ""
            break
    else:
        reason = "outside_results_bench"
    if reason:
        report.skipped[reason] += 1
        return None
    return rest[:3]


def _result_file(raw: bytes, source: str, names: list[str], report: ImportReport) -> Iterator[Record]:
    try:
        doc = json.loads(raw)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        raise RecordError(f"{source}: not valid JSON ({exc})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("records"), list):
        raise RecordError(f"{source}: field 'records': expected a JSON object with a 'records' list")
    p_dataset, p_split, p_model = names or ("", "", "")
    dataset, model = doc.get("dataset_name") or p_dataset, doc.get("model_name") or p_model
    for key, value in (("dataset_name", dataset), ("model_name", model)):
        if not isinstance(value, str) or not value:
            raise RecordError(f"{source}: field '{key}' is missing or not a string, and the path has no "
                              "results/bench/<dataset>/<split>/<model>/ layout to fall back on")
    split = p_split or (doc["split"] if isinstance(doc.get("split"), str) else "")
    if not doc["records"]:
        report.skipped["empty_records_file"] += 1
    for pos, rec in enumerate(doc["records"]):
        yield _build(rec, f"{source}: record {pos}", dataset, model, split, source, "origin_query", "raw_output")


def jsonl_objects(path: Path, report: ImportReport | None = None) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, object) for each non-blank line; a line that is not a JSON object is an error naming it."""
    with path.open("rb") as fh:
        for lineno, line in enumerate(fh, 1):
            where = f"{path}:{lineno}"
            if not line.strip():
                if report is not None:
                    report.skipped["blank_line"] += 1
                continue
            try:
                obj = json.loads(line)
            except ValueError as exc:
                raise RecordError(f"{path}: line {lineno} is not valid JSON ({exc})") from None
            if not isinstance(obj, dict):
                raise RecordError(f"{where}: expected a JSON object per line")
            yield where, obj


def _jsonl(path: Path, report: ImportReport) -> Iterator[Record]:
    for where, rec in jsonl_objects(path, report):
        for key in ("dataset", "model", "query", "response"):
            if key not in rec or key in ("dataset", "model") and not (isinstance(rec[key], str) and rec[key]):
                raise RecordError(f"{where}: field '{key}' is missing" + (" or empty" if key in rec else ""))
        split = rec["split"] if isinstance(rec.get("split"), str) else ""
        yield _build(rec, where, rec["dataset"], rec["model"], split, where, "query", "response")


def _dir_files(root: Path) -> list[tuple[str, Path]]:
    return sorted((p.relative_to(root).as_posix(), p) for p in root.rglob("*") if not p.is_dir())


def _dir_stream(path: Path, report: ImportReport) -> Iterator[tuple[str, list[str], bytes]]:
    base = path.resolve()  # absolute parts, so a path given below results/bench still has its layout
    for rel, p in _dir_files(path):
        names = _layout((base / rel).parts, report)
        if names is not None:
            yield str(p), names, p.read_bytes()


def _tar_stream(path: Path, report: ImportReport) -> Iterator[tuple[str, list[str], bytes]]:
    try:
        with tarfile.open(path, "r:*") as tf:
            for member in tf:  # sequential: each member is read before the next header, no seeking back
                if member.isdir():
                    continue
                if not member.isfile():
                    report.skipped["not_regular_file"] += 1
                elif (names := _layout(PurePosixPath(member.name).parts, report)) is not None:
                    yield f"{path}:{member.name}", names, tf.extractfile(member).read()  # type: ignore[union-attr]
    except (tarfile.TarError, OSError, EOFError, lzma.LZMAError, zlib.error) as exc:
        raise RecordError(f"{path}: cannot read archive ({exc})") from exc


def _sources(path: Path, report: ImportReport, on_file: OnFile | None) -> Iterator[Record]:
    name = path.name.lower()
    if path.is_dir():
        stream = _dir_stream(path, report)
    elif not path.is_file():
        raise RecordError(f"{path}: no such file or directory")
    elif name.endswith(".jsonl"):
        report.files += 1
        if on_file:
            on_file(str(path))
        yield from _jsonl(path, report)
        return
    elif name.endswith(".json"):  # named explicitly, so read it wherever it lies
        stream = iter([(str(path), _layout(path.resolve().parts, ImportReport()) or [], path.read_bytes())])
    elif tarfile.is_tarfile(path):
        stream = _tar_stream(path, report)
    else:
        raise RecordError(f"{path}: unsupported input (expected a directory, a tar archive, .json or .jsonl)")
    for source, names, raw in stream:
        report.files += 1
        if on_file:
            on_file(source)
        yield from _result_file(raw, source, names, report)


def iter_records(path: str | Path, *, report: ImportReport | None = None,
                 on_file: OnFile | None = None) -> Iterator[Record]:
    """Stream the records of one source; `report` (if given) collects file/record counts and skips."""
    report = report if report is not None else ImportReport()
    for rec in _sources(Path(path), report, on_file):
        report.records += 1
        yield rec


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def source_digest(path: str | Path) -> str:
    """sha256 of a file's bytes; for a directory, of its files' relative paths and hashes in sorted order."""
    path = Path(path)
    if not path.is_dir():
        return _sha256_file(path)
    h = hashlib.sha256()
    for rel, p in _dir_files(path):
        h.update(f"{rel}\0{_sha256_file(p)}\n".encode())
    return h.hexdigest()


# ---------------------------------------------------------------- join


def _subsample(keys: list[tuple[str, int]], n: int, seed: int) -> list[tuple[str, int]]:
    """Per dataset, the first n of a seeded permutation of its sorted keys, re-sorted."""
    kept: list[tuple[str, int]] = []
    for _ds, group in itertools.groupby(keys, key=lambda k: k[0]):  # keys are sorted, so groups are whole
        group = list(group)
        # a fresh generator per dataset: a dataset's subset does not depend on which others were loaded
        kept += sorted(group[i] for i in np.random.default_rng(seed).permutation(len(group))[:n])
    return kept


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
    split_of: dict[str, tuple[str, str]] = {}
    rows: dict[tuple[str, int], int] = {}
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
                if rec.split:  # indices restart per split, so two splits of a dataset cannot share rows
                    first = split_of.setdefault(rec.dataset, (rec.split, rec.source))
                    if first[0] != rec.split:
                        raise RecordError(
                            f"dataset {rec.dataset!r} comes from two splits: {first[0]!r} ({first[1]}) and "
                            f"{rec.split!r} ({rec.source}); load one split at a time or filter datasets")
                row = rows.setdefault((rec.dataset, rec.index), len(heads))
                if row == len(heads):
                    heads.append((rec.query, rec.prompt, rec.ground_truth))
                else:
                    report.skipped["query_text_mismatch"] += rec.query != heads[row][0]
                    report.skipped["ground_truth_mismatch"] += rec.ground_truth != heads[row][2]
                column = cells.setdefault(rec.model, {})
                if row in column:
                    if not keep_latest:
                        raise RecordError(
                            f"duplicate record (dataset={rec.dataset!r}, index={rec.index}, model={rec.model!r}) "
                            f"in {column[row][-1]} and {rec.source}; pass keep_latest=True to keep the later one")
                    report.duplicates_replaced += 1
                column[row] = (rec.response, rec.prediction, rec.score, rec.prompt_tokens,
                               rec.completion_tokens, rec.cost, rec.source)
    report.skipped = +report.skipped  # drop the zero counts added above
    for kind in ("dataset", "model"):
        if wanted[kind] is not None and not wanted[kind] <= seen[kind]:  # type: ignore[operator]
            raise RecordError(f"unknown {kind}(s) {sorted(wanted[kind] - seen[kind])}; "  # type: ignore[operator]
                              f"available: {sorted(seen[kind])}")
    if not rows:
        raise RecordError(f"no records loaded from {[str(p) for p in paths]}\n{report.summary()}")

    keys = sorted(rows)
    if max_queries_per_dataset is not None:
        kept = _subsample(keys, max_queries_per_dataset, seed)
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
        models=names, datasets=[k[0] for k in keys], indices=np.array([k[1] for k in keys], dtype=np.int64),
        queries=[h[0] for h in head], prompts=[h[1] for h in head], ground_truth=[h[2] for h in head],
        responses=responses, predictions=predictions, score=score, present=present,
        prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, cost=cost, report=report)
