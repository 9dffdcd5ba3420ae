"""`jisi-bank collect`, the output: LLMRouterBench result documents scored from the cached answers (so a
changed scorer needs no new calls; costs from the configured prices), written atomically, and the run's
summary table."""

from __future__ import annotations

import json
import re
from collections import defaultdict
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from app.config import UpstreamSettings
from app.files import atomic_write
from app.upstream.pricing import upstream_cost_usd
from bank_builder.collect import scorers
from bank_builder.collect.questions import CollectOptions, Question

MAX_RAW_OUTPUT = 16_000  # as in the shipped benchmark files
Key = tuple[str, int, str]  # dataset, index, model


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
                    "completion_tokens": ct, "cost": upstream_cost_usd(u, pt, ct) if u.priced else None,  # configured prices
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
