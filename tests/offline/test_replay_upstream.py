"""`jisi-pool replay` (localpool/replay.py): recorded answers served over the OpenAI API, matched by question,
with the evaluator's split and the evaluator's latency function."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from bank_builder.collect.questions import DEFAULT_TEMPLATE, INSTRUCTIONS
from bank_builder.evaluate.split import train_test_split
from bank_builder.records import RecordSelection
from bank_builder.records.latency import call_latency_s
from bench.common import REPO, ServerProcess, free_port
from bank_builder.records.latency import recorded_medians_ms
from localpool.replay import (
    LATENCY_HEADER, RECORD_HEADER, create_replay_app, load_served, served_part,
)
from tests.offline.test_records import write_result

MODELS = ["model-a", "model-b", "model-c"]
LONG = "Step one. " * 45  # 450 characters: streamed in several pieces


def question(dataset: str, index: int) -> str:
    # odd whitespace on purpose: a client may re-wrap it
    return f"{dataset} question {index}:  how much is {index}\ntimes seven?\n"


def prompt_of(query: str) -> str:
    return f"Solve this carefully.\n\n{query}\nThink step by step."


def record(dataset: str, model: str, index: int, *, query: str | None = None, **kw: object) -> dict:
    query = query or question(dataset, index)
    out = {"index": index, "origin_query": query, "prompt": prompt_of(query),
           "prompt_tokens": 10 * (MODELS.index(model) + 1) + index, "completion_tokens": 100 + index,
           "cost": 0.001, "score": 1.0, "prediction": str(index), "ground_truth": str(index),
           "raw_output": LONG if index == 0 else f"{model} answers {dataset} {index}", "extra_fields": {}}
    out.update(kw)
    return out


@pytest.fixture
def records(tmp_path: Path) -> Path:
    """toy: 10 questions; model-c answered only 0-4, model-b's completion tokens of 2 are unknown. dup: one
    question worded as toy 1, answered by model-a only (dup sorts first: it is the row model-a is served)."""
    root = tmp_path / "records"
    write_result(root, "toy", "model-a", [record("toy", "model-a", i) for i in range(10)], time_taken=0.1,
                 counts=10)  # 10 ms per call
    write_result(root, "toy", "model-b", [record("toy", "model-b", i, **({"completion_tokens": None} if i == 2
                                                                          else {})) for i in range(10)],
                 time_taken=None, counts=10)
    write_result(root, "toy", "model-c", [record("toy", "model-c", i) for i in range(5)])
    write_result(root, "dup", "model-a", [record("dup", "model-a", 0, query=question("toy", 1),
                                                 raw_output="model-a answers the dup copy")],
                 time_taken=0.3, counts=1)  # with toy: (0.1 + 0.3) s / 11 calls
    return root


def client_for(records: Path, **kw: object) -> TestClient:
    served = load_served(RecordSelection(paths=(records,)), "all")
    kw.setdefault("latency_ms", 0)
    return TestClient(create_replay_app(served, **kw))  # type: ignore[arg-type]


def ask(client: TestClient, model: str, content: object, **body: object):
    return client.post("/v1/chat/completions", json={"model": model, "messages": [
        {"role": "system", "content": "You are helpful."}, {"role": "user", "content": "an earlier turn"},
        {"role": "assistant", "content": "ok"}, {"role": "user", "content": content}], **body})


def sse_events(text: str) -> list:
    events = [e for e in text.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events)
    return [e[6:] if e[6:] == "[DONE]" else json.loads(e[6:]) for e in events]


def assert_openai_error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == code
    return error


# ---------------------------------------------------------------- answers


def test_recorded_answer_and_usage(records: Path) -> None:
    client = client_for(records)
    r = ask(client, "model-b", question("toy", 3))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion" and body["model"] == "model-b" and body["id"].startswith(
        "chatcmpl-replay-") and isinstance(body["created"], int)
    assert body["choices"] == [{"index": 0, "message": {"role": "assistant", "content": "model-b answers toy 3"},
                                "finish_reason": "stop"}]
    assert body["usage"] == {"prompt_tokens": 23, "completion_tokens": 103, "total_tokens": 126}
    assert r.headers[RECORD_HEADER] == "toy/test/3"
    # an unknown token count (null in the record, NaN in the matrix) is reported as 0
    assert ask(client, "model-b", question("toy", 2)).json()["usage"] == {
        "prompt_tokens": 22, "completion_tokens": 0, "total_tokens": 22}
    again = ask(client, "model-b", question("toy", 3))
    assert again.json()["choices"] == body["choices"] and again.json()["usage"] == body["usage"]


def test_whitespace_prompt_template_and_parts_variants_match(records: Path) -> None:
    client = client_for(records)
    query = question("toy", 4)
    variants = [
        "   " + " ".join(query.split()) + "\n\n",  # re-wrapped
        prompt_of(query).replace("\n", " \n "),  # the record's full prompt
        *(DEFAULT_TEMPLATE.format(query=query, instruction=text) for text in INSTRUCTIONS.values()),  # collect's
        [{"type": "text", "text": "toy question 4:  how much"}, {"type": "image_url", "image_url": {"url": "x"}},
         {"type": "text", "text": "is 4 times seven?"}],  # content parts
    ]
    for content in variants:
        r = ask(client, "model-a", content)
        assert r.status_code == 200, (content, r.text)
        assert r.json()["choices"][0]["message"]["content"] == "model-a answers toy 4"
    # a different question is not matched by a prefix or a near miss
    assert_openai_error(ask(client, "model-a", "toy question 4: how much is 4 times eight?"), 404,
                        "question_not_found")


def test_streamed_answer_with_usage(records: Path) -> None:
    client = client_for(records)
    r = ask(client, "model-a", question("toy", 0), stream=True, stream_options={"include_usage": True})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r.text)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == "model-a" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    pieces = [c["choices"][0]["delta"]["content"] for c in chunks[1:-2]]
    assert len(pieces) == math.ceil(len(LONG) / 200) == 3 and "".join(pieces) == LONG
    assert chunks[-2]["choices"] == [{"index": 0, "delta": {}, "finish_reason": "stop"}]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == {
        "prompt_tokens": 10, "completion_tokens": 100, "total_tokens": 110}
    plain = sse_events(ask(client, "model-a", question("toy", 0), stream=True).text)
    assert plain[-1] == "[DONE]" and all("usage" not in c for c in plain[:-1])  # no include_usage: no usage chunk


def test_duplicate_question_serves_the_first_row_the_model_answered(records: Path) -> None:
    client = client_for(records)
    # toy 1's text is also dup 0; dup sorts first, model-a answered it there, model-b only in toy
    a = ask(client, "model-a", question("toy", 1))
    assert a.json()["choices"][0]["message"]["content"] == "model-a answers the dup copy"
    assert a.headers[RECORD_HEADER] == "dup/test/0"
    b = ask(client, "model-b", question("toy", 1))
    assert b.json()["choices"][0]["message"]["content"] == "model-b answers toy 1"
    # shared keys: the bare question, its prompt and the three templated forms
    assert client.get("/stats").json()["ambiguous_questions"] == 5


# ---------------------------------------------------------------- latency


def test_latency_is_the_shared_function_of_the_recorded_question(records: Path) -> None:
    client = client_for(records, latency_ms=20, sigma=0.5, seed=7, medians_ms={"model-b": 5.0})
    query = question("toy", 6)
    templated = DEFAULT_TEMPLATE.format(query=query, instruction=INSTRUCTIONS["numeric"])
    for model, median in (("model-a", 20.0), ("model-b", 5.0)):
        expected = call_latency_s(7, model, query, median, 0.5)  # the recorded question, not the request text
        assert expected != call_latency_s(7, model, templated, median, 0.5)
        started = time.perf_counter()
        r = ask(client, model, templated)
        elapsed = time.perf_counter() - started
        assert float(r.headers[LATENCY_HEADER]) == pytest.approx(expected * 1000, abs=1e-5)
        assert elapsed >= expected  # and it is waited, not only reported
    again = ask(client, "model-a", templated)
    assert float(again.headers[LATENCY_HEADER]) == pytest.approx(call_latency_s(7, "model-a", query, 20, 0.5) * 1000,
                                                                 abs=1e-5)
    other_seed = client_for(records, latency_ms=20, sigma=0.5, seed=8)
    assert float(ask(other_seed, "model-a", templated).headers[LATENCY_HEADER]) == pytest.approx(
        call_latency_s(8, "model-a", query, 20, 0.5) * 1000, abs=1e-5)
    off = client_for(records, latency_ms=0, medians_ms={"model-a": 50.0})  # 0: no delay, recorded medians too
    assert float(ask(off, "model-a", query).headers[LATENCY_HEADER]) == 0.0


def test_questions_to_try_take_the_datasets_in_turn_in_a_seeded_order(records: Path) -> None:
    client = client_for(records)
    first = client.get("/questions", params={"n": 4}).json()["data"]
    assert [q["dataset"] for q in first] == ["dup", "toy", "toy", "toy"]  # dup has one question
    assert first == client.get("/questions", params={"n": 4}).json()["data"]  # seeded: the same each time
    other = client.get("/questions", params={"n": 11, "seed": 1}).json()["data"]
    assert len(other) == 11 and sorted(q["record"] for q in other) == sorted(
        ["dup/test/0", *(f"toy/test/{i}" for i in range(10))])  # every served question once
    for q in other:
        dataset, _, index = q["record"].split("/")
        assert q["question"] == (question("toy", 1) if dataset == "dup" else question(dataset, int(index)))
    assert client.get("/questions", params={"n": 0}).json()["data"] == []


def test_grade_scores_an_answer_by_the_recorded_answer_it_is(records: Path, tmp_path: Path) -> None:
    root = tmp_path / "graded"
    write_result(root, "toy", "model-a", [record("toy", "model-a", i, score=float(i % 2), raw_output=f"answer {i}")
                                          for i in range(4)])
    write_result(root, "toy", "model-b", [record("toy", "model-b", i, score=1.0, raw_output="answer 2")
                                          for i in range(4)])  # model-b answers "answer 2" to everything
    client = client_for(root)
    grade = lambda q, content, **kw: client.post("/grade", json={  # noqa: E731
        "question": question("toy", q), "content": content, **kw})
    served = ask(client, "model-a", question("toy", 1)).json()["choices"][0]["message"]["content"]
    assert grade(1, served, model="model-a").json() == {
        "record": "toy/test/1", "graded": True, "model": "model-a", "score": 1.0, "correct": True,
        "ground_truth": "1"}
    # the named model's record first; the same text recorded by another model grades as that one
    assert grade(2, "  answer 2\n", model="model-a").json()["model"] == "model-a"
    assert grade(2, "answer 2", model="model-a").json()["correct"] is False
    assert grade(2, "answer 2", model="model-b").json()["correct"] is True
    assert grade(3, "answer 2").json()["model"] == "model-b"
    new = grade(1, "an answer no model recorded").json()
    assert new["graded"] is False and new["correct"] is None and "cannot grade" in new["reason"]
    assert_openai_error(client.post("/grade", json={"question": "never asked", "content": "x"}), 404,
                        "question_not_found")
    for body in ({"question": "q"}, {"question": 1, "content": "x"}, [1], {"question": "q", "content": "x",
                                                                          "model": 3}):
        assert_openai_error(client.post("/grade", json=body), 400, "invalid_request")
    assert_openai_error(client.post("/grade", content=b"{"), 400, "invalid_request")


def test_recorded_medians_from_time_taken(records: Path, tmp_path: Path) -> None:
    assert recorded_medians_ms([records]) == pytest.approx({"model-a": 400 / 11})  # b: null, c: none
    assert recorded_medians_ms([records], datasets=["toy"]) == pytest.approx({"model-a": 10.0})
    assert recorded_medians_ms([records], models=["model-b"]) == {}


# ---------------------------------------------------------------- errors


def test_unknown_model_question_and_missing_record(records: Path) -> None:
    client = client_for(records)
    error = assert_openai_error(ask(client, "gpt-5", question("toy", 1)), 404, "model_not_found")
    assert "gpt-5" in error["message"] and "3 models" in error["message"]
    error = assert_openai_error(ask(client, "model-a", "What is the capital of France? " * 10), 404,
                                "question_not_found")
    assert "What is the capital of France?" in error["message"] and "all 11 questions" in error["message"]
    error = assert_openai_error(ask(client, "model-c", question("toy", 7)), 404, "record_not_found")
    assert "model-c" in error["message"] and "toy/test/7" in error["message"]
    assert ask(client, "model-c", question("toy", 4)).status_code == 200
    stats = client.get("/stats").json()
    assert stats["calls"] == {"model-c": 1}
    assert stats["errors"] == {"model_not_found": 1, "question_not_found": 1, "record_not_found": 1}


@pytest.mark.parametrize("body", [
    b"{not json", b"\xff\xfe", b"[1, 2]", b'"text"',
    b'{"model": "model-a"}',  # no messages
    b'{"model": "model-a", "messages": "toy question 1"}',  # messages not a list
    b'{"model": "model-a", "messages": []}',
    b'{"model": "model-a", "messages": ["toy question 1"]}',
    b'{"model": "model-a", "messages": [{"role": "system", "content": "toy question 1"}]}',  # no user message
    b'{"model": "model-a", "messages": [{"role": "user", "content": null}]}',
    b'{"model": "model-a", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}',
    b'{"model": 3, "messages": [{"role": "user", "content": "toy question 1"}]}',
    b'{"messages": [{"role": "user", "content": "toy question 1"}]}',
    b"[" * 100000 + b"]" * 100000,  # nesting deep enough to exhaust the parser
])
def test_malformed_requests_are_400_in_openai_format(records: Path, body: bytes) -> None:
    client = client_for(records)
    r = client.post("/v1/chat/completions", content=body, headers={"content-type": "application/json"})
    assert_openai_error(r, 400, "invalid_request")


def test_models_health_and_unknown_paths(records: Path) -> None:
    client = client_for(records)
    models = client.get("/v1/models").json()
    assert models["object"] == "list" and [m["id"] for m in models["data"]] == MODELS
    assert all(m["object"] == "model" for m in models["data"])
    assert client.get("/healthz").json() == {"status": "ok", "models": 3, "questions": 11}
    assert_openai_error(client.get("/v1/nothing"), 404, "not_found")


# ---------------------------------------------------------------- the evaluator's split


def test_split_parts_are_the_evaluators(records: Path) -> None:
    selection = RecordSelection(paths=(records,), seed=3)
    matrix = selection.load()
    train, test = train_test_split(matrix.datasets, matrix.indices, seed=3, train_ratio=0.6, queries=matrix.queries)
    for part, rows in (("train", train), ("test", test)):
        served = served_part(matrix, part, seed=3, train_ratio=0.6)
        assert served.kind == "random" and f"the {part} part" in served.description
        assert served.matrix.queries == [matrix.queries[i] for i in rows]
        np.testing.assert_array_equal(served.matrix.indices, matrix.indices[rows])
    assert len(load_served(selection, "all").matrix.queries) == 11


def test_split_test_refuses_a_train_question(tmp_path: Path) -> None:
    """Records with their own train/test split: --split test serves the test split only."""
    root = tmp_path / "given"
    for split, n in (("train", 6), ("test", 3)):
        for model in ("model-a", "model-b"):
            write_result(root, "toy", model, [record(f"toy-{split}", model, i) for i in range(n)], split=split)
    served = load_served(RecordSelection(paths=(root,)), "test")
    assert served.kind == "given" and len(served.matrix.queries) == 3
    client = TestClient(create_replay_app(served, latency_ms=0))
    assert ask(client, "model-a", question("toy-test", 2)).json()["choices"][0]["message"]["content"] == (
        "model-a answers toy-test 2")
    error = assert_openai_error(ask(client, "model-a", question("toy-train", 2)), 404, "question_not_found")
    assert "test part" in error["message"]
    train = TestClient(create_replay_app(load_served(RecordSelection(paths=(root,)), "train"), latency_ms=0))
    assert ask(train, "model-a", question("toy-train", 2)).status_code == 200
    assert ask(train, "model-a", question("toy-test", 2)).status_code == 404


# ---------------------------------------------------------------- the command


def test_jisi_pool_replay_serves_over_http(records: Path, tmp_path: Path) -> None:
    import httpx

    port = free_port()
    log = tmp_path / "replay.log"
    argv = [sys.executable, "-m", "localpool.cli", "replay", "--records", str(records), "--datasets", "toy",
            "--split", "all", "--port", str(port), "--latency-ms", "5,0"]
    with ServerProcess(argv, port, timeout_s=60, cwd=REPO, log_path=log) as server:
        r = httpx.post(server.url + "/v1/chat/completions", timeout=10, json={
            "model": "model-a", "messages": [{"role": "user", "content": question("toy", 1)}]})
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["message"]["content"] == "model-a answers toy 1"  # dup not selected
        assert float(r.headers[LATENCY_HEADER]) == pytest.approx(10.0)  # toy's recorded time_taken / counts
        b = httpx.post(server.url + "/v1/chat/completions", timeout=10, json={
            "model": "model-b", "messages": [{"role": "user", "content": question("toy", 1)}]})
        assert float(b.headers[LATENCY_HEADER]) == pytest.approx(5.0)  # no time_taken: the configured median
    line = log.read_text()
    assert "replaying 3 models x 10 questions" in line and f"http://127.0.0.1:{port}/v1" in line


def test_command_errors_are_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from localpool.cli import main

    assert main(["replay", "--records", str(tmp_path / "missing"), "--port", "1", "--latency-ms", "0"]) == 1
    assert "missing: no such file or directory" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(["replay", "--records", str(tmp_path), "--port", "1", "--latency-ms", "fast"])
    assert exit_.value.code == 2 and "MEDIAN[,SIGMA]" in capsys.readouterr().err
