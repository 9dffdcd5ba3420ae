"""Answer scorers for `jisi-bank collect`: response + ground truth -> (score, extracted prediction).

A scorer is any ``Callable[[str, str], tuple[float, str | None]]``: 1.0 correct, 0.0 otherwise; the prediction is
the answer it read from the response, None when it found none (which always scores 0). Built in: ``numeric``
(final number, compared with a tolerance), ``choice`` (multiple-choice letter A-J) and ``exact`` (normalised text
equality). More can be added with ``register_scorer`` or named as ``module:function``.
"""

from __future__ import annotations

import fnmatch
import importlib
import math
import re
import unicodedata
from typing import Callable

Scorer = Callable[[str, str], tuple[float, "str | None"]]

# dataset-name pattern -> scorer kind; the first match wins, anything else is scored `exact`
DEFAULT_KINDS: list[tuple[str, str]] = [
    ("gsm8k*", "numeric"), ("math*", "numeric"), ("arith*", "numeric"),
    ("mmlu*", "choice"), ("*choice*", "choice"),
]

_SCORERS: dict[str, Scorer] = {}


# ---------------------------------------------------------------- explicit final-answer markers


def _boxed(text: str) -> list[tuple[int, str]]:
    """(position, content) of every \\boxed{...}, with nested braces balanced."""
    found = []
    for m in re.finditer(r"\\boxed\s*\{", text):
        depth, i = 1, m.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0:
            found.append((m.start(), text[m.end():i - 1]))
    return found


_MARKERS = [
    re.compile(r"(?im)^[ \t>*#]*(?:final\s+)?answer\s*\**\s*[:：]\**\s*(.+?)\s*$"),  # "Answer: X" line
    re.compile(r"(?i)\banswer\s+is\s*[:：]?\s*(.+?)\s*(?:$|\n|\.(?:\s|$))"),  # "the (final) answer is X."
    re.compile(r"(?m)^\s*####\s*(.+?)\s*$"),  # GSM8K style "#### X"
]


def _explicit(text: str) -> str | None:
    """The chunk after the last explicit answer marker, or None."""
    hits = [(m.start(), m.group(1)) for rx in _MARKERS for m in rx.finditer(text)] + _boxed(text)
    if not hits:
        return None
    chunk = max(hits, key=lambda h: h[0])[1]
    inner = _boxed(chunk)  # "The answer is $\boxed{5}$"
    return inner[-1][1] if inner else chunk


# ---------------------------------------------------------------- numeric

# a number, optionally negative and/or with $; thousands commas only in groups of three
_NUM = re.compile(r"(?<![\w.)])(-)?\$?(-)?((?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?|\.\d+)")
_FRAC = re.compile(r"^(-)?\\[dt]?frac\{(-?\d+)\}\{(\d+)\}$|^(-?\d+)\s*/\s*(\d+)$")


def _numbers(text: str) -> list[float]:
    text = text.replace("\u2212", "-")  # unicode minus
    return [(-1 if m.group(1) or m.group(2) else 1) * float(m.group(3).replace(",", "")) for m in _NUM.finditer(text)]


def parse_number(text: str) -> float | None:
    """The value of a text that is just a number (``$1,234.50``, ``-7``, ``45%``, ``\\frac{1}{2}``, ``3/4``)."""
    clean = re.sub(r"[\s$%]|\\[$%]|\\!|^\\\(|\\\)$", "", text.strip().rstrip(".").replace("\u2212", "-"))
    clean = re.sub(r"^\\text\{(.*)\}$", r"\1", clean)
    if m := _FRAC.match(clean):
        sign = -1 if m.group(1) else 1
        num, den = (m.group(2), m.group(3)) if m.group(2) is not None else (m.group(4), m.group(5))
        return sign * int(num) / int(den) if int(den) else None
    if re.fullmatch(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|-?\.\d+", clean):
        return float(clean.replace(",", ""))
    return None


def _fmt(x: float) -> str:
    return str(int(x)) if x.is_integer() and abs(x) < 1e15 else format(x, ".12g")


def extract_number(response: str) -> float | None:
    """The final answer as a number: after an explicit marker (the value after its last '='), else the last
    number in the text."""
    chunk = _explicit(response)
    if chunk is not None:
        tail = chunk.rsplit("=", 1)[-1]  # "Answer: 3 + 4 = 7" -> 7
        value = parse_number(tail)
        if value is None and (found := _numbers(tail)):
            value = found[0]  # "Answer: 7 apples"
        if value is not None:
            return value
    found = _numbers(response)
    return found[-1] if found else None


def numeric(response: str, ground_truth: str) -> tuple[float, str | None]:
    value = extract_number(response or "")
    pred = None if value is None else _fmt(value)
    truth = parse_number(ground_truth or "")
    if truth is None:  # not a plain number (e.g. "-221_3", an expression): compare as text
        return exact(response, ground_truth)
    ok = value is not None and math.isclose(value, truth, rel_tol=1e-6, abs_tol=1e-6)
    return float(ok), pred


# ---------------------------------------------------------------- multiple choice

_CHOICE_EXPLICIT = re.compile(
    r"(?i:answer)\s*(?:(?i:is)|[:：])\s*[:：]?\s*(?:(?i:option)\s+)?[*(\[]*\s*([A-J])(?![\w'’])")
_CHOICE_LINE = re.compile(r"(?m)^[\W_]*([A-J])[\W_]*$")
# "(C)" or a lone capital; a lone one followed by a lowercase word is an article or "I", not an option
_CHOICE_ANY = re.compile(r"\(([A-J])\)|(?<![\w'’])([A-J])(?![\w'’])(?!\s+[a-z])")


def extract_choice(response: str) -> str | None:
    for rx in (_CHOICE_EXPLICIT, _CHOICE_LINE):
        if hits := rx.findall(response):
            return hits[-1]
    hits = _CHOICE_ANY.findall(response)
    return (hits[-1][0] or hits[-1][1]) if hits else None


def choice(response: str, ground_truth: str) -> tuple[float, str | None]:
    pred = extract_choice(response or "")
    gt = (ground_truth or "").strip()
    m = re.fullmatch(r"\(?([A-Ja-j])[).]?", gt)
    truth = m.group(1).upper() if m else extract_choice(gt)
    return float(pred is not None and pred == truth), pred


# ---------------------------------------------------------------- exact


def normalize(text: str) -> str:
    """Casefolded, accents and punctuation removed, whitespace collapsed, a leading article dropped."""
    text = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c)).casefold()
    text = " ".join(re.sub(r"[\W_]+", " ", text).split())
    return re.sub(r"^(?:the|a|an) ", "", text)


def exact(response: str, ground_truth: str) -> tuple[float, str | None]:
    lines = [line.strip() for line in (response or "").splitlines() if line.strip()]
    if not lines:
        return 0.0, None
    chunk = _explicit(response)
    pred = (chunk if chunk is not None else lines[-1]).strip().strip("*`").strip().rstrip(".") or None
    truth = normalize(ground_truth or "")
    ok = bool(truth) and truth in (normalize(pred or ""), normalize(lines[-1]))
    return float(ok), pred


# ---------------------------------------------------------------- registry


def register_scorer(name: str, fn: Scorer) -> None:
    """Make `fn` available as scorer `name` (replacing one of that name)."""
    if not callable(fn):
        raise TypeError(f"scorer {name!r} is not callable")
    _SCORERS[name] = fn


def get_scorer(name: str) -> Scorer:
    """A registered scorer, or one imported from a ``module:function`` path (then registered under it)."""
    if name in _SCORERS:
        return _SCORERS[name]
    if ":" in name:
        module, _, attr = name.partition(":")
        try:
            fn = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            raise ValueError(f"cannot import scorer {name!r}: {exc}") from None
        register_scorer(name, fn)
        return fn
    raise ValueError(f"unknown scorer {name!r}; known: {', '.join(sorted(_SCORERS))} (or module:function)")


def default_kind(dataset: str) -> str:
    """The scorer name used for a dataset when none is given."""
    name = dataset.lower()
    return next((kind for pattern, kind in DEFAULT_KINDS if fnmatch.fnmatchcase(name, pattern)), "exact")


def scorer_for(dataset: str, kind: str | None = None) -> Scorer:
    """The scorer named `kind`, else the default for the dataset's name."""
    return get_scorer(kind or default_kind(dataset))


for _name, _fn in (("numeric", numeric), ("choice", choice), ("exact", exact)):
    register_scorer(_name, _fn)
