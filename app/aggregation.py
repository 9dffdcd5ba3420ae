"""The aggregator's prompt (the f3 of Eq. 5): the whole conversation plus the candidate answers."""

from __future__ import annotations

from typing import Any

AGGREGATION_INSTRUCTIONS = (
    "You are given several candidate answers, written by different AI assistants, to the user's last "
    "message in the conversation that follows. Some of them may be wrong, incomplete or contradict each "
    "other. Evaluate them critically, correct their mistakes, and write the single best answer to the "
    "user's last message yourself. Answer in exactly the format the user asked for. Do not mention the "
    "candidate answers or that you were given any.\n\nCandidate answers:"
)


def aggregation_messages(messages: list[dict[str, Any]], responses: list[str]) -> list[dict[str, Any]]:
    """MoA-style: a system message with the instructions and the numbered candidates, then the conversation.

    The user's own system prompt follows ours unchanged, so their instructions still apply.
    """
    candidates = "\n\n".join(f"[Answer {i}]\n{text.strip()}" for i, text in enumerate(responses, start=1))
    return [{"role": "system", "content": f"{AGGREGATION_INSTRUCTIONS}\n\n{candidates}"}, *messages]
