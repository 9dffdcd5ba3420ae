"""docs/benchmarks.md is shared by several benchmark scripts: each one owns a marked section and rewrites
only that section, so running one benchmark never erases another's figures."""

from __future__ import annotations

import re
import statistics
import time
from pathlib import Path

import numpy as np

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
HEADER = (
    "# Benchmarks\n\n"
    "Each section is written by the script it names; rerun that script to refresh it. Machine: 2 CPU cores,\n"
    "no GPU, embedded all-MiniLM-L6-v2 unless a section says otherwise.\n"
)


def write_section(key: str, markdown: str, out: Path = DEFAULT_OUT) -> Path:
    """Replace (or append) the section marked `key` in `out` with `markdown`."""
    begin, end = f"<!-- begin:{key} -->", f"<!-- end:{key} -->"
    block = f"{begin}\n{markdown.strip()}\n{end}\n"
    text = out.read_text() if out.exists() else HEADER
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end) + r"\n?", re.DOTALL)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + block
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    return out


def idle_penalty(sleep_s: float = 0.2, reps: int = 8) -> str:
    """How much slower this machine runs code right after it slept, said in one line for a report.

    On the VM these figures were taken on, a process that slept runs much slower for a while, and how much
    changes from hour to hour; every latency here that follows an idle wait (the fan-out, c=1) moves with it.
    Probe: a single-threaded 2000x2000 float32 mat-vec (16 MB), back to back, then after a sleep.
    """
    a, v = np.random.rand(2000, 2000).astype(np.float32), np.random.rand(2000).astype(np.float32)

    def once() -> float:
        t = time.perf_counter()
        a @ v
        return 1000 * (time.perf_counter() - t)

    for _ in range(20):
        once()
    warm = statistics.median(once() for _ in range(30))
    after = []
    for _ in range(reps):
        time.sleep(sleep_s)
        after.append(once())
    return (f"idle penalty probe: a 16 MB mat-vec takes {warm:.2f} ms back to back and "
            f"{statistics.median(after):.2f} ms after a {sleep_s:g} s sleep")
