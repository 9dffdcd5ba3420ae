"""A loaded bank (format: app/bank/format.py): validated against the embedder, searched, and the support
set's rows gathered. Arrays are memory-mapped, so loading is fast and replicas share pages."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import faiss
import numpy as np

from app.bank import index as bank_index
from app.bank.format import BankError, EmbedderInfo, Manifest, QueryInfo, read_manifest
from app.config import BankIndexSettings
from app.engine import SupportView, bank_accuracy


class Bank:
    """A loaded bank. Arrays are read-only memory maps; safe to share across requests and threads."""

    def __init__(self, path: Path, manifest: Manifest, index_settings: BankIndexSettings | None = None) -> None:
        self.path = Path(path)
        self.manifest = manifest
        self.index_settings = index_settings or BankIndexSettings()  # search-time: nprobe, threads
        self.models: list[str] = list(manifest.models)
        files = manifest.files
        self.e = self._array(files.query_emb)  # N x d
        self.v = np.asarray(self._array(files.v), dtype=np.float32)  # N x M, small: load fully
        self.c = np.asarray(self._array(files.c), dtype=np.float32)
        self.present = np.asarray(self._array(files.present), dtype=bool)
        # recorded cost per call (NaN unknown): the cost forecast of unpriced models; None in older banks
        self.cost = np.asarray(self._array(files.cost), dtype=np.float32) if files.cost else None
        self.mu = bank_accuracy(self.v, self.present)  # each model's accuracy over the bank: the prior's mean
        self.r = [self._array(name) for name in files.responses]  # M arrays of N x d_r
        self.index = faiss.read_index(str(self.path / files.index))
        self._queries: list[QueryInfo] | None = None
        self._queries_lock = threading.Lock()
        self._check_shapes()

    def _array(self, name: str) -> np.ndarray:
        file = self.path / name
        if not file.is_file():
            raise BankError(f"bank file {file} named in the manifest is missing")
        return np.load(file, mmap_mode="r")

    def _check_shapes(self) -> None:
        n, m, d = self.manifest.n_queries, len(self.models), self.manifest.embedder.dim
        d_r = self.manifest.responses_embedder.dim
        expected = {"query embeddings": (self.e.shape, (n, d)), "v": (self.v.shape, (n, m)),
                    "c": (self.c.shape, (n, m)), "present": (self.present.shape, (n, m))}
        if self.cost is not None:
            expected["recorded costs"] = (self.cost.shape, (n, m))
        expected.update({f"responses of {self.models[j]}": (r.shape, (n, d_r)) for j, r in enumerate(self.r)})
        wrong = [f"{what} {got} (expected {want})" for what, (got, want) in expected.items() if got != want]
        if len(self.r) != m:
            wrong.append(f"{len(self.r)} response files for {m} models")
        if self.index.ntotal != n or self.index.d != d:
            wrong.append(f"index holds {self.index.ntotal} x {self.index.d} (expected {n} x {d})")
        built = bank_index.index_type(self.index)
        if built != self.manifest.index_type:
            wrong.append(f"index is {built} (manifest says {self.manifest.index_type})")
        if wrong:
            raise BankError(f"bank at {self.path} is inconsistent: " + "; ".join(wrong))

    @classmethod
    def load(cls, path: str | Path, *, embedder_name: str | None = None, dim: int | None = None,
             query_embedder: EmbedderInfo | None = None, response_embedder: EmbedderInfo | None = None,
             index_settings: BankIndexSettings | None = None) -> "Bank":
        """Load a bank; refuse one built with other embedders than the configured ones.

        `query_embedder` / `response_embedder` are checked against the manifest in full (model, dimension,
        length budget, truncation, a static model's weights); `embedder_name` / `dim` check the query embedder
        by name and dimension only. `index_settings` gives the search-time knobs (nprobe, search_threads); the
        index kind is the one the bank was built with.
        """
        path = Path(path)
        manifest = read_manifest(path)
        built = manifest.embedder
        if embedder_name is not None and embedder_name != built.name:
            raise BankError(
                f"bank at {path} was built with embedding model {built.name!r} but the configured "
                f"embedder is {embedder_name!r}; rebuild the bank or configure {built.name!r}"
            )
        if dim is not None and dim != built.dim:
            raise BankError(
                f"bank at {path} holds {built.dim}-dimensional embeddings but the configured embedder "
                f"produces {dim}; rebuild the bank with this embedder"
            )
        for what, bank_side, configured in (("queries", built, query_embedder),
                                            ("responses", manifest.responses_embedder, response_embedder)):
            problems = bank_side.differences(configured) if configured is not None else []
            if problems:
                setting = "embedder" if what == "queries" else "response_embedder"
                raise BankError(f"bank at {path} embedded its {what} with another embedder than the configured "
                                f"`{setting}`: " + "; ".join(problems) + f". Configure `{setting}` as the bank was "
                                "built, or rebuild the bank with this one")
        return cls(path, manifest, index_settings)

    # -- queries ---------------------------------------------------------------------------------

    @property
    def n_queries(self) -> int:
        return self.manifest.n_queries

    @property
    def dim(self) -> int:
        return self.manifest.embedder.dim

    def query_info(self, row: int) -> QueryInfo:
        """Text, dataset and record index of a bank query (read lazily: only explanations need it)."""
        if self._queries is None:
            with self._queries_lock:
                if self._queries is None:
                    lines = (self.path / self.manifest.files.queries).read_text().splitlines()
                    self._queries = [QueryInfo(**json.loads(line)) for line in lines]
        return self._queries[row]

    # -- search and gather -----------------------------------------------------------------------

    def search(self, e: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k bank queries by cosine similarity to e (normalised): (similarities, rows), descending.

        An approximate index may find fewer than k; its -1 padding is dropped, so every row is real.
        """
        query = np.asarray(e, dtype=np.float32).reshape(1, -1)
        sims, ids = bank_index.search(self.index, query, min(k, self.n_queries), self.index_settings)
        found = ids[0] >= 0
        return sims[0][found], ids[0][found]

    def view(self, ids: np.ndarray, live_models: np.ndarray) -> SupportView:
        """Bank rows of the support set I, with response embeddings for the live models only."""
        ids = np.asarray(ids, dtype=np.int64)
        order = np.argsort(ids)  # sorted reads are kinder to the memory map
        sorted_ids = ids[order]
        inverse = np.empty_like(order)
        inverse[order] = np.arange(order.size)
        r = np.zeros((ids.size, len(live_models), self.manifest.responses_embedder.dim), dtype=np.float32)
        for k, j in enumerate(live_models):
            r[:, k] = self.r[j][sorted_ids][inverse]
        return SupportView(v=self.v[ids], present=self.present[ids], c=self.c[ids], r=r)
