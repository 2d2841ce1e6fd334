"""ElasticMem playing ALFWorld, and the results: the model as a policy, live play, evaluation and its result files.

- `policy(model)`: greedy; retrieval, budgets and the prompt prefix's KV cache once per episode.
- `play` / `evaluate`: a policy `act(turn) -> text` plays live games, at most `alfworld.max_steps` steps and
  `alfworld.timeout_s` seconds each (a hung game ends, counted as a failure with its reason); the output is snapped
  to the admissible commands (rewards.snap_to_admissible); an output that matches none is sent as typed (the game
  answers "Nothing happens.") and counted in `invalid_actions`. #Tok per episode is summed over steps.
- `summarize`, `results_json`, `episode_record` (an episode as an evaluate.py question record); `evaluate_policy`
  (live success rate, per task type too, and #Tok per episode, saved as an evaluate.py results file; each game
  is saved as it ends, so a stopped split resumes at its next game),
  `task_type_table` (success per task type of saved results), `paired_success` (two methods on the same games;
  PAIRS: the ones 06 reports).

The games come from environment.py, what the policy sees at a step (`Turn`, `StepItem`) from training.py.
"""
from __future__ import annotations

import json
import logging
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from ..core.experiment import peak_memory_mb
from ..memorysuite import loaders
from ..method.rewards import snap_to_admissible
from .environment import TASK_TYPES, EvalGame, Game, GameTimeout, _progress, deadline, objective_of
from .training import StepItem, Turn, ranked_action

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------------------------
# The model as a policy
def policy(model, max_new_tokens: int | None = None) -> Policy:
    """ElasticMem (any memory mode) as a greedy ALFWorld policy. Retrieval and budgets are decided once per episode,
    from the objective, at its first step, and reused at every later step (as in training, where every step item
    of an episode retrieves from the same objective). The prompt's prefix (objective, control token, memory) is then
    the same at every step: its KV cache is computed at the first step and reused, so a step runs only its tail
    (history, observation, admissible commands) and the answer, with the same greedy output as the whole prompt.
    Under alfworld.action_selection = rank the step's answer is the admissible command the model finds most likely
    (training.ranked_action, on the same prefix cache) and #Tok's output is that command's tokens; scoring the
    other commands is compute #Tok does not count. Returns (text, #Tok by part) per step: task text + injected
    memory + output (#Tok counts the whole prompt at every step, as the paper). Build a fresh policy after the
    weights or the memory mode change."""
    import torch

    max_new_tokens = max_new_tokens or model.cfg.grpo.max_new_tokens
    rank = model.cfg.alfworld.action_selection == "rank"
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
        counts = batch.counts[0]
        if rank and turn.admissible:   # the admissible command of highest log-likelihood, on the same prefix cache
            text, counts["output"] = ranked_action(model, batch, turn.admissible, prefix=episode["prefix"])
        else:
            text = model.generate(batch, max_new_tokens, sample=False, prefix=episode["prefix"]).texts[0]
        model.train(was_training)
        return text, dict(counts)
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
             progress: bool = True, played: dict[str, EpisodeResult] | None = None,
             on_game: Callable[[EpisodeResult], None] | None = None) -> list[EpisodeResult]:
    """Play `games` in order; those in `played` (game id -> result: a resumed split) are not played again, and
    `on_game` gets each game played here as soon as it ends."""
    a, played = cfg.alfworld, played or {}
    results = []
    for g in _progress(games, progress, "playing"):
        r = played.get(g.game_id)
        if r is None:
            r = play(g, act, a.max_steps, a.timeout_s, a.history, count_tokens)
            if on_game is not None:
                on_game(r)
        results.append(r)
    return results


def _played_so_far(partial: Path, cfg, meta: dict) -> tuple[dict[str, EpisodeResult], dict | None]:
    """The games a stopped evaluation already played (`<result>.partial.jsonl`: its fingerprint and code version,
    then a game per line) and that header, if made with the same method, checkpoint and params (else refused, naming
    what differs; a partial without games is simply started over). A last line cut by the stop is dropped (that game
    is played again) and the file rewritten whole, so the next game starts its own line."""
    from ..core import evaluate as evaluation
    from ..core.experiment import write_text

    lines = partial.read_text().splitlines() if partial.is_file() else []
    try:
        head = json.loads(lines[0])
    except (IndexError, json.JSONDecodeError):  # nothing saved, or stopped while its first line was written
        return {}, None
    diff = evaluation.fingerprint_differences(head["fingerprint"], cfg, meta)
    if diff and len(lines) > 1:
        raise evaluation.ResultsError(f"{partial} holds games played with other settings ({'; '.join(diff[:5])}); "
                                      f"delete it to play the split again")
    if diff:
        return {}, None
    evaluation.warn_code_version(partial, head)
    done, keep = {}, lines[:1]
    for i, line in enumerate(lines[1:], 2):
        try:
            r = EpisodeResult(**json.loads(line))
        except (json.JSONDecodeError, TypeError) as e:
            if i < len(lines):  # only the line being written when the run stopped may be cut
                raise evaluation.ResultsError(f"{partial} line {i}: not a played game ({e})") from e
            log.warning("%s line %d: cut by the stop, that game is played again", partial, i)
            continue
        done[r.game_id] = r
        keep.append(line)
    write_text(partial, "".join(line + "\n" for line in keep))
    log.info("%s: %d games already played, resumed", partial, len(done))
    return done, head


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
                    progress: bool = True, same_as: dict | None = None) -> dict:
    """Play `games` with `act` (a policy reporting #Tok by part, as `policy`) and save the result at `path`
    (evaluate.result_path: one file per method x setting x split x seed, evaluate.py's format), or reuse the result
    saved there by the same method, backbone and params. summary.accuracy is the success rate, with its bootstrap
    95% interval; summary.tok the mean #Tok per episode; steps, invalid actions, end reasons and the same per
    task type (summary.task_type) are added. Each game is appended to `<path stem>.partial.jsonl` as it ends, so a
    stopped evaluation resumes at its next game (under the same fingerprint only; $ELASTICMEM_FRESH=1 starts over).
    `same_as`: a result this run saved for the same weights (checkpoint_id), memory and budget rule on these games
    (ElasticMem after GRPO, when GRPO kept the imitation weights): greedy play would repeat it move for move, so its
    games are taken over instead of played again, and the result says so (`same_play_as`)."""
    import torch

    from ..core import evaluate as evaluation
    from ..core.experiment import code_version, environment, write_json, write_text

    saved = evaluation.existing(path, cfg, meta)
    if saved is not None:
        return saved
    if same_as is not None:
        return _same_play(same_as, games, path, meta, cfg)
    # each game is saved as it ends, so a stopped evaluation resumes at the next game (a split is ~20 min here)
    partial = Path(path).with_name(Path(path).stem + ".partial.jsonl")
    played, head = ({}, None) if evaluation.fresh() else _played_so_far(partial, cfg, meta)
    if head is None:
        head = {"fingerprint": evaluation.fingerprint(cfg, meta), "code_version": code_version()}
        write_text(partial, json.dumps(head, default=str) + "\n")

    def save_game(r: EpisodeResult) -> None:
        with partial.open("a") as f:
            f.write(json.dumps(asdict(r)) + "\n")
    results = evaluate(games, act, cfg, progress=progress, played=played, on_game=save_game)
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
    if played:  # games of the stopped run: how many, and which code played them (peak memory is this run's only)
        result["resumed"] = {"games": len(played), "code_version": head.get("code_version")}
    write_json(path, result)
    partial.unlink()
    return json.loads(Path(path).read_text())  # exactly what a later reuse returns


def _same_play(same_as: dict, games: list[EvalGame], path: str | Path, meta: dict, cfg) -> dict:
    """`same_as`'s games under `meta` (evaluate_policy's same_as): refused unless its fingerprint, under its own method
    and checkpoint path, is this row's (the weights' checkpoint_id, split, seed, backbone, params with the dtype) and it
    played these games."""
    from ..core import evaluate as evaluation
    from ..core.experiment import code_version, write_json

    diff = evaluation.fingerprint_differences(same_as["fingerprint"], cfg, {
        **meta, "method": same_as.get("method"), "checkpoint": same_as.get("checkpoint")})
    if diff:   # only the same weights under the same params play alike (bf16 and float32 rank differently)
        raise ValueError(f"{path}: cannot take over {same_as.get('method')}'s games: it played with other weights or "
                         f"other params ({'; '.join(diff[:5])})")
    if [r["qid"] for r in same_as["records"]] != [g.game_id for g in games]:
        raise ValueError(f"{path}: cannot take over {same_as.get('method')}'s games: it played other games")
    result = {**same_as, **meta, "fingerprint": evaluation.fingerprint(cfg, meta), "params": cfg.to_dict(),
              "code_version": code_version(),
              "same_play_as": {"method": same_as["method"], "checkpoint": same_as.get("checkpoint"),
                               "code_version": same_as.get("code_version")}}
    result.pop("resumed", None)
    write_json(path, result)
    return json.loads(Path(path).read_text())


# the pairs 06 and `alfworld-pair` report: ElasticMem (after GRPO, and its imitation policy) against each other agent
PAIRS = [("elasticmem", "no_memory"), ("elasticmem", "text_memory"), ("elasticmem", "memgen"),
         ("elasticmem_imitation", "no_memory"), ("elasticmem_imitation", "text_memory"),
         ("elasticmem_imitation", "memgen"), ("elasticmem", "elasticmem_imitation"), ("elasticmem", "uniform_budget")]


def paired_success(results: list[dict], pairs: list[tuple[str, str]], n_boot: int = 1000, seed: int = 0) -> list[dict]:
    """Method a minus method b in success on the same games (saved `evaluate_policy` results, matched by game):
    per evaluation split and over both, the paired bootstrap interval over games and McNemar's exact p
    (evaluate.paired_comparison), with each side's #Tok and memory tokens per episode. A pair of which either side
    was not played is left out."""
    from ..core import evaluate as evaluation

    by = {(r["method"], r["split"]): r["records"] for r in results}
    splits = list(dict.fromkeys(r["split"] for r in results))
    rows = []
    for a, b in pairs:
        for split in (*splits, "both"):
            use = splits if split == "both" else [split]
            if not all((m, s) in by for m in (a, b) for s in use):
                continue
            # game ids are matched within a split: two splits may name a game alike
            ra = [{**x, "qid": f"{s}/{x['qid']}"} for s in use for x in by[(a, s)]]
            rb = [{**x, "qid": f"{s}/{x['qid']}"} for s in use for x in by[(b, s)]]
            d = evaluation.paired_comparison(ra, rb, n_boot, seed)
            tok = lambda rs, k: sum(x["tokens"][k] if k else x["tok"] for x in rs) / len(rs)  # noqa: E731
            rows.append({"a": a, "b": b, "split": split, **d, "tok_a": tok(ra, None), "tok_b": tok(rb, None),
                         "memory_tokens_a": tok(ra, "memory"), "memory_tokens_b": tok(rb, "memory")})
    return rows


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
