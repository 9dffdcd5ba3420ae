"""The static backend (model2vec distilled locally from the packaged MiniLM), the response text policies, and
a bank whose queries and responses come from different embedders: recorded in the manifest, and a gateway
configured otherwise is refused with a message that says which side differs and how."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from app.bank.format import BankError, EmbedderInfo, read_manifest
from app.bank.reader import Bank
from app.config import EmbedderSettings
from app.embedding import make_embedder
from app.embedding.cache import StoredPrecision
from app.embedding.static import distilled_model
from app.engine import JiSiParams
from bank_builder.build import build_bank
from bank_builder.records import load_records


def test_the_static_embedder_gives_normalised_deterministic_vectors(static_embedder):
    texts = ["What is 2 + 2?", "def f(x): return x * 2", "What is 2 + 2?", ""]
    v = static_embedder.embed(texts)
    assert v.shape == (4, 256) and v.dtype == np.float32
    assert np.allclose(np.linalg.norm(v[:3], axis=1), 1.0) and not v[3].any()  # no token: a zero vector
    assert np.array_equal(v[0], v[2]) and v[0] @ v[1] < 0.9
    assert static_embedder.name == "static:all-MiniLM-L6-v2[pca=256]" and len(static_embedder.digest) == 16


def test_the_distilled_model_is_made_once_and_reused(static_embedder):
    started = time.perf_counter()
    folder = distilled_model("all-MiniLM-L6-v2")
    assert time.perf_counter() - started < 1.0  # read from the cache, not distilled again
    assert (folder / "config.json").is_file()
    again = make_embedder(EmbedderSettings(backend="static", max_seq_length=None, cache_dir=None))
    assert again.digest == static_embedder.digest
    assert np.array_equal(again.embed(["same text"]), StoredPrecision(static_embedder).embed(["same text"]))


# The static model distilled from the packaged MiniLM, as every fresh machine makes it (issue 19): the token
# vectors' digest, which banks record. It moves only with the recipe (DISTILL_FORMAT), model2vec's vocabulary
# handling or the packaged MiniLM, and then every static bank must be rebuilt.
PINNED_DIGEST = "9242feeb0784dd15"


def test_the_distillation_gives_the_same_model_on_every_machine(static_embedder):
    assert static_embedder.digest == PINNED_DIGEST, (
        "the static model distilled here differs from the pinned one: the distillation is no longer deterministic, "
        "or its recipe or inputs changed (then bump DISTILL_FORMAT and pin the new digest)")


def test_the_pca_matches_scikit_learns_up_to_its_sign_rule():
    from sklearn.decomposition import PCA

    from app.embedding.static import principal_components

    x = np.random.default_rng(0).normal(size=(500, 12)) @ np.diag(np.arange(12, 0, -1.0))
    ours = principal_components(x, 5)
    theirs = PCA(n_components=5, svd_solver="full").fit_transform(x)
    signs = np.sign((ours * theirs).sum(axis=0))
    assert np.allclose(ours, theirs * signs, atol=1e-9)
    largest = np.argmax(np.abs(ours), axis=0)
    assert (ours[largest, np.arange(5)] > 0).all()  # each axis signed so that its largest projection is positive
    assert np.array_equal(principal_components(x, 5), ours)


def test_head_and_tail_keeps_both_ends_of_a_long_answer(minilm):
    from app.embedding.backends import SentenceTransformerEmbedder

    model = SentenceTransformerEmbedder(max_seq_length=16, truncation="head_tail")
    long = "First we read the question carefully. " + "Then we compute many steps. " * 20 + "The answer is 42."
    kept = model.head_and_tail([long, "short text"])
    assert kept[1] == "short text"
    assert kept[0].startswith("First we read") and kept[0].endswith("answer is 42.") and len(kept[0]) < 120
    assert not np.allclose(model.embed([long]), SentenceTransformerEmbedder(max_seq_length=16).embed([long]))


@pytest.fixture(scope="module")
def split_bank(tmp_path_factory, mini_bench, minilm, static_embedder) -> Path:
    """MiniLM for the queries, the static model for the responses."""
    matrix = load_records([mini_bench], max_queries_per_dataset=10, seed=42)
    out = tmp_path_factory.mktemp("split-bank") / "bank"
    build_bank(matrix, minilm, out, params=JiSiParams(), split={"part": "all"}, response_embedder=static_embedder,
               progress=False)
    return out


def test_the_manifest_records_both_embedders(split_bank, minilm, static_embedder):
    manifest = read_manifest(split_bank)
    assert manifest.embedder == EmbedderInfo.of(minilm)
    assert manifest.response_embedder == EmbedderInfo.of(static_embedder)
    bank = Bank.load(split_bank, query_embedder=EmbedderInfo.of(minilm),
                     response_embedder=EmbedderInfo.of(static_embedder))
    assert bank.e.shape[1] == 384 and bank.r[0].shape[1] == 256
    assert bank.view(np.arange(3), np.array([0, 1])).r.shape == (3, 2, 256)


def test_a_gateway_with_another_response_embedder_is_refused_clearly(split_bank, minilm):
    with pytest.raises(BankError) as refused:
        Bank.load(split_bank, query_embedder=EmbedderInfo.of(minilm), response_embedder=EmbedderInfo.of(minilm))
    message = str(refused.value)
    assert "responses" in message and "`response_embedder`" in message
    assert "static:all-MiniLM-L6-v2[pca=256]" in message and "all-MiniLM-L6-v2" in message


@pytest.mark.anyio
async def test_the_app_refuses_to_start_on_a_mismatched_bank(split_bank, minilm, tmp_path):
    from app.config import Settings, UpstreamSettings
    from app.http.app import create_app

    models = read_manifest(split_bank).models
    settings = Settings(bank_path=split_bank, embedder=EmbedderSettings(backend="local", cache_dir=tmp_path),
                        upstreams=[UpstreamSettings(name=m, base_url="http://127.0.0.1:9/v1") for m in models])
    app = create_app(settings, embedder=minilm)  # no response embedder configured: the query one, MiniLM
    with pytest.raises(BankError, match="embedded its responses with another embedder"):
        async with app.router.lifespan_context(app):
            pass
