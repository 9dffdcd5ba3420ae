"""`jisi-pool demo`: JiSi over real models' records, in the browser.

1. A bank of the records' train split (`jisi-bank build --split train`), calibrated on its folds (`jisi-bank
   calibrate --bank`), and the best single model on that split (the evaluator's `best_single`): built once,
   cached by the records' identity (path, size, modification time) and the embedder.
2. The replay upstream (`jisi-pool replay`) over the test split, each model at its recorded latency: every model
   of the records answers with its recorded answer to a test question, and grades an answer from the records.
3. The gateway with every model as an upstream at the replay, priced from the price file, and the routing
   inspector on (/inspector/), comparing with the best single model and grading through the replay.

It prints three test questions to try (one per dataset, in the replay's seeded order) and the inspector's URL,
then serves until Ctrl-C.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import httpx
import yaml

from localpool.process import ServerProcess, free_port

DEMO_FORMAT = 1  # bump when what a cached demo folder holds changes
READY_TIMEOUT_S = 600.0  # the replay loads the records (~20 s for zeroeval-bench), the gateway the bank


@dataclass(frozen=True)
class DemoBank:
    folder: Path
    bank: Path
    best_single: str
    models: list[str]
    built_s: float | None  # None: found in the cache


def _identity(records: list[Path], embedder: str, seed: int, economy: bool = False) -> str:
    """Which cached demo folder these records belong to: a changed file (size, mtime) builds a new one."""
    parts = [f"format={DEMO_FORMAT}", f"embedder={embedder}", f"seed={seed}", *(["economy"] if economy else [])]
    for path in records:
        stat = path.stat()
        parts.append(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:12]


def _record_args(records: list[Path]) -> list[str]:
    return [arg for path in records for arg in ("--records", str(path))]


def _run(argv: list[str]) -> None:
    print("$ " + " ".join(argv), flush=True)
    subprocess.run(argv, check=True)


def prepare(records: list[Path], prices: Path | None, cache: Path, *, seed: int = 42,
            economy: bool = False) -> DemoBank:
    """The calibrated train bank and the best single model, from the cache or built now. `economy` also
    calibrates the bank's economy profile (jisi-economy; on zeroeval-bench ~4 more minutes on two cores, past the
    five minutes a first start may take, so the demo leaves it out unless asked)."""
    from app.config import Settings
    from app.embedding import embedder_name

    settings = Settings()
    identity = _identity(records, embedder_name(settings.embedder), seed, economy)
    folder = cache / f"{records[0].name.split('.')[0]}-{identity}"
    summary = folder / "demo.json"
    if summary.is_file():
        cached = json.loads(summary.read_text())
        return DemoBank(folder, folder / "bank", cached["best_single"], cached["models"], None)
    started = time.monotonic()
    folder.mkdir(parents=True, exist_ok=True)
    bin_dir = Path(sys.executable).parent
    common = [*_record_args(records), "--seed", str(seed)]
    _run([str(bin_dir / "jisi-bank"), "build", *common, "--split", "train", "--out", str(folder / "bank")])
    _run([str(bin_dir / "jisi-bank"), "calibrate", *common, "--bank", str(folder / "bank"), "--out",
          str(folder / "calibration"), *(["--prices", str(prices)] if prices else []),
          *([] if economy else ["--no-economy"])])
    best, models = best_single_on_train(records, seed)
    summary.write_text(json.dumps({"best_single": best, "models": models, "records": [str(p) for p in records],
                                   "built_s": round(time.monotonic() - started, 1)}, indent=1) + "\n")
    return DemoBank(folder, folder / "bank", best, models, time.monotonic() - started)


def best_single_on_train(records: list[Path], seed: int) -> tuple[str, list[str]]:
    """The evaluator's best single model (best accuracy on the train split), and every model of the records."""
    from bank_builder.evaluate.baselines import best_single
    from bank_builder.records import RecordSelection
    from localpool.replay import load_served

    train = load_served(RecordSelection(paths=tuple(records), seed=seed), "train").matrix
    return train.models[best_single(train.score, train.present)], list(train.models)


def gateway_settings(demo: DemoBank, replay_url: str, prices: Path | None) -> dict[str, Any]:
    """Every model an upstream at the replay, priced as the evaluator prices it; the inspector on."""
    from bank_builder.evaluate.scores import upstream_prices

    priced = upstream_prices(demo.models, prices)
    return {
        "bank_path": str(demo.bank),
        "upstreams": [{"name": m, "base_url": f"{replay_url}/v1", "timeout_s": 120, "max_concurrency": 64,
                       **priced.get(m, {})} for m in demo.models],
        "inspector": {"enabled": True, "grader_url": replay_url, "baseline_model": demo.best_single},
    }


@contextmanager
def running(demo: DemoBank, records: list[Path], prices: Path | None, *, host: str = "127.0.0.1", port: int = 0,
            seed: int = 42, latency_ms: str | None = None) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    """The replay upstream over the test split and the gateway in front of it, both ready; stopped on exit.
    `latency_ms`: the replay's MEDIAN[,SIGMA] (default: its own, each model at its recorded median); port 0: any."""
    replay_port = free_port()
    replay = ServerProcess([sys.executable, "-m", "localpool.cli", "replay", *_record_args(records), "--split", "test",
                            "--seed", str(seed), "--port", str(replay_port),
                            *(["--latency-ms", latency_ms] if latency_ms else [])], replay_port,
                           timeout_s=READY_TIMEOUT_S, log_path=demo.folder / "replay.log")
    config = demo.folder / "gateway.yaml"
    config.write_text(yaml.safe_dump(gateway_settings(demo, replay.url, prices), sort_keys=False))
    env = {**os.environ, "JISI_CONFIG": str(config), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    port = port or free_port()
    gateway = ServerProcess([str(Path(sys.executable).parent / "jisi-gateway"), "--host", host, "--port", str(port),
                             "--log-format", "text"], port, ready_path="/readyz", timeout_s=READY_TIMEOUT_S, env=env,
                            log_path=demo.folder / "gateway.log")
    print(f"starting the replay upstream (log: {demo.folder / 'replay.log'})", flush=True)
    with replay:
        print(f"starting the gateway on {host}:{port} (log: {demo.folder / 'gateway.log'})", flush=True)
        with gateway:
            yield replay, gateway


def serve(demo: DemoBank, records: list[Path], prices: Path | None, *, host: str, port: int, seed: int,
          started: float) -> int:
    with running(demo, records, prices, host=host, port=port, seed=seed) as (replay, gateway):
        questions = httpx.get(f"{replay.url}/questions", params={"n": 3}, timeout=10).json()["data"]
        print(banner(demo, f"http://{host}:{port}", questions, time.monotonic() - started), flush=True)
        try:
            assert gateway.proc is not None
            return gateway.proc.wait()
        except KeyboardInterrupt:
            print("\nstopping the gateway and the replay upstream", flush=True)
            return 0


def banner(demo: DemoBank, url: str, questions: list[dict[str, str]], elapsed_s: float) -> str:
    lines = [
        "", f"JiSi demo ready in {elapsed_s:.0f} s: {len(demo.models)} models' recorded answers, bank "
        f"{demo.bank} ({'built now' if demo.built_s is not None else 'cached'}), best single on train: "
        f"{demo.best_single}", "",
        f"  routing inspector:  {url}/inspector/", f"  OpenAI endpoint:    {url}/v1  (model jisi, jisi-route, or "
        "any model of the records)", "", "Three test questions to try (the bank never saw them):"]
    for q in questions:
        text = " ".join(q["question"].split())
        lines.append(f"  [{q['dataset']}] {text[:160]}{'…' if len(text) > 160 else ''}")
    if questions:
        shortest = min(questions, key=lambda q: len(q["question"]))["question"]
        body = {"model": "jisi", "messages": [{"role": "user", "content": shortest}]}
        lines += ["", "From a shell:", f"  curl -s {url}/v1/chat/completions -H 'content-type: application/json' "
                  f"-d {shlex.quote(json.dumps(body))}"]
    lines += ["", "Ctrl-C stops the gateway and the replay upstream."]
    return "\n".join(lines)


def add_parser(sub: Any, default_records: Path, default_prices: Path) -> None:
    p = sub.add_parser("demo", help="serve the gateway over real models' recorded answers, with the inspector",
                       description=__doc__.splitlines()[0])
    p.add_argument("--records", type=Path, action="append", help=f"LLMRouterBench records (default: "
                   f"{default_records})")
    p.add_argument("--prices", type=Path, default=default_prices if default_prices.is_file() else None,
                   help=f"price file (default: {default_prices})")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--seed", type=int, default=42, help="the split's seed (the evaluator's)")
    p.add_argument("--cache", type=Path, default=Path("var/demo"), help="where built demo banks are kept")
    p.add_argument("--prepare-only", action="store_true", help="build (or find) the bank and exit")
    p.add_argument("--economy", action="store_true",
                   help="also calibrate the economy profile (jisi-economy in the inspector; ~4 more minutes)")


def main(args: argparse.Namespace, default_records: Path) -> int:
    started = time.monotonic()
    # a SIGTERM (a supervisor, `kill`) unwinds like Ctrl-C: the replay upstream and the gateway are stopped too
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    records = args.records or [default_records]
    missing = [str(p) for p in records if not p.exists()]
    if missing:
        print(f"jisi-pool demo: no records at {', '.join(missing)}", file=sys.stderr)
        return 1
    demo = prepare(records, args.prices, args.cache, seed=args.seed, economy=args.economy)
    print(f"demo bank {demo.bank}: {'built in %.0f s' % demo.built_s if demo.built_s is not None else 'cached'}; "
          f"best single on train: {demo.best_single}", flush=True)
    if args.prepare_only:
        return 0
    return serve(demo, records, args.prices, host=args.host, port=args.port, seed=args.seed, started=started)
