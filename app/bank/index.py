"""The bank's nearest-neighbour index: exact (flat) for small banks, IVF (approximate) for large ones.

Step 1 of the method needs the similarities s_i = e · e_i of the bank queries nearest the request.
The gateway asks for k = max_support + 1 = 513 of them and keeps the support set
I = {i : s_i >= γ · s_(N^base)} (app/engine/support.py), so an approximate index must recover I, not
only the first few neighbours. A flat scan reads all N x d floats per request: about 1.5 ms at 20k queries
and 20 ms at 100k on one core. IVF clusters the bank into nlist lists (k-means) and scans only the nprobe
lists nearest the request. It keeps full float32 vectors, so every similarity it returns is exact: a miss
can only drop a member of I, never distort s_i or the weights built from it.

Why IVF and not HNSW: I spans several dense clusters of similar questions. On the bench/bank_scale.py
data at 1M queries, HNSW (M=16, efConstruction=40) recovered 0.86 of I on average at efSearch=513
(2 ms) and 0.91 at efSearch=1024 (5 ms), with some queries near 0 (the beam fills up inside one
cluster and never reaches the others), and took 3 min to build; IVF (nlist 4000, nprobe 64) recovered
0.975 in 4 ms and built in 1 min.
"""

from __future__ import annotations

import math
import os
from contextlib import contextmanager
from typing import Iterator, Literal

import faiss
import numpy as np

from app.bank.format import INDEX_TYPES
from app.config import BankIndexSettings

MIN_POINTS_PER_LIST = 40  # k-means wants >= 39 training points per centroid (FAISS warns below)


def resolve_kind(n: int, settings: BankIndexSettings) -> Literal["flat", "ivf"]:
    """The kind `build_index` uses for a bank of n queries."""
    if settings.kind != "auto":
        return settings.kind
    return "ivf" if n > settings.approximate_above else "flat"


def ivf_lists(n: int, settings: BankIndexSettings) -> int:
    """nlist for a bank of n queries: the setting or 4·√N, at most n / MIN_POINTS_PER_LIST."""
    wanted = settings.nlist or round(4 * math.sqrt(n))
    return max(1, min(wanted, n // MIN_POINTS_PER_LIST))


@contextmanager
def omp_threads(n: int) -> Iterator[None]:
    """Run FAISS with n OpenMP threads, then restore. libgomp keeps the count per calling thread, so it
    must be set in the thread that searches (a request handler, a worker), not once at load time."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def available_cores() -> int:
    """Cores this process may run on (respects taskset and cpusets where the OS reports them)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def build_index(e: np.ndarray, settings: BankIndexSettings) -> faiss.Index:
    """An inner-product index over the bank's normalised query embeddings e_i (cosine similarity)."""
    e = np.ascontiguousarray(e, dtype=np.float32)
    n, d = e.shape
    if resolve_kind(n, settings) == "flat":
        index = faiss.IndexFlatIP(d)
    else:
        index = faiss.index_factory(d, f"IVF{ivf_lists(n, settings)},Flat", faiss.METRIC_INNER_PRODUCT)
        # train k-means on a sample: over all of a 1M bank it would take many minutes on 2 cores
        index.cp.max_points_per_centroid = MIN_POINTS_PER_LIST
        index.nprobe = settings.nprobe  # for the file read on its own; the bank passes nprobe per search
    with omp_threads(available_cores()):  # k-means and list assignment are parallel
        index.train(e)
        index.add(e)
    return index


def index_type(index: faiss.Index) -> str:
    """The Manifest.index_type of a loaded index."""
    return INDEX_TYPES["ivf" if isinstance(index, faiss.IndexIVF) else "flat"]


def index_type_for(n: int, settings: BankIndexSettings) -> str:
    """The Manifest.index_type of the index `build_index` makes for n queries."""
    return INDEX_TYPES[resolve_kind(n, settings)]


def search_parameters(index: faiss.Index, settings: BankIndexSettings) -> faiss.SearchParameters | None:
    """Per-call parameters (nprobe for IVF): passed with each search instead of set on the shared index."""
    if isinstance(index, faiss.IndexIVF):
        return faiss.SearchParametersIVF(nprobe=settings.nprobe)
    return None


def search(index: faiss.Index, queries: np.ndarray, k: int,
           settings: BankIndexSettings) -> tuple[np.ndarray, np.ndarray]:
    """Top-k (similarities, rows) per query, descending. IVF pads with row -1 when the probed lists hold
    fewer than k vectors."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    with omp_threads(settings.search_threads):
        return index.search(queries, k, params=search_parameters(index, settings))
