"""How two question texts are compared: the one rule for the replay upstream (which recorded question a
request asks), the split (which questions are the same one) and the parity check."""

from __future__ import annotations


def whitespace_normalised(text: str) -> str:
    """Runs of whitespace as one space, none at either end: how the replay upstream matches a request's last user
    message to a recorded question (a client may re-wrap lines or strip a trailing newline)."""
    return " ".join(str(text).split())


def duplicate_key(text: str) -> str:
    """Whitespace-normalised and case-folded: two questions of a dataset with the same key are the same question
    for the split (mmlupro-bench holds 73 test questions word for word in its train split)."""
    return whitespace_normalised(text).casefold()
