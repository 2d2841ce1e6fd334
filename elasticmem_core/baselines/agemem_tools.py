"""The AgeMem-style agent's tool language: the calls it writes (`TOOLS`, the instruction `SYSTEM`), parsed and run
on a trajectory's `State` (long-term facts, short-term context, observations, counts) by `execute`.

A line that is not a call, or a call that fails (an unknown id, a missing argument), is counted as invalid and
becomes an error observation for the agent's next step; `execute` never raises.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

from .fact_store import FactStore, StoreError

TOOLS = ("ADD", "UPDATE", "DELETE", "RETRIEVE", "SUMMARY", "FILTER", "NONE")
SYSTEM = ("You manage your own memory while reading a conversation with a user. Write tool calls, one per line:\n"
          "ADD: <fact>  (store a fact about the user in long-term memory)\n"
          "UPDATE <id>: <fact>  (replace stored fact <id>)\n"
          "DELETE <id>  (delete stored fact <id>)\n"
          "RETRIEVE: <query>  (look up stored facts)\n"
          "SUMMARY: <text>  (replace your whole context with a summary)\n"
          "FILTER <i>  (drop context item i)\n"
          "NONE  (nothing to do)\n"
          "Example: for the turn 'User: I moved to Rome last month.' write 'ADD: The user lives in Rome.'; for small "
          "talk write 'NONE' or 'FILTER 2'.")
_CALL = re.compile(r"^(ADD|UPDATE|DELETE|RETRIEVE|SUMMARY|FILTER|NONE)\b\s*(.*)$", re.IGNORECASE)


@dataclass
class State:
    """What one trajectory has built so far."""
    ltm: FactStore = field(default_factory=FactStore)
    context: list[tuple[int, str]] = field(default_factory=list)  # (stream position, or -1 for a summary; text)
    observations: list[str] = field(default_factory=list)         # errors and retrieved facts, shown at the next step
    calls: Counter = field(default_factory=Counter)               # valid calls by tool
    invalid: int = 0
    evicted: int = 0
    retrieved: dict[str, list[str]] = field(default_factory=dict)  # question id -> facts its RETRIEVE calls got
    tool_tokens: int = 0


def execute(state: State, output: str, embedder, k: int, position: int | None = None, qid: str | None = None) -> None:
    """Parse and run every tool call in one step's output; invalid lines become error observations (never raise)."""
    for line in (x.strip() for x in output.splitlines()):
        if not line:
            continue
        m = _CALL.match(line)
        if m is None:
            state.invalid += 1
            state.observations.append(f"'{line[:60]}' is not a tool call")
            continue
        tool, arg = m.group(1).upper(), m.group(2).strip()
        try:
            _run(state, tool, arg, embedder, k, position, qid)
            state.calls[tool] += 1
        except (ValueError, StoreError) as e:
            state.invalid += 1
            state.observations.append(f"{tool}: {e}")


def _run(state: State, tool: str, arg: str, embedder, k: int, position: int | None, qid: str | None) -> None:
    def text() -> str:
        t = arg[1:].strip() if arg.startswith(":") else ""
        if not t:
            raise ValueError(f"needs ': <text>' (got {arg!r})")
        return t

    def fid(s: str) -> int:
        if not re.fullmatch(r"\d+", s.strip()):
            raise ValueError(f"needs a fact id, got {s!r}")
        return int(s)

    if tool == "ADD":
        state.ltm.add(text(), position)
    elif tool == "UPDATE":
        head, _, rest = arg.partition(":")
        if not rest.strip():
            raise ValueError(f"needs '<id>: <text>' (got {arg!r})")
        state.ltm.update(fid(head), rest.strip(), position)
    elif tool == "DELETE":
        state.ltm.delete(fid(arg), position)
    elif tool == "RETRIEVE":
        found = [t for _, t, _ in state.ltm.search(text(), k, embedder)]
        state.observations.append("Retrieved: " + ("; ".join(found) if found else "(nothing stored)"))
        if qid is not None:
            state.retrieved.setdefault(qid, []).extend(t for t in found if t not in state.retrieved.get(qid, []))
    elif tool == "SUMMARY":
        state.context = [(-1, text())]
    elif tool == "FILTER":
        idx = [fid(s) for s in arg.replace(",", " ").split()] if arg.strip() else None
        if not idx:
            raise ValueError("needs context item numbers")
        bad = [i for i in idx if i >= len(state.context)]
        if bad:
            raise ValueError(f"no context item {bad[0]} (items 0..{len(state.context) - 1})")
        state.context = [c for i, c in enumerate(state.context) if i not in set(idx)]
    elif arg and tool == "NONE":
        raise ValueError(f"NONE takes nothing (got {arg!r})")
