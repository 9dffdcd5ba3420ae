"""docs/benchmarks.md is shared by several benchmark scripts: each one owns a marked section and rewrites
only that section, so running one benchmark never erases another's figures."""

from __future__ import annotations

import re
from pathlib import Path

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
