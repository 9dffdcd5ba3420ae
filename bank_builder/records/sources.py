"""Reading benchmark records: one record's fields checked, and the sources streamed (directories, tar
archives, LLMRouterBench .json files, JSONL), with what was read and skipped counted in an ImportReport.
The formats and the rules are in the package's docstring (bank_builder/records/__init__.py)."""


from __future__ import annotations

import collections
import hashlib
import json
import lzma
import math
import tarfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterator, Sequence


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
