"""From joined records to a bank on disk: embed queries and responses, write, commit."""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from app.bank import index as bank_index
from app.bank import writer as bank_writer
from app.bank.format import (
    FORMAT_VERSION, BankError, BankFiles, EmbedderInfo, Manifest, QueryInfo, SourceInfo, file_name, read_manifest,
)
from app.bank.reader import Bank
from app.config import BankIndexSettings, EmbedderSettings
from app.embedding.backends import Embedder
from app.engine import JiSiParams
from bank_builder.records import RecordMatrix, RecordSelection

log = logging.getLogger(__name__)


def embed_unique(embedder: Embedder, texts: Sequence[str], *, progress: bool) -> np.ndarray:
    """Embed each distinct text once (models often give identical answers) and scatter back."""
    unique: dict[str, int] = {}
    positions = np.fromiter((unique.setdefault(t, len(unique)) for t in texts), dtype=np.int64, count=len(texts))
    if not unique:
        return np.zeros((0, embedder.dim), dtype=np.float32)
    vectors = embedder.embed(list(unique), progress=progress)
    return np.asarray(vectors, dtype=np.float32)[positions]


def embed_responses(matrix: RecordMatrix, embedder: Embedder, *, progress: bool) -> list[np.ndarray]:
    """r_ij for every model: N x d per model, zero rows where the record is missing."""
    rows, cols = np.nonzero(matrix.present)
    texts = [matrix.responses[i][j] or "" for i, j in zip(rows, cols)]
    vectors = embed_unique(embedder, texts, progress=progress)
    out = [np.zeros((len(matrix.queries), embedder.dim), dtype=np.float32) for _ in matrix.models]
    for j in range(len(matrix.models)):
        mine = cols == j
        out[j][rows[mine]] = vectors[mine]
    return out


def _tokens(matrix: RecordMatrix) -> np.ndarray:
    """c_ij; a record without a token count (rare) counts 0 rather than poisoning every sum with NaN."""
    return np.nan_to_num(np.where(matrix.present, matrix.completion_tokens, 0.0), nan=0.0).astype(np.float32)


def _recorded_cost(matrix: RecordMatrix) -> np.ndarray:
    """Each record's own cost in USD (NaN unknown or missing): what an unpriced model's calls are forecast at."""
    return np.where(matrix.present, matrix.cost, np.nan).astype(np.float32)


def _dataset_counts(datasets: Sequence[str]) -> dict[str, int]:
    names, counts = np.unique(np.asarray(datasets), return_counts=True)
    return {str(n): int(c) for n, c in zip(names, counts)}


def build_bank(
    matrix: RecordMatrix,
    embedder: Embedder,
    out: str | Path,
    *,
    params: JiSiParams,
    split: dict[str, Any],
    index: BankIndexSettings | None = None,
    response_embedder: Embedder | None = None,
    progress: bool = True,
) -> Manifest:
    """Embed every query and response of `matrix` and write a bank at `out` (atomic replace).

    Queries are embedded with `embedder`, responses with `response_embedder` (default: the same); the manifest
    records both. `index` chooses the search index (default: auto, exact up to its size threshold, IVF above).
    """
    out = Path(out)
    if not matrix.queries:
        raise BankError("no records to build a bank from")
    build_id = bank_writer.new_build_id()
    e = embed_unique(embedder, matrix.queries, progress=progress)
    responses = embed_responses(matrix, response_embedder or embedder, progress=progress)
    index = index or BankIndexSettings()
    out.mkdir(parents=True, exist_ok=True)
    queries = [QueryInfo(text=q, dataset=d, index=int(i))
               for q, d, i in zip(matrix.queries, matrix.datasets, matrix.indices)]
    name = lambda kind, j=None: file_name(kind, build_id, j)  # noqa: E731
    files = BankFiles(
        query_emb=bank_writer.save_array(out, name("query_emb"), e),
        responses=[bank_writer.save_array(out, name("responses", j), r) for j, r in enumerate(responses)],
        v=bank_writer.save_array(out, name("v"), matrix.score.astype(np.float32)),
        c=bank_writer.save_array(out, name("c"), _tokens(matrix)),
        present=bank_writer.save_array(out, name("present"), matrix.present.astype(bool)),
        cost=bank_writer.save_array(out, name("cost"), _recorded_cost(matrix)),
        queries=bank_writer.save_queries(out, name("queries"), queries),
        index=bank_writer.save_index(out, name("index"), e, index),
    )
    manifest = Manifest(
        format_version=FORMAT_VERSION,
        build_id=build_id,
        created_at=bank_writer.now_iso(),
        models=list(matrix.models),
        datasets=_dataset_counts(matrix.datasets),
        n_queries=len(matrix.queries),
        n_records=int(matrix.present.sum()),
        embedder=EmbedderInfo.of(embedder),
        response_embedder=_separate(embedder, response_embedder),
        params=asdict(params),
        split=split,
        sources=[SourceInfo(path=p, sha256=h) for p, h in matrix.report.sources.items()],
        files=files,
        index_type=bank_index.index_type_for(len(e), index),
    )
    bank_writer.commit(out, manifest)
    return manifest


def _separate(embedder: Embedder, response_embedder: Embedder | None) -> EmbedderInfo | None:
    """The manifest's response_embedder: None when the responses share the query embedder."""
    if response_embedder is None or EmbedderInfo.of(response_embedder) == EmbedderInfo.of(embedder):
        return None
    return EmbedderInfo.of(response_embedder)


def build_from_records(selection: RecordSelection, embedder_settings: EmbedderSettings, out: str | Path, *,
                       part: str = "all", train_ratio: float = 0.7, params: JiSiParams,
                       index: BankIndexSettings | None = None,
                       response_settings: EmbedderSettings | None = None) -> Manifest:
    """`jisi-bank build`: load the selected records, keep `part` ("all", or the "train" / "test" part of the
    paper's per-dataset split), embed and write the bank."""
    from app.embedding import make_embedder
    from bank_builder.evaluate.split import choose_split

    matrix = selection.load(progress=True)
    split = {"part": part, "seed": selection.seed, "train_ratio": train_ratio,
             "max_queries_per_dataset": selection.max_queries_per_dataset}
    if part != "all":
        # the evaluator's split (the records' own train/test when every dataset has both, else the seeded random
        # one), so a train bank never holds a question `jisi-bank evaluate` or `jisi-pool replay` tests on
        train, test, split["kind"] = choose_split(matrix.datasets, matrix.splits, matrix.indices, None,
                                                  seed=selection.seed, train_ratio=train_ratio, queries=matrix.queries)
        matrix = matrix.subset(train if part == "train" else test)
    responses = make_embedder(response_settings) if response_settings is not None else None
    return build_bank(matrix, make_embedder(embedder_settings), out, params=params, split=split, index=index,
                      response_embedder=responses)


def add_models(bank_path: str | Path, matrix: RecordMatrix, embedder: Embedder, *,
               response_embedder: Embedder | None = None, progress: bool = True) -> Manifest:
    """Add new models' records to an existing bank without re-embedding anything already in it.

    The query embeddings do not change, so the bank keeps its index file (and index type) as it is.

    Records are matched to bank rows by (dataset, index); bank queries a new model did not answer are
    masked, and its records for queries outside the bank (e.g. the test split) are ignored and counted.
    """
    bank_path = Path(bank_path)
    old = read_manifest(bank_path)
    responses_by = response_embedder or embedder
    bank = Bank.load(bank_path, query_embedder=EmbedderInfo.of(embedder),
                     response_embedder=EmbedderInfo.of(responses_by))
    clash = sorted(set(matrix.models) & set(old.models))
    if clash:
        raise BankError(f"model(s) already in the bank at {bank_path}: {', '.join(clash)}")
    infos = (bank.query_info(row) for row in range(bank.n_queries))
    row_of = {(q.dataset, q.index): row for row, q in enumerate(infos)}
    src_rows, bank_rows = [], []
    for i in range(len(matrix.queries)):
        row = row_of.get((matrix.datasets[i], int(matrix.indices[i])))
        if row is not None:
            src_rows.append(i)
            bank_rows.append(row)
    if not src_rows:
        raise BankError("none of the new records matches a query in the bank (check datasets and indices)")
    ignored = len(matrix.queries) - len(src_rows)
    if ignored:
        log.info("add-model: %d record rows are not bank queries (e.g. the test split) and were ignored", ignored)

    sub = matrix.subset(np.asarray(src_rows))
    rows, n = np.asarray(bank_rows), bank.n_queries
    v_new = _place(sub.score, rows, n, 0.0, np.float32)
    c_new = _place(_tokens(sub), rows, n, 0.0, np.float32)
    present_new = _place(sub.present, rows, n, False, bool)
    cost_new = _place(_recorded_cost(sub), rows, n, np.nan, np.float32)
    cost_old = bank.cost if bank.cost is not None else np.full((n, len(old.models)), np.nan, np.float32)
    new_responses = [_place(r, rows, n, 0.0, np.float32) for r in embed_responses(sub, responses_by,
                                                                                    progress=progress)]

    build_id = bank_writer.new_build_id()
    offset = len(old.models)
    files = old.files.model_copy(update={
        "responses": old.files.responses + [
            bank_writer.save_array(bank_path, file_name("responses", build_id, offset + j), r)
            for j, r in enumerate(new_responses)],
        "v": bank_writer.save_array(bank_path, file_name("v", build_id), np.hstack([bank.v, v_new])),
        "c": bank_writer.save_array(bank_path, file_name("c", build_id), np.hstack([bank.c, c_new])),
        "present": bank_writer.save_array(bank_path, file_name("present", build_id),
                                          np.hstack([bank.present, present_new])),
        "cost": bank_writer.save_array(bank_path, file_name("cost", build_id), np.hstack([cost_old, cost_new])),
    })
    manifest = old.model_copy(update={
        "build_id": build_id,
        "created_at": bank_writer.now_iso(),
        "models": old.models + list(sub.models),
        "n_records": old.n_records + int(present_new.sum()),
        "sources": old.sources + [SourceInfo(path=p, sha256=h) for p, h in matrix.report.sources.items()],
        "files": files,
    })
    bank_writer.commit(bank_path, manifest)
    return manifest


def _place(values: np.ndarray, rows: np.ndarray, n: int, fill: Any, dtype: Any) -> np.ndarray:
    """Scatter per-record values onto bank rows (N x ...), `fill` elsewhere."""
    values = np.asarray(values)
    out = np.full((n, *values.shape[1:]), fill, dtype=dtype)
    out[rows] = values
    return out
