"""POST /v1/jisi/route: steps 1-3 without any upstream call (neighbours, coarse scores, candidates, aggregator,
whether the confident shortcut would fire, and which parameters are in force and from where)."""

from __future__ import annotations

from typing import Any

import numpy as np

from app.pipeline.prepare import Pipeline
from app.pipeline.trace import Trace, named_scores
from app.protocol.chat import ChatCompletionRequest, RouteRequest


async def dry_run(pipeline: Pipeline, request: RouteRequest) -> dict[str, Any]:
    # a virtual model's profile (jisi-economy: the bank's economy profile); any other name plans as `jisi`
    chat = ChatCompletionRequest(model=request.model if pipeline.serves(request.model) else "jisi",
                                 messages=request.messages, jisi=request.jisi)
    params = pipeline.params_for(chat)
    profile = pipeline.profile_of(chat.model)
    overridden = set(request.jisi.param_overrides()) if request.jisi else set()
    text = pipeline.query_text(chat)
    trace = Trace(requested_mode="route")
    planned, _ = await pipeline.plan(chat, params, trace)
    bank, models = pipeline.bank, pipeline.bank.models
    neighbours = []
    for row, s in zip(planned.support.ids[: request.neighbours], planned.support.s):
        info = bank.query_info(int(row))
        correct = [models[j] for j in np.flatnonzero(bank.v[row] > 0.5)]
        neighbours.append({"text": info.text, "dataset": info.dataset, "index": info.index,
                           "similarity": round(float(s), 6), "correct_models": correct})
    return {
        "query": text,
        "support": {"size": int(planned.support.ids.size), "capped": planned.support.capped,
                    "tau": round(planned.support.tau, 6)},
        "neighbours": neighbours,
        "scores": {"g": named_scores(models, planned.coarse.g)},
        "candidates": [models[j] for j in planned.candidates],
        "aggregator": models[planned.aggregator],
        # the confident shortcut: whether only candidates[0] would be called, and how sure the coarse score is
        "shortcut": {"would_fire": planned.shortcut, "leader_confidence": planned.confidence,
                     "threshold": params.shortcut},
        "profile": profile,
        "params": params.__dict__,
        "param_sources": {name: ("request" if name in overridden else source)
                          for name, source in pipeline.profiles[profile][1].items()},
        "timings_ms": {k: round(v, 2) for k, v in trace.timings_ms.items()},
    }
