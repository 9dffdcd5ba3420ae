"""Text embedders f1 (paper Eq. 1): the backends (backends.py, static.py), the on-disk cache (cache.py) and
the request path's micro-batcher (batcher.py); `make_embedder` builds the one the settings describe."""

from __future__ import annotations

from app.config import EmbedderSettings
from app.embedding.backends import (Embedder, EmbedderError, RemoteEmbedder, SentenceTransformerEmbedder,
                                    canonical_name)
from app.embedding.cache import CachedEmbedder, StoredPrecision

__all__ = ["Embedder", "EmbedderError", "embedder_name", "make_embedder"]


def embedder_name(settings: EmbedderSettings) -> str:
    """The name the configured embedder records in a bank, known without loading it."""
    if settings.backend == "static":
        from app.embedding.static import static_name

        return static_name(settings.model)
    return canonical_name(settings.model) if settings.backend == "local" else settings.model


def make_embedder(settings: EmbedderSettings, *, use_cache: bool = True) -> Embedder:
    """The configured backend, behind the embedding cache unless use_cache=False or cache_dir is None; either way
    its vectors have the cache's precision (float16), so a text embeds the same online and offline."""
    inner: Embedder
    if settings.backend == "local":
        if settings.threads is not None:
            import torch  # process-wide: the model is the process's only torch user

            torch.set_num_threads(settings.threads)
        inner = SentenceTransformerEmbedder(settings.model, device=settings.device, batch_size=settings.batch_size,
                                            max_seq_length=settings.max_seq_length, normalize=settings.normalize,
                                            truncation=settings.truncation)
    elif settings.backend == "static":
        from app.embedding.static import StaticEmbedder  # model2vec loads only when asked for

        inner = StaticEmbedder(settings.model, max_seq_length=settings.max_seq_length, normalize=settings.normalize)
    else:
        if not settings.base_url:
            raise EmbedderError("embedder.backend is 'remote' but embedder.base_url is not set")
        inner = RemoteEmbedder(settings.base_url, settings.model, api_key_env=settings.api_key_env,
                               batch_size=settings.batch_size, timeout_s=settings.timeout_s,
                               normalize=settings.normalize)
    if use_cache and settings.cache_dir is not None:
        return CachedEmbedder(inner, settings.cache_dir)
    return StoredPrecision(inner)
