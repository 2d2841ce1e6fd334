"""ALFWorld's skill cards: one procedural summary per expert replay of a bank game, the memory ElasticMem retrieves.

- `skill_card(task_type, gamefile, replay)`: a deterministic template card (no paid API) in the authors' format:
  the task type's objective pattern and strategy (`_GLOSS`, `_STRATEGY`), what the expert did in this game, and why
  it works (150-300 words).
- `backbone_card(card, replay, backbone)`: the same card with its summary written by the configured local model
  from the expert trajectory (`CARD_PROMPT`; alfworld.cards = backbone), as the authors had Gemini write theirs.

A card naming commands in another engine version's syntax than its replays' is refused by memorysuite's loader
(`loaders.foreign_commands`).

`environment.prepare` writes the cards of the bank games into skill_cards.json.
"""
from __future__ import annotations

import re

_GLOSS = {
    "pick_and_place_simple": "find one object and put it in or on a receptacle",
    "look_at_obj_in_light": "find an object, carry it to a desk lamp and switch the lamp on while holding it",
    "pick_clean_then_place_in_recep": "find an object, clean it with the sink basin, then put it in place",
    "pick_heat_then_place_in_recep": "find an object, heat it with the microwave, then put it in place",
    "pick_cool_then_place_in_recep": "find an object, cool it with the fridge, then put it in place",
    "pick_two_obj_and_place": "find two objects of one kind and put both in the same receptacle",
}
_STRATEGY = {
    "pick_and_place_simple": [
        "Read the objective to learn the object type and the target receptacle type.",
        "Search the receptacles where such an object usually lies; open closed cabinets, drawers or the fridge "
        "and read what the observation lists inside.",
        "Take the object as soon as it appears, with the exact take command from the admissible list.",
        "Go to the target receptacle (open it first if it is closed) and move the object there."],
    "look_at_obj_in_light": [
        "Read the objective to learn which object to examine and that a desk lamp gives the light.",
        "Search tables, desks, dressers and shelves for the object and take it.",
        "Keep holding the object and go to the receptacle where the desk lamp stands.",
        "Use the desk lamp while holding the object; switching it on finishes the task."],
    "pick_clean_then_place_in_recep": [
        "Read the objective to learn the object type and the target receptacle type.",
        "Search counters, cabinets, drawers and the sink for the object and take it.",
        "Go to the sink basin and clean the object with it while holding it.",
        "Go to the target receptacle, open it if needed, and move the clean object there."],
    "pick_heat_then_place_in_recep": [
        "Read the objective to learn the object type and the target receptacle type.",
        "Search counters, the fridge, cabinets and tables for the object and take it.",
        "Go to the microwave and heat the object with it; the microwave need not be opened.",
        "Go to the target receptacle, open it if needed, and move the hot object there."],
    "pick_cool_then_place_in_recep": [
        "Read the objective to learn the object type and the target receptacle type.",
        "Search counters, cabinets, tables and the microwave for the object and take it.",
        "Go to the fridge and cool the object with it; cooling does not need the fridge opened.",
        "Go to the target receptacle, open it if needed, and move the cool object there."],
    "pick_two_obj_and_place": [
        "Read the objective to learn the object type and the target receptacle type; two objects are needed.",
        "Find the first object, take it, go to the target receptacle and move it there.",
        "The hands hold one object at a time, so search again for a second object of the same type.",
        "Take the second one and move it to the same receptacle; remember where the first search looked."],
}


def skill_card(task_type: str, gamefile: str, replay: dict) -> dict:
    """A procedural summary of one expert trajectory (150-300 words), the authors' card format."""
    actions = [s["action"] for s in replay["steps"][1:]]
    taken = [a for a in actions if a.startswith("take ")]
    visited = [a[len("go to "):] for a in actions if a.startswith("go to ")]
    opened = [a[len("open "):] for a in actions if a.startswith("open ")]
    changes = [a for a in actions if a.split(" ", 1)[0] in ("heat", "cool", "clean", "use")]
    found = [re.sub(r"^take (.+) from (.+)$", r"\1 in or on \2", a) for a in taken]
    lines = [f"Task type: {task_type}. Objective pattern: {replay['objective']} ({_GLOSS[task_type]})."]
    lines += [f"{i}. {text}" for i, text in enumerate(_STRATEGY[task_type], 1)]
    lines.append(f"In this game the expert solved it in {len(actions)} steps. It visited "
                 f"{', '.join(visited) or 'no receptacle'}"
                 + (f", opened {', '.join(opened)}" if opened else "")
                 + f", found {'; '.join(found) or 'nothing to take'}"
                 + (f", then did: {'; '.join(changes)}" if changes else "")
                 + f", and finished with: {actions[-1] if actions else 'nothing'}.")
    lines.append("Why it works: every command must be copied from the admissible list; objects inside a closed "
                 "receptacle stay hidden until it is opened, so check closed places after the open surfaces; "
                 "go to a receptacle before acting on it; the task ends the moment the goal holds, so do not "
                 "wander after the last move. If an action answers 'Nothing happens', it was not valid there: "
                 "re-read the observation and pick another admissible command.")
    return {"task_type": task_type, "gamefile": gamefile, "objective": replay["objective"],
            "summary": "\n".join(lines)}


CARD_PROMPT = ("You write skill cards for a household robot. Summarise how the expert solved this task as a reusable "
               "strategy in 150-300 words: the steps in order, where objects were found, and why the plan works.\n"
               "Task type: {task_type}\nObjective: {objective}\nExpert actions:\n{actions}")


def backbone_card(card: dict, replay: dict, backbone, max_new_tokens: int = 320) -> dict:
    """`card` with its summary written by the local backbone (greedy, through its chat template) from the expert
    trajectory, as the authors had Gemini write theirs. The first line (task type and objective) stays, so retrieval
    keys on the same objective; an empty generation keeps the template text and says so in `written_by`."""
    actions = "\n".join(f"{i}. {s['action']}" for i, s in enumerate(replay["steps"][1:], 1))
    prompt = CARD_PROMPT.format(task_type=card["task_type"], objective=card["objective"], actions=actions)
    text = backbone.chat(prompt, max_new_tokens)
    head = card["summary"].split("\n", 1)[0]
    if not text:
        return {**card, "written_by": f"template (the backbone {backbone.identity} wrote nothing)"}
    return {**card, "summary": f"{head}\n{text}", "written_by": f"backbone {backbone.identity}"}
