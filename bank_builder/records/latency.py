"""How long a recorded model takes to answer a recorded question when its answer is replayed: the one latency
model of the replay upstream (localpool/replay.py) and of the evaluator's quorum (`--quorum`), so the fan-out
cut-offs the gateway makes against the replay upstream are the ones the evaluator scores.

A call's latency is lognormal around the model's median (its records' mean `time_taken` per call when the
records carry one, else the configured median), and a pure function of (seed, model, question): the same call
takes the same time in every run and on both paths.
"""

from __future__ import annotations

import hashlib
import json
import math
import tarfile
from collections import Counter
from pathlib import Path, PurePosixPath
from typing import Any, Iterator, Sequence

import numpy as np

from bank_builder.records.text import whitespace_normalised


def standard_normal(seed: int, model: str, question: str) -> float:
    """A standard normal draw fixed by (seed, model, the whitespace-normalised question)."""
    digest = hashlib.sha256(f"{seed}\0{model}\0{whitespace_normalised(question)}".encode()).digest()
    u1 = (int.from_bytes(digest[:8], "big") + 0.5) / 2**64  # in (0, 1): log never sees 0
    u2 = int.from_bytes(digest[8:16], "big") / 2**64
    return math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * u2)  # Box-Muller


def call_latency_s(seed: int, model: str, question: str, median_ms: float, sigma: float) -> float:
    """Seconds the replayed call takes: median · exp(σ·z); 0 when the median is 0."""
    if median_ms <= 0:
        return 0.0
    return median_ms / 1000.0 * math.exp(sigma * standard_normal(seed, model, question))


DEFAULT_SIGMA = 0.5  # the lognormal's shape when only a median is given


def parse_latency(text: str) -> tuple[float, float]:
    """`MEDIAN[,SIGMA]` in milliseconds (the replay upstream's --latency-ms, the evaluator's --quorum)."""
    median, _, sigma = str(text).partition(",")
    try:
        values = float(median), float(sigma) if sigma else DEFAULT_SIGMA
    except ValueError:
        raise ValueError(f"expected MEDIAN[,SIGMA] in milliseconds, got {text!r}") from None
    if values[0] < 0 or values[1] < 0:
        raise ValueError(f"the latency's median and sigma must be >= 0, got {text!r}")
    return values


def latency_matrix(models: list[str], questions: list[str], median_ms: float, sigma: float, seed: int,
                   medians_ms: dict[str, float] | None = None) -> np.ndarray:
    """Questions x models: each replayed call's latency in seconds (a model's own median where `medians_ms` has
    one)."""
    own = medians_ms or {}
    return np.array([[call_latency_s(seed, m, q, own.get(m, median_ms), sigma) for m in models] for q in questions])


def _result_files(path: Path) -> Iterator[tuple[PurePosixPath, bytes]]:
    """(path inside the source, bytes) of each LLMRouterBench .json file of a source; JSONL carries no
    per-file time_taken, so it yields nothing."""
    name = path.name.lower()
    if path.is_dir():
        for p in sorted(path.rglob("*.json")):
            yield PurePosixPath(p.resolve().as_posix()), p.read_bytes()
    elif name.endswith(".json"):
        yield PurePosixPath(path.resolve().as_posix()), path.read_bytes()
    elif path.is_file() and not name.endswith(".jsonl") and tarfile.is_tarfile(path):
        with tarfile.open(path, "r:*") as tf:
            for member in tf:
                if member.isfile() and member.name.endswith(".json"):
                    yield PurePosixPath(member.name), tf.extractfile(member).read()  # type: ignore[union-attr]


def _head(raw: bytes) -> dict[str, Any]:
    """A result file's top-level fields other than `records`. They precede the records in every writer (results
    files and `jisi-bank collect`), so only that prefix is parsed; anything unusual falls back to a full parse."""
    cut = raw.find(b'"records"')
    if cut > 0:
        try:
            head = json.loads(raw[:cut] + b'"records": null}')
            if isinstance(head, dict) and "time_taken" in head:
                return head
        except ValueError:
            pass
    try:
        doc = json.loads(raw)
    except ValueError:
        return {}  # load_records reports bad files; a median is not worth failing for
    return doc if isinstance(doc, dict) else {}


def recorded_medians_ms(paths: Sequence[str | Path], *, datasets: Sequence[str] | None = None,
                        models: Sequence[str] | None = None) -> dict[str, float]:
    """Per model, its mean milliseconds per call over the result files with a non-null `time_taken`
    (sum time_taken / sum counts over the selected datasets); models whose files have none are absent.

    The RecordMatrix keeps no time_taken, so this reads the sources' top-level fields in a second pass
    (about 2 s for the 52-model zeroeval archive: decompression, not parsing; `jisi-pool replay` overlaps it
    with the load)."""
    seconds: Counter[str] = Counter()
    calls: Counter[str] = Counter()
    for source in paths:
        for where, raw in _result_files(Path(source)):
            head = _head(raw)
            taken, counts = head.get("time_taken"), head.get("counts")
            if not (isinstance(taken, (int, float)) and isinstance(counts, int) and counts > 0
                    and math.isfinite(taken) and taken >= 0):
                continue
            # names as load_records takes them: the file's own, else .../results/bench/<dataset>/<split>/<model>/
            parts = where.parts
            at = max((i for i in range(len(parts) - 1) if parts[i:i + 2] == ("results", "bench")), default=-1)
            layout = parts[at + 2:at + 5] if at >= 0 and len(parts) - at == 6 else ("", "", "")
            dataset, model = head.get("dataset_name") or layout[0], head.get("model_name") or layout[2]
            if (datasets and dataset not in datasets) or (models and model not in models) or not model:
                continue
            seconds[model] += float(taken)
            calls[model] += counts
    return {m: 1000.0 * seconds[m] / calls[m] for m in sorted(calls)}
