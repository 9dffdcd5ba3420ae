"""Embedding speed, agreement and — decisive — the routing quality each embedder configuration gives (issue 13).

1. Speed: texts/s on short texts (questions) and long ones (model answers), drawn from zeroeval-bench and
   mmlupro-bench, for every backend and text policy, uncached, in one run.
2. Agreement: cosine of each MiniLM variant to MiniLM at 256 tokens on the same texts (the static model lives
   in another space: no cosine).
3. Routing quality: `jisi-bank evaluate` on a common seeded subset of both sets for each (query embedder,
   response embedder) combination: jisi_route and retrieval with their 95 % intervals, against MiniLM
   everywhere. Embeddings go through the shared cache, so a rerun only embeds what is new.

Usage: python -m bench.embedding_speed [--zeroeval-queries 60] [--mmlupro-queries 200] [--speed-only]
       [--full-scale DIR ...] [--no-write]
(--full-scale: results folders of full-scale evaluations whose wall time and peak memory to report.)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from app.config import EmbedderSettings
from app.embedding import make_embedder
from app.engine import JiSiParams
from bank_builder.evaluate.run import EvaluateOptions, evaluate
from bank_builder.records import RecordSelection, load_records
from bench.common import REPO
from bench.report import write_section

DATA = Path(os.environ.get("JISI_SHARED_DATA", REPO.parent / "shared" / "data"))
SETS = {"zeroeval": DATA / "zeroeval-bench.tar.xz", "mmlupro": DATA / "mmlupro-bench.tar.xz"}
PRICES = DATA / "prices.json"


@dataclass(frozen=True)
class Config:
    label: str
    settings: EmbedderSettings


CONFIGS = [
    Config("MiniLM @256", EmbedderSettings(backend="local", max_seq_length=256)),
    Config("MiniLM @128", EmbedderSettings(backend="local", max_seq_length=128)),
    Config("MiniLM @128 head+tail", EmbedderSettings(backend="local", max_seq_length=128, truncation="head_tail")),
    Config("MiniLM @64", EmbedderSettings(backend="local", max_seq_length=64)),
    Config("static (model2vec, every token)", EmbedderSettings(backend="static", max_seq_length=None)),
]
REFERENCE = CONFIGS[0]
# (queries, responses): what the routing-quality runs compare, MiniLM everywhere first
COMBINATIONS = [(CONFIGS[0], CONFIGS[0]), (CONFIGS[0], CONFIGS[1]), (CONFIGS[0], CONFIGS[2]),
                (CONFIGS[0], CONFIGS[4]), (CONFIGS[4], CONFIGS[4])]


def sample_texts(n: int = 256, seed: int = 42) -> tuple[list[str], list[str]]:
    """n questions and n answers, half from each set, seeded."""
    rng = np.random.default_rng(seed)
    short, long = [], []
    for path in SETS.values():
        matrix = load_records([path], max_queries_per_dataset=200, seed=seed)
        rows = rng.choice(len(matrix.queries), n // 2, replace=False)
        short += [matrix.queries[i] for i in rows]
        cells = np.argwhere(matrix.present)
        picked = cells[rng.choice(len(cells), n // 2, replace=False)]
        long += [matrix.responses[i][j] or "" for i, j in picked]
    return short, long


def speed_table(short: list[str], long: list[str]) -> list[str]:
    lines = ["| embedder | short texts/s | long texts/s | cosine to MiniLM @256, short (mean / min) | "
             "cosine, long (mean / min) |", "|---|---:|---:|---:|---:|"]
    reference: dict[str, np.ndarray] = {}
    for config in CONFIGS:
        model = make_embedder(config.settings.model_copy(update={"cache_dir": None}))
        model.embed(short[:8])  # load and warm up
        rates, vectors = [], {}
        for name, texts in (("short", short), ("long", long)):
            started = time.perf_counter()
            vectors[name] = model.embed(texts)
            rates.append(len(texts) / (time.perf_counter() - started))
        if config is REFERENCE:
            reference = vectors
        agree = []
        for name in ("short", "long"):
            if vectors[name].shape != reference[name].shape:
                agree.append("— (another space)")
                continue
            cos = np.sum(vectors[name] * reference[name], axis=1)
            agree.append(f"{cos.mean():.3f} / {cos.min():.3f}")
        lines.append(f"| {config.label} | {rates[0]:,.1f} | {rates[1]:,.1f} | {agree[0]} | {agree[1]} |")
        print(lines[-1], flush=True)
    return lines


def routing_table(zeroeval_queries: int, mmlupro_queries: int, resamples: int) -> list[str]:
    lines = ["| queries | responses | set | jisi_route Avg [95 % CI] | retrieval Avg [95 % CI] | "
             "best_single | jisi_route - best_single [95 % CI] | wall s |", "|---|---|---|---:|---:|---:|---:|---:|"]
    subsets = {"zeroeval": zeroeval_queries, "mmlupro": mmlupro_queries}
    for queries, responses in COMBINATIONS:
        for name, per_dataset in subsets.items():
            with tempfile.TemporaryDirectory(prefix="jisi-embspeed-") as tmp:
                started = time.perf_counter()
                results = evaluate(EvaluateOptions(
                    records=RecordSelection(paths=(SETS[name],), max_queries_per_dataset=per_dataset),
                    out=Path(tmp), embedder=queries.settings,
                    response_embedder=None if responses is queries else responses.settings,
                    params=JiSiParams(), split="random", prices=PRICES, plots=False, resamples=resamples))
                wall = time.perf_counter() - started
            m = results["methods"]
            cell = lambda r: f"{100 * r['average']:.2f} [{100 * r['ci95'][0]:.1f}, {100 * r['ci95'][1]:.1f}]"  # noqa: E731
            d = m["jisi_route"]["delta_vs_best_single"]
            lines.append(f"| {queries.label} | {responses.label} | {name} ({per_dataset}/dataset) | "
                         f"{cell(m['jisi_route'])} | {cell(m['retrieval'])} | {100 * m['best_single']['average']:.2f} | "
                         f"{100 * d['mean']:+.2f} [{100 * d['ci95'][0]:+.1f}, {100 * d['ci95'][1]:+.1f}] | {wall:.0f} |")
            print(lines[-1], flush=True)
    return lines


def full_scale_lines(folders: list[Path]) -> list[str]:
    lines = ["| evaluation | queries (train / test) | models | embedders (queries / responses) | wall | peak RSS |",
             "|---|---:|---:|---|---:|---:|"]
    for folder in folders:
        r = json.loads((folder / "results.json").read_text())
        c, t = r["config"], r["timing"]
        lines.append(f"| {folder.name} | {c['train_queries']} / {c['test_queries']} | {len(c['models'])} | "
                     f"{c['embedder']['name']} / {c['response_embedder']['name']} | {t['total_s'] / 60:.1f} min | "
                     f"{t['peak_rss_mb'] / 1024:.1f} GiB |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--zeroeval-queries", type=int, default=60, help="questions per zeroeval dataset")
    parser.add_argument("--mmlupro-queries", type=int, default=200, help="mmlu-pro questions")
    parser.add_argument("--resamples", type=int, default=2000)
    parser.add_argument("--speed-only", action="store_true", help="skip the routing-quality runs")
    parser.add_argument("--full-scale", type=Path, action="append", default=[],
                        help="a full-scale evaluation's output folder (its timing is reported)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    short, long = sample_texts()
    lengths = [f"{np.mean([len(t) for t in texts]):.0f}" for texts in (short, long)]
    text = ["## Embedding speed, agreement and routing quality (bench/embedding_speed.py)", "",
            "`" + " ".join(["python -m bench.embedding_speed", *sys.argv[1:]]) + "`", "",
            f"Speed on {len(short)} questions and {len(long)} answers (mean {lengths[0]} and {lengths[1]} "
            f"characters), half from each set, uncached, {os.cpu_count()} cores:", "", *speed_table(short, long)]
    if not args.speed_only:
        text += ["", f"Routing quality on a common seeded subset ({args.zeroeval_queries} questions per zeroeval "
                 f"dataset, {args.mmlupro_queries} mmlu-pro questions; 70/30 split, paper defaults):", "",
                 *routing_table(args.zeroeval_queries, args.mmlupro_queries, args.resamples)]
    if args.full_scale:
        text += ["", "Full-scale evaluations:", "", *full_scale_lines(args.full_scale)]
    report = "\n".join(text)
    print("\n" + report)
    if not args.no_write:
        print(f"\nwritten to {write_section('embedding-speed', report)}")


if __name__ == "__main__":
    main()
