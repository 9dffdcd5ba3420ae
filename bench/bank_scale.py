"""Bank scale (issue 6): exact vs approximate bank index at 10k / 100k / 1M bank queries.

For each size: single-query search latency (one thread, k = max_support + 1 = 513 as the gateway asks),
index memory, build time, and the recall of the support set I (app.engine.support.support_set, default
JiSiParams) of the approximate index against the exact one. Also the embedding model's texts/s, the real
cost of building a bank. Prints a markdown section and writes it into docs/benchmarks.md ("bank-scale").

    .venv/bin/python -m bench.bank_scale                    # 10k, 100k, 1M (~15 min on 2 cores)
    .venv/bin/python -m bench.bank_scale --sizes 10000 --no-write

Embeddings: MiniLM cannot embed 1M texts here, so the bank is synthetic around real ones (see `synthesize`).
Over 300 lines: a benchmark script, its synthesis, measurement and report kept in one file to be read as one.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
import psutil

from app.bank import index as bank_index
from app.config import BankIndexSettings
from app.engine import JiSiParams
from app.engine.support import SupportSet, support_set
from bench.report import write_section

DATA = Path(os.environ.get("JISI_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
ARCHIVES = [DATA / "zeroeval-bench.tar.xz", DATA / "mmlupro-bench.tar.xz"]
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "jisi" / "bank-scale"


# -- real embeddings -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Real:
    e: np.ndarray  # n x d, normalised MiniLM query embeddings
    datasets: np.ndarray  # dataset label per row
    texts: list[str]


def real_embeddings(per_dataset: int) -> Real:
    """Embed up to `per_dataset` real questions per dataset of the benchmark archives (cached on disk)."""
    from app.embedding import make_embedder
    from app.config import EmbedderSettings

    settings = EmbedderSettings()
    key = hashlib.sha256(json.dumps([settings.model, per_dataset] + [
        [str(p), p.stat().st_size] for p in ARCHIVES]).encode()).hexdigest()[:16]
    npz, texts_file = CACHE / f"real-{key}.npz", CACHE / f"real-{key}.json"
    if npz.is_file() and texts_file.is_file():
        stored = np.load(npz)
        return Real(stored["e"], stored["datasets"], json.loads(texts_file.read_text()))
    from bank_builder.records import load_records

    texts: list[str] = []
    datasets: list[str] = []
    for archive in ARCHIVES:
        matrix = load_records([archive], max_queries_per_dataset=per_dataset, seed=0)
        texts += matrix.queries
        datasets += matrix.datasets
    embedder = make_embedder(settings)
    try:
        e = np.asarray(embedder.embed(texts, progress=True), dtype=np.float32)
    finally:
        embedder.close()
    CACHE.mkdir(parents=True, exist_ok=True)
    np.savez(npz, e=e, datasets=np.asarray(datasets))
    texts_file.write_text(json.dumps(texts))
    return Real(e, np.asarray(datasets), texts)


def embedding_throughput(texts: list[str], n: int = 256) -> float:
    """Texts/s of the configured embedder without its cache: what a bank build pays per query and response."""
    from app.embedding import make_embedder
    from app.config import EmbedderSettings

    sample = list(np.random.default_rng(1).choice(np.asarray(texts, dtype=object), n, replace=False))
    embedder = make_embedder(EmbedderSettings(), use_cache=False)
    embedder.embed(sample[:8])  # warm-up
    started = time.perf_counter()
    embedder.embed(sample)
    return n / (time.perf_counter() - started)


# -- synthetic bank --------------------------------------------------------------------------------

class Synth:
    """Bank vectors as noisy mixtures of real anchors, with the anisotropy of real embeddings.

    x = normalise((1 - λ) a_p + λ a_q + σ · W z): a_p a random anchor, a_q a random anchor of the same
    dataset, λ ~ U(0, 0.5), z ~ N(0, I_d) and W W^T the covariance of the anchors, so the noise lies in
    the directions real questions vary in. σ is calibrated so that held-out real queries see the same
    median s_(N^base) in a synthetic bank as in the real anchors (same size).
    """

    def __init__(self, anchors: np.ndarray, datasets: np.ndarray, seed: int) -> None:
        self.a, self.datasets, self.seed = anchors, datasets, seed
        eigval, eigvec = np.linalg.eigh(np.cov(anchors.T.astype(np.float64)))
        self.w = (eigvec * np.sqrt(np.clip(eigval, 0, None))).astype(np.float32)
        self.groups = {d: np.flatnonzero(datasets == d) for d in np.unique(datasets)}
        self.sigma = 1.0

    def sample(self, n: int, *, chunk: int = 100_000) -> np.ndarray:
        rng = np.random.default_rng(self.seed)
        out = np.empty((n, self.a.shape[1]), dtype=np.float32)
        for lo in range(0, n, chunk):
            m = min(chunk, n - lo)
            p = rng.integers(0, len(self.a), m)
            q = np.empty(m, dtype=np.int64)
            for d, rows in self.groups.items():
                mine = self.datasets[p] == d
                q[mine] = rng.choice(rows, int(mine.sum()))
            lam = rng.uniform(0.0, 0.5, (m, 1)).astype(np.float32)
            x = (1 - lam) * self.a[p] + lam * self.a[q]
            x += self.sigma * (rng.standard_normal((m, self.a.shape[1]), dtype=np.float32) @ self.w.T)
            out[lo:lo + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
        return out

    def calibrate(self, queries: np.ndarray, n_base: int) -> dict[str, float]:
        """Pick σ (bisection) so the median s_(N^base) of `queries` matches the real anchors'."""
        def median_nbase(bank: np.ndarray) -> float:
            s = queries @ bank.T
            return float(np.median(-np.partition(-s, n_base - 1, axis=1)[:, n_base - 1]))

        target = median_nbase(self.a)
        lo, hi = 0.0, 2.0
        for _ in range(12):
            self.sigma = (lo + hi) / 2
            lo, hi = (self.sigma, hi) if median_nbase(self.sample(len(self.a))) > target else (lo, self.sigma)
        return {"sigma": self.sigma, "target": target, "got": median_nbase(self.sample(len(self.a)))}


# -- measurements ----------------------------------------------------------------------------------

K = JiSiParams().max_support + 1  # what the gateway asks the bank for
ALL_CORES = bank_index.available_cores()


@dataclass
class Row:
    n: int
    kind: str
    build_s: float
    index_mb: float
    rss_mb: float
    p50_ms: float
    p99_ms: float
    timed: int
    recall_mean: float = 1.0
    recall_p5: float = 1.0
    recall_min: float = 1.0


def rss() -> int:
    gc.collect()
    return psutil.Process().memory_info().rss


def build(e: np.ndarray, settings: BankIndexSettings) -> tuple[faiss.Index, float, float, float]:
    """(index, build seconds, serialized MB, RSS delta MB)."""
    before = rss()
    started = time.perf_counter()
    index = bank_index.build_index(e, settings)
    build_s = time.perf_counter() - started
    rss_mb = (rss() - before) / 1e6
    return index, build_s, faiss.serialize_index(index).nbytes / 1e6, rss_mb


def timed_search(index: faiss.Index, queries: np.ndarray, settings: BankIndexSettings,
                 budget_s: float) -> tuple[np.ndarray, list[np.ndarray]]:
    """Single-query searches as the gateway does them, until all queries ran or the budget is spent
    (at least 20). Returns per-query ms and the support sets found."""
    params = JiSiParams()
    ms, found = [], []
    started = time.perf_counter()
    for q in queries:
        t = time.perf_counter()
        sims, ids = bank_index.search(index, q[None], K, settings)
        ms.append(1000 * (time.perf_counter() - t))
        found.append(support_set(sims[0], ids[0], params).ids)
        if len(ms) >= 20 and time.perf_counter() - started > budget_s:
            break
    return np.asarray(ms), found


def exact_support(flat: faiss.Index, queries: np.ndarray) -> list[SupportSet]:
    """Exact support sets I of every query, searched as one batch (BLAS, all cores)."""
    with bank_index.omp_threads(ALL_CORES):
        sims, ids = flat.search(np.ascontiguousarray(queries), K)
    return [support_set(s, i, JiSiParams()) for s, i in zip(sims, ids)]


def recall(found: list[np.ndarray], truth: list[SupportSet]) -> np.ndarray:
    """|I_approx ∩ I_exact| / |I_exact| per query."""
    return np.array([np.intersect1d(f, t.ids).size / t.ids.size for f, t in zip(found, truth)])


def measure(n: int, synth: Synth, queries: np.ndarray, settings: BankIndexSettings, nprobes: list[int],
            flat_budget_s: float) -> tuple[list[Row], dict[str, float]]:
    """Flat, then IVF at each nprobe (a search-time knob: one build serves them all)."""
    e = synth.sample(n)
    flat, flat_s, flat_mb, flat_rss = build(e, settings.model_copy(update={"kind": "flat"}))
    truth = exact_support(flat, queries)
    ms, _ = timed_search(flat, queries, settings, flat_budget_s)
    rows = [Row(n, "flat", flat_s, flat_mb, flat_rss, *np.percentile(ms, [50, 99]), len(ms))]
    del flat
    approx, approx_s, approx_mb, approx_rss = build(e, settings.model_copy(update={"kind": "ivf"}))
    for nprobe in nprobes:
        ms, found = timed_search(approx, queries, settings.model_copy(update={"nprobe": nprobe}), float("inf"))
        r = recall(found, truth)
        rows.append(Row(n, f"ivf{approx.nlist}, nprobe {nprobe}", approx_s, approx_mb, approx_rss,
                        *np.percentile(ms, [50, 99]), len(ms), float(r.mean()), float(np.percentile(r, 5)),
                        float(r.min())))
    return rows, {"mean |I|": float(np.mean([t.ids.size for t in truth])),
                  "capped": float(np.mean([t.capped for t in truth]))}


# -- report ----------------------------------------------------------------------------------------

TARGETS_MS = {100_000: 2.0, 1_000_000: 5.0}  # issue 6: search p50 at these bank sizes, with recall >= 0.95


def verdict(rows: list[Row], nprobe: int) -> list[str]:
    """One line per issue-6 target, for the default nprobe."""
    out = []
    for r in rows:
        if r.n in TARGETS_MS and r.kind.endswith(f"nprobe {nprobe}"):
            ok = r.p50_ms <= TARGETS_MS[r.n] and r.recall_mean >= 0.95
            out.append(f"- target at {r.n:,}: p50 <= {TARGETS_MS[r.n]:g} ms and support-set recall >= 0.95 -> "
                       f"p50 {r.p50_ms:.2f} ms, recall mean {r.recall_mean:.3f} (p5 {r.recall_p5:.3f}): "
                       f"{'met' if ok else 'NOT met'} on the mean; p99 {r.p99_ms:.1f} ms")
    return out

def markdown(rows: list[Row], extra: dict[int, dict[str, float]], context: dict[str, str],
             settings: BankIndexSettings) -> str:
    lines = [
        "## Bank scale: exact vs approximate index (bench/bank_scale.py)",
        "",
        f"Search as the gateway does it: one query at a time, k = {K} (max_support + 1), "
        f"{settings.search_threads} FAISS thread. IVF (IndexIVFFlat, inner product): nlist = 4·√N lists "
        f"(k-means on {bank_index.MIN_POINTS_PER_LIST} points per list), nprobe = {settings.nprobe} by default "
        "(other values shown for the trade-off; nprobe is set per search, no rebuild). Support-set "
        "recall = |I_ivf ∩ I_exact| / |I_exact|, I from app.engine.support.support_set with default JiSiParams "
        f"(N_base=50, γ=0.95, cap 512). `auto` builds flat up to {settings.approximate_above:,} queries, IVF above. "
        "Index MB = faiss.serialize_index size; RSS Δ = process RSS after the build minus before (noisy: "
        "the allocator reuses memory freed earlier). Build time of IVF includes k-means training.",
        "",
        *[f"- {k}: {v}" for k, v in context.items()],
        "",
        "| bank | index | build s | build vec/s | index MB | RSS Δ MB | p50 ms | p99 ms | timed queries "
        "| recall mean | recall p5 | recall min | mean \\|I\\| | capped |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        x = extra[r.n]
        lines.append(
            f"| {r.n:,} | {r.kind} | {r.build_s:.1f} | {r.n / r.build_s:,.0f} | {r.index_mb:.0f} | {r.rss_mb:.0f} "
            f"| {r.p50_ms:.2f} | {r.p99_ms:.2f} | {r.timed} | {r.recall_mean:.4f} | {r.recall_p5:.4f} "
            f"| {r.recall_min:.4f} | {x['mean |I|']:.0f} | {100 * x['capped']:.0f}% |")
    return "\n".join(lines + [""] + verdict(rows, settings.nprobe))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10000,100000,1000000", help="bank sizes, comma-separated")
    ap.add_argument("--queries", type=int, default=300, help="held-out real queries (recall over all of them)")
    ap.add_argument("--per-dataset", type=int, default=3000, help="real questions embedded per dataset")
    ap.add_argument("--nprobes", default="64,96,128", help="IVF nprobe values to search with (one build)")
    ap.add_argument("--flat-budget-s", type=float, default=10.0, help="time spent timing flat per size")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = ap.parse_args()
    settings = BankIndexSettings()
    load_before = os.getloadavg()

    real = real_embeddings(args.per_dataset)
    texts_per_s = embedding_throughput(real.texts)
    perm = np.random.default_rng(args.seed).permutation(len(real.e))
    queries, anchors = real.e[perm[:args.queries]], perm[args.queries:]
    synth = Synth(real.e[anchors], real.datasets[anchors], seed=args.seed + 1)
    calib = synth.calibrate(queries[:100], JiSiParams().n_base)

    rows: list[Row] = []
    extra: dict[int, dict[str, float]] = {}
    for n in (int(s) for s in args.sizes.split(",")):
        got, extra[n] = measure(n, synth, queries, settings, [int(p) for p in args.nprobes.split(",")],
                                args.flat_budget_s)
        rows += got
        for r in got:
            print(f"{n:>9,} {r.kind:<24} build {r.build_s:6.1f}s  p50 {r.p50_ms:7.2f} ms  p99 {r.p99_ms:7.2f} ms  "
                  f"recall {r.recall_mean:.4f} (p5 {r.recall_p5:.4f})", file=sys.stderr, flush=True)

    load_after = os.getloadavg()
    context = {
        "embeddings": f"{len(real.e)} real questions ({', '.join(sorted(set(real.datasets.tolist())))}) embedded "
                      f"with MiniLM; {args.queries} held out as the queries, the other {len(anchors)} are anchors. "
                      "Bank vectors are synthetic: normalise((1-λ)·a_p + λ·a_q + σ·W z), a_p a random anchor, a_q "
                      "an anchor of the same dataset, λ ~ U(0, 0.5), z ~ N(0, I), W Wᵀ = covariance of the anchors "
                      f"(noise along the directions real questions vary in); σ = {calib['sigma']:.3f}, calibrated "
                      f"so the held-out queries' median s_(N_base) in a synthetic bank of the anchors' size "
                      f"({calib['got']:.3f}) matches the real anchors' ({calib['target']:.3f})",
        "embedding model (the real build bottleneck)": f"{texts_per_s:.0f} texts/s on real questions, batch 64, "
                                                       "no cache — a bank of N queries x M models embeds up to "
                                                       "N·(1+M) texts",
        "machine": f"{ALL_CORES} cores; load average {load_before[0]:.2f} before, {load_after[0]:.2f} after "
                   "(shared with other work: latencies are upper bounds)",
        "flat latency": f"timed for {args.flat_budget_s:.0f} s per size (at least 20 queries); exact I from one "
                        "batched search",
    }
    text = markdown(rows, extra, context, settings)
    print(text)
    if not args.no_write:
        print(f"written to {write_section('bank-scale', text)}", file=sys.stderr)


if __name__ == "__main__":
    main()
