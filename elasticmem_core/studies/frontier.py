"""The accuracy-vs-memory-tokens frontier of budget allocations on one checkpoint.

Every point reads with the same reasoner (LoRA) and projector, on the same questions; only the budgets b_j that the
Z retrieved chunks get differ:

- fixed rules (`fixed_points`): no memory (b = 0), uniform b_j = b for b in eval.frontier_uniform (<= B_max), the top-1
  and top-2 retrieved chunks whole (b_j = B_max for rank j <= k, else min_budget), a score threshold
  (b_j = B_max if s_j >= t, else min_budget) for t in eval.frontier_thresholds, and random budgets;
- text RAG with the same reader (`evaluate_text`): the same checkpoint reading its retrieved chunks as text, its
  memory counted in text tokens (another unit: a heuristics entry named TEXT_RAG, never on the envelope);
- learned points (`train_learned_point`): a fresh budget policy trained by GRPO alone (grpo.policy_only) on the
  reward r = task - lambda x M / (Z x B_max) at a token price lambda, one point per lambda, over several seeds;
- oracle points: the same training of an oracle-feature policy (budget.sees_evidence: it also sees whether each
  chunk is gold evidence): a reference for what a policy that knew the evidence learns, not a bound (the fixed
  oracle rule, evidence chunks whole and the rest dropped, is the upper reference);
- the relevance probe (`relevance_probe`): linear probes of whether the policy's inputs (query state, keys, retrieval
  scores, ranks) tell the evidence chunks from the others, when a learned policy does not learn to.

Memory tokens per question M = the soft tokens injected, sum_j min(b_j, L_j) over the retrieved chunks (L_j = the
chunk's real cached states, bank.cache_len), WITHOUT the one "\\n" separator each injected chunk also adds: the
records' `tokens["memory"]` (the paper's #Tok part) is M + #{j: b_j > 0}. The token price's own M (rewards.token_price)
counts the budgets, sum_j b_j, which is larger when b_j exceeds a chunk's length.

A fixed rule dominates another when it is at least as accurate with no more memory tokens. The upper envelope of the
fixed rules is E(m) = max {acc(p) : p fixed, M(p) <= m}; a learned point (m, a) beats every fixed rule at equal memory
when a > E(m), tested by a paired difference on the same questions against the fixed point that attains E(m).
Every interval and p-value is stats.py's bootstrap over memories (and, for a learned point, its seeds); the learned
points' p-values against the envelope are one family, Holm-adjusted (`p_holm`; the oracle-feature points another).

    fixed = frontier.evaluate_fixed(model, test_q)
    trainer = frontier.train_learned_point(model, train_q, val_q, folder, token_price=0.2, seed=0, steps=64)
    records, diag = frontier.evaluate_point(model, test_q), frontier.diagnostics(model, test_q)  # the learned policy
    learned = frontier.learned_point(0.2, [{"seed": 0, "records": records, "diagnostics": diag}], fixed)
    uniform, heuristics = ([p for p in fixed if p["family"] == f] for f in ("uniform", "heuristics"))
    pareto.write_pareto(run.path("metrics", "budget_pareto.json"), setting, "test", len(test_q), uniform,
                        heuristics, [learned])

or all of it, resumable, as 05_frontier runs it (`run_frontier`; eval.frontier_* give the prices, seeds and steps):

    out = frontier.run_frontier(cfg, run.dir, setting, model, dataset, checkpoint)   # -> metrics/budget_pareto.json
"""
from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from ..core import evaluate, stats
from ..core.config import derive
from ..core.experiment import write_json
from ..harness.checks import validate
from ..method.budget import LEARNED, BudgetPolicy
from ..method.rollout import passes_mode
from ..training import grpo
from .fixed_rules import (  # noqa: F401 (fixed_points, evaluate_fixed, ...: the frontier's names, here as before)
    candidate_profiles,
    evaluate_fixed,
    evaluate_point,
    fixed_points,
    point_summary,
    question_list,
    search_profiles,
    soft_tokens,
)
from .pareto import (
    ORACLE_RULE,
    TEXT_RAG,
    envelope_at,
    envelope_rules,
    hull_at,
    upper_envelope,
    vs_step0,
    write_pareto,
)
from .relevance_probe import PROBE_FEATURES, probe_data, relevance_probe

POINT_FILE = "frontier_point.json"
# settings a learned point's identity gained later, at the values every point had before them: a point records one
# only off that value, so folders and results saved before it are still its own (`later_settings`)
PREDATED = {"sees_evidence": False, "sees_length": False, "reward": "task", "clip_eps": 0.05, "group_size": 4}


def later_settings(**values) -> dict:
    """The `values` (keys of PREDATED) that differ from what points had before those settings existed."""
    return {k: v for k, v in values.items() if v != PREDATED[k]}
# what budget_pareto.json keeps of each seed's training_summary
TRAINING_KEYS = ("steps", "seconds", "zero_advantage_groups", "reward_mean_curve", "reward_mean_moved",
                 "accuracy_moved", "policy_entropy_moved", "policy_entropy_first", "policy_entropy_last",
                 "policy_clip_frac_first", "policy_clip_frac_after_first_window")


# ---- a learned point ------------------------------------------------------------------------------------------
def fresh_policy(model, cfg, seed: int) -> BudgetPolicy:
    """The untrained budget policy a learned point starts from (cfg.budget, initialised under `seed`): the same
    object for its training and for the step-0 control."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return BudgetPolicy(model.bank.hidden_size, cfg.budget, cfg.retrieval.top_z).to(model.device)


def train_learned_point(model, train_q, val_q, folder: str | Path, token_price: float, seed: int, steps: int,
                        questions_per_step: int | None = None, policy_lr: float | None = None,
                        advantage_norm: str | None = None, select: str = "last", setting: str | None = None,
                        progress: bool = False, sees_evidence: bool = False, sees_length: bool = False,
                        reward: str = "task", clip_eps: float | None = None, group_size: int | None = None):
    """Train a fresh budget policy (seeded by `seed`) on the model's current reasoner and projector: grpo.Trainer
    with grpo.policy_only, reward_terms {task: 1, token_price: lambda}, `steps` GRPO steps, no warm-up stages;
    `sees_evidence` trains the oracle-feature policy instead (budget.sees_evidence); `sees_length` gives the policy
    each chunk's length (budget.sees_length). `reward` is the task term: "task" (the sampled answer is right, the
    paper's) or "gold_logprob" (the frozen reader's teacher-forced log-probability of the gold answer: dense, no
    sampling noise). `clip_eps` and `group_size` default to grpo's.

    advantage_norm defaults to "mean" at every price (a std-normalised price collapses to the cheapest budget when
    the task rewards of a group tie: docs/rewards.md; one normalisation, so the points differ by their price only).
    The learning rate stays constant (grpo.min_lr_ratio 1: a short policy-only run whose cosine reached 0 wasted its
    last quarter of steps). `select`: "last" keeps the policy
    after the last step (validation accuracy ignores the price), "best" loads best/ (the highest validation accuracy).
    The model keeps the trained policy; its cfg and its parameters' requires_grad are restored. `folder` holds one
    point (one price and seed): a finished run there is reused, one of another point is refused.
    Returns the trainer (train_log.jsonl: policy_entropy, evidence_budget, other_budget per step).
    """
    train_q = question_list(train_q)
    if any(getattr(q, "split", None) == "test" for q in train_q):
        raise ValueError("a learned point trains on the training or validation split, never on test")
    if token_price < 0:
        raise ValueError(f"token_price = {token_price}: a price must be >= 0")
    if steps < 1:
        raise ValueError(f"steps = {steps}: train at least one step")
    if select not in ("last", "best"):
        raise ValueError(f"select = {select!r}; choose last or best")
    if reward not in ("task", "gold_logprob"):
        raise ValueError(f"reward = {reward!r}; choose task or gold_logprob")
    if model.memory != "latent":
        raise ValueError(f"a learned budget needs latent memory (model.memory = {model.memory!r})")
    cfg = model.cfg
    qps = questions_per_step or cfg.grpo.questions_per_step
    kind = cfg.budget.policy if cfg.budget.policy in LEARNED else "transformer"
    source = f"frontier point (token_price {token_price}, seed {seed})"
    # the policy alone trains: every warm-up and the alignment stage are the reader's, already done
    inputs = {"policy": kind, "sees_evidence": bool(sees_evidence), "sees_length": bool(sees_length)}
    train_cfg = derive(cfg, source, grpo={
        "policy_only": True, "reward_terms": {reward: 1.0, "token_price": float(token_price)},
        "advantage_norm": advantage_norm or "mean", "min_lr_ratio": 1.0,
        "policy_lr": cfg.grpo.policy_lr if policy_lr is None else policy_lr, "questions_per_step": qps,
        "clip_eps": clip_eps or cfg.grpo.clip_eps, "group_size": group_size or cfg.grpo.group_size,
        "max_steps": steps, "epochs": max(1, math.ceil(steps * qps / len(train_q))), "eval_every": steps,
        "reader_warmup_steps": 0, "sft_steps": 0, "retrieval_warmup_steps": 0},
        budget=inputs, runtime={"seed": seed}, align={"steps": 0})
    validate(train_cfg, source)
    g = train_cfg.grpo
    folder = Path(folder)
    point = {"token_price": float(token_price), "seed": seed, "steps": steps, "policy": kind,
             "advantage_norm": g.advantage_norm, "policy_lr": g.policy_lr, "questions_per_step": qps}
    point.update(later_settings(sees_evidence=bool(sees_evidence), sees_length=bool(sees_length), reward=reward,
                                clip_eps=g.clip_eps, group_size=g.group_size))
    if (folder / POINT_FILE).is_file() and json.loads((folder / POINT_FILE).read_text()) != point:
        raise ValueError(f"{folder} holds another frontier point ({(folder / POINT_FILE).read_text().strip()}); "
                         f"give {point} its own folder")
    write_json(folder / POINT_FILE, point)
    policy = fresh_policy(model, train_cfg, seed)
    grads = [(p, p.requires_grad) for p in model.parameters()]
    model.cfg, model.policy = train_cfg, policy
    try:
        trainer = grpo.Trainer(model, train_q, list(val_q), folder, setting=setting)
        trainer.train(progress=progress, reader_warmup=False)
        if select == "best":
            model.load(folder / "best", parts=("policy",))
    finally:
        model.cfg = derive(cfg, source, budget=inputs)  # its policy's inputs
        for p, flag in grads:
            p.requires_grad_(flag)
    return trainer


def diagnostics(model, questions, batch_size: int | None = None) -> dict:
    """What the model's budget policy does on `questions` (greedy plans, as at evaluation), over retrieved chunks:

    entropy          mean H(pi(. | chunk j)) in nats (0 for a fixed rule)
    entropy_uniform  ln(levels), levels = B_max - min_budget + 1: the entropy of a uniform choice
    evidence_budget  mean b_j of the question's evidence chunks (q.evidence), other_budget of the rest (NaN if none)
    drop_rate        share of chunks with b_j = 0
    per_rank         per retrieval rank: mean budget, of evidence and of other chunks (does the budget depend on the
                     chunk beyond its rank?), and how many of each
    distinct_budget_vectors  how many different budget vectors the policy gives over `questions`
    """
    questions = question_list(questions)
    if model.memory != "latent":
        raise ValueError(f"budget diagnostics need latent memory (model.memory = {model.memory!r})")
    bs = batch_size or model.cfg.eval.batch_size
    entropy, evidence, other, budgets, vectors = [], [], [], [], set()
    by_rank: dict[int, dict[str, list]] = {}
    with passes_mode(model, False), torch.no_grad():
        for i in range(0, len(questions), bs):
            batch = questions[i:i + bs]
            plan = model.plan(batch, sample=False)
            _, ent = model.policy_logprob(plan)
            rows, mask = plan.retrieved.rows.tolist(), plan.retrieved.mask.tolist()
            for q, rs, bs_, es, ms in zip(batch, rows, plan.budgets.budgets.tolist(), ent.tolist(), mask):
                gold = set(getattr(q, "evidence", None) or ())
                vectors.add(tuple(b for b, m in zip(bs_, ms) if m))
                for j, (r, b, e, m) in enumerate(zip(rs, bs_, es, ms)):
                    if m:
                        entropy.append(e)
                        budgets.append(b)
                        is_gold = model.bank.chunk_ids[r] in gold
                        (evidence if is_gold else other).append(b)
                        rank = by_rank.setdefault(j + 1, {"all": [], "evidence": [], "other": []})
                        rank["all"].append(b)
                        rank["evidence" if is_gold else "other"].append(b)
    mean = lambda xs: float(np.mean(xs)) if xs else float("nan")  # noqa: E731
    return {"entropy": mean(entropy), "entropy_uniform": math.log(model.policy.levels),
            "evidence_budget": mean(evidence), "other_budget": mean(other),
            "drop_rate": mean([float(b == 0) for b in budgets]), "chunks": len(budgets),
            "per_rank": [{"rank": j, "budget": mean(v["all"]), "evidence_budget": mean(v["evidence"]),
                          "other_budget": mean(v["other"]), "evidence_chunks": len(v["evidence"]),
                          "other_chunks": len(v["other"])} for j, v in sorted(by_rank.items())],
            "distinct_budget_vectors": len(vectors)}


# ---- can the policy's inputs tell evidence from the rest? --------------------------------------------------------


# ---- paired differences against the envelope (pareto.py) ----------------------------------------------------------------------------


def vs_envelope(seed_records: dict, memory_tokens: float, fixed: list[dict], n_boot: int = 1000,
                seed: int = 0) -> dict | None:
    """A learned point ({seed: its records}) against the fixed point attaining E(memory_tokens), on the same
    questions: the difference of accuracy, its 95% interval and p (stats.paired_difference: seeds and memories
    resampled; one seed: exactly evaluate.paired_comparison's), and per seed evaluate.paired_comparison (with
    McNemar's p). None if no fixed point is that cheap."""
    against = envelope_at(fixed, memory_tokens)
    if against is None:
        return None
    per_seed = {s: evaluate.paired_comparison(r, against["records"], n_boot, seed) for s, r in seed_records.items()}
    _, x, clusters = evaluate.correctness([against["records"], *seed_records.values()], "the envelope comparison")
    d = stats.paired_difference(x[1:], x[0], clusters, n_boot, seed)
    return {"against": against["name"], "against_accuracy": against["accuracy"],
            "against_memory_tokens": against["memory_tokens"], "n": d["n"], "units": d["clusters"],
            "ci_unit": evaluate.ci_unit(clusters), "difference": d["difference"], "ci": d["ci"], "p": d["p"],
            "seeds": list(seed_records),
            "per_seed": [{"seed": s, "difference": c["difference"], "ci": [c["ci_low"], c["ci_high"]], "p": c["p"],
                          "p_mcnemar": c["p_mcnemar"]} for s, c in per_seed.items()]}


def vs_hull(seed_records: dict, memory_tokens: float, fixed: list[dict], n_boot: int = 1000,
            seed: int = 0) -> dict | None:
    """A learned point ({seed: its records}) against the mix of two fixed rules on the upper hull that spends its
    memory tokens (pareto.hull_at), on the same questions: per question the mix's expected correctness
    w c_i + (1 - w) c_j, computed exactly rather than sampled; the difference, its 95% interval and p as
    vs_envelope's. None below the cheapest fixed rule."""
    at = hull_at(envelope_rules(fixed), memory_tokens)
    if at is None:
        return None
    lo, hi, w = at
    _, x, clusters = evaluate.correctness([lo["records"], hi["records"], *seed_records.values()], "the hull comparison")
    mix = w * x[0] + (1 - w) * x[1]
    d = stats.paired_difference(x[2:], mix, clusters, n_boot, seed)
    return {"against": lo["name"] if w == 1 else f"{w:.2f} x {lo['name']} + {1 - w:.2f} x {hi['name']}",
            "mix": [{"name": lo["name"], "weight": w}, {"name": hi["name"], "weight": 1 - w}],
            "against_accuracy": float(mix.mean()),
            "against_memory_tokens": w * lo["memory_tokens"] + (1 - w) * hi["memory_tokens"],
            "n": d["n"], "units": d["clusters"], "ci_unit": evaluate.ci_unit(clusters), "difference": d["difference"],
            "ci": d["ci"], "p": d["p"], "seeds": list(seed_records),
            "per_seed": [{"seed": s, "difference": v} for s, v in zip(seed_records, d["per_seed"])]}


def with_holm(points: list[dict]) -> list[dict]:
    """The points' tests against the envelope, and against the hull, each as one family: "p_holm" added to each
    "vs_envelope" and "vs_hull" (in place)."""
    for key in ("vs_envelope", "vs_hull"):
        stats.with_holm([p[key] for p in points if p.get(key)])
    return points


def learned_point(token_price: float, runs: list[dict], fixed: list[dict] | None = None, n_boot: int = 1000,
                  seed: int = 0, full_memory: float = 0) -> dict:
    """One learned point from its seeds' runs [{"seed", "records" (evaluate_point), "diagnostics"}]: accuracy and
    memory tokens = the means over seeds, ci = the bootstrap over seeds and memories (stats.bootstrap_mean),
    diagnostics averaged over seeds, "seeds" per seed; "vs_envelope" (the staircase) and "vs_hull" (the mixes of two
    rules) against `fixed` when given."""
    if not runs or len({r["seed"] for r in runs}) != len(runs):
        raise ValueError(f"learned point at token_price {token_price}: needs runs of distinct seeds, got "
                         f"{[r.get('seed') for r in runs]}")
    per_seed = [{"seed": r["seed"], **point_summary(r["records"], n_boot, seed)} for r in runs]
    try:
        _, x, clusters = evaluate.correctness([r["records"] for r in runs])
    except evaluate.ResultsError:
        raise ValueError(f"learned point at token_price {token_price}: its seeds answered different questions") \
            from None
    diag = {k: float(np.mean([r["diagnostics"][k] for r in runs]))
            for k in ("entropy", "entropy_uniform", "evidence_budget", "other_budget", "drop_rate")}
    point = {"token_price": float(token_price), "accuracy": float(np.mean([s["accuracy"] for s in per_seed])),
             "ci": stats.bootstrap_mean(x, clusters, n_boot, seed)["ci"],
             "memory_tokens": float(np.mean([s["memory_tokens"] for s in per_seed])), **diag,
             "seeds": [{k: s[k] for k in ("seed", "accuracy", "memory_tokens")} for s in per_seed]}
    if all("per_rank" in r["diagnostics"] for r in runs):  # files saved before these controls lack them
        ranks = sorted({x["rank"] for r in runs for x in r["diagnostics"]["per_rank"]})
        point["per_rank"] = [{"rank": j, **{k: float(np.nanmean([x[k] for r in runs for x in r["diagnostics"]["per_rank"]
                                                                if x["rank"] == j] or [math.nan]))
                                            for k in ("budget", "evidence_budget", "other_budget")}} for j in ranks]
        point["distinct_budget_vectors"] = [r["diagnostics"]["distinct_budget_vectors"] for r in runs]
    if all(r.get("training") for r in runs):  # the policy-only runs' curves: did the reward move?
        point["training"] = [{"seed": r["seed"], **{k: v for k, v in r["training"].items() if k in TRAINING_KEYS}}
                             for r in runs]
    step0 = [r["step0"] for r in runs if r.get("step0")]
    if step0:  # the untrained policy of the same seeds, greedy: what training added
        point["step0"] = {"accuracy": float(np.mean([s["accuracy"] for s in step0])),
                          "memory_tokens": float(np.mean([s["memory_tokens"] for s in step0])),
                          "seeds": [{k: s[k] for k in ("seed", "accuracy", "memory_tokens")} for s in step0]}
        if full_memory and all("records" in s for s in step0):  # the reward rose, paired on the same questions
            point["vs_step0"] = vs_step0({r["seed"]: r["records"] for r in runs if r.get("step0")},
                                         {s["seed"]: s["records"] for s in step0}, token_price, full_memory,
                                         n_boot, seed)
    if fixed:
        records = {r["seed"]: r["records"] for r in runs}
        for key, test in (("vs_envelope", vs_envelope), ("vs_hull", vs_hull)):
            vs = test(records, point["memory_tokens"], fixed, n_boot, seed)
            if vs is not None:
                point[key] = vs
    return point


# ---- the results file -----------------------------------------------------------------------------------------


# ---- the whole frontier of one checkpoint, resumable (05_frontier) --------------------------------------------
def evaluate_text(model, questions, batch_size: int | None = None, progress: bool = False) -> list[dict]:
    """Greedy records of the same checkpoint reading its retrieved chunks as TEXT (model.memory = "text": the same
    retrieval, every retrieved chunk whole, no budget policy): "text RAG with the same reader". Each record's
    "memory_tokens" = the text tokens of its retrieved chunks (separators not counted, as for soft tokens): another
    unit than a soft token, which is why this point is labelled and kept off the envelope."""
    questions = question_list(questions)
    with model.using(memory="text"):
        records = evaluate.answer_questions(model.answer, questions, batch_size or model.cfg.eval.batch_size,
                                            bank=model.bank, device=model.device, progress=progress)
    for r in records:
        r["memory_tokens"] = sum(len(model._chunk_ids(row)) for row in r["rows"] if row >= 0)
    return records


POINT_KINDS = ("learned", "dense", "oracle")  # task reward; dense reward (gold_logprob); oracle-feature policy


def learned_folder(run_dir: str | Path, setting: str, token_price: float, seed: int, oracle: bool = False,
                   kind: str | None = None) -> Path:
    """Where one learned point trains: <run>/frontier/<setting>/price<lambda>/seed<seed> (oracle-price<lambda>/...
    for the oracle-feature policy, dense-price<lambda>/... for the dense reward)."""
    kind = kind or ("oracle" if oracle else "learned")
    if kind not in POINT_KINDS:
        raise ValueError(f"point kind {kind!r}; choose one of {', '.join(POINT_KINDS)}")
    prefix = "" if kind == "learned" else f"{kind}-"
    return Path(run_dir) / "frontier" / setting / f"{prefix}price{float(token_price):g}" / f"seed{seed}"


def pareto_path(run_dir: str | Path, setting: str, settings: list[str]) -> Path:
    """metrics/budget_pareto.json for a run with one trained setting; budget_pareto-<setting>.json with several."""
    name = "budget_pareto.json" if len(settings) <= 1 else f"budget_pareto-{setting}.json"
    return Path(run_dir) / "metrics" / name


def training_summary(folder: str | Path) -> dict:
    """What a learned point's policy-only GRPO did, from its train_log.jsonl: the steps, and the first and the last
    step's policy entropy (nats), evidence and other budget, mean budget, task accuracy and token-price term of the
    rollouts (a step logged twice across a resume counts once, the later); {} without a log."""
    path = Path(folder) / "train_log.jsonl"
    if not path.is_file():
        return {}
    by_step = {}
    for line in path.read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            if r.get("stage") == "grpo":
                by_step[r["step"]] = r
    steps = [by_step[k] for k in sorted(by_step)]
    if not steps:
        return {"steps": 0}
    out = {"steps": len(steps), "seconds": float(sum(r.get("seconds", 0.0) for r in steps)),
           "zero_advantage_groups": int(sum(r.get("zero_advantage_groups", 0) for r in steps))}
    for key in ("policy_entropy", "evidence_budget", "other_budget", "mean_budget", "accuracy", "reward_token_price",
                "policy_clip_frac"):
        out[f"{key}_first"] = steps[0].get(key, float("nan"))
        out[f"{key}_last"] = steps[-1].get(key, float("nan"))
    # the curve as running means with intervals, and whether the reward moved beyond its interval (first vs last
    # window): endpoints of single steps of a few questions say nothing
    window = curve_window(len(steps))
    if window:
        for key in ("reward_mean", "accuracy", "policy_entropy", "policy_clip_frac"):
            values = [r.get(key, float("nan")) for r in steps]
            if not any(math.isnan(v) for v in values):
                out[f"{key}_curve"] = stats.running_mean(values, window)
                out[f"{key}_moved"] = stats.window_difference(values, window)
        clip = [r.get("policy_clip_frac", float("nan")) for r in steps[window:]]
        out["policy_clip_frac_after_first_window"] = float(np.mean(clip)) if clip else float("nan")
    return out


def curve_window(steps: int) -> int:
    """Steps per running-mean window of a learned point's curve: a quarter of the run, at least 2; 0 (no curve)
    under 4 steps."""
    return max(2, steps // 4) if steps >= 4 else 0


def run_frontier(cfg, run_dir: str | Path, setting: str, model, dataset, checkpoint: str | Path,
                 path: str | Path | None = None, split: str = "test", progress: bool = False,
                 log=print) -> dict:
    """The budget frontier of one trained checkpoint, written to `path` (default `pareto_path` for one setting):

    1. the checkpoint (LoRA, projector, policy) is loaded into `model` (an ElasticMem of `dataset`'s bank);
    2. every fixed rule (`fixed_points(cfg)`) and text RAG with the same reader (`evaluate_text`) on `split`
       (capped by eval.max_questions, as every result), saved in <run>/frontier/<setting>/fixed-<split>.json;
    3. the relevance probe (eval.frontier_probe; `relevance_probe` fitted on train, chosen on val, reported on
       `split`), saved in <run>/frontier/<setting>/probe-<split>.json;
    4. per price in eval.frontier_prices (with the dense reward, eval.frontier_dense_prices; with the oracle-feature
       policy, eval.frontier_oracle_prices) and seed
       in eval.frontier_seeds, a fresh policy trained by policy-only GRPO on eval.frontier_train_split (`train_learned_point`: eval.frontier_steps steps of eval.frontier_questions_per_step
       questions, policy lr eval.frontier_policy_lr; the last step's policy, no validation) in `learned_folder`,
       then evaluated on `split` with its `diagnostics` (<folder>/<split>.json);
    5. each learned point (the mean over its seeds) against the envelope of `envelope_rules` (`vs_envelope`; the
       learned points' p-values Holm-adjusted together, the oracle points' apart: `with_holm`), and `write_pareto`.

    Resumable: a saved evaluation is reused when its params and checkpoint match (evaluate.existing: another
    params set is an error naming the key; --fresh recomputes), a finished training folder is reused without a
    step, an interrupted one resumes from last/. A frontier folder measured on another checkpoint is refused.
    Afterwards `model` has its own cfg, policy object and memory mode again, with the checkpoint reloaded.

    Returns {"path", "pareto" (the file's content), "fixed", "text", "learned" (points with records),
    "training" (per price and seed: `training_summary`, reused, seconds), "envelope" (names), "seconds"}.
    """
    from ..harness.variants import checkpoint_id  # baselines does not import this module

    e = cfg.eval
    checkpoint = Path(checkpoint)
    test_q = list(dataset.split(split))
    test_q = question_list(test_q[:e.max_questions] if e.max_questions > 0 else test_q)
    train_q = question_list(dataset.split("train"))
    if e.frontier_train_split == split:
        raise ValueError(f"eval.frontier_train_split = {split!r} is the split the frontier is measured on: train the "
                         f"learned points on train or val")
    policy_q = question_list(dataset.split(e.frontier_train_split))  # the learned points' questions (docs/rewards.md)
    if not e.frontier_prices or not e.frontier_seeds:
        raise ValueError("the frontier needs at least one token price (eval.frontier_prices) and one seed "
                         "(eval.frontier_seeds)")
    folder = Path(run_dir) / "frontier" / setting
    ckpt_id = checkpoint_id(checkpoint)
    base, base_file = {"checkpoint": str(checkpoint), "checkpoint_id": ckpt_id}, folder / "base.json"
    if base_file.is_file():
        was = json.loads(base_file.read_text())
        if was.get("checkpoint_id") != ckpt_id:
            raise evaluate.ResultsError(f"{folder} holds a frontier measured on checkpoint {was}, not on {base}: "
                                        f"its learned policies read with another reader; delete {folder} to "
                                        f"measure the frontier of this checkpoint")
    else:
        write_json(base_file, base)
    n_boot, bseed = e.bootstrap, cfg.runtime.seed
    meta = {"kind": "frontier", "setting": setting, "split": split, "backbone": model.backbone.identity,
            "checkpoint_id": ckpt_id, "qids": [q.qid for q in test_q]}
    seconds, training, learned = {}, [], []
    with model.using(memory="latent"):
        try:
            model.load(checkpoint)
            profiles = []
            if e.frontier_profile_levels:  # the best per-rank profiles, chosen on validation
                t0 = time.perf_counter()
                val_q = question_list(dataset.split("val"))
                prof_meta = {**meta, "split": "val", "qids": [q.qid for q in val_q],
                             "levels": sorted(set(e.frontier_profile_levels))}
                got = evaluate.existing(folder / "profiles-val.json", cfg, prof_meta)
                if got is None:
                    got = evaluate.save_result(folder / "profiles-val.json", cfg, prof_meta,
                                               search_profiles(model, val_q, e.frontier_profile_levels, n_boot, bseed,
                                                               progress))
                profiles = got["profiles"]
                seconds["per-rank profiles on validation"] = round(time.perf_counter() - t0, 1)
                log(f"{setting}: per-rank profiles on the validation hull: {profiles} "
                    f"({seconds['per-rank profiles on validation']:.0f} s; 0 = reused)")
            points = fixed_points(cfg, profiles)
            if not any(getattr(q, "evidence", None) for q in test_q):  # the oracle reference reads the gold evidence
                points = [p for p in points if p["name"] != ORACLE_RULE]
            fixed_meta = {**meta, "points": [{k: p[k] for k in ("name", "memory", "overrides")} for p in points]}
            t0 = time.perf_counter()
            got = evaluate.existing(folder / f"fixed-{split}.json", cfg, fixed_meta)
            if got is None:
                rules_dir = folder / f"fixed-{split}"   # one file per rule while the pass runs: it resumes
                fixed = evaluate_fixed(model, test_q, points, n_boot, bseed, progress, save=(rules_dir, cfg, fixed_meta))
                records = evaluate_text(model, test_q, progress=progress)
                text = {"family": "heuristics", "name": TEXT_RAG, "budget": None, "memory": "text", "overrides": None,
                        **point_summary(records, n_boot, bseed), "records": records}
                got = evaluate.save_result(folder / f"fixed-{split}.json", cfg, fixed_meta, {"fixed": fixed, "text": text})
                shutil.rmtree(rules_dir, ignore_errors=True)  # all in fixed-<split>.json now
            # summaries from the saved records, not the saved summaries: a file saved before the memory bootstrap gets it
            fixed = [{**p, **point_summary(p["records"], n_boot, bseed)} for p in got["fixed"]]
            text = {**got["text"], **point_summary(got["text"]["records"], n_boot, bseed)}
            seconds["fixed rules and text RAG"] = round(time.perf_counter() - t0, 1)
            log(f"{setting}: {len(fixed)} fixed rules and text RAG on {len(test_q)} {split} questions "
                f"({seconds['fixed rules and text RAG']:.0f} s; 0 = reused)")
            rules = envelope_rules(fixed)
            probe = None
            # the oracle-feature policy and the probe need the gold evidence (mini knows it; most real loaders do not)
            with_evidence = any(getattr(q, "evidence", None) for q in test_q) and \
                any(getattr(q, "evidence", None) for q in train_q)
            if not with_evidence and (e.frontier_probe or e.frontier_oracle_prices):
                log(f"{setting}: its questions carry no gold evidence: no oracle-feature points and no relevance probe")
            if e.frontier_probe and with_evidence:
                t0 = time.perf_counter()
                probe_meta = {**meta, "probe": list(PROBE_FEATURES), "bootstrap": n_boot}
                got = evaluate.existing(folder / f"probe-{split}.json", cfg, probe_meta)
                if got is None:
                    data = [probe_data(model, qs) for qs in (train_q, list(dataset.split("val")) or train_q, test_q)]
                    got = evaluate.save_result(folder / f"probe-{split}.json", cfg, probe_meta,
                                 {"probe": relevance_probe(*data, n_boot=n_boot, seed=bseed)})
                probe = got["probe"]
                seconds["relevance probe"] = round(time.perf_counter() - t0, 1)
                log(f"{setting}: relevance probe ({seconds['relevance probe']:.0f} s; 0 = reused): test AUC " +
                    ", ".join(f"{p['features']} {p['auc']:.2f}" for p in probe["probes"]))
            step0 = {}  # the untrained policy of each seed, greedy on `split` (one per seed: every price starts there)
            for seed in e.frontier_seeds:
                # the very policy each learned point of this seed starts from: the same inputs, the same initialisation
                step0_meta = {**meta, "step0_seed": seed, **({"sees_length": True} if e.frontier_sees_length else {})}
                got = evaluate.existing(folder / f"step0-seed{seed}-{split}.json", cfg, step0_meta)
                if got is None:
                    kind = cfg.budget.policy if cfg.budget.policy in LEARNED else "transformer"
                    untrained = fresh_policy(model, derive(cfg, "the step-0 control", budget={
                        "policy": kind, "sees_length": e.frontier_sees_length}), seed)
                    with model.using(policy=untrained):
                        got = evaluate.save_result(folder / f"step0-seed{seed}-{split}.json", cfg, step0_meta,
                                                   {"records": evaluate_point(model, test_q, seed=bseed),
                                                    "diagnostics": diagnostics(model, test_q)})
                step0[seed] = {"seed": seed, "records": got["records"], **point_summary(got["records"], n_boot, bseed),
                               "diagnostics": got["diagnostics"]}
            oracle = []
            oracle_prices = e.frontier_oracle_prices if with_evidence else []
            todo = [(p, "learned") for p in e.frontier_prices] + [(p, "dense") for p in e.frontier_dense_prices] + \
                [(p, "oracle") for p in oracle_prices]
            for price, point_kind in todo:
                is_oracle, reward = point_kind == "oracle", "gold_logprob" if point_kind == "dense" else "task"
                kind = {"learned": "learned point", "dense": "dense-reward point", "oracle": "oracle-feature point"}[
                    point_kind]
                runs = []
                for seed in e.frontier_seeds:
                    where = learned_folder(run_dir, setting, price, seed, kind=point_kind)
                    point_meta = {**meta, "token_price": float(price), "seed": seed, "steps": e.frontier_steps,
                                  "questions_per_step": e.frontier_questions_per_step, "policy_lr": e.frontier_policy_lr}
                    if is_oracle:
                        point_meta["sees_evidence"] = True
                    if e.frontier_train_split != "train":
                        point_meta["train_split"] = e.frontier_train_split
                    point_meta.update(later_settings(sees_length=e.frontier_sees_length, reward=reward,
                                                     clip_eps=e.frontier_clip_eps or cfg.grpo.clip_eps,
                                                     group_size=e.frontier_group_size or cfg.grpo.group_size))
                    t0 = time.perf_counter()
                    got = evaluate.existing(where / f"{split}.json", cfg, point_meta)
                    reused = got is not None
                    if got is None:
                        with model.using():  # the point's own policy and config, for its training and evaluation only
                            model.load(checkpoint, parts=("lora", "projector"))  # the reader every point shares
                            train_learned_point(model, policy_q, [], where, price, seed, e.frontier_steps,
                                                e.frontier_questions_per_step, e.frontier_policy_lr, setting=setting,
                                                progress=progress, sees_evidence=is_oracle,
                                                sees_length=e.frontier_sees_length, reward=reward,
                                                clip_eps=e.frontier_clip_eps, group_size=e.frontier_group_size)
                            records = evaluate_point(model, test_q, seed=bseed, progress=progress)
                            got = evaluate.save_result(where / f"{split}.json", cfg, point_meta,
                                                       {"records": records, "diagnostics": diagnostics(model, test_q)})
                    took = round(time.perf_counter() - t0, 1)
                    seconds[f"{'' if point_kind == 'learned' else point_kind + ' '}price {float(price):g}, seed {seed}"] = took
                    summary = training_summary(where)
                    runs.append({"seed": seed, "records": got["records"], "diagnostics": got["diagnostics"],
                                 "training": summary, **({} if is_oracle else {"step0": step0[seed]})})
                    training.append({"token_price": float(price), "oracle": is_oracle, "reward": reward, "seed": seed,
                                     "reused": reused,
                                     "seconds": took, **summary})
                    log(f"{setting}: {kind} price {float(price):g} seed {seed}: "
                        f"{'reused' if reused else 'trained and evaluated'} ({took:.0f} s)")
                point = learned_point(price, runs, rules, n_boot, bseed, cfg.retrieval.top_z * cfg.budget.b_max)
                if reward != "task":
                    point["reward"] = reward
                (oracle if is_oracle else learned).append(point)
            with_holm(learned)  # "a learned budget beats every fixed rule" is tested at every price and reward at once
            with_holm(oracle)
            uniform = [p for p in fixed if p["family"] == "uniform"]
            heuristics = [p for p in fixed if p["family"] == "heuristics"] + [text]
            out = write_pareto(path or pareto_path(run_dir, setting, [setting]), setting, split, len(test_q), uniform,
                               heuristics, learned, oracle, probe)
        finally:
            model.load(checkpoint)  # the checkpoint's own policy (and reader) again
    return {"path": out, "pareto": json.loads(out.read_text()), "fixed": fixed, "text": text, "learned": learned,
            "oracle": oracle, "probe": probe, "training": training, "envelope": [p["name"] for p in upper_envelope(rules)], "seconds": seconds}


# ---- reading budget_pareto.json (05_frontier, 07) -------------------------------------------------------------------
