"""What the benchmarks share: the small real bank they run on, the gateway started as deployed, servers in
subprocesses, the questions, and percentiles."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import yaml

from localpool.process import ServerProcess, free_port  # noqa: F401 (re-exported: the benchmarks' servers)

REPO = Path(__file__).resolve().parent.parent
MINI_BENCH = Path(os.environ.get("JISI_SHARED_DATA", REPO.parent / "shared" / "data")) / "mini-bench.tar.gz"
BANK_CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "jisi" / "bench-banks"
# the embedders the benchmarks compare, label -> embedder.backend; the first is the default
EMBEDDERS = {"static": "static", "MiniLM": "local"}
QUESTIONS = [  # math and code questions like the bank's
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many in May. How many in total?",
    "What is the output of f('hello') where f reverses a string and upper-cases it?",
    "Find the remainder when 2^100 is divided by 7.",
    "A robe takes 2 bolts of blue fiber and half that much white fiber. How many bolts does it take?",
    "How many positive divisors does 360 have?",
]

def ensure_bank(path: Path | None, per_dataset: int = 20, backend: str = "static") -> Path:
    """A small real bank (mini-bench, `per_dataset` questions per dataset x 8 models), built once and cached,
    with the embedder `backend` at its defaults (what a gateway configured with `embedder: {backend: ...}`
    and nothing else expects)."""
    path = path or BANK_CACHE / f"mini-{per_dataset}-{backend}"
    if (path / "manifest.json").is_file():
        return path
    from app.embedding import make_embedder
    from app.engine import JiSiParams
    from app.config import EmbedderSettings
    from bank_builder.build import build_bank
    from bank_builder.records import load_records

    print(f"building the bank at {path} (once) ...", flush=True)
    embedder = make_embedder(EmbedderSettings(backend=backend))  # behind the shared embedding cache
    matrix = load_records([MINI_BENCH], max_queries_per_dataset=per_dataset, seed=42)
    build_bank(matrix, embedder, path, params=JiSiParams(), split={"part": "all", "seed": 42}, progress=False)
    embedder.close()
    return path


def start_gateway(workdir: Path, bank: Path, upstreams: dict[str, tuple[str, str]], timeout_s: float = 30,
                  upstream_settings: dict[str, dict[str, Any]] | None = None, profile: Path | None = None,
                  **settings: Any) -> ServerProcess:
    """The gateway as deployed: `jisi-gateway` (JSON logs at info, into workdir/gateway.log), configured by a
    YAML file.

    `upstreams` maps bank model name -> (base_url, model id sent upstream); `upstream_settings` adds fields to
    named upstreams (e.g. their prices); `settings` are top-level keys; `profile`: run it under cProfile (from a
    SIGUSR1 on), whose statistics are written there when it stops.
    """
    extra = upstream_settings or {}
    config = {"bank_path": str(bank), "upstreams": [
        {"name": name, "base_url": url, "model": model, "timeout_s": timeout_s, "max_concurrency": 64,
         **extra.get(name, {})} for name, (url, model) in upstreams.items()], **settings}
    path = workdir / "gateway.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    port = free_port()
    env = {**os.environ, "JISI_CONFIG": str(path), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    # cProfile on CPU time (a busy machine's waits are not the gateway's work), switched on by SIGUSR1 (after the
    # start-up and a warm-up); uvicorn raises a SIGTERM again once it has shut down: ignored, so the profile is written
    code = ("import cProfile, signal, time; from app.http.app import run; "
            "p = cProfile.Profile(time.process_time); signal.signal(signal.SIGUSR1, lambda *_: p.enable()); "
            f"signal.signal(signal.SIGTERM, lambda *_: None); run(); p.disable(); p.dump_stats({str(profile)!r})") \
        if profile else "from app.http.app import run; run()"
    argv = [sys.executable, "-c", code, "--host", "127.0.0.1", "--port", str(port), "--log-level", "info"]
    gateway = ServerProcess(argv, port, ready_path="/readyz", timeout_s=300, env=env, cwd=REPO,
                            log_path=workdir / "gateway.log")
    gateway.start()
    return gateway


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))] if ordered else float("nan")
