"""Hyperparameters of the method (paper §4.1 defaults), declared once, as a plain immutable value.

Each field carries its bounds and whether a request may override it. app.config derives the settings
model (YAML file and environment) and app.protocol the per-request `jisi` overrides from these
declarations, and the evaluator's `--param NAME=VALUE` is parsed by `parse_param`, so no copy can
disagree with another. The engine takes this object and nothing else from the outside world.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal, get_args

import numpy as np

Mode = Literal["adaptive", "route", "aggregate"]
MODES: tuple[str, ...] = get_args(Mode)


def _param(default: Any, *, ge: float | None = None, le: float | None = None, request: bool = False,
           doc: str = "") -> Any:
    return field(default=default, metadata={"ge": ge, "le": le, "request": request, "doc": doc})


@dataclass(frozen=True)
class JiSiParams:
    k: int = _param(3, ge=1, le=16, request=True, doc="K: candidates fanned out to, and the most aggregatees")
    n_base: int = _param(50, ge=1, request=True, doc="N^base: the rank whose similarity sets the support threshold")
    gamma: float = _param(0.95, ge=0, le=1, request=True, doc="γ: tau = γ · (N^base-th largest similarity)")
    beta: float = _param(0.5, ge=0, le=1, request=True, doc="β: the filter keeps floor(β · |I|) support queries")
    eps: float = _param(0.5, ge=0, le=1, request=True, doc="ε: weight of query similarity in s^flt")
    sigma: float = _param(0.3, ge=0, le=1, request=True, doc="σ: weight of response similarity in s^flt")
    delta: float = _param(0.2, ge=0, le=1, request=True, doc="δ: weight of completion-length similarity in s^flt")
    t: float = _param(0.8, ge=0, le=1, request=True, doc="t: switch threshold on g^f_j / max g^f")
    # -- beyond the paper (issue 14); each default leaves the paper's method exactly as it is --
    lam: float = _param(0.0, ge=0, le=10_000, request=True,
                        doc="λ: prior strength in pseudo-questions: each model's support evidence in g is shrunk "
                            "toward its accuracy on the whole bank (0: the paper's g)")
    lam_fine: float = _param(0.0, ge=0, le=10_000, request=True,
                             doc="λ_f: the same prior in the fine score g^f (0: the paper's g^f)")
    cost_weight: float = _param(0.0, ge=0, le=1, request=True,
                                doc="α: candidates and the final choice rank by (1−α)·performance + α·(1−cost), "
                                    "each normalised over the query's eligible models (0: performance only)")
    shortcut: float | None = _param(None, ge=0, le=1, request=True,
                                    doc="call only the coarse leader when the bootstrap probability that it stays "
                                        "the leader is at least this (None: always fan out to K)")
    cascade: float | None = _param(None, ge=0, le=10, request=True,
                                   doc="the response-aware cascade: call the candidates one at a time, cheapest first, "
                                       "and stop once the best answered model's fine score is at least this times "
                                       "the best fine score of the candidates not yet called (None: off)")
    from_candidates: bool = _param(False, request=True,
                                   doc="choose the final set among the models that answered (no extra call)")
    max_support: int = _param(512, ge=1, doc="cap on |I|; the paper's rule alone can admit the whole bank")
    max_aggregate_tokens: int = _param(13_000, ge=0, doc="aggregatee responses above this total are truncated ...")
    min_aggregatees: int = _param(2, ge=1, doc="... down to this many (paper: 3 -> 2 above 13,000 tokens)")

    def __post_init__(self) -> None:
        problems = [p for s in param_specs() if (p := s.type_problem(getattr(self, s.name)))]
        if not problems:
            problems = [p for s in param_specs() if (p := s.problem(getattr(self, s.name)))]
        if problems:
            raise ValueError("invalid JiSi parameters: " + "; ".join(problems))

    def with_overrides(self, overrides: dict[str, Any]) -> "JiSiParams":
        """A copy with the given fields replaced (unknown names are a ValueError)."""
        unknown = set(overrides) - set(self.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown JiSi parameter(s): {', '.join(sorted(unknown))}")
        return replace(self, **overrides)


@dataclass(frozen=True)
class ParamSpec:
    """One hyperparameter as declared on JiSiParams: what the settings and the request schema are built from."""

    name: str
    type: type  # int, float or bool
    default: Any
    ge: float | None
    le: float | None
    request: bool  # a request may override it in its `jisi` field
    doc: str
    optional: bool = False  # None is a value (e.g. shortcut: None is "off")

    @property
    def annotation(self) -> Any:
        return self.type | None if self.optional else self.type

    def type_problem(self, value: Any) -> str | None:
        if value is None and self.optional:
            return None
        if self.type is int and not _is_int(value):
            return f"{self.name} must be an integer, got {value!r}"
        if self.type is bool and not isinstance(value, (bool, np.bool_)):
            return f"{self.name} must be true or false, got {value!r}"
        if self.type is float and (isinstance(value, bool) or not isinstance(value, (int, float, np.number))):
            return f"{self.name} must be a number, got {value!r}"
        return None

    def problem(self, value: Any) -> str | None:
        """Why `value` is out of bounds (NaN included), or None."""
        if value is None or self.type is bool:
            return None
        low = -np.inf if self.ge is None else self.ge
        high = np.inf if self.le is None else self.le
        if low <= value <= high:
            return None
        if self.le is None:
            return f"{self.name} must be >= {self.ge:g}"
        return f"{self.name} must be in [{self.ge:g}, {self.le:g}], got {value}"


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def param_specs() -> tuple[ParamSpec, ...]:
    return _SPECS


_TYPES = {"int": int, "float": float, "bool": bool}
_SPECS = tuple(ParamSpec(f.name, _TYPES[str(f.type).split(" |")[0]], f.default, f.metadata["ge"], f.metadata["le"],
                         f.metadata["request"], f.metadata["doc"], optional=str(f.type).endswith("| None"))
               for f in fields(JiSiParams))


def parse_param(name: str, text: str) -> Any:
    """A `NAME=VALUE` command-line override's value, typed as the parameter (unknown names: ValueError)."""
    spec = next((s for s in _SPECS if s.name == name), None)
    if spec is None:
        raise ValueError(f"unknown JiSi parameter {name!r} (known: {', '.join(s.name for s in _SPECS)})")
    if spec.optional and text.strip().lower() in ("none", "null", "off", ""):
        return None
    if spec.type is bool:
        if text.strip().lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise ValueError(f"--param {name}: expected true or false, got {text!r}")
        return text.strip().lower() in ("true", "1", "yes")
    try:
        return spec.type(text)
    except ValueError:
        raise ValueError(f"--param {name}: expected {spec.type.__name__}, got {text!r}") from None
