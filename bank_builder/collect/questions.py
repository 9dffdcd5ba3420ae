"""The questions `jisi-bank collect` asks, and how it asks them (prompt template, scorer, sampling, retries).

Questions come from any record source `iter_records` reads (one per (dataset, index): its query and ground truth)
or from a questions JSONL (``{"dataset", "index", "query", "ground_truth", "kind"?}`` per line).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

from bank_builder.collect import scorers
from bank_builder.records import RecordError, iter_records, jsonl_objects, subsample

INSTRUCTIONS = {
    "numeric": "Give the final answer as a number on the last line, as 'Answer: <number>'.",
    "choice": "Answer with the letter of the correct option, as 'Answer: <letter>'.",
    "exact": "Give the final answer on the last line, as 'Answer: <answer>'.",
}
DEFAULT_TEMPLATE = "{query}\n\n{instruction}"


@dataclass(frozen=True)
class Question:
    dataset: str
    index: int
    query: str
    ground_truth: str | None
    kind: str | None = None  # scorer name; None = the dataset's default


@dataclass
class CollectOptions:
    prompt_template: str = DEFAULT_TEMPLATE  # fields: {query} {instruction} {dataset} {index}
    max_tokens: int | None = 512
    temperature: float | None = None  # None: the upstream's configured default (UpstreamSettings.defaults)
    concurrency: int | None = None  # per upstream; None = its max_concurrency
    retries: int = 3
    backoff_s: float = 1.0
    max_backoff_s: float = 30.0
    split: str = "test"
    scorers: dict[str, str] = field(default_factory=dict)  # dataset -> scorer name, over the question's kind

    def __post_init__(self) -> None:  # fail before any call is paid for
        try:
            self.prompt_template.format(query="", instruction="", dataset="", index=0)
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"bad prompt template (fields: query, instruction, dataset, index): {exc!r}") from None
        if self.retries < 0 or self.concurrency is not None and self.concurrency < 1:
            raise ValueError("retries must be >= 0 and concurrency >= 1")

    def kind(self, q: Question) -> str:
        return self.scorers.get(q.dataset) or q.kind or scorers.default_kind(q.dataset)

    def prompt(self, q: Question) -> str:
        instruction = INSTRUCTIONS.get(self.kind(q), INSTRUCTIONS["exact"])
        return self.prompt_template.format(query=q.query, instruction=instruction, dataset=q.dataset, index=q.index)


def _is_question_file(path: Path) -> bool:
    """A .jsonl whose first row is not a record (records carry `model` and `response`)."""
    if not (path.is_file() and path.name.lower().endswith(".jsonl")):
        return False
    with path.open("rb") as fh:
        first = next((line for line in fh if line.strip()), b"")
    try:
        row = json.loads(first)
    except ValueError:
        return True  # let the question reader name the bad line
    return not (isinstance(row, dict) and "model" in row and "response" in row)


def _question_file(path: Path) -> Iterator[Question]:
    seen: set[tuple[str, int]] = set()
    for where, row in jsonl_objects(path):
        for key in ("dataset", "query"):
            if not isinstance(row.get(key), str) or not row[key].strip():
                raise RecordError(f"{where}: field '{key}' is missing or not a non-empty string")
        index, gt, kind = row.get("index"), row.get("ground_truth"), row.get("kind")
        if isinstance(index, bool) or not isinstance(index, int):
            raise RecordError(f"{where}: field 'index': expected an integer, got {index!r:.40}")
        if (row["dataset"], index) in seen:
            raise RecordError(f"{where}: duplicate question (dataset={row['dataset']!r}, index={index})")
        seen.add((row["dataset"], index))
        if kind is not None:
            scorers.get_scorer(kind)  # fail now, not after paying for the answers
        gt = gt if gt is None or isinstance(gt, str) else json.dumps(gt, ensure_ascii=False)
        yield Question(row["dataset"], index, row["query"], gt, kind)


def load_questions(paths: Sequence[str | Path], *, datasets: Sequence[str] | None = None,
                   max_queries: int | None = None, seed: int = 42) -> list[Question]:
    """Questions sorted by (dataset, index); the first source naming a question wins; a seeded subset of at most
    `max_queries` per dataset (the same subset `load_records` picks)."""
    wanted = set(datasets) if datasets else None
    found: dict[tuple[str, int], Question] = {}
    seen: set[str] = set()
    for path in map(Path, paths):
        items = (_question_file(path) if _is_question_file(path) else
                 (Question(r.dataset, r.index, r.query, r.ground_truth) for r in iter_records(path)))
        for q in items:
            seen.add(q.dataset)
            if wanted is None or q.dataset in wanted:
                found.setdefault((q.dataset, q.index), q)
    if wanted and wanted - seen:
        raise RecordError(f"unknown dataset(s) {sorted(wanted - seen)}; available: {sorted(seen)}")
    if not found:
        raise RecordError(f"no questions loaded from {[str(p) for p in paths]}")
    keys = sorted(found)
    if max_queries is not None:
        if max_queries < 1:
            raise ValueError(f"max_queries must be >= 1, got {max_queries}")
        keys = subsample(keys, max_queries, seed)
    return [found[k] for k in keys]
