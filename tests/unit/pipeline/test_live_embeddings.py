"""Candidate answers are embedded as they arrive; near-simultaneous ones share a model call."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from app.pipeline.fanout import COALESCE_S, LiveEmbeddings

pytestmark = pytest.mark.anyio


class RecordingEmbed:
    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    async def __call__(self, texts: list[str]) -> np.ndarray:
        self.calls.append(list(texts))
        await asyncio.sleep(0.01)
        return np.array([[float(len(t)), 1.0] for t in texts], np.float32)


async def test_answers_arriving_together_share_one_call() -> None:
    embed = RecordingEmbed()
    live = LiveEmbeddings(embed, expected=3)
    for j, text in enumerate(["a", "bb", "ccc"]):
        live.answered(j, text)
    await live.finish()
    assert embed.calls == [["a", "bb", "ccc"]]
    assert {j: float(v[0]) for j, v in live.r.items()} == {0: 1.0, 1: 2.0, 2: 3.0}


async def test_spread_answers_are_embedded_while_the_others_still_run() -> None:
    embed = RecordingEmbed()
    live = LiveEmbeddings(embed, expected=3)
    live.answered(0, "first")
    await asyncio.sleep(COALESCE_S + 0.03)
    assert embed.calls == [["first"]] and 0 in live.r  # done before the others answered
    live.failed()  # a failed candidate is not waited for
    live.answered(2, "last")
    await live.finish()
    assert embed.calls == [["first"], ["last"]] and set(live.r) == {0, 2}


async def test_finish_returns_with_cancelled_stragglers_and_nothing_answered() -> None:
    embed = RecordingEmbed()
    live = LiveEmbeddings(embed, expected=2)  # neither answers nor fails (cancelled after a quorum)
    await asyncio.wait_for(live.finish(), 1)
    assert embed.calls == [] and live.r == {}


async def test_an_embedding_error_reaches_finish() -> None:
    async def broken(texts: list[str]) -> np.ndarray:
        raise RuntimeError("model down")

    live = LiveEmbeddings(broken, expected=1)
    live.answered(0, "x")
    with pytest.raises(RuntimeError, match="model down"):
        await live.finish()
