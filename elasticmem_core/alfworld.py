"""ALFWorld track: live TextWorld games, an offline game set, expert replays, skill cards, training turns, evaluation.

Runs the real `alfworld` (0.4.2) + `textworld[pddl]` (1.7.0) environment code (optional extra `alfworld`):

- `Game`: one game file through the same wrapper chain as `alfworld-generate` (PddlEnv, AlfredDemangler,
  AlfredInfos, AlfredExpert(planner)): observation, admissible commands, expert plan, reward, done.
- `prepare(cfg)`: the game set. With ALFWorld's own data (`data.alfworld_data` or $ALFWORLD_DATA holding
  json_2.1.1/valid_seen and valid_unseen) evaluation plays those games, and when it holds json_2.1.1/train too the
  replays and cards below are recorded on `data.alfworld_n_train` of its training games; otherwise the package
  writes ALFRED-format problems (alfworld_games.py), turns them into games with `alfworld-generate`, and keeps only
  the games the expert planner wins within the step limit (a rejected game is listed with its reason). Cached:
  skipped when the manifest says the same params made it.
- Expert replays in the authors' JSON format (docs/method.md §3; steps[0] is the reset: action null, the first observation),
  skill cards from a deterministic template (no paid API), a split file; `memorysuite.loaders.load_alfworld` reads
  them back. Evaluation games never get a skill card (checked).
- `turns(episode)`: each expert step -> (objective, last `history` (action, observation) pairs, current
  observation, admissible commands) -> expert action, as the authors' `expand_il_samples`.
- `play` / `evaluate`: a policy `act(turn) -> text` plays live games, at most `alfworld_max_steps` steps and
  `alfworld_timeout_s` seconds each (a hung game ends, counted as a failure with its reason); the output is snapped
  to the admissible commands (rewards.snap_to_admissible); an output that matches none is sent as typed (the game
  answers "Nothing happens.") and counted in `invalid_actions`. #Tok per episode is summed over steps.
- ElasticMem on ALFWorld: `step_items` (one `StepItem` per expert step of the GRPO games: question = objective,
  tail = the step's prompt, gold = the expert action), `step_reward` (the expert-action reward), `step_accuracy`
  (held-out exact match, the training monitor), `training_config` (G, tokens and epochs of data.alfworld_*;
  no stage-0 reader warm-up), `train` (bank, step items, GRPO on the step reward with step-accuracy model
  selection: the one training path of 06_alfworld and `launch.py train`),
  `policy(model)` (greedy; retrieval, budgets and the prompt prefix's KV cache once per episode), `evaluate_policy`
  (live success rate, per task type too, and #Tok per episode, saved as an evaluate.py results file),
  `task_type_table` (success per task type of saved results).
"""
from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from . import alfworld_games
from .config import derive
from .experiment import peak_memory_mb, resolve
from .memorysuite import loaders, splits
from .memorysuite.records import Dataset, Episode
from .rewards import expert_action_reward, snap_to_admissible

log = logging.getLogger(__name__)

TASK_TYPES = alfworld_games.TASK_TYPES
EVAL_SPLITS = ("valid_seen", "valid_unseen")
FORMAT_VERSION = 2  # bump when the files written here change, so cached game sets are rebuilt
SYSTEM_INSTRUCTION = ("You are controlling a text-based ALFWorld environment. Choose the NEXT action as ONE "
                      "admissible command string. Output only the command, copied verbatim from the admissible list.")


# ---------------------------------------------------------------------------------------------------------------
# Live games
class GameTimeout(Exception):
    """A game ran past its wall-clock budget."""


@contextmanager
def deadline(seconds: float):
    """Raise GameTimeout in the main thread after `seconds` (SIGALRM); elsewhere the caller checks the clock."""
    if threading.current_thread() is not threading.main_thread() or seconds <= 0:
        yield
        return

    def _raise(signum, frame):
        raise GameTimeout(f"wall-clock timeout after {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, _raise)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@dataclass
class State:
    observation: str
    admissible: list[str]
    expert_plan: list[str]
    reward: float = 0.0
    done: bool = False
    won: bool = False


class Game:
    """One ALFWorld game file in TextWorld; with `expert`, the planner's plan at every step (costs a plan a step)."""

    def __init__(self, gamefile: str | Path, expert: bool = True):
        import textworld
        from alfworld.agents.environment.alfred_tw_env import (AlfredDemangler, AlfredExpert, AlfredExpertType,
                                                               AlfredInfos)
        from textworld.envs import PddlEnv

        infos = textworld.EnvInfos(won=True, admissible_commands=True, extras=["gamefile"])
        self.env = AlfredInfos(AlfredDemangler(PddlEnv(infos)))
        if expert:
            self.env = AlfredExpert(self.env, expert_type=AlfredExpertType.PLANNER)
        self.env.load(str(gamefile))

    @staticmethod
    def _state(gs, reward=0.0, done=False) -> State:
        return State(observation=str(gs.feedback or "").strip(), admissible=list(gs["admissible_commands"] or []),
                     expert_plan=list(gs.get("extra.expert_plan") or []), reward=float(reward or 0.0),
                     done=bool(done), won=bool(gs["won"]))

    def reset(self) -> State:
        return self._state(self.env.reset())

    def step(self, command: str) -> State:
        gs, reward, done = self.env.step(command)
        return self._state(gs, reward, done)

    def close(self) -> None:
        self.env.close()


def objective_of(first_observation: str) -> str:
    """The task sentence after "Your task is to:", without the final period (as the authors' replay)."""
    m = re.search(r"Your task is to:\s*(.+)", first_observation, re.IGNORECASE | re.DOTALL)
    return m.group(1).strip().splitlines()[0].strip().rstrip(".") if m else ""


# ---------------------------------------------------------------------------------------------------------------
# Expert replays (the authors' format) and skill cards
def replay_expert(gamefile: str | Path, max_steps: int, timeout_s: float) -> dict:
    """Play the expert planner's plan; the record of docs/method.md §3 (with "error" when the expert did not win)."""
    steps, total, error = [], 0.0, None
    start = time.monotonic()
    game = None
    try:
        with deadline(timeout_s):
            game = Game(gamefile)
            state = game.reset()
            steps.append(_step(0, None, state))
            while not state.done and error is None:
                if len(steps) > max_steps:
                    error = f"expert needs more than {max_steps} steps"
                elif not state.expert_plan:
                    error = f"no expert plan at step {len(steps) - 1}"
                elif time.monotonic() - start > timeout_s:
                    error = f"wall-clock timeout after {timeout_s:g} s"
                else:
                    action = state.expert_plan[0]
                    state = game.step(action)
                    total += state.reward
                    steps.append(_step(len(steps), action, state))
    except GameTimeout as e:
        error = str(e)
    except Exception as e:  # an unplayable game file: recorded, never fatal
        error = f"{type(e).__name__}: {e}"
    finally:
        if game is not None:
            game.close()
    first = steps[0]["observation"] if steps else ""
    record = {"traj_path": str(Path(gamefile).parent / "traj_data.json"), "first_observation": first,
              "objective": objective_of(first), "total_reward": total, "steps": steps,
              "trajectory": _trajectory_text(steps)}
    if error is None and total < 1:
        error = "expert plan ended without winning"
    if error:
        record["error"] = error
    return record


def _step(i: int, action: str | None, state: State) -> dict:
    return {"step": i, "action": action, "observation": state.observation, "reward": state.reward,
            "done": state.done, "expert_plan": state.expert_plan, "admissible_commands": state.admissible}


def _trajectory_text(steps: list[dict]) -> str:
    lines = [steps[0]["observation"], ""] if steps else []
    for s in steps[1:]:
        lines += [f"ACTION: {s['action']}", f"OBSERVATION: {s['observation']}"]
    won = bool(steps) and steps[-1]["done"] and steps[-1]["reward"] >= 1
    return "\n".join(lines + ["", f"TRAJECTORY_STATUS: {'SUCCESS' if won else 'FAILED'}"])


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


# ---------------------------------------------------------------------------------------------------------------
# The game set
def real_data_root(cfg, splits: tuple[str, ...] = EVAL_SPLITS) -> Path | None:
    """ALFWorld's own data folder when it holds the games of `splits` (default: the evaluation games), else None."""
    root = cfg.data.alfworld_data or os.environ.get("ALFWORLD_DATA")
    if root and all((Path(root) / "json_2.1.1" / s).is_dir() for s in splits):
        return Path(root)
    return None


def games_dir(cfg, run_dir: str | Path | None = None) -> Path:
    """data.alfworld_games_dir, else <data.mini_dir or run folder>/data/alfworld-offline."""
    if cfg.data.alfworld_games_dir:
        return resolve(cfg.data.alfworld_games_dir)
    from .memorysuite import mini_root
    return mini_root(cfg, run_dir) / "alfworld-offline"


def replays_dir(cfg, run_dir: str | Path | None = None) -> Path:
    """Where `prepare` writes: the offline game set, or <mini folder>/alfworld-real for ALFWorld's own games."""
    if real_data_root(cfg, alfworld_games.SPLITS) is None:
        return games_dir(cfg, run_dir)
    from .memorysuite import mini_root
    return mini_root(cfg, run_dir) / "alfworld-real"


def _params(cfg, real: Path | None) -> dict:
    d = cfg.data
    if real is not None:  # the evaluation games are played where they lie: no counts, no rooms
        return {"format": FORMAT_VERSION, "alfworld_data": str(real), "seed": d.alfworld_seed,
                "n_train": d.alfworld_n_train, "bank_ratio": d.alfworld_bank_ratio,
                "max_steps": d.alfworld_max_steps, "timeout_s": d.alfworld_timeout_s, **_card_params(cfg)}
    return {"format": FORMAT_VERSION, "seed": d.alfworld_seed, "n_train": d.alfworld_n_train, **_card_params(cfg),
            "n_seen": d.alfworld_n_seen, "n_unseen": d.alfworld_n_unseen, "bank_ratio": d.alfworld_bank_ratio,
            "max_steps": d.alfworld_max_steps, "timeout_s": d.alfworld_timeout_s,
            "seen_rooms": alfworld_games.SEEN_ROOMS, "unseen_rooms": alfworld_games.UNSEEN_ROOMS}


def _card_params(cfg) -> dict:
    """What decides the cards' text (recorded in the manifest, so a change rewrites them)."""
    if cfg.data.alfworld_cards == "template":
        return {}
    return {"cards": cfg.data.alfworld_cards, "card_backbone": cfg.runtime.backbone}


def prepare(cfg, run_dir: str | Path | None = None, progress: bool = True) -> Path:
    """Expert replays, skill cards and the split file (skipped when the same params made them). Offline: write,
    generate and verify the game set, then replay every game. With ALFWorld's own data (json_2.1.1/train,
    valid_seen and valid_unseen): the same replay and card code on `data.alfworld_n_train` of its training games
    (0 = all); its evaluation games are played where they lie (`eval_games`)."""
    real = real_data_root(cfg, alfworld_games.SPLITS)
    root = replays_dir(cfg, run_dir)
    manifest_path = root / "manifest.json"
    params = _params(cfg, real)
    if manifest_path.is_file():
        if json.loads(manifest_path.read_text()).get("params") == params:
            return root
        for sub in ("problems", "json_2.1.1", "alfworld"):  # alfworld-generate would reuse stale game files
            shutil.rmtree(root / sub, ignore_errors=True)
    elif root.is_dir() and any(root.iterdir()):
        raise FileExistsError(f"{root}: not an ALFWorld replay folder made here (no manifest.json); "
                              "give data.alfworld_games_dir (or data.mini_dir) an empty or new folder")
    d = cfg.data
    t0 = time.monotonic()
    if real is None:
        if d.alfworld_n_train < 1:
            raise ValueError("data.alfworld_n_train = 0 means every game of ALFWorld's json_2.1.1/train, which is not "
                             "here (no ALFWORLD_DATA): give the number of offline training games to make")
        problems = root / "problems" / "json_2.1.1"
        counts = {"train": d.alfworld_n_train, "valid_seen": d.alfworld_n_seen, "valid_unseen": d.alfworld_n_unseen}
        folders = alfworld_games.write_problems(problems, counts, d.alfworld_seed)
        t1 = time.monotonic()
        run_alfworld_generate(problems, root / "json_2.1.1", d.alfworld_seed)
        json_root = root / "json_2.1.1"
        games = [(f.relative_to(problems), f / "traj_data.json") for f in folders]
    else:
        t1 = t0
        json_root = real / "json_2.1.1"
        games = [(t.parent.relative_to(json_root), t) for t in _real_train_games(real, d.alfworld_n_train,
                                                                                  d.alfworld_seed)]
    t2 = time.monotonic()

    # the expert's replay of every game (the same code for offline and real games)
    replays: dict[str, dict[str, dict]] = {s: {} for s in alfworld_games.SPLITS}
    rejected = []
    for rel, traj in _progress(games, progress, "replaying the expert"):
        split, task_type = rel.parts[0], json.loads(traj.read_text())["task_type"]
        gamefile = json_root / rel / "game.tw-pddl"
        game_id = f"json_2.1.1/{rel.as_posix()}/game.tw-pddl"
        record = replay_expert(gamefile, d.alfworld_max_steps, d.alfworld_timeout_s) if _solvable(gamefile) \
            else {"error": "alfworld-generate: the planner found no plan"}
        if record.get("error"):  # rejected at generation, with the reason
            rejected.append({"gamefile": game_id, "reason": record["error"]})
            log.warning("rejected %s: %s", game_id, record["error"])
            continue
        record["traj_path"] = f"json_2.1.1/{rel.as_posix()}/traj_data.json"  # relative: same files anywhere
        replays[split].setdefault(task_type, {})[game_id] = record
    t3 = time.monotonic()

    out = root / "alfworld"
    out.mkdir(parents=True, exist_ok=True)
    train = replays["train"]
    units = sorted(g for games in train.values() for g in games)
    order = list(units)
    random.Random(d.alfworld_seed).shuffle(order)  # the authors' M/T cut: shuffle, the first 80% -> bank
    bank = set(order[:int(d.alfworld_bank_ratio * len(order))])
    cards = [skill_card(t, g, rec) for t, games in sorted(train.items()) for g, rec in sorted(games.items())
             if g in bank]
    if d.alfworld_cards == "backbone":  # the local model rewrites each card's summary (no API)
        from .backbone import from_config
        writer = from_config(cfg)
        cards = [backbone_card(c, train[c["task_type"]][c["gamefile"]], writer)
                 for c in _progress(cards, progress, "writing skill cards")]
    leaked = [c["gamefile"] for c in cards if not loaders.game_id(c["gamefile"]).startswith("train/")]
    if leaked:  # evaluation games live in valid_seen/ and valid_unseen/ only
        raise RuntimeError(f"evaluation games got skill cards: {leaked[:3]}")
    fixed = {loaders.game_id(g): "bank" for g in bank}
    split = splits.PROCEDURES["alfworld_bank_seed42_val10"]([loaders.game_id(u) for u in units], fixed)
    _write_json(out / "expert_replays.json", train)
    _write_json(out / "skill_cards.json", cards)
    if real is None:  # real evaluation games are read from ALFWorld's folder
        for s in EVAL_SPLITS:
            _write_json(out / f"eval_{s}.json", replays[s])
    _write_json(out / "split.json", {
        "setting": _setting(real), "unit": "game", "source": "elasticmem_core.alfworld.prepare",
        "expected": {k: len(v) for k, v in split.items()}, "expected_records": None, "procedure": None,
        "sha256": {}, "splits": split})
    _write_json(manifest_path, {
        "params": params, "source": str(real) if real else "offline",
        "games": {s: dict(sorted(Counter(t for t, games in replays[s].items() for _ in games).items()))
                  for s in alfworld_games.SPLITS if replays[s] or real is None},
        "rejected": rejected,
        "seconds": {"write_problems": round(t1 - t0, 2), "alfworld_generate": round(t2 - t1, 2),
                    "replay_expert": round(t3 - t2, 2)}})
    return root


def _setting(real: Path | None) -> str:
    return "alfworld-offline" if real is None else "alfworld-real"


def _playable(traj: Path) -> bool:
    """A game ALFWorld's text engine can play (as the authors and AlfredTWEnv: no movable or sliced objects)."""
    return "movable" not in str(traj) and "Sliced" not in str(traj) and _solvable(traj.parent / "game.tw-pddl")


def _real_train_games(real: Path, n: int, seed: int) -> list[Path]:
    """The traj_data.json of `n` (0 = all) playable training games of ALFWorld's data: task types in turn (read
    from the folder name), each type's games in an order shuffled by `seed`; a game file is read only when chosen."""
    rng = random.Random(seed)
    groups: dict[str, list[Path]] = {}
    for traj in sorted((real / "json_2.1.1" / "train").glob("*/*/traj_data.json")):
        groups.setdefault(traj.parent.parent.name.split("-")[0], []).append(traj)
    queues = []
    for task_type in TASK_TYPES:
        rng.shuffle(groups.get(task_type, []))
        queues.append(iter(groups.get(task_type, [])))
    chosen: list[Path] = []
    while queues and (n <= 0 or len(chosen) < n):
        for q in list(queues):
            if 0 < n <= len(chosen):
                break
            traj = next((t for t in q if _playable(t)), None)
            if traj is None:
                queues.remove(q)
            else:
                chosen.append(traj)
    return chosen


def run_alfworld_generate(problems: Path, save_path: Path, seed: int) -> None:
    """ALFWorld's own `alfworld-generate` (planner expert), with its two traps avoided: `--end 100000` (the default
    -1 drops the last problem) and a separate `--save_path` (else it waits on input). Its goal sentence is drawn
    with the global `random`, so the script runs with `random.seed(seed)`: the same files every time. Colours off:
    it prints in termcolor's unknown "purple" (a KeyError in termcolor 3 wherever colour is on, as in a Jupyter
    kernel, which sets FORCE_COLOR)."""
    from alfworld.info import ALFRED_PDDL_PATH, ALFRED_TWL2_PATH
    script = Path(sys.executable).parent / "alfworld-generate"
    argv = [str(script), "--data_path", str(problems), "--save_path", str(save_path), "--end", "100000",
            "--expert_type", "planner", "--domain", ALFRED_PDDL_PATH, "--grammar", ALFRED_TWL2_PATH]
    code = (f"import random, runpy, sys; random.seed({seed}); sys.argv = {argv!r}; "
            f"runpy.run_path({str(script)!r}, run_name='__main__')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "ANSI_COLORS_DISABLED": "1"})
    if done.returncode != 0:
        raise RuntimeError(f"alfworld-generate failed ({done.returncode}):\n{done.stderr[-2000:]}")


def _solvable(gamefile: Path) -> bool:
    return gamefile.is_file() and bool(json.loads(gamefile.read_text()).get("solvable"))


def _write_json(path: Path, obj) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=1) + "\n")
    os.replace(tmp, path)


def _progress(items, show: bool, desc: str):
    if not show:
        return items
    from .experiment import progress as tqdm
    return tqdm(items, desc=desc)


def load(cfg, run_dir: str | Path | None = None) -> Dataset:
    """Bank (skill cards) and GRPO episodes: the authors' replays and cards through memorysuite when they are in
    data.data_dir/alfworld/; else replays and cards recorded here (`prepare`) on ALFWorld's own training games when
    its data folder holds them, else on the offline game set (built if needed)."""
    from . import memorysuite
    authors = resolve(cfg.data.data_dir) / "alfworld" / "expert_replays.json"
    if authors.is_file():
        return memorysuite.load("alfworld", cfg, run_dir=run_dir)
    real = real_data_root(cfg, alfworld_games.SPLITS)
    folder = prepare(cfg, run_dir) / "alfworld"
    ds = loaders.load_alfworld(folder / "expert_replays.json", folder / "skill_cards.json", folder / "split.json",
                               _setting(real), cfg.data.skip_bad_records, run_dir)
    source = f"ALFWorld's training games in {real}" if real else "the offline game set"
    ds.summary.notes.append(f"no authors' ALFWorld replays under {authors.parent}: expert replays and skill cards "
                            f"recorded here on {source} ({folder.parent})")
    return ds


@dataclass
class EvalGame:
    gamefile: Path       # the game.tw-pddl to play
    game_id: str         # relative to json_2.1.1/ ("valid_seen/<task>/<trial>/game.tw-pddl")
    task_type: str
    split: str


def eval_games(cfg, split: str, run_dir: str | Path | None = None) -> list[EvalGame]:
    """The evaluation games of `split` (valid_seen | valid_unseen): ALFWorld's own when present, else offline."""
    real = real_data_root(cfg)
    if real is not None:
        games = []
        for traj in sorted((real / "json_2.1.1" / split).glob("*/*/traj_data.json")):
            gamefile = traj.parent / "game.tw-pddl"
            if not _playable(traj):
                continue
            task_type = json.loads(traj.read_text())["task_type"]
            if task_type in TASK_TYPES:
                games.append(EvalGame(gamefile, loaders.game_id(str(gamefile)), task_type, split))
        return games
    root = prepare(cfg, run_dir)
    replays = json.loads((root / "alfworld" / f"eval_{split}.json").read_text())
    return [EvalGame(root / g, loaders.game_id(g), t, split) for t, games in sorted(replays.items())
            for g in sorted(games)]


# ---------------------------------------------------------------------------------------------------------------
# Turns: what the policy sees at one step
@dataclass
class Turn:
    objective: str
    history: list[tuple[str, str]]     # the last (action, observation) pairs, oldest first
    observation: str
    admissible: list[str]
    expert_action: str | None = None   # the training target (None when playing)
    episode_id: str = ""
    task_type: str = ""
    step: int = 0                      # 1-based index of the action to choose

    def tail(self) -> str:
        """History, observation and admissible commands, in the authors' wording (render_prompt_tail)."""
        parts = []
        if self.history:
            lines = [f"{kind}: {text}" for a, o in self.history for kind, text in (("ACTION", a), ("OBSERVATION", o))]
            parts += ["Interaction history so far:", "\n".join(lines), ""]
        parts += ["Current observation:", self.observation]
        if self.admissible:
            parts += ["", "Admissible actions (choose exactly ONE, copy verbatim):"]
            parts += [f"- {a}" for a in self.admissible]
        return "\n".join(parts + ["", "Action:"])

    def text(self) -> str:
        """The whole prompt of a text-only policy: instruction, goal, tail."""
        return f"{SYSTEM_INSTRUCTION}\n\nGoal: {self.objective}\n\n{self.tail()}"


def turns(episode: Episode, history: int = 5) -> list[Turn]:
    """One training turn per expert action after the reset step (the authors' expand_il_samples)."""
    steps = episode.steps
    out = []
    for t in range(1, len(steps)):
        prev = steps[t - 1]
        out.append(Turn(objective=episode.objective,
                        history=[(s.action, s.observation) for s in steps[max(1, t - history):t]],
                        observation=prev.observation or episode.first_observation,
                        admissible=list(prev.admissible_commands), expert_action=steps[t].action,
                        episode_id=episode.episode_id, task_type=episode.task_type, step=t))
    return out


# ---------------------------------------------------------------------------------------------------------------
# ElasticMem on ALFWorld: step items for training, the model as a policy
@dataclass
class StepItem:
    """One step as an ElasticMem item (the authors' field mapping): the question is the objective, so retrieval
    reads the objective and every step of an episode retrieves the same skill cards; the tail is the instruction
    and the step's prompt; the gold is the expert action (None when playing)."""
    qid: str                  # "<game id>#<step>"
    question: str             # the objective
    gold: str | None          # the expert action
    question_type: str        # the task type
    split: str
    turn: Turn
    memory_id: str = loaders.SKILL_BANK
    options: list[str] = field(default_factory=list)   # none: the admissible commands are in the tail
    evidence: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, turn: Turn, split: str = "play") -> "StepItem":
        return cls(f"{turn.episode_id}#{turn.step}", turn.objective, turn.expert_action, turn.task_type, split, turn)

    def tail_text(self, prompt: str = "generic") -> str:
        """What follows the memory: instruction, history, observation, admissible commands, "Action:" (ALFWorld's
        own prompt, whatever data.prompt says of the QA prompt)."""
        return f"\n{SYSTEM_INSTRUCTION}\n{self.turn.tail()}"


def step_items(dataset: Dataset, split: str, history: int = 5) -> list[StepItem]:
    """Every expert step of the `split` episodes ("train" | "val": the GRPO games) as a training item."""
    return [StepItem.of(t, split) for e in dataset.episodes if e.split == split for t in turns(e, history)]


def step_reward(text: str, item: StepItem) -> float:
    """The GRPO reward: 1 if the output, snapped to the step's admissible commands, is the expert action."""
    return expert_action_reward(text, item.turn.admissible, item.gold)


def step_accuracy(model, items: list[StepItem], max_new_tokens: int | None = None) -> float:
    """Exact match of greedy outputs (snapped) with the expert action on held-out steps: the training monitor
    (`Trainer(evaluate_fn=...)`); eval.max_questions caps the steps, eval.batch_size batches them."""
    cap, bs = model.cfg.eval.max_questions, model.cfg.eval.batch_size
    items = items[:cap] if cap > 0 else items
    hits = 0.0
    for i in range(0, len(items), bs):
        batch = items[i:i + bs]
        hits += sum(step_reward(o["output"], q) for o, q in zip(model.answer(batch, max_new_tokens), batch))
    return hits / max(1, len(items))


def training_config(cfg):
    """The config ALFWorld trains with: grpo.group_size, max_new_tokens, epochs, max_steps and sft_steps replaced by
    the data.alfworld_* values where those are set (the paper: G = 8, 16 tokens, 3 epochs; QA keeps 4, 5 and 10).
    The QA stage-0 reader warm-up is not run here (grpo.reader_warmup_steps = 0): skill cards as text would cost
    ~1,200 tokens per item, and stage 1 (grpo.sft_steps, on the expert actions) already teaches the action format."""
    d, g = cfg.data, cfg.grpo
    # the task term of a step is the expert-action reward
    terms = {("alfworld_step" if k == "task" else k): v for k, v in g.reward_terms.items()}
    return derive(cfg, "ALFWorld training", grpo={
        "group_size": d.alfworld_group_size or g.group_size, "reader_warmup_steps": 0, "reward_terms": terms,
        "max_new_tokens": d.alfworld_max_new_tokens or g.max_new_tokens, "epochs": d.alfworld_epochs or g.epochs,
        "max_steps": d.alfworld_max_train_steps or g.max_steps,
        "sft_steps": g.sft_steps if d.alfworld_sft_steps < 0 else d.alfworld_sft_steps})


def train(cfg, run_dir: str | Path, backbone, accelerator=None, progress: bool = True, dataset: Dataset | None = None,
          bank=None):
    """ElasticMem trained on ALFWorld, the one path of 06_alfworld and `launch.py train`: the config of
    `training_config`, the skill-card bank (built once by the frozen `backbone`, before LoRA goes in), one item per
    expert step of the GRPO games (`step_items`: train, and val for model selection), GRPO on `step_reward`,
    validation by `step_accuracy`, checkpoints in experiment.train_dir(run_dir, dataset.setting, runtime.seed).
    `dataset` / `bank`: the caller's, when it already has them (else loaded / built here). With an accelerate
    `accelerator`, every process calls this; process 0 prepares the game set first. Returns the trained Trainer
    (`trainer.model` is the model, its `best/` checkpoint in `trainer.dir`)."""
    from contextlib import nullcontext

    from . import assemble
    from .experiment import train_dir
    from .grpo import Trainer

    acfg = training_config(cfg)
    if dataset is None:
        with accelerator.main_process_first() if accelerator is not None else nullcontext():
            dataset = load(acfg, run_dir)  # the game set is generated once (cached by its params), by process 0
    if bank is None:
        bank = assemble.bank_for(acfg, dataset, backbone, run_dir, progress=progress, accelerator=accelerator)
    h = acfg.data.alfworld_history
    train_items, val_items = step_items(dataset, "train", h), step_items(dataset, "val", h)
    if not val_items:
        raise ValueError("no ALFWorld validation game: raise data.alfworld_n_train (validation = 10% of the GRPO "
                         "games)")
    model = assemble.model_for(acfg, dataset, backbone, bank)
    trainer = Trainer(model, train_items, val_items, train_dir(run_dir, dataset.setting, acfg.runtime.seed),
                      accelerator=accelerator,
                      evaluate_fn=lambda items: step_accuracy(model, items), setting=dataset.setting)
    trainer.train(progress=progress)
    return trainer


def policy(model, max_new_tokens: int | None = None) -> Policy:
    """ElasticMem (any memory mode) as a greedy ALFWorld policy. Retrieval and budgets are decided once per episode,
    from the objective, at its first step, and reused at every later step (as in training, where every step item
    of an episode retrieves from the same objective). The prompt's prefix (objective, control token, memory) is then
    the same at every step: its KV cache is computed at the first step and reused, so a step runs only its tail
    (history, observation, admissible commands) and the answer, with the same greedy output as the whole prompt.
    Returns (text, #Tok by part) per step: task text + injected memory + output (#Tok counts the whole prompt at
    every step, as the paper). Build a fresh policy after the weights or the memory mode change."""
    import torch

    max_new_tokens = max_new_tokens or model.cfg.grpo.max_new_tokens
    episode: dict = {}

    @torch.no_grad()
    def act(turn: Turn) -> tuple[str, dict[str, int]]:
        item = StepItem.of(turn)
        was_training = model.training
        model.eval()
        new = turn.step == 1 or episode.get("id") != turn.episode_id
        if new:
            episode.update(id=turn.episode_id, plan=model.plan([item], sample=False))
        batch = model.build([item], episode["plan"])
        if new:  # question + control token + memory are the same at every step: their KV cache is computed once
            episode["prefix"] = model.prefill(batch, batch.spans[0]["tail"][0])
        text = model.generate(batch, max_new_tokens, sample=False, prefix=episode["prefix"]).texts[0]
        model.train(was_training)
        return text, dict(batch.counts[0])
    return act


# ---------------------------------------------------------------------------------------------------------------
# Evaluation
@dataclass
class EpisodeResult:
    game_id: str
    task_type: str
    split: str
    objective: str
    success: bool
    reason: str                        # won | step_limit | timeout | error: ...
    steps: int
    tokens: int                        # #Tok summed over steps (input + injected memory + output)
    invalid_actions: int
    seconds: float
    actions: list[str] = field(default_factory=list)
    token_parts: dict[str, int] = field(default_factory=dict)  # #Tok by part when the policy reports them


Policy = Callable[[Turn], "str | tuple[str, int | dict[str, int]]"]


def play(game: EvalGame, act: Policy, max_steps: int = 30, timeout_s: float = 240.0, history: int = 5,
         count_tokens: Callable[[str], int] | None = None) -> EpisodeResult:
    """Play one game with `act`. `act(turn)` returns the generated text, or (text, #Tok of the call) when the
    policy counts its own tokens (with injected memory; an int, or a dict by part such as {task_text, memory,
    output}, summed per episode into `token_parts`); else #Tok = count_tokens(prompt) + count_tokens(text)."""
    start = time.monotonic()
    result = EpisodeResult(game.game_id, game.task_type, game.split, "", False, "step_limit", 0, 0, 0, 0.0)
    pairs: list[tuple[str, str]] = []
    live = None
    try:
        with deadline(timeout_s):
            live = Game(game.gamefile, expert=False)
            state = live.reset()
            result.objective = objective_of(state.observation)
            first = state.observation
            while result.steps < max_steps:
                if time.monotonic() - start > timeout_s:
                    raise GameTimeout(f"wall-clock timeout after {timeout_s:g} s")
                turn = Turn(result.objective, pairs[-history:] if history else [], state.observation or first,
                            state.admissible, None, game.game_id, game.task_type, result.steps + 1)
                out = act(turn)
                text, n_tok = out if isinstance(out, tuple) else (out, None)
                if n_tok is None:
                    n_tok = count_tokens(turn.text()) + count_tokens(text) if count_tokens else 0
                if isinstance(n_tok, dict):
                    for part, n in n_tok.items():
                        result.token_parts[part] = result.token_parts.get(part, 0) + n
                    n_tok = sum(n_tok.values())
                command = snap_to_admissible(text, state.admissible)
                if command is None:
                    result.invalid_actions += 1
                    command = (text.strip().splitlines() or [""])[0]
                state = live.step(command)
                result.steps += 1
                result.tokens += n_tok
                result.actions.append(command)
                pairs.append((command, state.observation))
                if state.done:
                    result.success = state.won or state.reward >= 1
                    result.reason = "won" if result.success else "done"
                    break
    except GameTimeout as e:
        result.reason = "timeout"
        log.warning("%s: %s", game.game_id, e)
    except Exception as e:  # a broken game or policy ends this game, never the run
        result.reason = f"error: {type(e).__name__}: {e}"
        log.warning("%s: %s", game.game_id, result.reason)
    finally:
        if live is not None:
            live.close()
    result.seconds = round(time.monotonic() - start, 3)
    return result


def evaluate(games: list[EvalGame], act: Policy, cfg, count_tokens: Callable[[str], int] | None = None,
             progress: bool = True) -> list[EpisodeResult]:
    d = cfg.data
    return [play(g, act, d.alfworld_max_steps, d.alfworld_timeout_s, d.alfworld_history, count_tokens)
            for g in _progress(games, progress, "playing")]


def summarize(results: list[EpisodeResult]) -> dict:
    """Success rate, #Tok and steps per episode: overall, per split and per task type (counts kept for intervals)."""
    def stats(rs: list[EpisodeResult]) -> dict:
        n = max(len(rs), 1)
        return {"n": len(rs), "successes": sum(r.success for r in rs), "success": sum(r.success for r in rs) / n,
                "tokens_per_episode": sum(r.tokens for r in rs) / n, "steps_per_episode": sum(r.steps for r in rs) / n,
                "reasons": dict(Counter(r.reason.split(":")[0] for r in rs))}

    def by(key: str) -> dict:
        groups = sorted({getattr(r, key) for r in results})
        return {k: stats([r for r in results if getattr(r, key) == k]) for k in groups}
    return {"overall": stats(results), "split": by("split"), "task_type": by("task_type")}


def results_json(results: list[EpisodeResult]) -> list[dict]:
    return [asdict(r) for r in results]


TOKEN_PARTS = ("task_text", "memory", "output")


def episode_record(r: EpisodeResult, peak_mb: float) -> dict:
    """An episode as a question record of evaluate.py (qid = game, correct = success, tok = #Tok of the episode,
    tokens = its parts), so `evaluate.load_results` and the QA tables read ALFWorld results unchanged."""
    rec = asdict(r)
    parts = rec.pop("token_parts")
    rec.update(qid=r.game_id, question_type=r.task_type, memory_id=loaders.SKILL_BANK, correct=r.success,
               tok=r.tokens, tokens={k: parts.get(k, 0) for k in TOKEN_PARTS}, peak_mb=peak_mb)
    return rec


def evaluate_policy(act: Policy, games: list[EvalGame], path: str | Path, meta: dict, cfg, device="cpu",
                    progress: bool = True) -> dict:
    """Play `games` with `act` (a policy reporting #Tok by part, as `policy`) and save the result at `path`
    (evaluate.result_path: one file per method x setting x split x seed, evaluate.py's format), or reuse the result
    saved there by the same method, backbone and params. summary.accuracy is the success rate, with its bootstrap
    95% interval; summary.tok the mean #Tok per episode; steps, invalid actions, end reasons and the same per
    task type (summary.task_type) are added."""
    import torch

    from . import evaluate as evaluation
    from .experiment import code_version, environment, write_json

    saved = evaluation.existing(path, cfg, meta)
    if saved is not None:
        return saved
    results = evaluate(games, act, cfg, progress=progress)
    peak = peak_memory_mb(device)  # on CPU the process's high-water mark, as evaluate.py
    records = [episode_record(r, peak) for r in results]
    n = max(1, len(results))
    summary = {**evaluation.summarize(records, cfg.eval.bootstrap, cfg.runtime.seed),
               "steps_per_episode": sum(r.steps for r in results) / n,
               "invalid_actions_per_episode": sum(r.invalid_actions for r in results) / n,
               "reasons": dict(Counter(r.reason.split(":")[0] for r in results)),
               "task_type": summarize(results)["task_type"]}
    result = {**meta, "fingerprint": evaluation.fingerprint(cfg, meta), "params": cfg.to_dict(),
              "code_version": code_version(), "environment": environment(),
              "memory_measure": "cuda_max_allocated" if torch.device(device).type == "cuda" else "process_peak_rss",
              "summary": summary, "records": records}
    write_json(path, result)
    return json.loads(Path(path).read_text())  # exactly what a later reuse returns


def task_type_table(results: list[dict]) -> list[dict]:
    """Success per task type of saved `evaluate_policy` results, read from their episode records: per result
    (method x split), {"method", "split", "task_type": {each task type and "overall": {n, successes, success}}}
    (success None where the split has no game of that type)."""
    rows = []
    for r in results:
        cells = {}
        for task_type in (*TASK_TYPES, "overall"):
            recs = [x for x in r["records"] if task_type in ("overall", x["task_type"])]
            wins = sum(bool(x["success"]) for x in recs)
            cells[task_type] = {"n": len(recs), "successes": wins, "success": wins / len(recs) if recs else None}
        rows.append({"method": r["method"], "split": r["split"], "task_type": cells})
    return rows
