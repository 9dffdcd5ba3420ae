"""The routing inspector in a real browser: headless Chromium (the system's, driven by Selenium) loads the page
from a gateway on loopback — the demo's own setup on mini-bench: a calibrated train bank, the replay upstream over
the test split, every model an upstream — asks test questions, and what is drawn is checked against what the
gateway's public endpoints answer for the same request."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from bench.browser import InspectorPage, NoBrowser, chromium
from localpool.demo import DemoBank, running
from tests.conftest import PRICES

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo(mini_bench: Path, demo_bank: DemoBank) -> Iterator[tuple[str, str]]:
    """(gateway URL, replay URL): `jisi-pool demo`'s gateway on mini-bench, replay latency 0."""
    with running(demo_bank, [mini_bench], PRICES, latency_ms="0") as (replay, gateway):
        yield gateway.url, replay.url


@pytest.fixture(scope="module")
def page(demo: tuple[str, str]) -> Iterator[InspectorPage]:
    try:
        driver = chromium()
    except NoBrowser as exc:  # CI installs it (scripts/test.sh): a machine without it fails, it does not skip
        pytest.fail(str(exc))
    try:
        yield InspectorPage(driver, demo[0])
    finally:
        driver.quit()


def usd(value: float) -> str:
    """The page's money format (inspector.js usd())."""
    return "$0" if value == 0 else f"${value:.3g}" if value < 0.01 else f"${value:.4f}"


def test_a_routed_question_is_drawn_as_the_gateway_decided_it(demo: tuple[str, str], page: InspectorPage) -> None:
    url, replay = demo
    examples = page.open()
    assert len(examples) == 30 and all(re.match(r"\[(crux|gsm8k|math-l5)\] ", e) for e in examples)
    config = httpx.get(f"{url}/inspector/api/config").json()
    for i, method in ((1, "route"), (0, "jisi")):
        page.ask(example=i, method=method)
        assert page.error() is None, page.driver.get_log("browser")
        drawn = page.drawn()
        question = config["examples"][i]["question"]
        # the same request through the public endpoint (the replay and the engine are deterministic)
        body = {"model": "jisi" if method == "jisi" else "jisi-route",
                "messages": [{"role": "user", "content": question}],
                **({"jisi": {"shortcut": None}} if method == "route" else {})}
        answer = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60).json()
        jisi = answer["jisi"]
        expected = jisi["answered_by"] if jisi["mode"] == "route" else f"{jisi['aggregator']} (aggregating)"
        assert drawn["chosen"] == expected
        assert drawn["answer"] == answer["choices"][0]["message"]["content"].strip()
        assert drawn["cost"] == usd(jisi["total_cost_usd"]) and drawn["calls"] == str(jisi["upstream_calls"])
        # one row per upstream call, with its model and cost; one bar row per shown model, candidates included
        assert [r[0] for r in drawn["call_rows"]] == [c["model"] for c in jisi["calls"]]
        assert [r[-1] for r in drawn["call_rows"]] == [usd(c["cost_usd"]) for c in jisi["calls"]]
        shown = [r["model"] for r in drawn["score_rows"]]
        assert set(jisi["candidates"]) <= set(shown) and len(shown) == 8  # mini-bench's 8 models
        chosen_rows = [r["model"] for r in drawn["score_rows"] if "chosen" in r["classes"].split()]
        assert chosen_rows == [jisi["answered_by"]]
        coarse_px = [float(r["bar_px"][0].removesuffix("px")) for r in drawn["score_rows"]]
        assert max(coarse_px) == 160 and all(0 < px <= 160 for px in coarse_px)  # bars on the column's scale
        if method == "route":
            assert drawn["shortcut"].startswith("shortcut off") and drawn["calls"] == str(len(jisi["candidates"]))
        assert len(drawn["support_rows"]) == 10  # the dry run's ten nearest bank questions
        # the verdicts are the grader's (the replay's records)
        graded = httpx.post(f"{replay}/grade", json={"question": question, "content": answer["choices"][0][
            "message"]["content"], "model": jisi["answered_by"]}).json()
        assert drawn["verdict"] == ("right" if graded["correct"] else "wrong")
        baseline = httpx.post(f"{url}/v1/chat/completions", json={"model": config["baseline_model"], "messages": [
            {"role": "user", "content": question}]}, timeout=60).json()
        assert drawn["baseline"] == config["baseline_model"]
        assert drawn["baseline_cost"] == usd(baseline["jisi"]["total_cost_usd"])
    # the demo's bank has an economy profile: the page offers jisi-economy and draws its own profile's decision
    economy = page.driver.find_element("id", "economy-choice")
    assert economy.is_displayed()
    page.ask(example=2, method="economy")
    assert page.error() is None
    drawn = page.drawn()
    answer = httpx.post(f"{url}/v1/chat/completions", json={"model": "jisi-economy", "messages": [
        {"role": "user", "content": config["examples"][2]["question"]}]}, timeout=60).json()
    assert drawn["chosen"] == answer["jisi"]["answered_by"] and drawn["cost"] == usd(answer["jisi"]["total_cost_usd"])
    if "cascade" in answer["jisi"]:
        assert drawn["shortcut"].startswith("cascade, cheapest first")
    tally = page.tally()
    assert tally["n"] == "3" and tally["baseline-name"] == config["baseline_model"]
    assert re.fullmatch(r"[0-3]", tally["router-right"]) and tally["router-cost"].startswith("$")


def test_a_gateway_error_is_a_readable_message_on_the_page(page: InspectorPage) -> None:
    page.open()
    # a question the records do not hold: every replayed upstream answers 404, so the gateway answers 502
    page.ask(question="What colour is a zebra's shadow on a moonless night?", method="route")
    message = page.error()
    assert message is not None and message.startswith("/v1/chat/completions: 502 ")
    assert "no recorded question" in message and message.endswith("not a question of your own")
    assert "[object" not in message and "undefined" not in message
