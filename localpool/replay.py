"""`jisi-pool replay`: one OpenAI-compatible server that answers as every model of a set of benchmark records,
with that model's RECORDED answer to the recorded question asked.

Why: parity checks, benchmarks and the demo need upstreams whose answers are the ones the evaluator scores.
Pointed at this server, the gateway sees for each (model, question) exactly the response, usage and (modelled)
latency that `jisi-bank evaluate` replays offline, so what the gateway does online can be compared with what the
evaluator measured, question for question, at no cost and without a GPU.

What is served: the records `jisi-bank evaluate` selects (the same --records/--datasets/--models/--max-queries/
--seed options), restricted to the evaluator's test part (default), its train part, or all rows. A request asks
the question of its last user message; it matches a served row when, whitespace-normalised, it equals the row's
bare question, its recorded prompt, or `jisi-bank collect`'s default template applied to the question. Each
call waits `bank_builder.records.latency.call_latency_s` first: the latency model the evaluator's quorum uses.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import math
import re
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterator, Literal, Mapping

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from bank_builder.collect.questions import DEFAULT_TEMPLATE, INSTRUCTIONS
from bank_builder.evaluate.split import choose_split
from bank_builder.records import RecordMatrix, RecordSelection
from bank_builder.records.latency import call_latency_s
from bank_builder.records.text import whitespace_normalised

Part = Literal["test", "train", "all"]
STREAM_PIECE_CHARS = 200  # content characters per streamed chunk: a few chunks, like a real stream
LATENCY_HEADER = "x-replay-latency-ms"  # the delay this call waited: lets tests check it without timing sleeps
RECORD_HEADER = "x-replay-record"  # dataset/split/index of the row served: lets parity checks pair calls


# ---------------------------------------------------------------- what is served


@dataclass(frozen=True)
class ServedRecords:
    """The rows a replay server answers from, and a phrase saying which they are (for logs and 404s)."""

    matrix: RecordMatrix
    part: Part
    kind: str  # the split kind the evaluator would use: "given" or "random"
    description: str


def served_part(matrix: RecordMatrix, part: Part, *, seed: int = 42, train_ratio: float = 0.7) -> ServedRecords:
    """The `part` rows of an already loaded matrix, split exactly as `jisi-bank evaluate` splits it (the records'
    own train/test split when every dataset has one, else the seeded per-dataset random split)."""
    train, test, kind = choose_split(matrix.datasets, matrix.splits, matrix.indices, None, seed=seed,
                                     train_ratio=train_ratio, queries=matrix.queries)
    how = "the records' own split" if kind == "given" else f"the random split, seed {seed}, train ratio {train_ratio:g}"
    if part == "all":
        return ServedRecords(matrix, part, kind, f"all {len(matrix.queries)} questions")
    rows = test if part == "test" else train
    return ServedRecords(matrix.subset(rows), part, kind, f"the {part} part of {how}")


def load_served(selection: RecordSelection, part: Part = "test", *, train_ratio: float = 0.7,
                progress: bool = False) -> ServedRecords:
    """Load the selected records and keep the `part` rows (the seed of the split is the selection's)."""
    return served_part(selection.load(progress=progress), part, seed=selection.seed, train_ratio=train_ratio)


# ---------------------------------------------------------------- matching a request to a record


def _key(text: str) -> bytes:
    """A 16-byte digest of the normalised text: the index holds ~5 keys per row, and digests keep it small
    (60k keys for mmlupro) where the normalised texts themselves would be tens of megabytes."""
    return hashlib.blake2b(whitespace_normalised(text).encode(), digest_size=16).digest()


def _row_texts(matrix: RecordMatrix, row: int) -> set[str]:
    """The texts a client may send for this row: the bare question, the recorded prompt, and the question in
    `jisi-bank collect`'s default template with each instruction (what a collected record's prompt would be)."""
    query = matrix.queries[row]
    texts = {query, *(DEFAULT_TEMPLATE.format(query=query, instruction=text, dataset=matrix.datasets[row],
                                              index=int(matrix.indices[row])) for text in INSTRUCTIONS.values())}
    if matrix.prompts[row] is not None:
        texts.add(matrix.prompts[row])  # type: ignore[arg-type]
    return texts


class QuestionIndex:
    """Normalised text key -> the served rows it names, in matrix order; built in one pass over the rows."""

    def __init__(self, matrix: RecordMatrix) -> None:
        self._rows: dict[bytes, int | list[int]] = {}  # an int for the (usual) single row: no list per key
        for row in range(len(matrix.queries)):
            for key in {_key(t) for t in _row_texts(matrix, row)}:  # a set: one row counts once per key
                found = self._rows.setdefault(key, row)
                if isinstance(found, list):
                    found.append(row)
                elif found != row:
                    self._rows[key] = [found, row]
        self.ambiguous = sum(isinstance(v, list) for v in self._rows.values())  # keys shared by several rows

    def rows(self, text: str) -> list[int]:
        found = self._rows.get(_key(text), [])
        return [found] if isinstance(found, int) else found


# ---------------------------------------------------------------- the replayer


class ReplayError(Exception):
    """A request the records cannot answer, as an OpenAI error: (HTTP status, code, message)."""

    def __init__(self, status: int, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.param = status, code, message, param

    def body(self) -> dict[str, Any]:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


@dataclass(frozen=True)
class ReplayAnswer:
    """One recorded answer, ready to send."""

    model: str
    row: int
    content: str
    usage: dict[str, int]
    latency_s: float
    record: str  # dataset/split/index


def _invalid(message: str, param: str | None = None) -> ReplayError:
    return ReplayError(400, "invalid_request", message, param)


def _parse(raw: bytes) -> tuple[str, str, dict[str, Any]]:
    """(model, the last user message's text, the body) of a chat completion request; a ReplayError (400) for
    anything malformed, never an unhandled exception."""
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        raise _invalid("the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise _invalid("the request body must be a JSON object")
    model, messages = body.get("model"), body.get("messages")
    if not isinstance(model, str) or not model:
        raise _invalid("'model' must be a non-empty string", "model")
    if not isinstance(messages, list) or not messages:
        raise _invalid("'messages' must be a non-empty list", "messages")
    if not all(isinstance(m, dict) for m in messages):
        raise _invalid("each of 'messages' must be an object", "messages")
    user = next((m for m in reversed(messages) if m.get("role") == "user"), None)
    if user is None:
        raise _invalid("no message with role 'user': the replay answers the last user message", "messages")
    content = user.get("content")
    if isinstance(content, list):  # content parts: the text ones, as a client joining them would
        content = "\n".join(p["text"] for p in content
                            if isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str))
    if not isinstance(content, str) or not content.strip():
        raise _invalid("the last user message has no text", "messages")
    return model, content, body


def _usage(matrix: RecordMatrix, row: int, col: int) -> dict[str, int]:
    prompt, completion = (0 if math.isnan(v) else int(round(v))  # unknown (NaN) counts as 0
                          for v in (float(matrix.prompt_tokens[row, col]), float(matrix.completion_tokens[row, col])))
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


class Replayer:
    """The recorded answer to a request: the matching, the record and the latency, without HTTP (so a parity
    check can replay in-process exactly what the server sends)."""

    def __init__(self, served: ServedRecords, *, latency_ms: float = 800.0, sigma: float = 0.5, seed: int = 42,
                 medians_ms: Mapping[str, float] | None = None) -> None:
        self.served, self.matrix = served, served.matrix
        self.latency_ms, self.sigma, self.seed = latency_ms, sigma, seed
        # a model's own median (its records' time_taken) wins over the configured one; 0 switches delays off
        self.medians_ms = {m: (dict(medians_ms or {}).get(m, latency_ms) if latency_ms > 0 else 0.0)
                           for m in self.matrix.models}
        self.columns = {m: j for j, m in enumerate(self.matrix.models)}
        self.index = QuestionIndex(self.matrix)

    def latency_s(self, model: str, row: int) -> float:
        """The evaluator's latency of this (model, recorded question): the same function, the same inputs."""
        return call_latency_s(self.seed, model, self.matrix.queries[row], self.medians_ms[model], self.sigma)

    def answer(self, model: str, question: str) -> ReplayAnswer:
        col = self.columns.get(model)
        if col is None:
            raise ReplayError(404, "model_not_found", f"the model {model!r} is not in the records; this replay "
                              f"server has {len(self.columns)} models (GET /v1/models)", "model")
        rows = self.index.rows(question)
        if not rows:
            shown = whitespace_normalised(question)
            shown = shown if len(shown) <= 80 else shown[:80] + "..."
            raise ReplayError(404, "question_not_found", f"no recorded question matches {shown!r} in "
                              f"{self.served.description}", "messages")
        # a question recorded twice (or in two datasets): the first row this model answered, in matrix order
        row = next((r for r in rows if self.matrix.present[r, col]), None)
        m = self.matrix
        if row is None:
            where = ", ".join(f"{m.datasets[r]}/{m.splits[r] or '-'}/{int(m.indices[r])}" for r in rows[:3])
            raise ReplayError(404, "record_not_found", f"the model {model!r} has no record for this question "
                              f"({where})", "model")
        return ReplayAnswer(model=model, row=row, content=m.responses[row][col] or "", usage=_usage(m, row, col),
                            latency_s=self.latency_s(model, row), record=self.record(row))

    def record(self, row: int) -> str:
        m = self.matrix
        return f"{m.datasets[row]}/{m.splits[row] or '-'}/{int(m.indices[row])}"

    def sample(self, n: int, seed: int = 0) -> list[dict[str, str]]:
        """`n` served questions for a demo to ask: a seeded shuffle of each dataset's rows, taken in turn from
        each dataset (so three questions are three datasets), without looking at any answer or score."""
        rng = np.random.default_rng(seed)
        by_dataset = [rng.permutation(np.flatnonzero(np.asarray(self.matrix.datasets) == d)).tolist()
                      for d in sorted(set(self.matrix.datasets))]
        rows = [r for turn in itertools.zip_longest(*by_dataset) for r in turn if r is not None][:max(0, n)]
        return [{"question": self.matrix.queries[r], "dataset": self.matrix.datasets[r], "record": self.record(r)}
                for r in rows]

    def grade(self, question: str, content: str, model: str | None = None) -> dict[str, Any]:
        """Whether `content` is right, from the records: the score of the recorded answer it is (the named
        model's first, else any model's with the same whitespace-normalised text). An answer no model recorded
        (an aggregator's new one) cannot be graded from the records, and says so."""
        rows = self.index.rows(question)
        if not rows:
            raise ReplayError(404, "question_not_found", "no recorded question matches this question in "
                              f"{self.served.description}", "question")
        m, wanted = self.matrix, whitespace_normalised(content)
        order = ([self.columns[model]] if model in self.columns else []) + list(range(len(m.models)))
        for row in rows:
            for col in order:
                recorded = m.responses[row][col]
                if m.present[row, col] and recorded is not None and whitespace_normalised(recorded) == wanted:
                    score = float(m.score[row, col])
                    return {"record": self.record(row), "graded": True, "model": m.models[col], "score": score,
                            "correct": score > 0.5, "ground_truth": m.ground_truth[row]}
        return {"record": self.record(rows[0]), "graded": False, "model": None, "score": None, "correct": None,
                "ground_truth": m.ground_truth[rows[0]],
                "reason": "not a recorded answer to this question (an aggregated answer is new text): the records "
                          "cannot grade it"}


# ---------------------------------------------------------------- HTTP


def _sse(data: dict[str, Any] | str) -> bytes:
    return b"data: " + (data if isinstance(data, str) else json.dumps(data)).encode() + b"\n\n"


def _chunks(answer: ReplayAnswer, rid: str, created: int, include_usage: bool) -> Iterator[bytes]:
    base = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": answer.model}
    choice = lambda delta, finish=None: {**base, "choices": [  # noqa: E731
        {"index": 0, "delta": delta, "finish_reason": finish}]}
    yield _sse(choice({"role": "assistant", "content": ""}))
    text = answer.content
    for start in range(0, len(text), STREAM_PIECE_CHARS):
        yield _sse(choice({"content": text[start:start + STREAM_PIECE_CHARS]}))
    yield _sse(choice({}, "stop"))
    if include_usage:
        yield _sse({**base, "choices": [], "usage": answer.usage})
    yield _sse("[DONE]")


def create_replay_app(served: ServedRecords | RecordMatrix, *, latency_ms: float = 800.0, sigma: float = 0.5,
                      seed: int = 42, medians_ms: Mapping[str, float] | None = None) -> FastAPI:
    """The replay server over `served` (a RecordMatrix is served whole). `latency_ms` is the median delay of a
    call, `sigma` the lognormal shape, `seed` the latency seed; a model in `medians_ms` (its records' mean
    time_taken per call, see `recorded_medians_ms`) uses its own median instead; `latency_ms` 0: no delays."""
    if isinstance(served, RecordMatrix):
        served = ServedRecords(served, "all", "", f"all {len(served.queries)} questions")
    replayer = Replayer(served, latency_ms=latency_ms, sigma=sigma, seed=seed, medians_ms=medians_ms)
    calls: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    app = FastAPI(title="jisi-pool replay")
    app.state.replayer = replayer

    def error(exc: ReplayError) -> JSONResponse:
        errors[exc.code] += 1
        return JSONResponse(exc.body(), exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # unknown paths and methods answer in the OpenAI error format too
        code = re.sub(r"\W+", "_", str(exc.detail)).strip("_").lower() or "error"
        return JSONResponse({"error": {"message": str(exc.detail), "type": "invalid_request_error",
                                       "param": None, "code": code}}, exc.status_code)

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "models": len(replayer.columns), "questions": len(served.matrix.queries)}

    @app.get("/stats")
    async def stats() -> dict[str, Any]:
        return {"calls": dict(calls), "errors": dict(errors), "ambiguous_questions": replayer.index.ambiguous,
                "questions": len(served.matrix.queries), "served": served.description}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": m, "object": "model", "created": 0, "owned_by": "jisi-replay"}
                                           for m in served.matrix.models]}

    @app.get("/questions")
    async def questions(n: int = 30, seed: int = 0) -> dict[str, Any]:
        """Served questions to try (the demo's examples), `n` of them in a seeded order."""
        return {"object": "list", "data": replayer.sample(min(n, 1000), seed)}

    @app.post("/grade")
    async def grade(request: Request) -> Response:
        """{question, content, model?} -> whether the answer is right, from the records (see Replayer.grade)."""
        try:
            body = json.loads(await request.body())
            question, content, model = body["question"], body["content"], body.get("model")
            if not (isinstance(question, str) and isinstance(content, str) and isinstance(model, (str, type(None)))):
                raise TypeError
        except (ValueError, TypeError, KeyError, RecursionError):
            return error(_invalid("expected a JSON object {question: string, content: string, model?: string}"))
        try:
            return JSONResponse(replayer.grade(question, content, model))
        except ReplayError as exc:
            return error(exc)

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        try:
            model, question, body = _parse(await request.body())
            answer = replayer.answer(model, question)
        except ReplayError as exc:
            return error(exc)
        await asyncio.sleep(answer.latency_s)  # spent before anything is sent, streamed or not
        calls[model] += 1
        created = int(time.time())
        tag = hashlib.sha256(f"{model}|{answer.record}".encode()).hexdigest()[:12]  # which answer, at a glance
        rid = f"chatcmpl-replay-{tag}-{sum(calls.values())}"
        headers = {LATENCY_HEADER: f"{answer.latency_s * 1000:.6f}", RECORD_HEADER: answer.record}
        if body.get("stream"):
            options = body.get("stream_options")
            include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
            return StreamingResponse(_chunks(answer, rid, created, include_usage), media_type="text/event-stream",
                                     headers=headers)
        return JSONResponse({
            "id": rid, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": answer.content},
                         "finish_reason": "stop"}],
            "usage": answer.usage}, headers=headers)

    return app


def describe(served: ServedRecords, *, latency_ms: float, sigma: float, seed: int,
             medians_ms: Mapping[str, float] | None = None) -> str:
    """The start-up line's first part: what is served and how long calls take."""
    m = served.matrix
    latency = "no delay" if latency_ms <= 0 else (
        f"lognormal latency, median {latency_ms:g} ms, sigma {sigma:g}, seed {seed}"
        + (f" ({len(medians_ms)} model(s) at their recorded median)" if medians_ms else ""))
    return f"replaying {len(m.models)} models x {len(m.queries)} questions ({served.description}); {latency}"
