"""Engine decision time per query (the numpy part only: plan + gather + decide) on synthetic banks.

Usage: python -m bench.engine_bench [--sizes 10000 100000] [--models 10] [--dim 384] [--queries 200]
Prints a table; the search (FAISS exact, one thread) is timed separately for reference.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

from app.bank.reader import Bank
from app.engine import JiSiParams, LiveResponses, decide, plan
from bank_builder.build import build_bank
from bank_builder.records import ImportReport, RecordMatrix


def unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


class ArrayEmbedder:
    """Returns pre-made vectors in order: lets build_bank write a synthetic bank without a model."""

    name, dim = "synthetic", 0

    def __init__(self, vectors: np.ndarray) -> None:
        self.vectors, self.dim, self.pos = vectors, vectors.shape[1], 0

    def embed(self, texts, *, progress: bool = False) -> np.ndarray:
        out = self.vectors[self.pos:self.pos + len(texts)]
        self.pos += len(texts)
        return out


def synthetic_bank(root: Path, n: int, m: int, d: int, rng: np.random.Generator) -> Bank:
    queries = [f"q{i}" for i in range(n)]
    responses = [[f"r{i}-{j}" for j in range(m)] for i in range(n)]
    present = rng.random((n, m)) > 0.02
    matrix = RecordMatrix(
        models=[f"model-{j}" for j in range(m)], datasets=["synthetic"] * n, splits=[""] * n, indices=np.arange(n),
        queries=queries, prompts=[None] * n, ground_truth=[None] * n, responses=responses,
        predictions=[[None] * m for _ in range(n)], score=(rng.random((n, m)) > 0.4).astype(np.float32) * present,
        present=present, prompt_tokens=np.full((n, m), 100.0), completion_tokens=rng.integers(10, 2000, (n, m)).astype(float),
        cost=np.full((n, m), np.nan), report=ImportReport(),
    )
    vectors = np.concatenate([unit(rng, n, d), unit(rng, int(present.sum()), d)])
    build_bank(matrix, ArrayEmbedder(vectors), root, params=JiSiParams(), split={}, progress=False)
    return Bank.load(root)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--models", type=int, default=10)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--queries", type=int, default=200)
    args = parser.parse_args()
    faiss.omp_set_num_threads(1)
    rng = np.random.default_rng(0)
    params = JiSiParams()
    print(f"{'bank queries':>12} {'search ms':>10} {'plan ms':>8} {'gather ms':>10} {'decide ms':>10} "
          f"{'engine total ms':>16} {'|I| mean':>9}")
    for n in args.sizes:
        with tempfile.TemporaryDirectory() as tmp:
            bank = synthetic_bank(Path(tmp) / "bank", n, args.models, args.dim, rng)
            probes = unit(rng, args.queries, args.dim)
            live_r = unit(rng, args.queries * params.k, args.dim).reshape(args.queries, params.k, args.dim)
            t_search = t_plan = t_gather = t_decide = 0.0
            sizes = []
            for q in range(args.queries):
                t0 = time.perf_counter()
                sims, ids = bank.search(probes[q], params.max_support + 1)
                t1 = time.perf_counter()
                planned = plan(sims, ids, bank.v, bank.present, params)
                t2 = time.perf_counter()
                view = bank.view(planned.support.ids, planned.candidates)
                t3 = time.perf_counter()
                live = LiveResponses(models=planned.candidates, r=live_r[q], c=np.array([300.0, 500.0, 800.0]))
                decide(planned, view, live, params)
                t4 = time.perf_counter()
                t_search += t1 - t0
                t_plan += t2 - t1
                t_gather += t3 - t2
                t_decide += t4 - t3
                sizes.append(planned.support.ids.size)
            per = 1000 / args.queries
            print(f"{n:>12} {t_search * per:>10.3f} {t_plan * per:>8.3f} {t_gather * per:>10.3f} "
                  f"{t_decide * per:>10.3f} {(t_plan + t_gather + t_decide) * per:>16.3f} {np.mean(sizes):>9.1f}")


if __name__ == "__main__":
    main()
