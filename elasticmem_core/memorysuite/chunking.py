"""Memory chunks of a dialogue (docs/method.md §2): the bank encodes exactly these texts, so the rules live in one function.

1. system turns are dropped (PersonaMem's persona prompt is not a memory of the conversation);
2. empty turns are dropped; consecutive turns of the same role are merged (joined by a newline);
3. each user turn followed by an assistant turn becomes one chunk "User: ...\\nAssistant: ...";
4. a turn left without a partner (an assistant turn first, a user turn last) becomes its own chunk.

Callers chunk one session at a time, so a pair never spans two sessions. Every drop, merge and unpaired turn
is counted into `counts`.
"""
from __future__ import annotations

from collections import Counter
from typing import Iterable

from .records import Chunk


def chunk_turns(turns: Iterable[dict[str, str]], counts: Counter | None = None) -> list[str]:
    """Chunk texts of one session of checked {role, content} turns (roles system/user/assistant)."""
    counts = counts if counts is not None else Counter()
    merged: list[tuple[str, list[str]]] = []  # (role, contents) runs
    for turn in turns:
        role, content = turn["role"], turn["content"].strip()
        if role == "system":
            counts["system_turns_dropped"] += 1
        elif not content:
            counts["empty_turns_dropped"] += 1
        elif merged and merged[-1][0] == role:
            merged[-1][1].append(content)
            counts["same_role_turns_merged"] += 1
        else:
            merged.append((role, [content]))

    texts = []
    i = 0
    while i < len(merged):
        role, contents = merged[i]
        if role == "user" and i + 1 < len(merged):  # runs alternate, so the next run is the assistant's
            texts.append("User: " + "\n".join(contents) + "\nAssistant: " + "\n".join(merged[i + 1][1]))
            i += 2
        else:
            texts.append(f"{role.capitalize()}: " + "\n".join(contents))
            counts["unpaired_turns"] += 1
            i += 1
    return texts


def make_chunks(memory_id: str, texts: list[str]) -> list[Chunk]:
    return [Chunk(chunk_id=f"{memory_id}#{i}", memory_id=memory_id, index=i, text=t) for i, t in enumerate(texts)]
