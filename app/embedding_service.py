"""Embedding on the request path, off the event loop: the model runs in a worker thread."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import numpy as np

from app.embedder import Embedder


class AsyncEmbedder:
    """Serialises calls to the (not re-entrant) model on one worker thread; the loop keeps serving."""

    def __init__(self, embedder: Embedder) -> None:
        self.embedder = embedder
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embed")

    @property
    def name(self) -> str:
        return self.embedder.name

    @property
    def dim(self) -> int:
        return self.embedder.dim

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self.embedder.embed, list(texts))

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
