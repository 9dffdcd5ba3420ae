"""One JiSi request end to end: embed -> support -> fan-out -> mix -> switch -> answer.

Data flows one way: the request becomes engine inputs, the engine's decisions become upstream calls,
and the calls become the answer plus a trace of every decision, call, cost and phase time.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from app import engine
from app.aggregation import aggregation_messages
from app.bank import Bank
from app.budget import Budget
from app.embedding_service import AsyncEmbedder
from app.engine import JiSiParams, LiveResponses, Mode
from app.errors import APIError, bad_request
from app.live_embeddings import LiveEmbeddings
from app.pricing import estimate_cost_usd, estimate_tokens
from app.protocol import ChatCompletionRequest
from app.resilience import gather_quorum
from app.upstream import CallResult, UpstreamError, UpstreamPool, prompt_text

VIRTUAL_MODELS: dict[str, Mode] = {"jisi": "adaptive", "jisi-route": "route", "jisi-aggregate": "aggregate"}
UPSTREAM_PHASES = ("fanout", "finals", "aggregate")


@dataclass
class Trace:
    """Everything the response's `jisi` object reports."""

    requested_mode: str
    mode: str = "route"
    candidates: list[str] = field(default_factory=list)
    answered: list[str] = field(default_factory=list)
    final: list[str] = field(default_factory=list)
    aggregator: str | None = None
    answered_by: str | None = None
    finish_reason: str | None = None
    support: dict[str, Any] = field(default_factory=dict)
    g: dict[str, float] = field(default_factory=dict)
    gf: dict[str, float] = field(default_factory=dict)
    calls: list[CallResult] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    degraded: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    timings_ms: dict[str, float] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)
    deadline: float | None = None  # time.monotonic() by which the whole request must be answered

    def remaining_s(self) -> float:
        return float("inf") if self.deadline is None else self.deadline - time.monotonic()

    def phase(self, name: str, since: float) -> float:
        now = time.perf_counter()
        self.timings_ms[name] = self.timings_ms.get(name, 0.0) + 1000 * (now - since)
        return now

    @property
    def cost_usd(self) -> float:
        return sum(call.cost_usd for call in self.calls)

    def finish(self) -> None:
        self.timings_ms["total"] = 1000 * (time.perf_counter() - self.started)
        upstream = sum(self.timings_ms.get(p, 0.0) for p in UPSTREAM_PHASES)
        self.timings_ms["overhead"] = max(0.0, self.timings_ms["total"] - upstream)

    def summary(self) -> dict[str, Any]:
        return {
            "mode": self.mode, "requested_mode": self.requested_mode, "candidates": self.candidates,
            "answered": self.answered, "final": self.final, "aggregator": self.aggregator,
            "answered_by": self.answered_by, "support": self.support, "scores": {"g": self.g, "gf": self.gf},
            "calls": [c.summary() for c in self.calls], "upstream_calls": len(self.calls),
            "total_cost_usd": self.cost_usd, "degraded": bool(self.degraded),
            "degraded_reasons": self.degraded, "errors": self.errors, "notes": self.notes,
            "timings_ms": {k: round(v, 2) for k, v in self.timings_ms.items()},
        }


@dataclass
class Prepared:
    """Decisions taken; what is left is either returning `answer` or running the aggregator."""

    trace: Trace
    answer: CallResult | None = None
    aggregator: str | None = None
    aggregate_body: dict[str, Any] | None = None
    fallback: CallResult | None = None  # best candidate, if the aggregator fails


def response_text(call: CallResult) -> str:
    """What gets embedded and aggregated: the content, or the tool calls when there is none."""
    if call.text:
        return call.text
    tool_calls = call.message.get("tool_calls")
    return json.dumps(tool_calls, sort_keys=True) if tool_calls else ""


def _scores(models: list[str], values: np.ndarray) -> dict[str, float]:
    return {m: round(float(v), 6) for m, v in zip(models, values)}


class Pipeline:
    def __init__(self, bank: Bank, embedder: AsyncEmbedder, pool: UpstreamPool, params: JiSiParams,
                 *, embed_system_prompt: bool = False) -> None:
        self.bank = bank
        self.embedder = embedder
        self.pool = pool
        self.params = params
        self.embed_system_prompt = embed_system_prompt

    # -- inputs ----------------------------------------------------------------------------------

    def query_text(self, request: ChatCompletionRequest) -> str:
        """The text matched against the bank: the last user message (the bank holds bare questions).

        With embed_system_prompt, the system prompt is prepended (useful when it carries the task).
        """
        users = [m for m in request.messages if m.role == "user"]
        text = (users[-1] if users else request.messages[-1]).text()
        if self.embed_system_prompt:
            system = "\n".join(m.text() for m in request.messages if m.role in ("system", "developer"))
            text = f"{system}\n{text}" if system else text
        if not text.strip():
            raise bad_request("the last user message has no text to route on", "messages")
        return text

    def params_for(self, request: ChatCompletionRequest) -> JiSiParams:
        if request.jisi is None:
            return self.params
        try:
            return self.params.with_overrides(request.jisi.param_overrides())
        except ValueError as exc:
            raise bad_request(str(exc), "jisi") from None

    def eligible(self) -> np.ndarray:
        """Models that can be called now: served, and their circuit not open (the next-best take their place)."""
        return np.array([m in self.pool and self.pool.available(m) for m in self.bank.models], dtype=bool)

    # -- the request path --------------------------------------------------------------------------

    async def plan(self, request: ChatCompletionRequest, params: JiSiParams,
                   trace: Trace) -> tuple[engine.Plan, np.ndarray]:
        """Steps 1-3 (embed, search, support set, coarse scores, candidates), timed into the trace."""
        t = time.perf_counter()
        e = (await self.embedder.embed([self.query_text(request)]))[0]
        t = trace.phase("embed_query", t)
        sims, ids = self.bank.search(e, params.max_support + 1)
        t = trace.phase("search", t)
        eligible = self.eligible()
        if not eligible.any():
            raise APIError(503, "every upstream is unavailable (circuits open after repeated failures); retry "
                           "shortly", "upstream_error", code="upstreams_unavailable")
        planned = engine.plan(sims, ids, self.bank.v, self.bank.present, params, eligible)
        trace.phase("plan", t)
        return planned, eligible

    async def prepare(self, request: ChatCompletionRequest) -> Prepared:
        params = self.params_for(request)
        mode: Mode = (request.jisi.mode if request.jisi and request.jisi.mode else VIRTUAL_MODELS[request.model])
        trace = Trace(requested_mode=mode, deadline=self.pool.deadline())
        if mode != "route" and (request.tools or request.response_format):
            mode = "route"  # an aggregator must not rewrite a tool call or a structured answer
            trace.notes.append("tools or response_format: forced route mode")
        budget = Budget(request.jisi.max_cost_usd if request.jisi else None)
        body = request.upstream_body(model="")
        models = self.bank.models

        planned, eligible = await self.plan(request, params, trace)
        support = planned.support
        trace.support = {"size": int(support.ids.size), "capped": support.capped, "tau": round(support.tau, 6)}
        trace.g = _scores(models, planned.coarse.g)
        trace.candidates = [models[j] for j in planned.candidates]
        trace.aggregator = models[planned.aggregator]
        t = time.perf_counter()

        prompt_tokens = estimate_tokens(prompt_text(body))
        expected = self._expected_completion_tokens(support.ids)
        estimate = {j: estimate_cost_usd(self.pool.upstreams[models[j]], prompt_tokens, expected[j])
                    for j in np.flatnonzero(eligible)}
        candidates = [int(j) for j in planned.candidates]
        if not budget.fits(sum(estimate[j] for j in candidates)):
            return await self._single_model(planned, estimate, budget, body, trace)

        answered: dict[int, CallResult] = {}
        live = LiveEmbeddings(self.embedder.embed, expected=len(candidates))
        try:
            failed = await self._call_all(candidates, "candidate", body, answered, budget, trace, live)
            # the fan-out ends when every candidate answered, failed or was cancelled: waiting for one that
            # never answers is upstream time, not the gateway's; what embedding is left after it is ours
            t = trace.phase("fanout", t)
            await live.finish()
        finally:
            live.cancel()  # a no-op once finished; stops the embedding if the request itself was cancelled
        t = trace.phase("embed_responses", t)
        if not answered and trace.remaining_s() <= 0:
            raise APIError(504, f"no upstream answered within the request deadline of "
                           f"{self.pool.resilience.request_deadline_s:g}s", "upstream_error",
                           code="deadline_exceeded", details=trace.errors)
        if not answered and trace.errors and all(e.get("overloaded") or e.get("circuit_open") for e in trace.errors):
            raise APIError(503, "every candidate upstream is at its concurrency limit with a full queue; retry "
                           "shortly", "upstream_error", code="upstreams_overloaded", details=trace.errors)
        if not answered:
            raise APIError(502, "every candidate upstream failed: " + "; ".join(
                f"{e['model']}: {e['message']}" for e in trace.errors), "upstream_error",
                code="upstreams_failed", details=trace.errors)
        trace.answered = [models[j] for j in answered]

        live_models = np.fromiter(answered, dtype=np.int64)
        responses = LiveResponses(models=live_models, r=np.stack([live.r[j] for j in live_models]),
                                  c=np.array([answered[j].usage.completion_tokens for j in live_models], float))
        decision = engine.decide(planned, self.bank.view(support.ids, live_models), responses, params, mode,
                                 eligible)
        trace.gf = _scores(models, decision.mixed.gf)
        final = [int(j) for j in decision.final]
        t = trace.phase("decide", t)

        # A^fm may hold models that were not candidates: call them now (reusing every C response)
        missing = [j for j in final if j not in answered and j not in failed]  # no retry of a failed candidate
        affordable = [j for j in missing if budget.fits(estimate[j])]
        if len(affordable) < len(missing):
            trace.degraded.append("cost cap: skipped final-set models not yet called")
        if affordable and trace.remaining_s() <= 0:
            affordable = []
            trace.degraded.append("request deadline: skipped final-set models not yet called")
        if affordable:
            failed |= await self._call_all(affordable, "final", body, answered, budget, trace)
            t = trace.phase("finals", t)
        lost = [models[j] for j in final if j in failed]
        if lost:  # never called twice in one request: the final set goes on without it
            trace.degraded.append(f"final set without {', '.join(lost)}: failed in this request")
        final = [j for j in final if j in answered]
        if not final:  # every final-set model failed or was unaffordable: the best answered candidate
            final = [max(answered, key=lambda j: decision.mixed.gf[j])]
        final = [int(j) for j in engine.truncate_aggregatees(
            np.asarray(final), {j: answered[j].usage.completion_tokens for j in final}, params)]
        trace.final = [models[j] for j in final]
        best = answered[final[0]]
        if len(final) == 1:
            trace.mode, trace.answered_by, trace.finish_reason = "route", best.model, best.finish_reason
            return Prepared(trace=trace, answer=best)

        aggregator = self._aggregator(planned, failed, eligible, trace)
        if aggregator is None:
            trace.degraded.append("no aggregator left (every model by g failed or is unavailable): routed to the "
                                  "best response")
            trace.mode, trace.answered_by, trace.finish_reason = "route", best.model, best.finish_reason
            return Prepared(trace=trace, answer=best)
        responses = [response_text(answered[j]) for j in final]
        agg_prompt = prompt_tokens + sum(answered[j].usage.completion_tokens for j in final)
        agg_estimate = estimate_cost_usd(self.pool.upstreams[models[aggregator]], agg_prompt, expected[aggregator])
        if trace.remaining_s() <= 0:
            trace.degraded.append("request deadline: aggregation skipped, routed to the best response")
            trace.mode, trace.answered_by, trace.finish_reason = "route", best.model, best.finish_reason
            return Prepared(trace=trace, answer=best)
        if not budget.fits(agg_estimate):
            trace.degraded.append("cost cap: aggregation skipped, routed to the best response")
            trace.mode, trace.answered_by, trace.finish_reason = "route", best.model, best.finish_reason
            return Prepared(trace=trace, answer=best)
        trace.mode, trace.answered_by = "aggregate", models[aggregator]
        aggregate_body = {**body, "messages": aggregation_messages(body["messages"], responses)}
        return Prepared(trace=trace, aggregator=models[aggregator], aggregate_body=aggregate_body, fallback=best)

    async def complete(self, request: ChatCompletionRequest) -> tuple[CallResult, Trace]:
        """Non-streaming: the answering call and the trace."""
        prepared = await self.prepare(request)
        trace = prepared.trace
        if prepared.answer is not None:
            trace.finish()
            return prepared.answer, trace
        t = time.perf_counter()
        try:
            answer = await self.pool.complete(prepared.aggregator, prepared.aggregate_body, "aggregator",
                                              deadline=trace.deadline)
            trace.calls.append(answer)
            trace.finish_reason = answer.finish_reason
        except UpstreamError as exc:
            answer = self.fall_back(prepared, exc)
        trace.phase("aggregate", t)
        trace.finish()
        return answer, trace

    def fall_back(self, prepared: Prepared, exc: UpstreamError) -> CallResult:
        """The aggregator failed: answer with the best candidate response, and say so."""
        trace = prepared.trace
        trace.errors.append(exc.summary())
        trace.degraded.append(f"aggregator {exc.model} failed: answered with the best candidate")
        trace.mode, trace.answered_by = "route", prepared.fallback.model
        trace.finish_reason = prepared.fallback.finish_reason
        return prepared.fallback

    # -- helpers -----------------------------------------------------------------------------------

    def _aggregator(self, planned: engine.Plan, failed: set[int], eligible: np.ndarray,
                    trace: Trace) -> int | None:
        """A_agg = argmax g, among the models that have not failed in this request and can be called now.

        A model that timed out or was cancelled as a candidate is never called again for the same request
        (issue 11: a hung natural aggregator cost a second 30 s); the next-best by g takes its place."""
        usable = eligible & np.array([j not in failed and m in self.pool and self.pool.available(m)
                                      for j, m in enumerate(self.bank.models)], dtype=bool)
        ranked = engine.top_k(planned.coarse.g, 1, usable)
        if ranked.size == 0:
            return None
        chosen = int(ranked[0])
        if chosen != planned.aggregator:
            models = self.bank.models
            trace.degraded.append(f"aggregator {models[planned.aggregator]} failed in this request: "
                                  f"{models[chosen]} aggregates instead")
            trace.aggregator = models[chosen]
        return chosen

    async def _call(self, j: int, body: dict[str, Any], role: str, trace: Trace,
                    live: LiveEmbeddings | None) -> CallResult:
        try:
            result = await self.pool.complete(self.bank.models[j], body, role, deadline=trace.deadline)
        except BaseException:
            if live is not None:
                live.failed()
            raise
        if live is not None:
            live.answered(j, response_text(result))  # embedded right away, while slower candidates answer
        return result

    async def _call_all(self, models: list[int], role: str, body: dict[str, Any], answered: dict[int, CallResult],
                        budget: Budget, trace: Trace, live: LiveEmbeddings | None = None) -> set[int]:
        """Call these models concurrently; record answers in `answered`, failures in the trace (degraded).

        Candidates stop at the quorum (plus a grace period); whoever is still running then, or at the
        request deadline, is cancelled and counted as failed so it is not called again as a final model.
        """
        names = self.bank.models
        settings = self.pool.resilience
        quorum = settings.quorum_of(len(models)) if role == "candidate" else len(models)
        calls = {j: self._call(j, body, role, trace, live) for j in models}
        # a safety net just past the deadline: the calls' own timeouts (clearer errors) normally fire first
        results, after_quorum, at_deadline = await gather_quorum(
            calls, quorum, settings.quorum_grace_s, (trace.deadline or self.pool.deadline()) + 0.1,
            settings.quorum_grace_ratio)
        failed: set[int] = set(after_quorum) | set(at_deadline)
        for j, when in [*((j, "after quorum") for j in after_quorum), *((j, "at the request deadline")
                                                                        for j in at_deadline)]:
            self.pool.record_unanswered(names[j])
            trace.errors.append({"model": names[j], "status": None, "timeout": True, "overloaded": False,
                                 "circuit_open": False, "message": f"no answer: cancelled {when}"})
            trace.degraded.append(f"{role} {names[j]} cancelled {when}")
        for j, result in results.items():
            if isinstance(result, UpstreamError):
                failed.add(j)
                trace.errors.append(result.summary())
                trace.degraded.append(f"{role} {names[j]} failed")
            elif isinstance(result, BaseException):
                raise result
            else:
                answered[j] = result
                trace.calls.append(result)
                budget.spend(result.cost_usd)
        return failed

    def _expected_completion_tokens(self, support_ids: np.ndarray) -> np.ndarray:
        """Per model, the mean completion tokens over the support set: the cost cap's forecast."""
        present = self.bank.present[support_ids]
        c = self.bank.c[support_ids]
        counts = present.sum(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(counts > 0, (c * present).sum(axis=0) / counts, 0.0)
        fallback = float(mean[counts > 0].mean()) if np.any(counts > 0) else 256.0
        return np.where(counts > 0, mean, fallback)

    async def _single_model(self, planned: engine.Plan, estimate: dict[int, float], budget: Budget,
                            body: dict[str, Any], trace: Trace) -> Prepared:
        """The cap does not allow the fan-out: one call to the best-scored model that fits it."""
        models = self.bank.models
        by_g = engine.top_k(planned.coarse.g, len(models), self.eligible())
        fitting = [int(j) for j in by_g if budget.fits(estimate[int(j)])]
        if not fitting:
            cheapest = min(estimate, key=estimate.get)
            raise bad_request(
                f"max_cost_usd {budget.cap_usd:g} is below the estimated cost of the cheapest model "
                f"({models[cheapest]}, about ${estimate[cheapest]:.6f})", "jisi.max_cost_usd", "cost_cap_too_low")
        j = fitting[0]
        trace.degraded.append("cost cap: no fan-out, one model answered alone")
        t = time.perf_counter()
        try:
            answer = await self.pool.complete(models[j], body, "final", deadline=trace.deadline)
        except UpstreamError as exc:
            raise exc.api_error() from None
        trace.phase("fanout", t)
        trace.calls.append(answer)
        trace.mode, trace.final, trace.answered_by = "route", [models[j]], models[j]
        trace.finish_reason = answer.finish_reason
        return Prepared(trace=trace, answer=answer)
