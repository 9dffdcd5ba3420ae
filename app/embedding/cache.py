"""On-disk cache of embedding vectors keyed by a 32-byte hash, built for bulk use (~500k rows of d=384).

Layout: <cache_dir>/<model slug>-d<dim>-<dtype>-<hash>/ holds meta.json and append-only shards. A shard is
two .npy files, <id>.vecs.npy (n x d) and <id>.keys.npy (n,) S32. Each file is written to a temp name and
os.replace'd, the keys file last, so a shard exists only once both files are complete; a shard that fails to
load or whose shapes disagree (a crash, a full disk) is skipped. No pickle anywhere (allow_pickle=False).

Lookups use one sorted key array over all shards (searchsorted) plus a dict for rows added since it was
built; vectors are read from memory-mapped shards. Small writes (online queries) are buffered until
`flush_rows` rows so the folder does not fill with tiny files; `flush()`/`close()` write the rest, and
small shards left over from earlier runs are merged when the cache is opened.

Over 300 lines on purpose: the shard format, its crash-safe writes and its merged lookups are one invariant
(a key is found iff both files of its shard are complete) and are read together.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import logging
import os
import re
import secrets
import threading
import time
import weakref
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from app.embedding.backends import Embedder, as_texts, normalize_rows
from app.files import atomic_write

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
KEY_DTYPE = np.dtype("S32")
_BUFFER = -1  # pseudo shard number of rows still in the write buffer
_SMALL_SHARD_ROWS = 4096
_MAX_SMALL_SHARDS = 16
_STALE_TMP_S = 3600.0


class EmbeddingCache:
    """Vectors of one embedding model (`model_name`, `dim`); other models live in other folders."""

    def __init__(self, cache_dir: str | Path, model_name: str, dim: int, *,
                 dtype: str = "float16", flush_rows: int = 1024) -> None:
        self.model_name, self.dim, self.flush_rows = model_name, int(dim), max(1, flush_rows)
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.dtype(np.float16), np.dtype(np.float32)):
            raise ValueError(f"cache dtype must be float16 or float32, not {dtype}")
        # The slug is for humans; the hash keeps names that slugify alike (a/b, a_b) apart.
        digest = hashlib.sha256(f"{model_name}\0{self.dim}\0{self.dtype.name}".encode()).hexdigest()[:16]
        slug = re.sub(r"[^A-Za-z0-9.-]+", "_", model_name).strip("._")[-60:] or "model"
        self.path = Path(cache_dir) / f"{slug}-d{self.dim}-{self.dtype.name}-{digest}"
        self.path.mkdir(parents=True, exist_ok=True)
        self._check_meta()
        self._lock = threading.RLock()  # the gateway may embed from several threads
        self._reset()
        self._remove_stale_files()
        self.refresh()
        self._compact_small_shards()
        atexit.register(_flush_quietly, weakref.ref(self))  # buffered rows survive a normal exit

    # ---- public API -------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._keys) + len(self._recent)

    def get_many(self, keys: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray]:
        """(found mask (n,), float32 vectors (n, d)); rows not found are zero."""
        with self._lock:
            return self._get_many(keys)

    def _get_many(self, keys: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray]:
        n = len(keys)
        found, out = np.zeros(n, bool), np.zeros((n, self.dim), np.float32)
        if n == 0:
            return found, out
        query = _key_array(keys)
        shard, row = np.full(n, _BUFFER - 1, np.int64), np.zeros(n, np.int64)
        if len(self._keys):
            order = np.argsort(query)  # sorted queries make searchsorted cache-friendly (~5x faster)
            pos = np.minimum(np.searchsorted(self._keys, query[order]), len(self._keys) - 1)
            hit = self._keys[pos] == query[order]
            shard[order[hit]], row[order[hit]] = self._loc[pos[hit]].T
        if self._recent:
            for i in np.flatnonzero(shard < _BUFFER):
                loc = self._recent.get(bytes(keys[i]))
                if loc is not None:
                    shard[i], row[i] = loc
        buffer = np.concatenate(self._buf_vecs) if self._buf_vecs else None
        for s in np.unique(shard[shard >= _BUFFER]):
            sel = np.flatnonzero(shard == s)
            source = buffer if s == _BUFFER else self._vecs[s]
            out[sel] = source[row[sel]]
            found[sel] = True
        return found, out

    def put_many(self, keys: Sequence[bytes], vectors: np.ndarray) -> np.ndarray:
        """Add rows; returns them as a later get_many will (float32 of the stored dtype)."""
        with self._lock:
            return self._put_many(keys, vectors)

    def _put_many(self, keys: Sequence[bytes], vectors: np.ndarray) -> np.ndarray:
        vecs = np.asarray(vectors, dtype=np.float32)
        if vecs.shape != (len(keys), self.dim):
            raise ValueError(f"expected vectors of shape ({len(keys)}, {self.dim}), got {vecs.shape}")
        stored = vecs.astype(self.dtype)
        if not np.isfinite(stored).all():  # never cache NaN/inf, nor values beyond float16's range
            raise ValueError("embedding vectors contain non-finite values (or exceed the cache dtype's range)")
        key_list = [bytes(k) for k in keys]
        _key_array(key_list)  # validates
        start = self._buf_rows
        self._buf_keys.extend(key_list)
        self._buf_vecs.append(stored)
        self._buf_rows += len(key_list)
        for i, k in enumerate(key_list):
            self._recent[k] = (_BUFFER, start + i)
        if self._buf_rows >= self.flush_rows:
            self._flush()
        return stored.astype(np.float32)

    def flush(self) -> None:
        """Write buffered rows as one shard."""
        with self._lock:
            if self._buf_rows:
                self._flush()

    def _flush(self) -> None:
        keys, vecs = self._buf_keys, np.concatenate(self._buf_vecs)
        name = self._write_shard(_key_array(keys), vecs)
        s = len(self._vecs)
        self._add_shard(name, _key_array(keys), np.load(self.path / f"{name}.vecs.npy", mmap_mode="r"))
        for i, k in enumerate(keys):
            if self._recent.get(k, (0, 0))[0] == _BUFFER:
                self._recent[k] = (s, i)
        self._buf_keys, self._buf_vecs, self._buf_rows = [], [], 0
        if len(self._recent) > max(65536, len(self._keys)):  # rebuilds double in size: amortised O(1)
            self._rebuild_index()

    def close(self) -> None:
        self.flush()

    def refresh(self) -> None:
        """Pick up shards written by other processes since the cache was opened."""
        with self._lock:
            self._refresh()

    def _refresh(self) -> None:
        known = set(self._names)
        for keys_file in sorted(self.path.glob("*.keys.npy")):
            name = keys_file.name[: -len(".keys.npy")]
            if name not in known:
                self._load_shard(name)
        self._rebuild_index()

    # ---- internals ----------------------------------------------------------------------------------
    def _reset(self) -> None:
        self._names: list[str] = []
        self._shard_keys: list[np.ndarray] = []
        self._vecs: list[np.ndarray] = []  # read-only memmaps, one per shard
        self._keys = np.empty(0, KEY_DTYPE)  # sorted keys of all shards ...
        self._loc = np.empty((0, 2), np.int64)  # ... and their (shard, row)
        self._recent: dict[bytes, tuple[int, int]] = {}  # rows added since the sorted index was built
        self._buf_keys: list[bytes] = []
        self._buf_vecs: list[np.ndarray] = []
        self._buf_rows = 0

    def _check_meta(self) -> None:
        meta = {"format_version": FORMAT_VERSION, "model_name": self.model_name, "dim": self.dim,
                "dtype": self.dtype.name}
        file = self.path / "meta.json"
        try:
            found = json.loads(file.read_text())
        except (OSError, ValueError):  # new folder, or a torn meta.json: (re)write it; shards stay valid
            atomic_write(file, lambda f: f.write(json.dumps(meta, indent=1).encode()))
            return
        if found != meta:
            raise ValueError(f"embedding cache {self.path} holds {found}, expected {meta}")

    def _load_shard(self, name: str) -> None:
        try:
            keys = np.load(self.path / f"{name}.keys.npy", allow_pickle=False)
            vecs = np.load(self.path / f"{name}.vecs.npy", mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:  # truncated or vanished (compacted by another process)
            log.warning("embedding cache: skipping unreadable shard %s in %s: %s", name, self.path, exc)
            return
        if keys.dtype != KEY_DTYPE or keys.ndim != 1 or vecs.dtype != self.dtype or vecs.shape != (len(keys), self.dim):
            log.warning("embedding cache: skipping malformed shard %s in %s", name, self.path)
            return
        self._add_shard(name, keys, vecs)

    def _add_shard(self, name: str, keys: np.ndarray, vecs: np.ndarray) -> None:
        self._names.append(name)
        self._shard_keys.append(keys)
        self._vecs.append(vecs)

    def _rebuild_index(self) -> None:
        n_rows = [len(k) for k in self._shard_keys]
        keys = np.concatenate(self._shard_keys) if self._shard_keys else np.empty(0, KEY_DTYPE)
        loc = np.empty((len(keys), 2), np.int64)
        loc[:, 0] = np.repeat(np.arange(len(n_rows)), n_rows)
        loc[:, 1] = np.concatenate([np.arange(r) for r in n_rows]) if n_rows else []
        order = np.argsort(keys, kind="stable")
        self._keys, self._loc = keys[order], loc[order]
        self._recent = {k: v for k, v in self._recent.items() if v[0] == _BUFFER}

    def _write_shard(self, keys: np.ndarray, vecs: np.ndarray) -> str:
        name = f"{time.time_ns():x}-{os.getpid()}-{secrets.token_hex(4)}"
        for suffix, array in ((".vecs.npy", vecs), (".keys.npy", keys)):  # keys last: they commit the shard
            atomic_write(self.path / f"{name}{suffix}", lambda f, a=array: np.save(f, a, allow_pickle=False))
        return name

    def _compact_small_shards(self) -> None:
        small = [i for i, k in enumerate(self._shard_keys) if len(k) < _SMALL_SHARD_ROWS]
        if len(small) <= _MAX_SMALL_SHARDS:
            return
        self._write_shard(np.concatenate([self._shard_keys[i] for i in small]),
                          np.concatenate([np.asarray(self._vecs[i]) for i in small]))
        for i in small:  # keys first: a crash in between leaves vecs-only orphans, never half a shard
            for suffix in (".keys.npy", ".vecs.npy"):
                (self.path / f"{self._names[i]}{suffix}").unlink(missing_ok=True)
        self._reset()
        self._refresh()

    def _remove_stale_files(self) -> None:
        """Temp files and keys-less vecs files of writers that died (old enough not to be in progress)."""
        cutoff = time.time() - _STALE_TMP_S
        for file in self.path.iterdir():
            orphan = file.name.endswith(".vecs.npy") and not file.with_name(
                file.name.replace(".vecs.npy", ".keys.npy")).exists()
            try:
                if (file.name.endswith(".tmp") or orphan) and file.stat().st_mtime < cutoff:
                    file.unlink()
            except OSError:
                pass


class StoredPrecision:
    """Any Embedder with its vectors rounded as the cache stores them (float16, then normalised): what an embedder
    without the cache (the gateway's request path, `--no-cache`) returns, so a text gets the same vector online
    and offline, bit for bit, and a similarity tie breaks the same way on both paths (issue 18)."""

    def __init__(self, inner: Embedder, dtype: str = "float16") -> None:
        self.inner, self.name, self._dtype = inner, inner.name, np.dtype(dtype)
        self.normalize: bool = getattr(inner, "normalize", True)
        self.max_seq_length: int | None = getattr(inner, "max_seq_length", None)
        self.truncation: str = getattr(inner, "truncation", "head")
        self.digest: str | None = getattr(inner, "digest", None)
        self.fast: bool = getattr(inner, "fast", False)

    @property
    def dim(self) -> int:
        return self.inner.dim

    def embed(self, texts: Sequence[str], *, progress: bool = False) -> np.ndarray:
        out = np.asarray(self.inner.embed(texts, progress=progress), dtype=np.float32)
        out = out.astype(self._dtype).astype(np.float32)  # as put_many stores and get_many returns it
        return normalize_rows(out) if self.normalize else out

    def close(self) -> None:
        close = getattr(self.inner, "close", None)
        if close is not None:
            close()


def _flush_quietly(ref: weakref.ref[EmbeddingCache]) -> None:
    cache = ref()
    if cache is not None:
        try:
            cache.flush()
        except Exception as exc:  # at exit the folder may be gone (a test's tmp dir); nothing to save then
            log.warning("embedding cache: could not flush %s at exit: %s", cache.path, exc)


def _key_array(keys: Sequence[bytes]) -> np.ndarray:
    if any(len(k) != 32 for k in keys):
        raise ValueError("cache keys must be 32-byte digests")
    return np.asarray(keys, dtype=KEY_DTYPE)


class CachedEmbedder:
    """Any Embedder behind the on-disk cache: only texts not cached are embedded, each distinct text once."""

    def __init__(self, inner: Embedder, cache_dir: str | Path, *, chunk_size: int = 8192,
                 dtype: str = "float16") -> None:
        self.inner, self.name, self.chunk_size = inner, inner.name, chunk_size
        self._cache_dir, self._dtype = Path(cache_dir), dtype
        self._cache: EmbeddingCache | None = None
        self._open_lock = threading.Lock()
        self.normalize: bool = getattr(inner, "normalize", True)
        self.max_seq_length: int | None = getattr(inner, "max_seq_length", None)
        self.truncation: str = getattr(inner, "truncation", "head")
        self.digest: str | None = getattr(inner, "digest", None)
        # What is kept of a text, normalisation and the model's own weights (a static model distilled elsewhere)
        # change the vectors, so they are part of the cache identity.
        self.cache_namespace = self.name + (f"[max_seq_length={self.max_seq_length}]" if self.max_seq_length else "")
        self.cache_namespace += "" if self.truncation == "head" else f"[{self.truncation}]"
        self.cache_namespace += f"[{self.digest}]" if self.digest else ""
        self.cache_namespace += "" if self.normalize else "[unnormalized]"
        # a backend whose vectors changed in the last bits (MiniLM, once its batches stopped padding) keeps its
        # name, which banks record, and leaves the rows embedded the old way behind
        self.cache_namespace += f"[{inner.scheme}]" if getattr(inner, "scheme", None) else ""

    @property
    def dim(self) -> int:
        return self.inner.dim

    @property
    def cache(self) -> EmbeddingCache:
        with self._open_lock:  # opened lazily: a remote inner embedder learns its dim on first use
            if self._cache is None:
                self._cache = EmbeddingCache(self._cache_dir, self.cache_namespace, self.dim, dtype=self._dtype)
        return self._cache

    def embed(self, texts: Sequence[str], *, progress: bool = False) -> np.ndarray:
        texts = as_texts(texts)
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        prefix = self.cache_namespace.encode() + b"\0"
        keys = [hashlib.sha256(prefix + t.encode("utf-8", "surrogatepass")).digest() for t in texts]
        found, out = self.cache.get_many(keys)
        todo: dict[bytes, list[int]] = {}
        for i in np.flatnonzero(~found).tolist():
            todo.setdefault(keys[i], []).append(i)
        missing = list(todo)
        # Chunks are large enough to batch well and small enough that a killed build keeps its progress.
        for start in range(0, len(missing), self.chunk_size):
            chunk = missing[start:start + self.chunk_size]
            vecs = self.inner.embed([texts[todo[k][0]] for k in chunk], progress=progress)
            stored = self.cache.put_many(chunk, vecs)
            dest = [i for k in chunk for i in todo[k]]
            src = [j for j, k in enumerate(chunk) for _ in todo[k]]
            out[dest] = stored[src]
        # Hits and misses both went through the cache dtype, so a text embeds the same either way.
        return normalize_rows(out) if self.normalize else out

    def close(self) -> None:
        if self._cache is not None:
            self._cache.close()
