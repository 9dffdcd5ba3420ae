"""r_j = f1(y_j) for each candidate's answer, computed while the slower candidates are still answering.

Embedding all K answers after the last one arrives puts K texts of model time on the request's critical
path. Embedding each as it arrives leaves only the last answer's embedding there; answers that arrive
together (within COALESCE_S of each other, as from fast upstreams) still share one model call.
"""

from __future__ import annotations

import asyncio
from typing import Awaitable, Callable

import numpy as np

COALESCE_S = 0.003  # how long an answer waits for near-simultaneous ones while other candidates still run


class LiveEmbeddings:
    def __init__(self, embed: Callable[[list[str]], Awaitable[np.ndarray]], expected: int) -> None:
        self._embed = embed
        self.expected = expected  # candidates that have neither answered nor failed yet
        self.r: dict[int, np.ndarray] = {}  # candidate -> r_j
        self._arrived: asyncio.Queue[tuple[int, str] | None] = asyncio.Queue()
        self._pump = asyncio.get_running_loop().create_task(self._run())

    def answered(self, j: int, text: str) -> None:
        self.expected -= 1
        self._arrived.put_nowait((j, text))

    def failed(self) -> None:
        self.expected -= 1
        self._arrived.put_nowait(None)  # wakes the pump: it need not wait for this candidate any more

    async def finish(self) -> None:
        """Every answer received so far embedded (call once the candidates have settled or been cancelled)."""
        self.expected = 0
        self._arrived.put_nowait(None)
        await self._pump

    def cancel(self) -> None:
        self._pump.cancel()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            first = await self._arrived.get()
            batch = [first] if first else []
            until = loop.time() + COALESCE_S
            while self.expected > 0 and (remaining := until - loop.time()) > 0:
                try:
                    async with asyncio.timeout(remaining):
                        item = await self._arrived.get()
                except TimeoutError:
                    break
                if item:
                    batch.append(item)
            while not self._arrived.empty():
                item = self._arrived.get_nowait()
                if item:
                    batch.append(item)
            if batch:
                vectors = await self._embed([text for _, text in batch])
                self.r.update((j, vectors[i]) for i, (j, _) in enumerate(batch))
            if self.expected <= 0 and self._arrived.empty():
                return
