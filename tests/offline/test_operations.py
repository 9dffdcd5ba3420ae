"""Operating the gateway as real processes on loopback (`jisi-gateway` in front of the replay upstream, the
demo's mini-bench bank): the graceful drain on SIGTERM, and a restart under load behind a client that retries
only refused connections."""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from localpool import demo
from localpool.process import ServerProcess
from tests.conftest import PRICES

SLOW = "2000,0"  # every upstream call takes 2 s: requests outlast the drain's grace


def ask(url: str, question: str, stream: bool) -> None:
    """One jisi-route request, plain or streamed; raises unless it came back whole."""
    body = {"model": "jisi-route", "messages": [{"role": "user", "content": question}], "stream": stream}
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=60) as response:
        data = response.read().decode()
    assert response.status_code == 200, data[:300]
    if stream:
        events = [line[6:] for line in data.splitlines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]" and not any('"error"' in e for e in events), data[-300:]
        assert "".join(json.loads(e)["choices"][0]["delta"].get("content") or "" for e in events[:-1]
                       if json.loads(e)["choices"])
    else:
        assert json.loads(data)["choices"][0]["message"]["content"]


def questions(replay: ServerProcess, n: int) -> list[str]:
    return [q["question"] for q in httpx.get(f"{replay.url}/questions", params={"n": n}, timeout=10).json()["data"]]


def in_threads(work: list[Any]) -> tuple[list[threading.Thread], list[BaseException | None]]:
    outcomes: list[BaseException | None] = [None] * len(work)

    def run(i: int) -> None:
        try:
            work[i]()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            outcomes[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(work))]
    for t in threads:
        t.start()
    return threads, outcomes


def test_sigterm_drains_requests_in_flight_streams_included_and_exits_0(demo_bank, mini_bench: Path, monkeypatch):
    monkeypatch.setenv("JISI_DRAIN__GRACE_S", "0.5")
    with demo.running(demo_bank, [mini_bench], PRICES, latency_ms=SLOW) as (replay, gateway):
        url, asked = gateway.url, questions(replay, 6)
        threads, outcomes = in_threads([lambda q=q, s=i % 2 == 1: ask(url, q, s) for i, q in enumerate(asked)])
        time.sleep(0.5)  # all six in flight, waiting on their upstream calls
        assert gateway.proc is not None
        gateway.proc.send_signal(signal.SIGTERM)
        readyz = httpx.get(f"{url}/readyz", timeout=5)  # within the grace: still listening, out of rotation
        assert readyz.status_code == 503 and readyz.json()["status"] == "draining"
        time.sleep(1.0)  # past the grace: the listener is closed, the six still in flight
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{url}/healthz", timeout=5)
        for t in threads:
            t.join(timeout=60)
        assert outcomes == [None] * 6, outcomes  # every accepted request finished whole
        assert gateway.proc.wait(timeout=30) == 0


def test_a_second_sigterm_exits_at_once(demo_bank, mini_bench: Path, monkeypatch):
    monkeypatch.setenv("JISI_DRAIN__GRACE_S", "0")
    with demo.running(demo_bank, [mini_bench], PRICES, latency_ms="20000,0") as (replay, gateway):
        threads, outcomes = in_threads([lambda q=q: ask(gateway.url, q, True) for q in questions(replay, 2)])
        time.sleep(0.5)
        assert gateway.proc is not None
        started = time.monotonic()
        gateway.proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        gateway.proc.send_signal(signal.SIGTERM)
        gateway.proc.wait(timeout=10)
        assert time.monotonic() - started < 5  # not the 20 s the requests would have taken
        for t in threads:
            t.join(timeout=30)
        assert all(o is not None for o in outcomes)  # cut, as asked


def test_a_restart_under_load_loses_no_accepted_request(demo_bank, mini_bench: Path, monkeypatch, tmp_path):
    """Clients retry only refused connections (what a load balancer or a retrying client does when no replica
    listens); every request a gateway accepted must come back whole, streams included."""
    monkeypatch.setenv("JISI_DRAIN__GRACE_S", "0.3")
    stop = threading.Event()
    tally = {"sent": 0, "ok": 0, "refused": 0}
    lock = threading.Lock()

    def client(url: str, asked: list[str], n: int) -> None:
        i = n
        while not stop.is_set():
            question, stream = asked[i % len(asked)], i % 2 == 0
            try:
                ask(url, question, stream)
            except httpx.ConnectError:  # nobody listening (between the old listener and the new): retry
                with lock:
                    tally["refused"] += 1
                time.sleep(0.05)
                continue
            with lock:
                tally["sent"] += 1
                tally["ok"] += 1
            i += 1

    with demo.running(demo_bank, [mini_bench], PRICES, latency_ms="300,0") as (replay, old):
        asked = questions(replay, 8)
        threads, outcomes = in_threads([lambda n=n: client(old.url, asked, n) for n in range(4)])
        time.sleep(2)
        assert old.proc is not None
        old.proc.send_signal(signal.SIGTERM)
        assert old.proc.wait(timeout=30) == 0
        new = ServerProcess(old.argv, old.port, ready_path="/readyz", timeout_s=120, env=old.env,
                            log_path=tmp_path / "new-gateway.log")
        with new:
            time.sleep(2)
            stop.set()
            for t in threads:
                t.join(timeout=60)
    assert outcomes == [None] * 4, outcomes  # no accepted request was lost or cut
    assert tally["ok"] > 8 and tally["refused"] > 0, tally  # load ran across the restart, which refused for a while
    print(f"restart under load: {tally}")


def test_sighup_swaps_the_bank_under_load_without_a_failed_request(demo_bank, mini_bench: Path, tmp_path):
    """A bank rebuilt from every question (the demo's holds the train split) replaces the demo's on SIGHUP while
    four clients keep asking; every answer names its bank (`jisi.bank`)."""
    import yaml

    from app.config import EmbedderSettings
    from app.embedding import make_embedder
    from app.engine import JiSiParams
    from bank_builder.build import build_bank
    from bank_builder.records import load_records

    rebuilt = tmp_path / "rebuilt"  # with the embedder the gateway is configured with (the default)
    build_bank(load_records([mini_bench], seed=42), make_embedder(EmbedderSettings(cache_dir=tmp_path / "cache")),
               rebuilt, params=JiSiParams(), split={"part": "all", "seed": 42}, progress=False)
    stop = threading.Event()
    answers: list[tuple[float, str]] = []  # (when the request started, the bank that answered)
    failures: list[str] = []

    def client(url: str, asked: list[str], n: int) -> None:
        while not stop.is_set():
            started = time.monotonic()
            body = {"model": "jisi-route", "messages": [{"role": "user", "content": asked[n % len(asked)]}]}
            try:
                response = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60)
                answers.append((started, response.json()["jisi"]["bank"]))
                assert response.status_code == 200
            except Exception as exc:  # noqa: BLE001 - counted
                failures.append(repr(exc))
            n += 4

    with demo.running(demo_bank, [mini_bench], PRICES, latency_ms="200,0") as (replay, gateway):
        old = httpx.get(f"{gateway.url}/readyz", timeout=5).json()["bank"]["build_id"]
        threads, _ = in_threads([lambda n=n: client(gateway.url, questions(replay, 8), n) for n in range(4)])
        time.sleep(1.5)
        config = demo_bank.folder / "gateway.yaml"
        config.write_text(yaml.safe_dump({**yaml.safe_load(config.read_text()), "bank_path": str(rebuilt)}))
        assert gateway.proc is not None
        gateway.proc.send_signal(signal.SIGHUP)
        deadline, new = time.monotonic() + 60, old
        while new == old and time.monotonic() < deadline:
            time.sleep(0.05)
            new = httpx.get(f"{gateway.url}/readyz", timeout=5).json()["bank"]["build_id"]
        swapped = time.monotonic()
        time.sleep(1.5)
        stop.set()
        for t in threads:
            t.join(timeout=60)
    assert new != old and failures == [], failures
    before = {bank for started, bank in answers if started < swapped - 5}
    after = {bank for started, bank in answers if started > swapped}
    assert after == {new} and before <= {old}, (before, after)
    print(f"bank swap under load: {len(answers)} requests, {len(failures)} failed, "
          f"{sum(1 for s, _ in answers if s > swapped)} after the swap, all on {new}")
