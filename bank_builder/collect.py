"""`jisi-bank collect`: run a question set through the configured upstreams and write LLMRouterBench records.

Questions come from any record source `iter_records` reads (one per (dataset, index): its query and ground truth)
or from a questions JSONL (``{"dataset", "index", "query", "ground_truth", "kind"?}`` per line). Every answer is
appended to a cache (JSONL, fsync'd per line) before anything else, so a killed run loses nothing: the next run
reads it and asks only what is missing. Scores are computed when the result files are written, from the cached
responses, so changing a scorer never needs new calls; costs come from the configured prices.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import sys
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Sequence

import httpx
import numpy as np
from tqdm import tqdm

from app.pricing import estimate_cost_usd
from app.resilience import ResilienceSettings
from app.settings import Settings, UpstreamSettings
from app.upstream import CallResult, UpstreamError, UpstreamPool
from bank_builder import scorers
from bank_builder.bank_writer import atomic_write
from bank_builder.records import RecordError, _subsample, iter_records, jsonl_objects

INSTRUCTIONS = {
    "numeric": "Give the final answer as a number on the last line, as 'Answer: <number>'.",
    "choice": "Answer with the letter of the correct option, as 'Answer: <letter>'.",
    "exact": "Give the final answer on the last line, as 'Answer: <answer>'.",
}
DEFAULT_TEMPLATE = "{query}\n\n{instruction}"
MAX_RAW_OUTPUT = 16_000  # as in the shipped benchmark files
Key = tuple[str, int, str]  # dataset, index, model


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


# ---------------------------------------------------------------- questions


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
        keys = _subsample(keys, max_queries, seed)
    return [found[k] for k in keys]


# ---------------------------------------------------------------- cache


class AnswerCache:
    """Append-only JSONL of finished answers by (dataset, index, model); each line flushed and fsync'd."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.answers: dict[Key, dict[str, Any]] = {}
        self.unreadable = 0
        raw = path.read_bytes() if path.is_file() else b""
        for line in raw.splitlines():
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                self.answers[(row["dataset"], int(row["index"]), row["model"])] = row
            except (ValueError, KeyError, TypeError):
                self.unreadable += 1  # a line torn by a kill mid-write
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = path.open("ab")
        if raw and not raw.endswith(b"\n"):
            self._fh.write(b"\n")  # so the next answer does not glue onto the torn line

    def get(self, key: Key, prompt: str) -> dict[str, Any] | None:
        row = self.answers.get(key)
        return row if row is not None and row.get("prompt") == prompt else None  # a changed prompt is re-asked

    def add(self, row: dict[str, Any]) -> None:
        self._fh.write(json.dumps(row, ensure_ascii=False).encode() + b"\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self.answers[(row["dataset"], row["index"], row["model"])] = row

    def close(self) -> None:
        self._fh.close()


# ---------------------------------------------------------------- asking


def select_upstreams(settings: Settings, names: Sequence[str] | None,
                     concurrency: int | None = None) -> list[UpstreamSettings]:
    by_name = {u.name: u for u in settings.upstreams}
    if not by_name:
        raise ValueError("no upstreams configured (add `upstreams:` to the config YAML)")
    names = list(dict.fromkeys(names or by_name))
    if unknown := [n for n in names if n not in by_name]:
        raise ValueError(f"unknown upstream(s) {unknown}; configured: {sorted(by_name)}")
    return [by_name[n].model_copy(update={"max_concurrency": concurrency}) if concurrency else by_name[n]
            for n in names]


# collection retries by itself (above the pool) and must never skip a model: no pool retries, no breaker
# trip, and only each upstream's timeout_s bounds a call (a non-streamed answer's first byte is its end)
COLLECT_RESILIENCE = ResilienceSettings(retries=0, breaker_failures=10**9, first_byte_timeout_s=10**6,
                                        request_deadline_s=10**9)


def _retryable(exc: UpstreamError) -> bool:
    return exc.status is None or exc.status == 429 or exc.status >= 500  # connection, timeout, overload


async def _ask(pool: UpstreamPool, name: str, body: dict[str, Any], options: CollectOptions) -> CallResult:
    for attempt in range(options.retries + 1):
        try:
            return await pool.complete(name, body, role="collect")
        except UpstreamError as exc:
            if attempt >= options.retries or not _retryable(exc):
                raise
            # exponential backoff with jitter, so parallel workers do not retry in lockstep
            await asyncio.sleep(min(options.max_backoff_s, options.backoff_s * 2 ** attempt) * random.uniform(0.5, 1.5))
    raise AssertionError("unreachable")


def _row(q: Question, u: UpstreamSettings, prompt: str, result: CallResult) -> dict[str, Any]:
    return {"dataset": q.dataset, "index": q.index, "model": u.name, "upstream_model": u.upstream_model,
            "prompt": prompt, "response": result.text, "finish_reason": result.finish_reason,
            "usage": {"prompt_tokens": result.usage.prompt_tokens,
                      "completion_tokens": result.usage.completion_tokens},
            "usage_estimated": result.usage_estimated, "cost_usd": result.cost_usd,
            "latency_s": round(result.latency_s, 4), "collected_at": datetime.now(timezone.utc).isoformat()}


async def collect(questions: list[Question], settings: Settings, upstream_names: list[str] | None, out: Path, *,
                  cache_path: Path | None = None, options: CollectOptions | None = None,
                  progress: bool = True) -> CollectSummary:
    """Ask every question of every selected upstream not already in the cache, then write the result files."""
    options = options or CollectOptions()
    out = Path(out)
    upstreams = select_upstreams(settings, upstream_names, options.concurrency)
    for kind in {options.kind(q) for q in questions}:
        scorers.get_scorer(kind)
    prompts = {(q.dataset, q.index): options.prompt(q) for q in questions}
    cache = AnswerCache(cache_path or out / ".collect-cache.jsonl")
    pending = {u.name: [q for q in reversed(questions) if cache.get((q.dataset, q.index, u.name),
                                                                  prompts[q.dataset, q.index]) is None]
               for u in upstreams}
    total = len(questions) * len(upstreams)
    asked: dict[str, int] = {u.name: len(pending[u.name]) for u in upstreams}
    failures: list[dict[str, Any]] = []
    started = time.perf_counter()
    bar = tqdm(total=total, initial=total - sum(asked.values()), unit="answer", desc="collecting",
               disable=not progress)

    async def worker(pool: UpstreamPool, u: UpstreamSettings) -> None:
        queue = pending[u.name]
        while queue:
            q = queue.pop()
            prompt = prompts[q.dataset, q.index]
            body: dict[str, Any] = {"messages": [{"role": "user", "content": prompt}]}
            body.update({k: v for k, v in (("max_tokens", options.max_tokens),
                                          ("temperature", options.temperature)) if v is not None})
            try:
                cache.add(_row(q, u, prompt, await _ask(pool, u.name, body, options)))
            except UpstreamError as exc:  # not cached and not written: the next run asks again
                failures.append({"dataset": q.dataset, "index": q.index, "model": u.name,
                                 "status": exc.status, "error": exc.message})
                bar.set_postfix(failed=len(failures))
            bar.update(1)

    try:
        limits = httpx.Limits(max_connections=sum(u.max_concurrency for u in upstreams))
        async with httpx.AsyncClient(limits=limits) as client:
            pool = UpstreamPool(upstreams, client, COLLECT_RESILIENCE)
            async with asyncio.TaskGroup() as group:  # per upstream, max_concurrency workers share its queue
                for u in upstreams:
                    for _ in range(min(u.max_concurrency, len(pending[u.name]))):
                        group.create_task(worker(pool, u))
    except BaseExceptionGroup as errors:  # a bug in a worker: show it, not the TaskGroup wrapper
        raise errors.exceptions[0] from None
    finally:
        bar.close()
        cache.close()
    docs = build_documents(questions, cache.answers, upstreams, options)
    files = write_results(docs, out)
    summary = CollectSummary.of(docs, upstreams, asked, failures, files, time.perf_counter() - started,
                                len(questions), str(cache.path))
    if progress:
        print(summary.table())
    return summary


# ---------------------------------------------------------------- results


def _slug(name: str) -> str:
    """A safe path component; the real names stay in the file's model_name / dataset_name."""
    slug = re.sub(r"[^\w.@+-]", "_", name)
    return "_" if slug in {".", ".."} else slug


def build_documents(questions: list[Question], answers: dict[Key, dict[str, Any]],
                    upstreams: list[UpstreamSettings], options: CollectOptions) -> list[dict[str, Any]]:
    """One LLMRouterBench result document per (dataset, model) holding the answered questions, scored now."""
    by_dataset: dict[str, list[Question]] = defaultdict(list)
    for q in questions:
        by_dataset[q.dataset].append(q)
    docs = []
    for u in upstreams:
        for dataset, qs in sorted(by_dataset.items()):
            records = []
            for q in sorted(qs, key=lambda q: q.index):
                row = answers.get((q.dataset, q.index, u.name))
                if row is None or row.get("prompt") != options.prompt(q):
                    continue
                kind = options.kind(q)
                text = row.get("response") or ""
                score, pred = scorers.get_scorer(kind)(text, q.ground_truth or "")
                score = float(score) if q.ground_truth is not None else 0.0
                if not 0.0 <= score <= 1.0:
                    raise ValueError(f"scorer {kind!r} returned {score} for {q.dataset}#{q.index}; expected [0, 1]")
                pt, ct = (int(row["usage"][k]) for k in ("prompt_tokens", "completion_tokens"))
                extra = {"latency_s": row["latency_s"], "finish_reason": row.get("finish_reason"),
                         "usage_estimated": bool(row.get("usage_estimated")), "collected_at": row["collected_at"],
                         "upstream_model": row.get("upstream_model"), "scorer": kind}
                if len(text) > MAX_RAW_OUTPUT:
                    extra.update(truncated=True, raw_output_chars=len(text))
                records.append({
                    "index": q.index, "origin_query": q.query, "prompt": row["prompt"], "prompt_tokens": pt,
                    "completion_tokens": ct, "cost": estimate_cost_usd(u, pt, ct),  # today's configured prices
                    "score": score, "prediction": None if pred is None else str(pred),
                    "ground_truth": q.ground_truth, "raw_output": text[:MAX_RAW_OUTPUT], "extra_fields": extra})
            if not records:
                continue
            docs.append({
                "performance": float(np.mean([r["score"] for r in records])),
                "time_taken": round(sum(r["extra_fields"]["latency_s"] for r in records), 3),
                "prompt_tokens": sum(r["prompt_tokens"] for r in records),
                "completion_tokens": sum(r["completion_tokens"] for r in records),
                "cost": sum(r["cost"] for r in records), "counts": len(records), "model_name": u.name,
                "dataset_name": dataset, "split": options.split, "demo": False,
                "extra_metrics": {"collector": "jisi-bank collect", "upstream_model": u.upstream_model},
                "records": records})
    return docs


def write_results(docs: list[dict[str, Any]], out: Path) -> list[Path]:
    """Write each document to results/bench/<dataset>/<split>/<model>/, atomically, replacing an older collect
    file of the same (dataset, split, model) (two would be duplicate records to `load_records`)."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d_%H%M%S")
    written = []
    for doc in docs:
        dataset, split, model = (_slug(doc[k]) for k in ("dataset_name", "split", "model_name"))
        folder = Path(out) / "results" / "bench" / dataset / split / model
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"{dataset}-{split}-{model}-{stamp}.json"
        payload = json.dumps(doc, ensure_ascii=False, indent=1).encode("utf-8")
        atomic_write(target, lambda handle: handle.write(payload))
        older = re.compile(rf"{re.escape(dataset)}-{re.escape(split)}-{re.escape(model)}-\d{{8}}_\d{{6}}\.json")
        for p in folder.iterdir():
            if p != target and older.fullmatch(p.name):
                p.unlink()
        written.append(target)
    return written


# ---------------------------------------------------------------- summary


@dataclass
class ModelSummary:
    model: str
    answered: int
    failed: int
    asked: int  # calls needed this run (the rest came from the cache)
    accuracy: float | None
    mean_latency_s: float | None
    p95_latency_s: float | None
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    usage_estimated: int


@dataclass
class CollectSummary:
    models: dict[str, ModelSummary]
    failures: list[dict[str, Any]]
    files: list[str]
    wall_s: float
    questions: int
    cache_path: str

    @classmethod
    def of(cls, docs: list[dict[str, Any]], upstreams: list[UpstreamSettings], asked: dict[str, int],
           failures: list[dict[str, Any]], files: list[Path], wall_s: float, questions: int,
           cache_path: str) -> CollectSummary:
        models = {}
        for u in upstreams:
            recs = [r for d in docs if d["model_name"] == u.name for r in d["records"]]
            lat = [r["extra_fields"]["latency_s"] for r in recs]
            models[u.name] = ModelSummary(
                model=u.name, answered=len(recs), failed=sum(f["model"] == u.name for f in failures),
                asked=asked.get(u.name, 0), accuracy=float(np.mean([r["score"] for r in recs])) if recs else None,
                mean_latency_s=float(np.mean(lat)) if lat else None,
                p95_latency_s=float(np.percentile(lat, 95)) if lat else None,
                prompt_tokens=sum(r["prompt_tokens"] for r in recs),
                completion_tokens=sum(r["completion_tokens"] for r in recs),
                cost_usd=sum(r["cost"] for r in recs),
                usage_estimated=sum(r["extra_fields"]["usage_estimated"] for r in recs))
        return cls(models, failures, [str(p) for p in files], wall_s, questions, cache_path)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def table(self) -> str:
        fmt = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
        head = (f"{'model':<32} {'answered':>8} {'failed':>6} {'accuracy':>8} {'mean lat s':>10} {'p95 lat s':>9} "
                f"{'prompt tok':>10} {'compl tok':>10} {'cost USD':>10} {'est usage':>9}")
        lines = [head, "-" * len(head)]
        for m in self.models.values():
            lines.append(f"{m.model:<32} {m.answered:>8} {m.failed:>6} {fmt(m.accuracy, '.4f'):>8} "
                         f"{fmt(m.mean_latency_s, '.3f'):>10} {fmt(m.p95_latency_s, '.3f'):>9} "
                         f"{m.prompt_tokens:>10} {m.completion_tokens:>10} {m.cost_usd:>10.6f} "
                         f"{m.usage_estimated:>9}")
        asked = sum(m.asked for m in self.models.values())
        lines.append(f"{self.questions} questions x {len(self.models)} models; {asked} asked this run, "
                     f"{len(self.failures)} failed (rerun to retry them); wall time {self.wall_s:.1f}s; "
                     f"{len(self.files)} result files; cache {self.cache_path}")
        lines += [f"  failed: {f['dataset']}#{f['index']} on {f['model']}: {f['error'][:120]}"
                  for f in self.failures[:10]]
        return "\n".join(lines)


# ---------------------------------------------------------------- CLI


def run_cli(args: argparse.Namespace) -> CollectSummary:
    """`jisi-bank collect`: settings from --config (as $JISI_CONFIG would), then collect."""
    previous = os.environ.get("JISI_CONFIG")
    if args.config is not None:
        os.environ["JISI_CONFIG"] = str(args.config)
    try:
        settings = Settings()
    finally:  # only this command's settings come from --config
        if previous is None:
            os.environ.pop("JISI_CONFIG", None)
        else:
            os.environ["JISI_CONFIG"] = previous
    overrides = {}
    for item in args.scorer or []:
        dataset, sep, kind = item.partition("=")
        if not sep or not dataset or not kind:
            raise ValueError(f"--scorer expects DATASET=KIND, got {item!r}")
        scorers.get_scorer(kind)
        overrides[dataset] = kind
    options = CollectOptions(max_tokens=args.max_tokens, temperature=args.temperature, concurrency=args.concurrency,
                             retries=args.retries, split=args.split, scorers=overrides,
                             **({"prompt_template": args.prompt_template} if args.prompt_template else {}))
    csv = lambda vs: [x.strip() for v in vs or [] for x in v.split(",") if x.strip()] or None  # noqa: E731
    questions = load_questions(args.questions, datasets=csv(args.datasets), max_queries=args.max_queries,
                               seed=args.seed)
    print(f"{len(questions)} questions from {len(args.questions)} source(s)", file=sys.stderr)
    try:
        summary = asyncio.run(collect(questions, settings, csv(args.upstreams), args.out, cache_path=args.cache,
                                      options=options, progress=not args.no_progress))
        if args.no_progress:
            print(summary.table())
        return summary
    except KeyboardInterrupt:
        print("interrupted: finished answers are kept in the cache; rerun the same command to resume",
              file=sys.stderr)
        raise SystemExit(130) from None
