"""AsyncEmbedder: micro-batching coalesces concurrent requests, routes rows back, and adds no latency alone;
InlineEmbedder: a fast model embeds on the event loop, and the settings can force either."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Sequence

import numpy as np
import pytest

from app.embedding.batcher import AsyncEmbedder, BatchingSettings, EmbedderClosed
from app.observability.loop_lag import LoopLagProbe

pytestmark = pytest.mark.anyio


class FakeEmbedder:
    """Row for text "i:j" is [i, j]; records each call's size; sleeps like a model would."""

    name = "fake"
    dim = 2

    def __init__(self, delay_s: float = 0.02, fail_on: str | None = None) -> None:
        self.delay_s, self.fail_on = delay_s, fail_on
        self.sizes: list[int] = []
        self.threads: set[str] = set()

    def embed(self, texts: Sequence[str], *, progress: bool = False) -> np.ndarray:
        self.sizes.append(len(texts))
        self.threads.add(threading.current_thread().name)
        time.sleep(self.delay_s)
        if self.fail_on is not None and self.fail_on in texts:
            raise ValueError("model exploded")
        return np.array([[float(p) for p in t.split(":")] for t in texts], dtype=np.float32)


def texts_for(i: int, n: int) -> list[str]:
    return [f"{i}:{j}" for j in range(n)]


async def test_concurrent_requests_are_coalesced_and_routed() -> None:
    fake = FakeEmbedder(delay_s=0.02)
    service = AsyncEmbedder(fake, BatchingSettings(max_batch=64, max_wait_ms=5))
    try:
        sizes = [1 + i % 4 for i in range(40)]
        results = await asyncio.gather(*(service.embed(texts_for(i, n)) for i, n in enumerate(sizes)))
    finally:
        service.close()
    for i, (n, rows) in enumerate(zip(sizes, results)):
        expected = np.array([[i, j] for j in range(n)], dtype=np.float32)
        np.testing.assert_array_equal(rows, expected)  # exactly its own rows, in order
    assert sum(fake.sizes) == sum(sizes)
    assert len(fake.sizes) <= 5, fake.sizes  # 40 requests, 100 texts: a handful of model calls
    assert max(fake.sizes) <= 64
    assert fake.threads == {"embed-batcher"}  # one worker thread, never the event loop


async def test_max_batch_caps_a_model_call() -> None:
    fake = FakeEmbedder(delay_s=0.01)
    service = AsyncEmbedder(fake, BatchingSettings(max_batch=8, max_wait_ms=5))
    try:
        results = await asyncio.gather(*(service.embed(texts_for(i, 3)) for i in range(10)))
        big = await service.embed(texts_for(99, 20))  # larger than max_batch: still served, alone
    finally:
        service.close()
    assert all(r.shape == (3, 2) for r in results)
    assert max(fake.sizes[:-1]) <= 8
    assert fake.sizes[-1] == 20 and big.shape == (20, 2)


async def test_single_request_is_not_delayed_by_max_wait() -> None:
    fake = FakeEmbedder(delay_s=0.0)
    service = AsyncEmbedder(fake, BatchingSettings(max_wait_ms=200))
    try:
        await service.embed(["0:0"])  # warm-up
        times = []
        for i in range(5):
            t = time.perf_counter()
            rows = await service.embed([f"{i}:1"])
            times.append(time.perf_counter() - t)
            np.testing.assert_array_equal(rows, [[i, 1]])
    finally:
        service.close()
    assert sorted(times)[2] < 0.05, times  # far below the 200 ms window
    assert fake.sizes == [1] * 6


async def test_model_error_reaches_every_caller_of_the_batch_and_service_recovers() -> None:
    fake = FakeEmbedder(delay_s=0.02, fail_on="bad:0")
    service = AsyncEmbedder(fake, BatchingSettings(max_wait_ms=20))
    try:
        blocker = asyncio.ensure_future(service.embed(["7:7"]))  # occupies the worker so the rest queue up
        await asyncio.sleep(0.005)
        batch = [service.embed(["bad:0"])] + [service.embed(texts_for(i, 2)) for i in range(3)]
        outcomes = await asyncio.gather(*batch, return_exceptions=True)
        await blocker
        assert all(isinstance(o, ValueError) for o in outcomes), outcomes
        rows = await service.embed(["5:5"])  # still working afterwards
        np.testing.assert_array_equal(rows, [[5, 5]])
    finally:
        service.close()


async def test_wrong_row_count_is_an_error() -> None:
    class Short(FakeEmbedder):
        def embed(self, texts: Sequence[str], *, progress: bool = False) -> np.ndarray:
            return np.zeros((len(texts) - 1, 2), np.float32)

    service = AsyncEmbedder(Short())
    try:
        with pytest.raises(RuntimeError, match="shape"):
            await service.embed(["1:1", "1:2"])
    finally:
        service.close()


async def test_cancelled_caller_does_not_break_the_worker() -> None:
    fake = FakeEmbedder(delay_s=0.05)
    service = AsyncEmbedder(fake)
    try:
        task = asyncio.ensure_future(service.embed(["1:1"]))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        np.testing.assert_array_equal(await service.embed(["2:2"]), [[2, 2]])
    finally:
        service.close()


async def test_close_is_clean() -> None:
    fake = FakeEmbedder(delay_s=0.05)
    service = AsyncEmbedder(fake)
    running = asyncio.ensure_future(service.embed(["1:1"]))
    await asyncio.sleep(0.01)  # the worker is inside the model call
    queued = asyncio.ensure_future(service.embed(["2:2"]))
    await asyncio.sleep(0)
    t = time.perf_counter()
    service.close()
    assert time.perf_counter() - t < 1.0
    assert not service._worker.is_alive()
    np.testing.assert_array_equal(await running, [[1, 1]])  # the batch in progress finishes
    with pytest.raises(EmbedderClosed):
        await queued
    with pytest.raises(EmbedderClosed):
        await service.embed(["3:3"])
    service.close()  # idempotent


async def test_empty_and_string_inputs() -> None:
    service = AsyncEmbedder(FakeEmbedder())
    try:
        assert (await service.embed([])).shape == (0, 2)
        with pytest.raises(TypeError):
            await service.embed("1:1")
        assert service.name == "fake" and service.dim == 2
    finally:
        service.close()


async def test_loop_lag_probe_sees_a_blocked_loop() -> None:
    probe = LoopLagProbe(interval_s=0.005)
    probe.start()
    await asyncio.sleep(0.03)
    time.sleep(0.05)  # blocks the loop
    await asyncio.sleep(0.02)
    summary = await probe.stop()
    assert summary["samples"] >= 3
    assert summary["max_ms"] >= 30


class FastEmbedder(FakeEmbedder):
    fast = True  # as the static backend says of itself

    def __init__(self) -> None:
        super().__init__(delay_s=0.0)


async def test_a_fast_embedder_runs_inline_on_the_event_loop():
    from app.embedding.batcher import InlineEmbedder, request_path_embedder

    fake = FastEmbedder()
    service = request_path_embedder(fake)
    assert isinstance(service, InlineEmbedder) and service.name == "fake" and service.dim == 2
    rows = await asyncio.gather(*(service.embed(texts_for(i, 2)) for i in range(3)))
    for i, out in enumerate(rows):
        assert out.tolist() == [[i, 0], [i, 1]]
    assert fake.threads == {threading.current_thread().name}  # no worker thread, no hop
    assert (service.calls, service.batched_requests, service.texts) == (3, 3, 6)  # the metrics' counters
    assert (await service.embed([])).shape == (0, 2)
    service.close()
    with pytest.raises(EmbedderClosed):
        await service.embed(["1:1"])


async def test_the_batching_mode_overrides_what_the_embedder_says():
    from app.embedding.batcher import InlineEmbedder, request_path_embedder

    batched = request_path_embedder(FastEmbedder(), BatchingSettings(mode="batched"))
    assert isinstance(batched, AsyncEmbedder)
    batched.close()
    assert isinstance(request_path_embedder(FakeEmbedder(), BatchingSettings(mode="inline")), InlineEmbedder)
    slow = request_path_embedder(FakeEmbedder())  # auto: a transformer is batched on its thread
    assert isinstance(slow, AsyncEmbedder)
    slow.close()


async def test_an_inline_model_error_reaches_the_caller():
    from app.embedding.batcher import InlineEmbedder

    service = InlineEmbedder(FakeEmbedder(delay_s=0, fail_on="0:1"))
    with pytest.raises(ValueError, match="model exploded"):
        await service.embed(texts_for(0, 2))
    assert (await service.embed(["2:3"])).tolist() == [[2, 3]]
