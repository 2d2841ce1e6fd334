"""The budget frontier's fixed rules, and how one budget allocation is answered on one checkpoint.

`fixed_points` lists the rules (no memory, uniform, top-k whole, top-1 whole + uniform rest, thresholds,
score-proportional, per-rank profiles chosen on validation by `search_profiles`, random, and the oracle reference);
`evaluate_point` answers questions with the model's budget policy swapped for one of them (or its own), and
`soft_tokens` counts a record's memory tokens M = sum_j min(b_j, L_j), the frontier's x axis. frontier.py builds
the frontier from these.
"""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np
import torch

from ..core import evaluate
from ..method.budget import FIXED_RULES, BudgetPolicy
from .pareto import ORACLE_RULE, upper_hull

TOP_K_WHOLE = (1, 2)          # the top-k-whole rules of the frontier


# ---- the fixed rules --------------------------------------------------------------------------------------------
def fixed_points(cfg, profiles: list[list[int]] = ()) -> list[dict]:
    """The fixed rules, each {"family" (uniform | heuristics), "name", "budget", "memory", "overrides" (budget keys
    of its BudgetPolicy; None = no policy)}: no memory (budget 0, memory "none", the same layout as every chunk
    dropped), uniform b in eval.frontier_uniform (0 < b <= B_max), top-1 and top-2 whole, "top-1 whole + uniform b"
    for b in eval.frontier_top1_rest, thresholds eval.frontier_thresholds, score-proportional budgets for each total
    in eval.frontier_softmax_totals, the per-rank `profiles` (chosen on validation: `search_profiles`), random, and
    the oracle reference (the gold evidence chunks whole; off the envelope, like random)."""
    b_max, top_z, e = cfg.budget.b_max, cfg.retrieval.top_z, cfg.eval
    points = [{"family": "uniform", "name": "no memory", "budget": 0, "memory": "none", "overrides": None}]
    points += [{"family": "uniform", "name": f"uniform {b}", "budget": b, "memory": "latent",
                "overrides": {"policy": "uniform", "uniform_budget": b}}
               for b in sorted(set(e.frontier_uniform)) if 0 < b <= b_max]
    heuristic = lambda name, **o: {"family": "heuristics", "name": name, "budget": None,  # noqa: E731
                                   "memory": "latent", "overrides": o}
    points += [heuristic(f"top-{k} whole", policy="top_k_whole", keep_top=k) for k in TOP_K_WHOLE if k <= top_z]
    points += [heuristic(f"top-1 whole + uniform {b}", policy="rank_profile", rank_budgets=[b_max, b])
               for b in sorted(set(e.frontier_top1_rest)) if 0 < b < b_max]
    points += [heuristic(f"threshold {t:g}", policy="threshold", score_threshold=float(t))
               for t in sorted(set(e.frontier_thresholds))]
    points += [heuristic(f"score softmax {n}", policy="score_softmax", softmax_total=n)
               for n in sorted(set(e.frontier_softmax_totals)) if n > 0]
    points += [heuristic(f"profile {list(p)}", policy="rank_profile", rank_budgets=list(p)) for p in profiles]
    return points + [heuristic("random", policy="random"), heuristic(ORACLE_RULE, policy="evidence_whole")]


def candidate_profiles(levels: list[int], top_z: int, b_max: int) -> list[list[int]]:
    """Every non-increasing budget per rank (rank 1 first) from `levels` (<= B_max), all-zero left out (no memory)."""
    levels = sorted({x for x in levels if 0 <= x <= b_max}, reverse=True)
    out: list[list[int]] = []

    def grow(prefix):
        if len(prefix) == top_z:
            if any(prefix):
                out.append(list(prefix))
            return
        for x in levels:
            if not prefix or x <= prefix[-1]:
                grow(prefix + [x])

    grow([])
    return out


def search_profiles(model, val_q, levels: list[int], n_boot: int = 200, seed: int = 0,
                    progress: bool = False) -> dict:
    """The best per-rank profiles, chosen on validation (never on test): every `candidate_profiles` answered on
    `val_q`, and the profiles on the upper concave hull of (memory tokens, accuracy) of those points and no memory.
    Returns {"profiles": [[budget per rank], ...] (the hull's, by memory tokens), "points": [{name, accuracy,
    memory_tokens}] (every candidate)}."""
    val_q = question_list(val_q)
    if any(getattr(q, "split", "val") == "test" for q in val_q):
        raise ValueError("per-rank profiles are chosen on the training or validation split, never on test")
    cfg = model.cfg
    points = [{"name": "no memory", "profile": None, "overrides": None, "memory": "none"}]
    points += [{"name": f"profile {p}", "profile": p, "overrides": {"policy": "rank_profile", "rank_budgets": p},
                "memory": "latent"}
               for p in candidate_profiles(levels, cfg.retrieval.top_z, cfg.budget.b_max)]
    for p in points:
        records = evaluate_point(model, val_q, p["overrides"], p["memory"], seed=seed, progress=progress)
        p.update(point_summary(records, n_boot, seed))
    hull = {h["name"] for h in upper_hull(points)}
    chosen = sorted((p for p in points if p["name"] in hull and p["profile"]), key=lambda p: p["memory_tokens"])
    return {"profiles": [p["profile"] for p in chosen],
            "points": [{k: p[k] for k in ("name", "accuracy", "memory_tokens")} for p in points]}


def soft_tokens(record: dict, memory: str = "latent") -> int:
    """M of one answered question: tokens["memory"] less one separator per injected chunk (b_j > 0; every chunk
    has >= 1 cached state). 0 without memory."""
    if memory == "none":
        return 0
    if memory not in ("latent", "text_tail"):
        raise ValueError(f"memory = {memory!r}: the frontier counts soft tokens (latent, text_tail or none)")
    injected = sum(1 for r, b in zip(record["rows"], record["budgets"]) if r >= 0 and b > 0)
    return int(record["tokens"]["memory"]) - injected


def question_list(questions) -> list:
    questions = list(questions)
    if not questions:
        raise ValueError("no questions: the frontier needs at least one")
    return questions


def evaluate_point(model, questions, overrides: dict | None = None, memory: str = "latent",
                   batch_size: int | None = None, seed: int = 0, progress: bool = False) -> list[dict]:
    """Greedy records (evaluate.answer_questions) of `model` with its budget policy swapped for a fixed rule
    BudgetPolicy(dataclasses.replace(cfg.budget, **overrides)), or its own policy when `overrides` is None; each
    record gains "memory_tokens" (`soft_tokens`). The model's policy and memory mode are restored afterwards;
    the random rule draws from torch's RNG seeded with `seed` (restored too)."""
    questions = question_list(questions)
    if memory not in ("latent", "text_tail", "none"):
        raise ValueError(f"memory = {memory!r}; choose latent, text_tail (the last b_j text tokens) or none")
    policy = None
    if overrides is not None:
        rule = overrides.get("policy")
        if rule not in FIXED_RULES:
            raise ValueError(f"budget rule {rule!r} is not a fixed rule; choose one of {', '.join(FIXED_RULES)}")
        try:
            budget = dataclasses.replace(model.cfg.budget, **overrides)
        except TypeError as e:
            raise ValueError(f"bad budget overrides {overrides}: {e}") from None
        policy = BudgetPolicy(model.bank.hidden_size, budget, model.cfg.retrieval.top_z).to(model.device)
    cuda = [model.device] if model.device.type == "cuda" else []
    with model.using(memory=memory, policy=policy), torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        records = evaluate.answer_questions(model.answer, questions, batch_size or model.cfg.eval.batch_size,
                                            bank=model.bank, device=model.device, progress=progress)
    for r in records:
        r["memory_tokens"] = soft_tokens(r, memory)
    return records


def point_summary(records: list[dict], n_boot: int = 1000, seed: int = 0) -> dict:
    """{"n", "accuracy", "ci": [low, high] (evaluate.summarize's 95% bootstrap over memories), "memory_tokens":
    mean M}."""
    s = evaluate.summarize(records, n_boot, seed)
    return {"n": s["n"], "accuracy": s["accuracy"], "ci": [s["ci_low"], s["ci_high"]],
            "memory_tokens": float(np.mean([r["memory_tokens"] for r in records]))}


def evaluate_fixed(model, questions, points: list[dict] | None = None, n_boot: int | None = None,
                   seed: int | None = None, progress: bool = False,
                   save: tuple[Path, object, dict] | None = None) -> list[dict]:
    """Every fixed point (default `fixed_points(model.cfg)`) evaluated: the point with its summary and records.
    `save` = (folder, cfg, meta) keeps each rule's records in folder/<rule>.json as it finishes (evaluate.cached:
    an interrupted pass resumes at the first rule not saved; a file of other settings is refused)."""
    cfg = model.cfg
    n_boot = cfg.eval.bootstrap if n_boot is None else n_boot
    seed = cfg.runtime.seed if seed is None else seed
    out = []
    for p in fixed_points(cfg) if points is None else points:
        def compute(p=p):
            return {"records": evaluate_point(model, questions, p["overrides"], p["memory"], seed=seed,
                                              progress=progress)}
        if save is None:
            records = compute()["records"]
        else:
            folder, run_cfg, meta = save
            rule = {k: p[k] for k in ("name", "memory", "overrides")}
            records = evaluate.cached(Path(folder) / f"{rule_slug(p['name'])}.json", run_cfg,
                                      {**meta, "rule": rule}, compute)["records"]
        out.append({**p, **point_summary(records, n_boot, seed), "records": records})
    return out


def rule_slug(name: str) -> str:
    """A file name for a rule's name ("top-1 whole + uniform 8" -> "top-1-whole-uniform-8")."""
    return re.sub(r"[^a-z0-9.]+", "-", name.lower()).strip("-")
