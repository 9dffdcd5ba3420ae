"""Embedding on the request path: inline for a model that costs microseconds, else off the event loop with
dynamic micro-batching (`request_path_embedder` picks).

Micro-batching: concurrent requests put (texts, future) on a queue; one worker thread (the model is not
re-entrant) takes everything queued, makes ONE model call and hands each caller its own rows. A batched call
costs far less per text than one call per request, so a transformer's throughput under load approaches its
batched rate. For a static model the hop is the cost: a query embeds in ~0.1 ms on the loop, and the thread
hand-off, the queue and the loop's wake-up took longer than that (docs/benchmarks.md, "The request path").
"""

from __future__ import annotations

import asyncio
import os
import queue
import threading
import time
from dataclasses import dataclass
from typing import Sequence, Union

import numpy as np

from app.config import BatchingSettings
from app.embedding.backends import Embedder


class EmbedderClosed(RuntimeError):
    """embed() was called on, or was waiting in, a closed AsyncEmbedder."""


@dataclass
class _Job:
    texts: list[str]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[np.ndarray]


_STOP = object()


def _settle(job: _Job, result: np.ndarray | None, error: BaseException | None) -> None:
    """Resolve a job's future from the worker thread (on its own loop; a cancelled caller is skipped)."""

    def apply() -> None:
        if job.future.done():  # the caller was cancelled meanwhile
            return
        if error is not None:
            job.future.set_exception(error)
        else:
            job.future.set_result(result)  # type: ignore[arg-type]

    try:
        job.loop.call_soon_threadsafe(apply)
    except RuntimeError:  # the caller's loop is closed: nobody is waiting any more
        pass


class _RequestPath:
    """What both request-path embedders share: the model, its name and dimension, the counters the metrics
    read, and the checks of embed()'s argument."""

    def __init__(self, embedder: Embedder) -> None:
        self.embedder = embedder
        self._closed = False
        self.calls = 0  # model calls made (exported as metrics)
        self.batched_requests = 0  # embed() requests served
        self.texts = 0  # texts embedded
        self.model_seconds = 0.0  # time inside the model (what a request's embedding costs at the least)

    @property
    def name(self) -> str:
        return self.embedder.name

    @property
    def dim(self) -> int:
        return self.embedder.dim

    def _accept(self, texts: Sequence[str]) -> list[str]:
        if isinstance(texts, str):  # would be split into characters by list()
            raise TypeError("embed() takes a sequence of strings, not a single string")
        if self._closed:
            raise EmbedderClosed("the embedder is closed")
        return list(texts)


class InlineEmbedder(_RequestPath):
    """Embeds on the event loop, in the caller's turn: for models whose call costs less than a thread hop."""

    def __init__(self, embedder: Embedder) -> None:
        super().__init__(embedder)
        # A request's texts are one to a few: the tokenizer's thread pool (Rust, rayon) costs more than it saves on
        # them (the tokenizer's CPU per jisi-route request, profiled: 0.50 against 0.73 ms; bench/profile_path.py).
        # Process-wide, so only where the embedder runs inline: the gateway, whose request path is all it embeds.
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        texts = self._accept(texts)
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        started = time.perf_counter()
        try:
            out = np.asarray(self.embedder.embed(texts))
        finally:
            self.model_seconds += time.perf_counter() - started
            self.calls += 1
            self.batched_requests += 1
            self.texts += len(texts)
        if out.ndim != 2 or out.shape[0] != len(texts):
            raise RuntimeError(f"embedder returned shape {out.shape} for {len(texts)} texts")
        return out

    def close(self) -> None:
        self._closed = True


class AsyncEmbedder(_RequestPath):
    """Micro-batches concurrent embed() calls into single model calls on one worker thread."""

    def __init__(self, embedder: Embedder, batching: BatchingSettings | None = None) -> None:
        super().__init__(embedder)
        self.batching = batching or BatchingSettings()
        self._queue: queue.SimpleQueue[_Job | object] = queue.SimpleQueue()
        self._carry: _Job | None = None  # taken from the queue but did not fit the last batch
        self._last_batch_jobs = 0  # >1 means we are under load: worth holding a batch open briefly
        self._worker = threading.Thread(target=self._run, name="embed-batcher", daemon=True)
        self._worker.start()

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        texts = self._accept(texts)
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        loop = asyncio.get_running_loop()
        job = _Job(texts, loop, loop.create_future())
        self._queue.put(job)
        return await job.future

    def close(self) -> None:
        """Stop the worker after the batch in progress; anything still queued fails with EmbedderClosed."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(_STOP)
        self._worker.join(timeout=5.0)

    # -- the worker thread ------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            batch = self._gather()
            if batch is None:
                break
            if self._closed:  # closed while these waited: fail them now rather than delay shutdown
                for job in batch:
                    _settle(job, None, EmbedderClosed("the embedder was closed before this request was embedded"))
                break
            self._call(batch)
        self._fail_queued()

    def _gather(self) -> list[_Job] | None:
        """One batch: whatever is queued now, plus, under load, what arrives within max_wait_ms."""
        first = self._carry if self._carry is not None else self._queue.get()
        self._carry = None
        if first is _STOP:
            return None
        assert isinstance(first, _Job)
        batch, size = [first], len(first.texts)
        limit = self.batching.max_batch
        # Taking what is already queued costs nothing; waiting for more only pays off when requests are
        # arriving concurrently. At concurrency 1 the queue is empty and the last batch held one request,
        # so the request goes straight to the model with no added latency.
        deadline: float | None = None
        while size < limit:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                if deadline is None:
                    under_load = len(batch) > 1 or self._last_batch_jobs > 1
                    if not under_load or self.batching.max_wait_ms <= 0:
                        break
                    deadline = time.perf_counter() + self.batching.max_wait_ms / 1000
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                try:
                    item = self._queue.get(timeout=remaining)
                except queue.Empty:
                    break
            if item is _STOP or (isinstance(item, _Job) and size + len(item.texts) > limit):
                self._carry = item  # type: ignore[assignment]  # stop handled, or job served, next round
                break
            assert isinstance(item, _Job)
            batch.append(item)
            size += len(item.texts)
        self._last_batch_jobs = len(batch)
        return batch

    def _call(self, batch: list[_Job]) -> None:
        texts = [t for job in batch for t in job.texts]
        started = time.perf_counter()
        try:
            out = np.asarray(self.embedder.embed(texts))
            if out.ndim != 2 or out.shape[0] != len(texts):
                raise RuntimeError(f"embedder returned shape {out.shape} for {len(texts)} texts")
        except BaseException as exc:  # every caller of this batch sees the model's error
            for job in batch:
                _settle(job, None, exc)
            return
        finally:
            self.model_seconds += time.perf_counter() - started
            self.calls += 1
            self.batched_requests += len(batch)
            self.texts += len(texts)
        start = 0
        for job in batch:
            end = start + len(job.texts)
            _settle(job, out[start:end].copy(), None)  # a copy: callers must not share one buffer
            start = end

    def _fail_queued(self) -> None:
        pending = [self._carry] if isinstance(self._carry, _Job) else []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, _Job):
                pending.append(item)
        for job in pending:
            _settle(job, None, EmbedderClosed("the embedder was closed before this request was embedded"))


RequestPathEmbedder = Union[AsyncEmbedder, InlineEmbedder]


def request_path_embedder(embedder: Embedder, batching: BatchingSettings | None = None) -> RequestPathEmbedder:
    """Inline for an embedder that says it is fast (`fast = True`: the static backend), unless
    `embedding_batching.mode` says otherwise; micro-batched on a worker thread for the others."""
    batching = batching or BatchingSettings()
    inline = batching.mode == "inline" or (batching.mode == "auto" and getattr(embedder, "fast", False))
    return InlineEmbedder(embedder) if inline else AsyncEmbedder(embedder, batching)
