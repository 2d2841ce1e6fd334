"""Task rewards: pure functions of a generated text and what the data says is right.

- Multiple choice (MemorySuite QA): 1 if the parsed option label equals the gold label, else 0.
- ALFWorld expert-action reward: the output's first line snapped to the nearest admissible command (exact match,
  then substring, then token overlap), 1 if that command equals the expert action, else 0.
"""
from __future__ import annotations

import re

_LETTER_IN_PARENS = re.compile(r"\(([a-zA-Z])\)")
_BARE_LETTER = re.compile(r"\b([a-zA-Z])\b")


def parse_answer(text: str, n_options: int) -> str | None:
    """The option label in a generated answer: "(x)" first, then a bare letter (as the authors); None if neither."""
    valid = {chr(ord("a") + i) for i in range(n_options)}
    for pattern in (_LETTER_IN_PARENS, _BARE_LETTER):
        for m in pattern.finditer(text):
            letter = m.group(1).lower()
            if letter in valid:
                return f"({letter})"
    return None


def choice_reward(text: str, gold: str, n_options: int) -> float:
    """1.0 if the answer's option label is the gold label ("(c)"), else 0.0."""
    return float(parse_answer(text, n_options) == gold)


def _tokens(s: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", s.lower())


def snap_to_admissible(text: str, admissible: list[str]) -> str | None:
    """The admissible command the output's first line means: exact, then substring, then most token overlap."""
    if not admissible:
        return None
    line = (text.strip().splitlines() or [""])[0].strip().lower().rstrip(".")
    commands = [c.strip() for c in admissible]
    lowered = [c.lower() for c in commands]
    if line in lowered:
        return commands[lowered.index(line)]
    if line:
        # the longest command contained in the line, else the shortest command containing it
        inside = [c for c, low in zip(commands, lowered) if low in line]
        if inside:
            return max(inside, key=len)
        around = [c for c, low in zip(commands, lowered) if line in low]
        if around:
            return min(around, key=len)
    words = set(_tokens(line))
    if not words:
        return None
    overlap = [len(words & set(_tokens(c))) / len(set(_tokens(c)) | words) for c in commands]
    best = max(range(len(commands)), key=lambda i: overlap[i])
    return commands[best] if overlap[best] > 0 else None


def expert_action_reward(text: str, admissible: list[str], expert_action: str) -> float:
    """1.0 if the output, snapped to the admissible commands, is the expert's action."""
    snapped = snap_to_admissible(text, admissible)
    return float(snapped is not None and snapped.strip().lower() == expert_action.strip().lower())
