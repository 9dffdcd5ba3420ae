"""A static embedder (`embedder.backend: static`): model2vec's distillation of a sentence-transformers model
into one vector per token, mean-pooled. Measured on this project's 2-core machine (docs/benchmarks.md,
bench/embedding_speed.py): ~3,000 texts/s against ~11-13 for MiniLM at 256 tokens, which is what makes
embedding a whole benchmark's responses (455k of them) a matter of minutes instead of hours.

The model is distilled locally, once, from the configured sentence-transformers model (default: the packaged
MiniLM; no hub access), and kept in ~/.cache/jisi/static; `model` may also name a model2vec folder. Its name
carries the source and the PCA size, and its digest (of the token vectors) goes into the bank's manifest, so
a bank is never read with a different static model than the one it was built with.
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
from typing import Iterator

import numpy as np

from app.embedding.backends import EmbedderError, as_texts, canonical_name, normalize_rows, resolve_model_path

log = logging.getLogger(__name__)

PCA_DIMS = 256  # model2vec's default: 384 -> 256 components kept (its authors' recommendation)
DISTILL_FORMAT = 1  # bump when the distillation recipe changes, so old cached models are not reused


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
        try:
            from model2vec.distill import distill
        except ImportError as exc:  # pragma: no cover - a dependency of the project
            raise EmbedderError(f"the static backend needs model2vec[distill]: {exc}") from exc
        started = time.perf_counter()
        log.warning("distilling a static embedder from %s (once; cached in %s)", source, target)
        model = distill(model_name=str(path), pca_dims=pca_dims)
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
        try:
            model.save_pretrained(str(tmp))
            os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        log.warning("static embedder ready in %.0f s", time.perf_counter() - started)
    return target


class StaticEmbedder:
    """A model2vec model: f1(a) = the normalised mean of a's token vectors (every token, unless
    max_seq_length caps them)."""

    def __init__(self, model: str, *, max_seq_length: int | None = None, normalize: bool = True,
                 pca_dims: int = PCA_DIMS, cache_dir: Path | None = None) -> None:
        from model2vec import StaticModel

        given = Path(model).expanduser()
        folder = given if _is_model2vec_folder(given) else distilled_model(model, pca_dims, cache_dir)
        try:
            self._model = StaticModel.from_pretrained(str(folder), normalize=False)
        except Exception as exc:
            raise EmbedderError(f"cannot load the static embedding model at {folder}: {exc}") from exc
        vectors = np.asarray(self._model.embedding)
        self.dim: int = int(vectors.shape[1])
        self.digest = hashlib.sha256(np.ascontiguousarray(vectors).tobytes()).hexdigest()[:16]
        source = given.name if folder == given else f"{canonical_name(model)}[pca={pca_dims}]"
        self.name = f"static:{source}"
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
