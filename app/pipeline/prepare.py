"""One JiSi request up to its answer: embed -> support -> fan-out -> mix -> switch, one method per step.

Data flows one way: the request becomes engine inputs, the engine's decisions become upstream calls
(fanout.py), and the calls become either the answer or an aggregation to run (aggregate.py), with a trace
(trace.py) of every decision, call, cost and phase time.

Over 400 lines on purpose: one method per step of the method (plan, forecast, shortcut, cascade, fan-out, decide,
final set, switch, single model) on the one per-request state they share (_Request); the steps' own
mechanics already live in fanout.py, aggregate.py, budget.py and the engine.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from app import engine
from app.bank.reader import Bank
from app.embedding.batcher import RequestPathEmbedder
from app.engine import JiSiParams, LiveResponses, Mode
from app.engine.cost import CostModel
from app.errors import ErrorKind, GatewayError, bad_request
from app.pipeline.aggregate import Aggregation, aggregation_messages, choose_aggregator
from app.pipeline.budget import Budget
from app.pipeline.fanout import LiveEmbeddings, call_all, response_text
from app.pipeline.trace import Trace, named_scores
from app.protocol.chat import ChatCompletionRequest
from app.upstream.call import CallResult, UpstreamError, estimate_tokens, prompt_text
from app.upstream.pool import UpstreamPool
from app.upstream.pricing import upstream_cost_usd

VIRTUAL_MODELS: dict[str, Mode] = {"jisi": "adaptive", "jisi-route": "route", "jisi-aggregate": "aggregate",
                                   "jisi-economy": "route"}
# a virtual model that serves one of the bank's named profiles (jisi-bank calibrate: `quality`, `economy`) instead
# of the quality profile every other one serves
PROFILE_MODELS: dict[str, str] = {"jisi-economy": "economy"}


@dataclass
class Prepared:
    """Decisions taken; what is left is either returning `answer` or running the `aggregation`."""

    trace: Trace
    answer: CallResult | None = None
    aggregation: Aggregation | None = None


@dataclass
class _Request:
    """What one request's steps share: its parameters, mode, upstream body, budget and what was answered."""

    params: JiSiParams
    mode: Mode
    body: dict[str, Any]
    budget: Budget
    trace: Trace
    prompt_tokens: int = 0
    estimate: dict[int, float] = field(default_factory=dict)  # forecast cost per eligible model
    expected: np.ndarray = field(default_factory=lambda: np.zeros(0))  # forecast completion tokens per model
    answered: dict[int, CallResult] = field(default_factory=dict)
    live_r: dict[int, np.ndarray] = field(default_factory=dict)  # r_k = f1(y_k) of each answer
    failed: set[int] = field(default_factory=set)  # failed or cancelled in this request: never called again

    def routed(self, call: CallResult) -> Prepared:
        self.trace.answered_with(call)
        return Prepared(trace=self.trace, answer=call)


class Pipeline:
    def __init__(self, bank: Bank, embedder: RequestPathEmbedder, pool: UpstreamPool, params: JiSiParams,
                 *, embed_system_prompt: bool = False, response_embedder: RequestPathEmbedder | None = None,
                 param_sources: dict[str, str] | None = None,
                 profiles: dict[str, tuple[JiSiParams, dict[str, str]]] | None = None) -> None:
        self.bank = bank
        self.embedder = embedder  # queries: e = f1(x)
        self.response_embedder = response_embedder or embedder  # live answers: r_k = f1(y_k)
        self.pool = pool
        self.params = params  # the defaults in force (settings over the bank's calibration over the paper's)
        self.param_sources = param_sources or {name: "default" for name in params.__dataclass_fields__}
        # the named profiles in force: quality (the defaults above) and, when the bank holds one, economy
        self.profiles = {"quality": (self.params, self.param_sources), **(profiles or {})}
        self.embed_system_prompt = embed_system_prompt
        # per bank model, the configured prices; NaN for an unpriced one (forecast from the bank's recorded costs,
        # as the evaluator does) and for an unserved one (never eligible)
        served = [pool.upstreams.get(m) for m in bank.models]
        self.costs = CostModel.of(
            np.array([u.input_usd_per_mtok if u and u.priced else np.nan for u in served], dtype=np.float64),
            np.array([u.output_usd_per_mtok if u and u.priced else np.nan for u in served], dtype=np.float64),
            bank.c, bank.present, bank.cost)

    def expected_cost(self, support_ids: np.ndarray, prompt_tokens: float) -> np.ndarray:
        """Each model's forecast cost on this request (the cost cap's and the cost weight's): app/engine/cost.py."""
        return self.costs.expected(support_ids, prompt_tokens)

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

    @staticmethod
    def profile_of(model: str) -> str:
        """The profile a virtual model serves (quality unless it names another)."""
        return PROFILE_MODELS.get(model, "quality")

    def serves(self, model: str) -> bool:
        """A virtual model this bank can serve: its profile is in the bank (jisi-economy needs `economy`)."""
        return model in VIRTUAL_MODELS and self.profile_of(model) in self.profiles

    def params_for(self, request: ChatCompletionRequest) -> JiSiParams:
        base = self.profiles[self.profile_of(request.model)][0]
        if request.jisi is None:
            return base
        try:
            return base.with_overrides(request.jisi.param_overrides())
        except ValueError as exc:
            raise bad_request(str(exc), "jisi") from None

    def eligible(self) -> np.ndarray:
        """Models that can be called now: served, and their circuit not open (the next-best take their place)."""
        return np.array([m in self.pool and self.pool.available(m) for m in self.bank.models], dtype=bool)

    # -- the request path --------------------------------------------------------------------------

    async def plan(self, request: ChatCompletionRequest, params: JiSiParams,
                   trace: Trace) -> tuple[engine.Plan, np.ndarray]:
        """Steps 1-3 (embed, search, support set, coarse scores, candidates, the shortcut's confidence), timed
        into the trace."""
        t = time.perf_counter()
        e = (await self.embedder.embed([self.query_text(request)]))[0]
        t = trace.phase("embed_query", t)
        sims, ids = self.bank.search(e, params.max_support + 1)
        t = trace.phase("search", t)
        eligible = self.eligible()
        if not eligible.any():
            raise GatewayError(ErrorKind.UNAVAILABLE, "every upstream is unavailable (circuits open after repeated "
                               "failures); retry shortly", code="upstreams_unavailable")
        prompt_tokens = estimate_tokens(prompt_text(request.upstream_body(model="")))
        planned = engine.plan(sims, ids, self.bank.v, self.bank.present, params, eligible, prior=self.bank.mu,
                              cost=lambda support_ids: self.expected_cost(support_ids, prompt_tokens))
        trace.phase("plan", t)
        return planned, planned.eligible  # callable, and with evidence in the support set

    async def prepare(self, request: ChatCompletionRequest) -> Prepared:
        """Every step up to the answer, or up to the aggregation still to run."""
        req = self._start(request)
        planned, eligible = await self.plan(request, req.params, req.trace)
        self._trace_plan(req.trace, planned)
        self._forecast(req, planned, eligible)
        candidates = [int(j) for j in planned.candidates]
        if planned.shortcut:
            return await self._shortcut(req, planned, eligible)
        if req.params.cascade is not None:
            return await self._cascade(req, planned, eligible)
        if not req.budget.fits(sum(req.estimate[j] for j in candidates)):
            return await self._single_model(req, planned, eligible)
        await self._fan_out(req, candidates)
        decision = self._decide(req, planned, eligible)
        final = await self._final_set(req, decision)
        return self._switch(req, planned, eligible, final)

    # -- the steps ---------------------------------------------------------------------------------

    def _start(self, request: ChatCompletionRequest) -> _Request:
        mode: Mode = request.jisi.mode if request.jisi and request.jisi.mode else VIRTUAL_MODELS[request.model]
        trace = Trace(requested_mode=mode, deadline=self.pool.deadline(), bank=self.bank.manifest.build_id)
        if mode != "route" and (request.tools or request.response_format):
            mode = "route"  # an aggregator must not rewrite a tool call or a structured answer
            trace.notes.append("tools or response_format: forced route mode")
        return _Request(params=self.params_for(request), mode=mode, body=request.upstream_body(model=""),
                        budget=Budget(request.jisi.max_cost_usd if request.jisi else None), trace=trace)

    def _trace_plan(self, trace: Trace, planned: engine.Plan) -> None:
        models, support = self.bank.models, planned.support
        trace.support = {"size": int(support.ids.size), "capped": support.capped, "tau": round(support.tau, 6)}
        if planned.confidence is not None:
            trace.support["leader_confidence"] = round(planned.confidence, 4)
        trace.g = named_scores(models, planned.coarse.g)
        trace.candidates = [models[j] for j in planned.candidates]
        trace.aggregator = models[planned.aggregator]

    def _forecast(self, req: _Request, planned: engine.Plan, eligible: np.ndarray) -> None:
        """The cost cap's forecast: each callable model's cost on this prompt at its support-set mean length."""
        ids = planned.support.ids
        req.prompt_tokens = estimate_tokens(prompt_text(req.body))
        req.expected = engine.expected_completion_tokens(self.bank.c[ids], self.bank.present[ids])
        cost = self.expected_cost(ids, req.prompt_tokens)
        req.estimate = {int(j): float(cost[j]) for j in np.flatnonzero(eligible)}

    async def _fan_out(self, req: _Request, candidates: list[int]) -> None:
        """Step 4: the candidates, concurrently, each answer embedded as it arrives."""
        trace, t = req.trace, time.perf_counter()
        live = LiveEmbeddings(self.response_embedder.embed, expected=len(candidates))
        try:
            req.failed |= await call_all(self.pool, self.bank.models, candidates, "candidate", req.body,
                                         req.answered, req.budget, trace, live)
            # the fan-out ends when every candidate answered, failed or was cancelled: waiting for one that
            # never answers is upstream time, not the gateway's; what embedding is left after it is ours
            t = trace.phase("fanout", t)
            await live.finish()
        finally:
            live.cancel()  # a no-op once finished; stops the embedding if the request itself was cancelled
        trace.phase("embed_responses", t)
        if not req.answered:
            raise self._no_answer(trace)
        trace.answered = [self.bank.models[j] for j in req.answered]
        req.live_r = live.r

    def _no_answer(self, trace: Trace) -> GatewayError:
        if trace.remaining_s() <= 0:
            return GatewayError(ErrorKind.TIMEOUT, f"no upstream answered within the request deadline of "
                                f"{self.pool.resilience.request_deadline_s:g}s", code="deadline_exceeded",
                                details=trace.errors)
        if trace.errors and all(e.get("overloaded") or e.get("circuit_open") for e in trace.errors):
            return GatewayError(ErrorKind.UNAVAILABLE, "every candidate upstream is at its concurrency limit with "
                                "a full queue; retry shortly", code="upstreams_overloaded", details=trace.errors)
        return GatewayError(ErrorKind.UPSTREAM_FAILED, "every candidate upstream failed: " + "; ".join(
            f"{e['model']}: {e['message']}" for e in trace.errors), code="upstreams_failed", details=trace.errors)

    def _decide(self, req: _Request, planned: engine.Plan, eligible: np.ndarray,
                mode: Mode | None = None) -> engine.Decision:
        """Steps 5-8: the mixed score with the live answers, the fine score, the adaptive switch.

        An empty answer is no answer: when another candidate said something, the one that answered empty is
        left out of the final set (o1-mini answered empty on 5 % of MATH level 5, always scored wrong)."""
        t, answered = time.perf_counter(), req.answered
        # in candidate order, not arrival order: the sums over k then run in the replay's order, bit for bit
        live_models = np.array([int(j) for j in planned.candidates if int(j) in answered], dtype=np.int64)
        responses = LiveResponses(
            models=live_models, r=np.stack([req.live_r[j] for j in live_models]),
            c=np.array([answered[j].usage.completion_tokens for j in live_models], float))
        empty = [j for j in live_models if _is_empty(answered[j])]
        if empty and len(empty) < len(live_models):
            eligible = eligible.copy()
            eligible[empty] = False
            req.trace.notes.extend(f"candidate {self.bank.models[j]} answered empty: not chosen" for j in empty)
        decision = engine.decide(planned, self.bank.view(planned.support.ids, live_models), responses, req.params,
                                 mode or req.mode, eligible, prior=self.bank.mu)
        req.trace.gf = named_scores(self.bank.models, decision.mixed.gf)
        req.trace.phase("decide", t)
        return decision

    async def _final_set(self, req: _Request, decision: engine.Decision) -> list[int]:
        """A^fm with every member answered: models that were not candidates are called now (reusing every
        candidate's answer), failed ones dropped, then the 13k-token truncation."""
        trace, models, answered = req.trace, self.bank.models, req.answered
        final = [int(j) for j in decision.final]
        missing = [j for j in final if j not in answered and j not in req.failed]
        affordable = [j for j in missing if req.budget.fits(req.estimate[j])]
        if len(affordable) < len(missing):
            trace.degraded.append("cost cap: skipped final-set models not yet called")
        if affordable and trace.remaining_s() <= 0:
            affordable = []
            trace.degraded.append("request deadline: skipped final-set models not yet called")
        if affordable:
            t = time.perf_counter()
            req.failed |= await call_all(self.pool, models, affordable, "final", req.body, answered, req.budget,
                                         trace)
            trace.phase("finals", t)
        lost = [models[j] for j in final if j in req.failed]
        if lost:  # never called twice in one request: the final set goes on without it
            trace.degraded.append(f"final set without {', '.join(lost)}: failed in this request")
        final = [j for j in final if j in answered]
        if not final:  # every final-set model failed or was unaffordable: the best answered candidate
            said = [j for j in answered if not _is_empty(answered[j])] or list(answered)
            final = [min(said, key=lambda j: (-decision.mixed.gf[j], j))]  # ties: lower index, not arrival
        final = [int(j) for j in engine.truncate_aggregatees(
            np.asarray(final), {j: answered[j].usage.completion_tokens for j in final}, req.params)]
        trace.final = [models[j] for j in final]
        return final

    def _switch(self, req: _Request, planned: engine.Plan, eligible: np.ndarray, final: list[int]) -> Prepared:
        """Eq. 5: one model answers, or the aggregator is asked to write the answer from the final set's."""
        trace, models, answered = req.trace, self.bank.models, req.answered
        best = answered[final[0]]
        if len(final) == 1:
            return req.routed(best)
        usable = eligible & np.array([j not in req.failed and m in self.pool and self.pool.available(m)
                                      for j, m in enumerate(models)], dtype=bool)
        aggregator = choose_aggregator(planned.coarse.g, planned.aggregator, usable, models, trace)
        if aggregator is None:
            trace.degraded.append("no aggregator left (every model by g failed or is unavailable): routed to the "
                                  "best response")
            return req.routed(best)
        if trace.remaining_s() <= 0:
            trace.degraded.append("request deadline: aggregation skipped, routed to the best response")
            return req.routed(best)
        agg_prompt = req.prompt_tokens + sum(answered[j].usage.completion_tokens for j in final)
        if not req.budget.fits(upstream_cost_usd(self.pool.upstreams[models[aggregator]], agg_prompt,
                                                 req.expected[aggregator])):
            trace.degraded.append("cost cap: aggregation skipped, routed to the best response")
            return req.routed(best)
        trace.mode, trace.answered_by = "aggregate", models[aggregator]
        messages = aggregation_messages(req.body["messages"], [response_text(answered[j]) for j in final])
        return Prepared(trace=trace, aggregation=Aggregation(models[aggregator], {**req.body, "messages": messages},
                                                             fallback=best))

    async def _shortcut(self, req: _Request, planned: engine.Plan, eligible: np.ndarray) -> Prepared:
        """The coarse leader is sure enough (P(it stays the leader) >= params.shortcut): call it alone and
        route to its answer. If it fails or answers empty, the next candidate is called instead (app/engine/
        shortcut.py, the replay's rule)."""
        trace, models = req.trace, self.bank.models
        trace.shortcut = True
        t = time.perf_counter()
        for j in [int(j) for j in planned.candidates]:
            if j in req.failed or not req.budget.fits(req.estimate[j]):
                continue
            req.failed |= await call_all(self.pool, models, [j], "candidate", req.body, req.answered, req.budget,
                                         trace)
            if j in req.answered and engine.shortcut_done(_is_empty(req.answered[j])):
                break
            if j in req.answered:
                trace.notes.append(f"shortcut: {models[j]} answered empty, the next candidate is called")
        trace.phase("fanout", t)
        answers = [j for j in req.answered if not _is_empty(req.answered[j])] or list(req.answered)
        if not answers:
            if not trace.errors:
                raise bad_request(f"max_cost_usd {req.budget.cap_usd:g} is below the estimated cost of every "
                                  "candidate", "jisi.max_cost_usd", "cost_cap_too_low")
            raise self._no_answer(trace)
        trace.answered = [models[j] for j in req.answered]
        trace.final = [models[answers[-1]]]
        return req.routed(req.answered[answers[-1]])

    async def _cascade(self, req: _Request, planned: engine.Plan, eligible: np.ndarray) -> Prepared:
        """The response-aware cascade (app/engine/cascade.py): the candidates one at a time, cheapest forecast
        first; after each answer the fine score over the answered ones, and a stop once the best answered leads
        the candidates still waiting by params.cascade; then the top of g^f among the answered routes. A call
        that fails or does not fit the cost cap is skipped (the replay's rule for a call without a record)."""
        trace, models, answered = req.trace, self.bank.models, req.answered
        forecast = np.full(len(models), np.nan)
        forecast[list(req.estimate)] = list(req.estimate.values())
        order = engine.cascade_order([int(j) for j in planned.candidates], forecast)
        decision = None
        for pos, j in enumerate(order):
            if j in req.failed or not req.budget.fits(req.estimate[j]):
                continue
            t = time.perf_counter()
            req.failed |= await call_all(self.pool, models, [j], "candidate", req.body, answered, req.budget, trace)
            t = trace.phase("fanout", t)
            if j not in answered:
                continue
            req.live_r[j] = (await self.response_embedder.embed([response_text(answered[j])]))[0]
            trace.phase("embed_responses", t)
            # the choice is among the answered models (the replay's rule): no further call after the cascade
            asked = np.zeros(len(models), bool)
            asked[list(answered)] = True
            decision = self._decide(req, planned, eligible & asked, "route")
            said = [int(c) for c in planned.candidates if int(c) in answered and not _is_empty(answered[int(c)])]
            waiting = [c for c in order[pos + 1:] if c not in req.failed]
            lead = engine.cascade_lead(decision.mixed.gf, said, waiting)
            trace.cascade.append({"model": models[j], "lead": None if not np.isfinite(lead) else round(lead, 6),
                                  "leader": models[int(decision.final[0])]})
            if engine.cascade_done(lead, req.params.cascade, waiting):
                break
        if decision is None:
            if not trace.errors:
                raise bad_request(f"max_cost_usd {req.budget.cap_usd:g} is below the estimated cost of every "
                                  "candidate", "jisi.max_cost_usd", "cost_cap_too_low")
            raise self._no_answer(trace)
        trace.answered = [models[j] for j in answered]
        choice = int(decision.final[0])
        trace.final = [models[choice]]
        return req.routed(answered[choice])

    async def _single_model(self, req: _Request, planned: engine.Plan, eligible: np.ndarray) -> Prepared:
        """The cap does not allow the fan-out: one call to the best-scored model that fits it."""
        models, trace, estimate = self.bank.models, req.trace, req.estimate
        by_g = engine.top_k(planned.coarse.g, len(models), eligible)
        fitting = [int(j) for j in by_g if req.budget.fits(estimate[int(j)])]
        if not fitting:
            cheapest = min(estimate, key=estimate.__getitem__)
            raise bad_request(
                f"max_cost_usd {req.budget.cap_usd:g} is below the estimated cost of the cheapest model "
                f"({models[cheapest]}, about ${estimate[cheapest]:.6f})", "jisi.max_cost_usd", "cost_cap_too_low")
        j = fitting[0]
        trace.degraded.append("cost cap: no fan-out, one model answered alone")
        t = time.perf_counter()
        try:
            answer = await self.pool.complete(models[j], req.body, "final", deadline=trace.deadline)
        except UpstreamError as exc:
            raise exc.client_error() from None
        trace.phase("fanout", t)
        trace.calls.append(answer)
        trace.final = [models[j]]
        return req.routed(answer)


def _is_empty(call: CallResult) -> bool:
    """An answer with neither text nor a tool call."""
    return not response_text(call).strip()
