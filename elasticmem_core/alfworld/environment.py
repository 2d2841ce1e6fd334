"""ALFWorld's games: live TextWorld games, the game set (offline or ALFWorld's own) and the expert's replays.

Runs the real `alfworld` (0.4.2) + `textworld[pddl]` (1.7.0) environment code (optional extra `alfworld`):

- `Game`: one game file through the same wrapper chain as `alfworld-generate` (PddlEnv, AlfredDemangler,
  AlfredInfos, AlfredExpert(planner)): observation, admissible commands, expert plan, reward, done; `deadline` /
  `GameTimeout` bound a game's wall-clock time.
- `prepare(cfg)`: the game set. With ALFWorld's own data (`alfworld.data` or $ALFWORLD_DATA holding
  json_2.1.1/valid_seen and valid_unseen) evaluation plays those games, and when it holds json_2.1.1/train too the
  replays and cards are recorded on `alfworld.n_train` of its training games; otherwise the package writes
  ALFRED-format problems (alfred_problems.py), turns them into games with `alfworld-generate`
  (`run_alfworld_generate`), and keeps only the games the expert planner wins within the step limit (a rejected game
  is listed with its reason). Cached: skipped when the manifest says the same params made it.
- Expert replays in the authors' JSON format (`replay_expert`; docs/method.md §3; steps[0] is the reset: action
  null, the first observation), the bank games' skill cards (cards.py), a split file; `memorysuite.loaders.
  load_alfworld` reads them back (`load`). Evaluation games never get a skill card (checked); `eval_games` lists them.

What ElasticMem learns from the replays is training.py; playing the games with it, play.py.
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
from dataclasses import dataclass
from pathlib import Path

from ..core.experiment import resolve
from ..memorysuite import loaders, splits
from ..memorysuite.records import Dataset
from . import alfred_problems
from .cards import backbone_card, skill_card

log = logging.getLogger(__name__)

TASK_TYPES = alfred_problems.TASK_TYPES
EVAL_SPLITS = ("valid_seen", "valid_unseen")
FORMAT_VERSION = 3  # bump when the files written here change, so cached game sets are rebuilt


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
        from alfworld.agents.environment.alfred_tw_env import (
            AlfredDemangler,
            AlfredExpert,
            AlfredExpertType,
            AlfredInfos,
        )
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
# Expert replays (the authors' format)
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


# ---------------------------------------------------------------------------------------------------------------
# The game set
def real_data_root(cfg, splits: tuple[str, ...] = EVAL_SPLITS) -> Path | None:
    """ALFWorld's own data folder when it holds the games of `splits` (default: the evaluation games), else None."""
    root = cfg.alfworld.data or os.environ.get("ALFWORLD_DATA")
    if root and all((Path(root) / "json_2.1.1" / s).is_dir() for s in splits):
        return Path(root)
    return None


def games_dir(cfg, run_dir: str | Path | None = None) -> Path:
    """alfworld.games_dir, else <mini folder>/alfworld-offline (the mini folder: data.mini_dir, else
    <run folder>/data)."""
    if cfg.alfworld.games_dir:
        return resolve(cfg.alfworld.games_dir)
    from ..memorysuite import mini_root
    return mini_root(cfg, run_dir) / "alfworld-offline"


def replays_dir(cfg, run_dir: str | Path | None = None) -> Path:
    """Where `prepare` writes: the offline game set, or <mini folder>/alfworld-real for ALFWorld's own games."""
    if real_data_root(cfg, alfred_problems.SPLITS) is None:
        return games_dir(cfg, run_dir)
    from ..memorysuite import mini_root
    return mini_root(cfg, run_dir) / "alfworld-real"


def _params(cfg, real: Path | None) -> dict:
    a = cfg.alfworld
    if real is not None:  # the evaluation games are played where they lie: no counts, no rooms
        return {"format": FORMAT_VERSION, "alfworld_data": str(real), "seed": a.seed, "n_train": a.n_train,
                "bank_ratio": a.bank_ratio, "max_steps": a.max_steps, "timeout_s": a.timeout_s, **_card_params(cfg)}
    return {"format": FORMAT_VERSION, "seed": a.seed, "n_train": a.n_train, **_card_params(cfg),
            "n_seen": a.n_seen, "n_unseen": a.n_unseen, "bank_ratio": a.bank_ratio,
            "max_steps": a.max_steps, "timeout_s": a.timeout_s,
            "seen_rooms": alfred_problems.SEEN_ROOMS, "unseen_rooms": alfred_problems.UNSEEN_ROOMS}


def _card_params(cfg) -> dict:
    """What decides the cards' text (recorded in the manifest, so a change rewrites them)."""
    if cfg.alfworld.cards == "template":
        return {}
    return {"cards": cfg.alfworld.cards, "card_backbone": cfg.runtime.backbone}


def prepare(cfg, run_dir: str | Path | None = None, progress: bool = True) -> Path:
    """Expert replays, skill cards and the split file (skipped when the same params made them). Offline: write,
    generate and verify the game set, then replay every game. With ALFWorld's own data (json_2.1.1/train,
    valid_seen and valid_unseen): the same replay and card code on `alfworld.n_train` of its training games
    (0 = all); its evaluation games are played where they lie (`eval_games`)."""
    real = real_data_root(cfg, alfred_problems.SPLITS)
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
                              "give alfworld.games_dir (or data.mini_dir) an empty or new folder")
    a = cfg.alfworld
    t0 = time.monotonic()
    if real is None:
        if a.n_train < 1:
            raise ValueError("alfworld.n_train = 0 means every game of ALFWorld's json_2.1.1/train, which is not "
                             "here (no ALFWORLD_DATA): give the number of offline training games to make")
        problems = root / "problems" / "json_2.1.1"
        counts = {"train": a.n_train, "valid_seen": a.n_seen, "valid_unseen": a.n_unseen}
        folders = alfred_problems.write_problems(problems, counts, a.seed)
        t1 = time.monotonic()
        run_alfworld_generate(problems, root / "json_2.1.1", a.seed)
        json_root = root / "json_2.1.1"
        games = [(f.relative_to(problems), f / "traj_data.json") for f in folders]
    else:
        t1 = t0
        json_root = real / "json_2.1.1"
        games = [(t.parent.relative_to(json_root), t) for t in _real_train_games(real, a.n_train, a.seed)]
    t2 = time.monotonic()

    # the expert's replay of every game (the same code for offline and real games)
    replays: dict[str, dict[str, dict]] = {s: {} for s in alfred_problems.SPLITS}
    rejected = []
    for rel, traj in _progress(games, progress, "replaying the expert"):
        split, task_type = rel.parts[0], json.loads(traj.read_text())["task_type"]
        gamefile = json_root / rel / "game.tw-pddl"
        game_id = f"json_2.1.1/{rel.as_posix()}/game.tw-pddl"
        record = replay_expert(gamefile, a.max_steps, a.timeout_s) if _solvable(gamefile) \
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
    random.Random(a.seed).shuffle(order)  # the authors' M/T cut: shuffle, the first 80% -> bank
    bank = set(order[:int(a.bank_ratio * len(order))])
    cards = [skill_card(t, g, rec) for t, games in sorted(train.items()) for g, rec in sorted(games.items())
             if g in bank]
    if a.cards == "backbone":  # the local model rewrites each card's summary (no API)
        from ..core.backbone import from_config
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
        "setting": _setting(real), "unit": "game", "source": "elasticmem_core.alfworld.environment.prepare",
        "expected": {k: len(v) for k, v in split.items()}, "expected_records": None, "procedure": None,
        "sha256": {}, "splits": split})
    _write_json(manifest_path, {
        "params": params, "source": str(real) if real else "offline",
        "games": {s: dict(sorted(Counter(t for t, games in replays[s].items() for _ in games).items()))
                  for s in alfred_problems.SPLITS if replays[s] or real is None},
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
    with the global `random`, which the expert's solving of every earlier game also draws from: so the global
    `random` is seeded again before each game's sentence, by `seed` and that game's own traj_data. A game's text
    then depends on that game alone, and adding games to a split leaves the others as they were. Colours off:
    it prints in termcolor's unknown "purple" (a KeyError in termcolor 3 wherever colour is on, as in a Jupyter
    kernel, which sets FORCE_COLOR)."""
    from alfworld.info import ALFRED_PDDL_PATH, ALFRED_TWL2_PATH
    script = Path(sys.executable).parent / "alfworld-generate"
    argv = [str(script), "--data_path", str(problems), "--save_path", str(save_path), "--end", "100000",
            "--expert_type", "planner", "--domain", ALFRED_PDDL_PATH, "--grammar", ALFRED_TWL2_PATH]
    code = "\n".join([
        "import hashlib, json, random, runpy, sys",
        "import alfworld.agents.utils.misc as misc",
        "add_task = misc.add_task_to_grammar",
        "def add_task_to_grammar(grammar, traj_data, *args, **kwargs):",
        f"    key = {str(seed)!r} + json.dumps(traj_data, sort_keys=True)",
        "    random.seed(hashlib.sha256(key.encode()).hexdigest())",
        "    return add_task(grammar, traj_data, *args, **kwargs)",
        "misc.add_task_to_grammar = add_task_to_grammar  # the script imports it by name: patch before it runs",
        f"random.seed({seed}); sys.argv = {argv!r}",
        f"runpy.run_path({str(script)!r}, run_name='__main__')"])
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
    from ..core.experiment import progress as tqdm
    return tqdm(items, desc=desc)


def load(cfg, run_dir: str | Path | None = None) -> Dataset:
    """Bank (skill cards) and GRPO episodes: the authors' replays and cards through memorysuite when they are in
    data.data_dir/alfworld/; else replays and cards recorded here (`prepare`) on ALFWorld's own training games when
    its data folder holds them, else on the offline game set (built if needed)."""
    from .. import memorysuite
    authors = resolve(cfg.data.data_dir) / "alfworld" / "expert_replays.json"
    if authors.is_file():
        return memorysuite.load("alfworld", cfg, run_dir=run_dir)
    real = real_data_root(cfg, alfred_problems.SPLITS)
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
