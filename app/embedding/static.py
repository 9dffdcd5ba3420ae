"""A static embedder (`embedder.backend: static`): model2vec's distillation of a sentence-transformers model
into one vector per token, mean-pooled. Measured on this project's 2-core machine (docs/benchmarks.md,
bench/embedding_speed.py): ~3,000 texts/s against ~11-13 for MiniLM at 256 tokens, which is what makes
embedding a whole benchmark's responses (455k of them) a matter of minutes instead of hours.

The model is distilled locally, once, from the configured sentence-transformers model (default: the packaged
MiniLM; no hub access), and kept in ~/.cache/jisi/static; `model` may also name a model2vec folder. Its name
carries the source and the PCA size, and its digest (of the token vectors) goes into the bank's manifest, so
a bank is never read with a different static model than the one it was built with.

The distillation is the same on every machine (`distill_deterministic`): model2vec's own recipe ran its
transformer and its PCA in float32 on every core, and the token vectors it kept in float16 came out
different from one session to the next (the shortcut's threshold moved between two sessions because of it).
Here the transformer runs in float64 on one thread and the PCA in float64 on one BLAS thread, so the
float16 vectors only differ where a value lies within ~1e-14 of a float16 rounding boundary: the digest is
pinned by a test (tests/unit/embedding/test_static_and_policies.py).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np

from app.embedding.backends import EmbedderError, as_texts, canonical_name, normalize_rows, resolve_model_path

if TYPE_CHECKING:
    from model2vec import StaticModel

log = logging.getLogger(__name__)

PCA_DIMS = 256  # model2vec's default: 384 -> 256 components kept (its authors' recommendation)
SIF_COEFFICIENT = 1e-4  # model2vec's default: a token's weight a / (a + p(token)), p by Zipf's law on its rank
DISTILL_FORMAT = 2  # bump when the distillation recipe changes, so old cached models are not reused


def static_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "jisi" / "static"


def _is_model2vec_folder(path: Path) -> bool:
    return (path / "config.json").is_file() and any(path.glob("*.safetensors"))


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One distillation at a time per model (two gateway workers starting together share the result)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def distilled_model(source: str, pca_dims: int = PCA_DIMS, cache_dir: Path | None = None) -> Path:
    """The model2vec folder distilled from `source` (a sentence-transformers name or folder), made once."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    path = resolve_model_path(source)
    key = hashlib.sha256(f"{Path(path).resolve()}\0{pca_dims}\0{DISTILL_FORMAT}".encode()).hexdigest()[:16]
    slug = canonical_name(source).replace("/", "_")
    target = (cache_dir or static_cache_dir()) / f"{slug}-pca{pca_dims}-{key}"
    if _is_model2vec_folder(target):
        return target
    with _locked(target.with_name(target.name + ".lock")):
        if _is_model2vec_folder(target):  # distilled by another process while this one waited
            return target
        started = time.perf_counter()
        log.warning("distilling a static embedder from %s (once; cached in %s)", source, target)
        model = distill_deterministic(path, pca_dims)
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
        try:
            model.save_pretrained(str(tmp))
            os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        log.warning("static embedder ready in %.0f s", time.perf_counter() - started)
    return target


def distill_deterministic(path: str, pca_dims: int = PCA_DIMS) -> StaticModel:
    """model2vec's distillation (mean-pooled token vectors, PCA, SIF weights, float16) computed so that every
    machine gets the same vectors: the transformer in float64 on one thread, the PCA in float64 on one BLAS
    thread (multi-threaded float32 sums change with the thread count and the CPU's kernels)."""
    import torch
    from threadpoolctl import threadpool_limits
    from transformers import AutoModel, AutoTokenizer

    try:
        from model2vec import StaticModel
        from model2vec.distill import distill_from_model
        from model2vec.distill.inference import compute_weights
    except ImportError as exc:  # pragma: no cover - a dependency of the project
        raise EmbedderError(f"the static backend needs model2vec's distillation: {exc}") from exc
    transformer = AutoModel.from_pretrained(path).to(torch.float64)
    tokenizer = AutoTokenizer.from_pretrained(path, use_fast=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1):
            # the raw token vectors only (no PCA, no weights, float32 kept): the rest is done below in float64
            raw = distill_from_model(transformer, tokenizer, device="cpu", pca_dims=None, sif_coefficient=None,
                                     quantize_to="float32")
            x = np.asarray(raw.embedding, dtype=np.float64)
            vectors = principal_components(x, pca_dims) * compute_weights(len(x), SIF_COEFFICIENT)[:, None]
    finally:
        torch.set_num_threads(threads)
    config = {**raw.config, "apply_pca": pca_dims, "sif_coefficient": SIF_COEFFICIENT, "hidden_dim": pca_dims}
    return StaticModel(vectors=vectors.astype(np.float16), tokenizer=raw.tokenizer, config=config,
                       base_model_name=raw.base_model_name, language=raw.language,
                       normalize=False)  # StaticEmbedder normalises (after its float16 rounding)


def principal_components(x: np.ndarray, k: int) -> np.ndarray:
    """x projected on its top-k principal axes, each axis signed so that its largest projection is positive
    (model2vec's PCA, by the covariance's eigendecomposition)."""
    centred = x - x.mean(axis=0)
    eigvals, eigvecs = np.linalg.eigh(centred.T @ centred / (len(x) - 1))
    axes = eigvecs[:, np.argsort(eigvals)[::-1][:k]]
    scores = centred @ axes
    largest = np.argmax(np.abs(scores), axis=0)
    return scores * np.sign(scores[largest, np.arange(scores.shape[1])])


def static_name(model: str, pca_dims: int = PCA_DIMS) -> str:
    """The name a bank records for the static model of `model` (a model2vec folder, or the source distilled)."""
    given = Path(model).expanduser()
    return f"static:{given.name}" if _is_model2vec_folder(given) else f"static:{canonical_name(model)}[pca={pca_dims}]"


class StaticEmbedder:
    """A model2vec model: f1(a) = the normalised mean of a's token vectors (every token, unless
    max_seq_length caps them)."""

    fast = True  # ~0.1 ms a query: embedded inline on the request path (app/embedding/batcher.py)

    def __init__(self, model: str, *, max_seq_length: int | None = None, normalize: bool = True,
                 pca_dims: int = PCA_DIMS, cache_dir: Path | None = None) -> None:
        from model2vec import StaticModel

        given = Path(model).expanduser()
        folder = given if _is_model2vec_folder(given) else distilled_model(model, pca_dims, cache_dir)
        self.name = static_name(model, pca_dims)
        try:
            self._model = StaticModel.from_pretrained(str(folder), normalize=False)
        except Exception as exc:
            raise EmbedderError(f"cannot load the static embedding model at {folder}: {exc}") from exc
        vectors = np.asarray(self._model.embedding)
        self.dim: int = int(vectors.shape[1])
        self.digest = hashlib.sha256(np.ascontiguousarray(vectors).tobytes()).hexdigest()[:16]
        self.max_seq_length = max_seq_length
        self.normalize = normalize

    def embed(self, texts: Sequence[str], *, progress: bool = False) -> np.ndarray:
        texts = as_texts(texts)
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        # multiprocessing would fork the gateway (and its threads); one process embeds ~3,000 texts/s already
        out = self._model.encode(texts, max_length=self.max_seq_length, normalize=False, batch_size=1024,
                                 show_progress_bar=progress, use_multiprocessing=False)
        out = np.asarray(out, dtype=np.float32)
        return normalize_rows(out) if self.normalize else out
