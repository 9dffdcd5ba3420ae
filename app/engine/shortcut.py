"""The confident shortcut's calls (issue 14; the probability that licenses it is confidence.py's): the candidates
one at a time, best first, until one answers with text; that answer is routed to. An empty answer is no answer
(o1-mini answered empty on 5 % of MATH level 5, always scored wrong), so the next candidate is called, up to all K.
When every candidate answered empty the last one is routed to (the request still gets a response).

The gateway (app/pipeline/prepare.py) and the replay (bank_builder/evaluate/replay.py) both follow this rule;
online, a candidate that fails or does not fit the cost cap is skipped as if it had not been a candidate.
"""

from __future__ import annotations

from typing import Callable, Sequence


def shortcut_done(answered_empty: bool) -> bool:
    """After a call that answered: whether the shortcut stops here (it said something)."""
    return not answered_empty


def shortcut_choice(candidates: Sequence[int], empty: Callable[[int], bool]) -> tuple[list[int], int]:
    """(the models called in order, the one routed to) when every call answers, `empty(j)` saying whether model
    j's answer has no text."""
    calls: list[int] = []
    for j in candidates:
        calls.append(int(j))
        if shortcut_done(empty(j)):
            break
    return calls, calls[-1]
