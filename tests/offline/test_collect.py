"""`jisi-bank collect`: scorers, result files, the resumable cache, retries, concurrency and the CLI, against
respx-mocked upstreams (no network)."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any, Callable

import httpx
import numpy as np
import pytest
import respx

from app.engine import JiSiParams
from app.config import Settings, UpstreamSettings
from bank_builder.collect import scorers
from bank_builder.cli import main
from bank_builder.collect import CollectOptions, Question, collect, load_questions
from bank_builder.records import RecordError, load_records

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "config" / "demo-questions.jsonl"
FAST = dict(backoff_s=0.001, max_backoff_s=0.002)


# ---------------------------------------------------------------- scorers


@pytest.mark.parametrize("response, truth, score, pred", [
    ("Tom has 7 apples.\nAnswer: 7", "7", 1.0, "7"),
    ("The total is $1,234.50.", "1234.5", 1.0, "1234.5"),
    ("Answer: $1,234.50", "1,234.50", 1.0, "1234.5"),
    ("It is 3 degrees, then -2.\nAnswer: -2", "-2", 1.0, "-2"),
    ("The answer is 42.", "42", 1.0, "42"),
    ("The answer is 42. I checked 5 times.", "42", 1.0, "42"),  # explicit beats the last number
    ("3 + 4 = 7\n#### 7", "7", 1.0, "7"),
    ("Answer: 3 + 4 = 7", "7", 1.0, "7"),
    ("so the result is \\boxed{\\frac{14}{3}}", "\\frac{14}{3}", 1.0, "4.66666666667"),
    ("The growth was 50%.", "50", 1.0, "50"),
    ("Answer: 12 apples", "12", 1.0, "12"),
    ("First 10, then 20, finally 30", "30", 1.0, "30"),
    ("1.50", "1.5", 1.0, "1.5"),
    ("Answer: 8", "7", 0.0, "8"),
    ("I do not know.", "7", 0.0, None),
    ("", "7", 0.0, None),
    ("The temperature is \u22125 degrees", "-5", 1.0, "-5"),  # unicode minus
])
def test_numeric(response: str, truth: str, score: float, pred: str | None) -> None:
    assert scorers.numeric(response, truth) == (score, pred)


@pytest.mark.parametrize("response, truth, score, pred", [
    ("The answer is (C).", "C", 1.0, "C"),
    ("Answer: B", "B", 1.0, "B"),
    ("Answer: **D**", "D", 1.0, "D"),
    ("Mars is red.\nB", "B", 1.0, "B"),
    ("B.", "B", 1.0, "B"),
    ("I think it is (A), not the others", "(A)", 1.0, "A"),
    ("I think A is wrong; it is (D)", "D", 1.0, "D"),
    ("A spider has eight legs, so C", "C", 1.0, "C"),
    ("The answer is B. Because Mars looks red.", "B", 1.0, "B"),
    ("Answer: A", "B", 0.0, "A"),
    ("I am not sure about this one.", "B", 0.0, None),
    ("", "B", 0.0, None),
])
def test_choice(response: str, truth: str, score: float, pred: str | None) -> None:
    assert scorers.choice(response, truth) == (score, pred)


@pytest.mark.parametrize("response, truth, score, pred", [
    ("Paris", "Paris", 1.0, "Paris"),
    ("Paris.", "Paris", 1.0, "Paris"),
    ("  paris  ", "Paris", 1.0, "paris"),
    ("Answer: **Paris**", "Paris", 1.0, "Paris"),
    ("The capital of France is a big city.\nThe answer is Paris.", "Paris", 1.0, "Paris"),
    ("Let me think.\nAnswer: Bogotá", "Bogota", 1.0, "Bogotá"),
    ("Answer: Lyon\nParis", "Paris", 1.0, "Lyon"),  # the ground truth as the final line also counts
    ("The capital of France is Paris.", "Paris", 0.0, "The capital of France is Paris"),
    ("Answer: Lyon", "Paris", 0.0, "Lyon"),
    ("", "Paris", 0.0, None),
    ("   \n ", "Paris", 0.0, None),
])
def test_exact(response: str, truth: str, score: float, pred: str | None) -> None:
    assert scorers.exact(response, truth) == (score, pred)


def test_registry_defaults_and_plugins() -> None:
    assert scorers.default_kind("gsm8k") == "numeric" and scorers.default_kind("math-l5") == "numeric"
    assert scorers.default_kind("arith") == "numeric" and scorers.default_kind("mmlu-pro") == "choice"
    assert scorers.default_kind("trivia-choice") == "choice" and scorers.default_kind("capitals") == "exact"
    assert scorers.default_kind("crux") == "exact"
    assert scorers.scorer_for("gsm8k") is scorers.numeric and scorers.scorer_for("gsm8k", "exact") is scorers.exact
    scorers.register_scorer("always", lambda response, truth: (1.0, response))
    assert scorers.scorer_for("anything", "always")("x", "y") == (1.0, "x")
    assert scorers.get_scorer("bank_builder.collect.scorers:choice") is scorers.choice
    with pytest.raises(ValueError, match="unknown scorer"):
        scorers.get_scorer("nope")
    with pytest.raises(ValueError, match="cannot import"):
        scorers.get_scorer("no_such_module:fn")


# ---------------------------------------------------------------- fakes


class FakeLLM:
    """OpenAI-compatible upstreams at http://<model>.test/v1: answer every question right, except that
    `wrong` models answer numbers off by one; tracks calls and in-flight requests per model."""

    def __init__(self, answers: dict[str, str], *, wrong: tuple[str, ...] = (), no_usage: tuple[str, ...] = (),
                 delay_s: float = 0.0) -> None:
        self.answers, self.wrong, self.no_usage, self.delay_s = answers, wrong, no_usage, delay_s
        self.calls: dict[str, int] = {}
        self.in_flight: dict[str, int] = {}
        self.max_in_flight: dict[str, int] = {}
        self.fail: Callable[[str, int], int | None] = lambda model, n: None  # -> HTTP status to fail with
        self.after_call: Callable[[], None] = lambda: None

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        model = body["model"]
        n = self.calls[model] = self.calls.get(model, 0) + 1
        self.in_flight[model] = self.in_flight.get(model, 0) + 1
        self.max_in_flight[model] = max(self.max_in_flight.get(model, 0), self.in_flight[model])
        try:
            await asyncio.sleep(self.delay_s)
        finally:
            self.in_flight[model] -= 1
        if (status := self.fail(model, n)) is not None:
            return httpx.Response(status, json={"error": {"message": "overloaded"}})
        prompt = body["messages"][-1]["content"]
        truth = next(a for q, a in self.answers.items() if q in prompt)
        if model in self.wrong and scorers.parse_number(truth) is not None:
            truth = str(scorers.parse_number(truth) + 1)
        payload: dict[str, Any] = {"choices": [{"index": 0, "finish_reason": "stop",
                                                "message": {"role": "assistant", "content": f"Answer: {truth}"}}]}
        if model not in self.no_usage:
            payload["usage"] = {"prompt_tokens": 20 + len(prompt) % 7, "completion_tokens": 5}
        self.after_call()
        return httpx.Response(200, json=payload)


def upstream(name: str, **kw: Any) -> UpstreamSettings:
    return UpstreamSettings(name=name, base_url=f"http://{name}.test/v1", input_usd_per_mtok=1.0,
                            output_usd_per_mtok=2.0, **kw)


QUESTIONS = [Question("arith", i, f"What is {i} plus {i}?", str(2 * i)) for i in range(6)] + [
    Question("capitals", i, f"Capital number {i}?", f"City{i}") for i in range(4)]
ANSWERS = {q.query: q.ground_truth for q in QUESTIONS}


@pytest.fixture
def fake():
    llm = FakeLLM(ANSWERS, wrong=("beta",), no_usage=("gamma",))
    with respx.mock(assert_all_called=False) as router:
        router.post(url__regex=r"http://[\w-]+\.test/v1/chat/completions").mock(side_effect=llm)
        yield llm


def run(questions: list[Question], ups: list[UpstreamSettings], out: Path, **opts: Any):
    settings = Settings(upstreams=ups)
    return asyncio.run(collect(questions, settings, None, out, options=CollectOptions(**{**FAST, **opts}),
                               progress=False))


# ---------------------------------------------------------------- collect


def test_collect_writes_loadable_llmrouterbench_files(tmp_path: Path, fake: FakeLLM) -> None:
    summary = run(QUESTIONS, [upstream("alpha"), upstream("beta"), upstream("gamma")], tmp_path)
    files = sorted((tmp_path / "results" / "bench").rglob("*.json"))
    assert len(files) == 6 and len(summary.files) == 6
    assert any(re.fullmatch(r"arith-test-alpha-\d{8}_\d{6}\.json", f.name) for f in files)
    doc = json.loads(next(f for f in files if "arith-test-beta" in f.name).read_text())
    assert {"performance", "time_taken", "prompt_tokens", "completion_tokens", "cost", "counts", "model_name",
            "dataset_name", "split", "demo", "extra_metrics", "records"} <= set(doc)
    rec = doc["records"][0]
    assert set(rec["extra_fields"]) >= {"latency_s", "finish_reason", "usage_estimated", "collected_at",
                                        "upstream_model", "scorer"}
    assert rec["extra_fields"]["scorer"] == "numeric" and rec["extra_fields"]["latency_s"] >= 0
    assert rec["prompt"].startswith(rec["origin_query"]) and "Answer: <number>" in rec["prompt"]

    m = load_records(tmp_path)
    assert m.models == ["alpha", "beta", "gamma"] and len(m.queries) == 10 and m.present.all()
    arith = np.array([d == "arith" for d in m.datasets])
    assert m.score[:, 0].tolist() == [1.0] * 10  # alpha is always right
    assert m.score[arith, 1].tolist() == [0.0] * 6 and m.score[~arith, 1].tolist() == [1.0] * 4
    assert np.allclose(m.cost, (m.prompt_tokens * 1.0 + m.completion_tokens * 2.0) / 1e6)
    assert (m.completion_tokens[:, :2] == 5).all()  # reported usage kept as is
    assert summary.models["gamma"].usage_estimated == 10 and summary.models["alpha"].usage_estimated == 0
    assert summary.models["alpha"].accuracy == 1.0 and summary.models["beta"].accuracy == 0.4
    table = summary.table()
    assert all(name in table for name in ("alpha", "beta", "gamma")) and "p95 lat" in table
    assert summary.to_dict()["models"]["beta"]["answered"] == 10

    # and the output builds a bank
    from bank_builder.build import build_bank

    class Words:
        name, dim = "words", 8

        def embed(self, texts, *, progress=False):
            out = np.ones((len(texts), 8), np.float32)
            for i, t in enumerate(texts):
                out[i, len(t) % 8] += 1
            return out / np.linalg.norm(out, axis=1, keepdims=True)

    manifest = build_bank(m, Words(), tmp_path / "bank", params=JiSiParams(), split={"part": "all"}, progress=False)
    assert manifest.n_queries == 10 and manifest.models == ["alpha", "beta", "gamma"]


def test_cache_makes_a_second_run_ask_nothing(tmp_path: Path, fake: FakeLLM) -> None:
    ups = [upstream("alpha"), upstream("beta")]
    run(QUESTIONS, ups, tmp_path)
    assert fake.calls == {"alpha": 10, "beta": 10}
    before = load_records(tmp_path)
    summary = run(QUESTIONS, ups, tmp_path)
    assert fake.calls == {"alpha": 10, "beta": 10} and summary.models["alpha"].asked == 0
    assert len(list((tmp_path / "results").rglob("*.json"))) == 4  # older files replaced, not duplicated
    after = load_records(tmp_path)
    assert (after.score == before.score).all() and np.allclose(after.cost, before.cost)
    # a changed prompt is asked again
    run(QUESTIONS[:2], ups, tmp_path, prompt_template="Q: {query}\n{instruction}")
    assert fake.calls == {"alpha": 12, "beta": 12}


def test_killed_collect_resumes_with_only_the_missing_answers(tmp_path: Path, fake: FakeLLM) -> None:
    ups = [upstream("alpha", max_concurrency=2), upstream("beta", max_concurrency=2)]
    settings = Settings(upstreams=ups)
    fake.delay_s = 0.002

    async def killed() -> None:
        task = asyncio.create_task(collect(QUESTIONS, settings, None, tmp_path,
                                           options=CollectOptions(**FAST), progress=False))
        fake.after_call = lambda: sum(fake.calls.values()) >= 7 and task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(killed())
    cache = tmp_path / ".collect-cache.jsonl"
    kept = len(cache.read_text().splitlines())
    assert 1 <= kept < 20 and not (tmp_path / "results").exists()
    with cache.open("a") as fh:
        fh.write('{"dataset": "arith", "index": 5, "mod')  # a line torn by the kill
    fake.after_call = lambda: None
    asked_before = sum(fake.calls.values())
    summary = run(QUESTIONS, ups, tmp_path)
    assert sum(fake.calls.values()) - asked_before == 20 - kept
    assert sum(m.asked for m in summary.models.values()) == 20 - kept
    m = load_records(tmp_path)
    assert m.present.all() and m.present.shape == (10, 2)
    assert len([ln for ln in cache.read_text().splitlines() if ln.startswith('{"dataset"')]) == 21


def test_retries_then_failure_is_reported_and_not_written(tmp_path: Path, fake: FakeLLM) -> None:
    # alpha: first call 503, then fine; beta: always 500 for its first question asked
    fake.fail = lambda model, n: 503 if (model, n) == ("alpha", 1) else None
    summary = run(QUESTIONS[:1], [upstream("alpha")], tmp_path / "a", retries=2)
    assert fake.calls["alpha"] == 2 and summary.models["alpha"].answered == 1 and not summary.failures

    fake.fail = lambda model, n: 500 if model == "beta" else None
    summary = run(QUESTIONS[:2], [upstream("beta")], tmp_path / "b", retries=2)
    assert fake.calls["beta"] == 6  # 2 questions x (1 + 2 retries)
    assert summary.models["beta"].failed == 2 and summary.models["beta"].answered == 0
    assert len(summary.failures) == 2 and summary.failures[0]["status"] == 500
    assert "failed" in summary.table() and not (tmp_path / "b" / "results").exists()
    assert (tmp_path / "b" / ".collect-cache.jsonl").read_text() == ""

    fake.fail = lambda model, n: 400 if model == "delta" else None  # a client error is not retried
    summary = run(QUESTIONS[:1], [upstream("delta")], tmp_path / "c", retries=3)
    assert fake.calls["delta"] == 1 and len(summary.failures) == 1

    fake.fail = lambda model, n: None  # a later run retries what failed
    summary = run(QUESTIONS[:2], [upstream("beta")], tmp_path / "b")
    assert summary.models["beta"].answered == 2 and load_records(tmp_path / "b").present.all()


def test_concurrency_per_upstream_is_respected(tmp_path: Path, fake: FakeLLM) -> None:
    fake.delay_s = 0.01
    run(QUESTIONS, [upstream("alpha", max_concurrency=2), upstream("beta", max_concurrency=4)], tmp_path / "a")
    assert fake.max_in_flight == {"alpha": 2, "beta": 4}
    fake.max_in_flight.clear()
    run(QUESTIONS, [upstream("gamma", max_concurrency=8)], tmp_path / "b", concurrency=3)
    assert fake.max_in_flight == {"gamma": 3}


# ---------------------------------------------------------------- questions and CLI


def test_load_questions_from_records_and_jsonl(tmp_path: Path, mini_bench: Path) -> None:
    qs = load_questions([mini_bench], datasets=["gsm8k"], max_queries=5)
    m = load_records(mini_bench, datasets=["gsm8k"], max_queries_per_dataset=5)
    assert [(q.dataset, q.index) for q in qs] == [m.key(i) for i in range(5)]
    assert qs[0].query == m.queries[0] and qs[0].ground_truth == m.ground_truth[0]

    demo = load_questions([DEMO])
    assert len(demo) == 90 and {q.dataset for q in demo} == {"arith", "trivia-choice", "capitals"}
    assert {q.kind for q in demo} == {"numeric", "choice", "exact"}
    assert len(load_questions([DEMO], datasets=["capitals"], max_queries=7)) == 7

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"dataset": "d", "index": 0, "query": "q", "ground_truth": "a"}\n{"dataset": "d", "query": "q"}\n')
    with pytest.raises(RecordError, match="bad.jsonl:2: field 'index'"):
        load_questions([bad])
    with pytest.raises(RecordError, match="unknown dataset"):
        load_questions([DEMO], datasets=["nope"])


def test_cli_collect_end_to_end_on_demo_questions(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    demo = load_questions([DEMO])
    llm = FakeLLM({q.query: q.ground_truth for q in demo}, wrong=("small",))
    config = tmp_path / "pool.yaml"
    config.write_text("upstreams:\n" + "".join(
        f"  - {{name: {n}, base_url: 'http://{n}.test/v1', input_usd_per_mtok: 0.5, output_usd_per_mtok: 1.5,"
        f" max_concurrency: 4}}\n" for n in ("large", "small", "unused")))
    out = tmp_path / "out"
    argv = ["collect", "--questions", str(DEMO), "--out", str(out), "--config", str(config),
            "--upstreams", "large,small", "--retries", "1", "--scorer", "capitals=exact", "--no-progress"]
    with respx.mock(assert_all_called=False) as router:
        router.post(url__regex=r"http://[\w-]+\.test/v1/chat/completions").mock(side_effect=llm)
        assert main(argv) == 0
        table = capsys.readouterr().out
        assert llm.calls == {"large": 90, "small": 90}
        assert "large" in table and "small" in table and "unused" not in table
        assert main(argv) == 0 and llm.calls == {"large": 90, "small": 90}  # all from the cache
    m = load_records(out)
    assert m.models == ["large", "small"] and len(m.queries) == 90 and m.present.all()
    assert m.score[:, 0].mean() == 1.0
    arith = np.array([d == "arith" for d in m.datasets])
    assert m.score[arith, 1].mean() == 0.0 and m.score[~arith, 1].mean() == 1.0
    assert main(["collect", "--questions", str(DEMO), "--out", str(out), "--config", str(config),
                 "--upstreams", "nope"]) == 2
    assert "unknown upstream" in capsys.readouterr().err
    for bad in (["--scorer", "capitals"], ["--scorer", "capitals=nope"], ["--prompt-template", "{question}"],
                ["--concurrency", "0"]):
        assert main(["collect", "--questions", str(DEMO), "--out", str(out), "--config", str(config), *bad]) == 2
        assert "jisi-bank: error:" in capsys.readouterr().err
