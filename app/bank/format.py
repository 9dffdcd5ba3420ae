"""The bank's on-disk format: the manifest, the files it names and their names. Read and written by
app/bank/reader.py and app/bank/writer.py; nothing else spells a bank file name.

Layout of a bank folder (format 1):
  manifest.json            what the bank holds and which files make it up (written last)
  query_emb-<id>.npy       e_i = f1(x_i), N x d float32
  resp-<id>-<j>.npy        r_ij = f1(y_ij) for model j, N x d float32 (zero rows where missing)
  v-<id>.npy               score matrix v, N x M float32 in [0, 1]
  c-<id>.npy               completion tokens c, N x M float32
  present-<id>.npy         presence mask, N x M bool (False = no record: masked out of every sum)
  cost-<id>.npy            recorded cost per call in USD, N x M float32 (NaN unknown); the cost forecast of
                           models without a configured price (banks built before it have none)
  queries-<id>.jsonl       query text, dataset label and record index per row (for explanations)
  index-<id>.faiss         FAISS index over the query embeddings (flat or IVF: app/bank/index.py)

Files carry the id of the build that wrote them and the manifest names the ones in use. A build
writes its files first and replaces manifest.json last (atomically), so a crash leaves the previous
bank intact; add-model reuses the files it does not change instead of re-embedding them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
# Manifest.index_type per built kind; "flat_ip" is what format-1 banks always held.
INDEX_TYPES: dict[str, str] = {"flat": "flat_ip", "ivf": "ivf_ip"}
# the file kinds a build writes, by name prefix; temporary files of a crashed write start with "."
_PREFIXES = {"query_emb": "query_emb-", "responses": "resp-", "v": "v-", "c": "c-", "present": "present-",
             "queries": "queries-", "index": "index-", "cost": "cost-"}
OWNED_PREFIXES = (*_PREFIXES.values(), ".")  # anything else in a bank folder is left alone


class BankError(RuntimeError):
    """The bank is missing, malformed, or does not match the configured embedder."""


class BankFiles(BaseModel):
    query_emb: str
    responses: list[str]  # one per model, in manifest model order
    v: str
    c: str
    present: str
    queries: str
    index: str
    cost: str | None = None  # recorded per-call costs (banks built before it: none)

    def names(self) -> set[str]:
        return {self.query_emb, self.v, self.c, self.present, self.queries, self.index, *self.responses,
                *([self.cost] if self.cost else [])}


def file_name(kind: str, build_id: str, model: int | None = None) -> str:
    """The name a build `build_id` gives its file of this kind (a BankFiles field; `model` for responses)."""
    suffix = {"queries": ".jsonl", "index": ".faiss"}.get(kind, ".npy")
    return f"{_PREFIXES[kind]}{build_id}" + (f"-{model}" if kind == "responses" else "") + suffix


class EmbedderInfo(BaseModel):
    """What makes an embedder's vectors comparable with another's: two vectors are only ever compared when
    these agree (a bank built with one embedder is refused by a gateway configured with another)."""

    name: str
    dim: int
    max_seq_length: int | None = None
    truncation: str = "head"
    digest: str | None = None  # a static model's weights (distilled locally): equal names, other vectors

    @classmethod
    def of(cls, embedder: Any) -> "EmbedderInfo":
        return cls(name=embedder.name, dim=embedder.dim, max_seq_length=getattr(embedder, "max_seq_length", None),
                   truncation=getattr(embedder, "truncation", "head"), digest=getattr(embedder, "digest", None))

    def differences(self, configured: "EmbedderInfo") -> list[str]:
        """How `configured` differs from this (the bank's), in words; [] when their vectors are comparable."""
        fields = ("name", "dim", "max_seq_length", "truncation", "digest")
        return [f"{f} {getattr(self, f)!r} (configured: {getattr(configured, f)!r})" for f in fields
                if getattr(self, f) != getattr(configured, f)]


class SourceInfo(BaseModel):
    path: str
    sha256: str


class Manifest(BaseModel):
    format_version: int
    build_id: str
    created_at: str
    models: list[str]
    datasets: dict[str, int]  # dataset -> number of bank queries
    n_queries: int
    n_records: int  # present (query, model) pairs
    embedder: EmbedderInfo  # of the queries (e_i), and of the responses unless response_embedder is set
    params: dict[str, Any]  # hyperparameter defaults the bank was built with
    split: dict[str, Any]  # how the bank's rows were chosen (seed, train ratio, part)
    sources: list[SourceInfo]
    files: BankFiles
    index_type: str = "flat_ip"  # a value of INDEX_TYPES (older banks: always flat_ip)
    response_embedder: EmbedderInfo | None = None  # of the responses (r_ij) when not the query embedder
    # written by `jisi-bank calibrate --bank`: {"params": {...}, "objective": ..., ...}; the gateway's defaults
    calibration: dict[str, Any] | None = None

    @property
    def responses_embedder(self) -> EmbedderInfo:
        return self.response_embedder or self.embedder


@dataclass(frozen=True)
class QueryInfo:
    text: str
    dataset: str
    index: int


def read_manifest(path: Path) -> Manifest:
    file = Path(path) / MANIFEST
    if not file.is_file():
        raise BankError(f"no bank at {path}: {MANIFEST} not found (build one with `jisi-bank build`)")
    try:
        manifest = Manifest.model_validate_json(file.read_text())
    except ValueError as exc:
        raise BankError(f"{file} is not a valid bank manifest: {exc}") from exc
    if manifest.format_version != FORMAT_VERSION:
        raise BankError(
            f"{file} has bank format {manifest.format_version}; this version reads format {FORMAT_VERSION}"
        )
    if manifest.index_type not in INDEX_TYPES.values():
        raise BankError(f"{file} has index type {manifest.index_type!r}; this version reads "
                        f"{', '.join(INDEX_TYPES.values())}")
    return manifest
