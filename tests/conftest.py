"""Fixtures every kind of test shares: the real benchmark data beside the repository, the packaged MiniLM, a
small real bank built once, the demo's calibrated train bank, and the anyio backend. Each folder's conftest.py
adds its own: unit/ (pure pieces), gateway/ (the app over ASGI, fake upstreams), offline/ (records, collect,
evaluator), e2e/ (the real llama.cpp pool); browser/ runs the inspector page in headless Chromium."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("JISI_SHARED_DATA", REPO.parent / "shared" / "data"))
MINI_BENCH = SHARED_DATA / "mini-bench.tar.gz"
PRICES = SHARED_DATA / "prices.json"


@pytest.fixture(scope="session")
def mini_bench() -> Path:
    if not MINI_BENCH.is_file():
        pytest.fail(f"benchmark data not found at {MINI_BENCH} (set JISI_SHARED_DATA)")
    return MINI_BENCH


@pytest.fixture(scope="session")
def embedding_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The user's embedding cache when JISI_TEST_CACHE is set (fast reruns), else a fresh one."""
    configured = os.environ.get("JISI_TEST_CACHE")
    return Path(configured) if configured else tmp_path_factory.mktemp("embedding-cache")


@pytest.fixture(scope="session")
def minilm(embedding_cache_dir: Path):
    """The packaged MiniLM behind a cache: the real default embedder, loaded once per session."""
    from app.embedding import make_embedder
    from app.config import EmbedderSettings

    embedder = make_embedder(EmbedderSettings(backend="local", cache_dir=embedding_cache_dir))
    yield embedder
    embedder.close()  # writes what the cache still holds in memory, so JISI_TEST_CACHE reruns reuse it


@pytest.fixture(scope="session")
def mini_bank(tmp_path_factory: pytest.TempPathFactory, mini_bench: Path, minilm) -> Path:
    """A real bank: 20 mini-bench questions per dataset x 8 models, embedded with MiniLM."""
    from app.engine import JiSiParams
    from bank_builder.build import build_bank
    from bank_builder.records import load_records

    matrix = load_records([mini_bench], max_queries_per_dataset=20, seed=42)
    out = tmp_path_factory.mktemp("bank") / "mini"
    build_bank(matrix, minilm, out, params=JiSiParams(), split={"part": "all", "seed": 42}, progress=False)
    return out


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def static_embedder():
    """The static backend: model2vec distilled from the packaged MiniLM (once per machine, ~1-2 min on two
    cores, then read from ~/.cache/jisi/static)."""
    from app.embedding.static import StaticEmbedder

    return StaticEmbedder("all-MiniLM-L6-v2")


@pytest.fixture(scope="session")
def demo_bank(tmp_path_factory: pytest.TempPathFactory, mini_bench: Path):
    """`jisi-pool demo --economy`'s bank on mini-bench: the train split, calibrated on its folds with both
    profiles (~1.5 min, once)."""
    from localpool.demo import prepare

    return prepare([mini_bench], PRICES, tmp_path_factory.mktemp("demo"), economy=True)
