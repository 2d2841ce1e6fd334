"""The text after the memory in a multiple-choice prompt: instruction, options and answer cue, as `data.prompt` says.

`generic` puts one instruction for every setting before the options and an "Answer:" cue after them; `authors` puts a
per-setting instruction (by the option count) and no cue."""
from __future__ import annotations

INSTRUCTION = "Answer with the letter of the correct option."
ANSWER_CUE = "Answer:"
PROMPTS = ("generic", "authors")


def option_labels(n_options: int) -> list[str]:
    return [f"({chr(ord('a') + i)})" for i in range(n_options)]


def authors_instruction(n_options: int) -> str:
    """The authors' kind of per-setting instruction, chosen by the option count: up to 4 options (PersonaMem's
    format) asks for exactly one of the labels; more (the MC10 settings, LoCoMo and LongMemEval, 10 options) asks
    for one of the whole range and rules out refusing, a guess instead."""
    if n_options < 1:
        raise ValueError("a multiple-choice question needs at least one option")
    names = option_labels(n_options)
    if n_options <= 4:
        listed = names[0] if n_options == 1 else f"{', '.join(names[:-1])} or {names[-1]}"
        return f"Choose the option that fits best. Reply with exactly one of {listed} and nothing else."
    return (f"Choose the option that fits best and reply with one of {names[0]} to {names[-1]}. Always pick one "
            f"option: do not refuse and do not say it cannot be answered; if you are unsure, guess.")


def tail_text(options_text: str, n_options: int, prompt: str = "generic") -> str:
    """The multiple-choice part after the memory. generic: "\n" + INSTRUCTION + "\n" + options + "\n" + ANSWER_CUE;
    authors: the per-setting instruction + "\n" + options, no cue (the memory's last separator precedes it)."""
    if prompt == "generic":
        return f"\n{INSTRUCTION}\n{options_text}\n{ANSWER_CUE}"
    if prompt == "authors":
        return f"{authors_instruction(n_options)}\n{options_text}"
    raise ValueError(f"data.prompt = {prompt!r}; choose one of {', '.join(PROMPTS)}")
