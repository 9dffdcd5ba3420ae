"""What both wire formats share: the checks every request body passes, strict validation, the `jisi`
extension object (derived from the hyperparameters' one declaration, app/engine/params.py) and OpenAI's
error body."""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, create_model
from pydantic_core import PydanticCustomError

from app.engine.params import Mode, param_specs


MAX_JSON_DEPTH = 100  # arrays/objects inside one another; far beyond any real request (tool schemas included)


def _path(parts: tuple[Any, ...]) -> str:
    # keys may themselves be invalid Unicode: escape them, the path goes back to the client in the error
    return ".".join(str(p).encode("utf-8", "backslashreplace").decode("utf-8") for p in parts)


def valid_json_values(data: Any) -> Any:
    """Refuse what parses but cannot be passed on, anywhere in the body (unknown fields are forwarded upstream):

    - strings holding lone surrogates: JSON allows escapes like "\\ud800", but such text can be neither embedded
      nor sent upstream as UTF-8 (it was a 500 instead of a 400);
    - numbers that are not finite: `NaN` / `Infinity` literals, or a literal beyond the double range such as
      `1e999`; the upstream request cannot be encoded as JSON with them (found by fuzzing: a 500);
    - nesting deeper than MAX_JSON_DEPTH: a body that parses just below Python's recursion limit overflowed it
      when encoded again for the upstream (found by fuzzing: a 500 at about 910 levels).

    The error names the offending value's path (as `param`), never its text.
    """
    stack: list[tuple[Any, tuple[Any, ...]]] = [(data, ())]
    while stack:
        item, path = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise PydanticCustomError("invalid_unicode", "the request holds a string that is not valid Unicode "
                                          "(a lone surrogate escape such as \\ud800)", {"param": _path(path)}) from None
        elif isinstance(item, float) and not math.isfinite(item):
            raise PydanticCustomError("non_finite_number", "the request holds a number that is not finite (NaN, "
                                      "Infinity, or beyond the double range like 1e999)", {"param": _path(path)})
        elif isinstance(item, (dict, list)) and len(path) >= MAX_JSON_DEPTH:
            raise PydanticCustomError("too_deep", f"the request is nested more than {MAX_JSON_DEPTH} levels deep",
                                      {"param": _path(path[:8]) + "..."})
        elif isinstance(item, dict):
            for key, value in item.items():
                stack.append((key, path))
                stack.append((value, (*path, key)))
        elif isinstance(item, list):
            stack.extend((value, (*path, i)) for i, value in enumerate(item))
    return data


# Requests are validated strictly, as their JSON schema says: no silent coercion of "0.5" to a number, 0 or
# "yes" to a boolean, or 5.0 to an integer (the published schema and what is accepted agree; found by fuzzing).
STRICT = True


class _JiSiOverridesBase(BaseModel):
    """Per-request overrides, sent as the body field `jisi` (OpenAI SDK: extra_body={"jisi": {...}})."""

    model_config = ConfigDict(extra="forbid", strict=STRICT)

    def param_overrides(self) -> dict[str, Any]:
        """The hyperparameters this request sets (JiSiParams field -> value; an explicit null turns an optional
        one, such as the shortcut, off)."""
        return {s.name: getattr(self, s.name) for s in param_specs()
                if s.request and (s.name in self.model_fields_set if s.optional else getattr(self, s.name) is not None)}


# the hyperparameters a request may set are derived from JiSiParams (app/engine/params.py): same names,
# same bounds as the settings; plus the request's own mode and cost cap
JiSiOverrides = create_model(
    "JiSiOverrides", __base__=_JiSiOverridesBase,
    **{s.name: (s.type | None, Field(None, ge=s.ge, le=s.le, description=s.doc)) for s in param_specs()
       if s.request},
    mode=(Mode | None, None),
    max_cost_usd=(float | None, Field(None, gt=0, description="a cost cap: aggregate -> route -> one model "
                                                              "before it would overspend")),
)


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody
