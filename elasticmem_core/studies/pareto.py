"""The budget frontier's results file, metrics/budget_pareto.json: the fixed rules' upper envelope, writing the file
(`write_pareto`) and reading it back as a table (`pareto_table`) or a figure (`plot_pareto`); frontier.py measures
the points, 05_frontier and 07 read them.

The upper envelope of the fixed rules is E(m) = max {acc(p) : p fixed, M(p) <= m} (M = memory tokens per question), a
staircase; their upper concave hull H(m) >= E(m) also counts the mixes of two rules, which reach every token count
between them (`upper_hull`, `hull_at`). Random budgets and text RAG (its memory in text tokens) are drawn but never
on either.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..core import evaluate, stats
from ..core.experiment import write_json

UNIFORM_KEYS = ("budget", "accuracy", "ci", "memory_tokens")
HEURISTIC_KEYS = ("name", "accuracy", "ci", "memory_tokens")
LEARNED_KEYS = ("token_price", "accuracy", "ci", "memory_tokens", "entropy", "entropy_uniform", "evidence_budget",
                "other_budget", "drop_rate", "seeds")
LEARNED_OPTIONAL = ("vs_envelope", "vs_hull", "per_rank", "distinct_budget_vectors", "step0", "vs_step0", "training",
                    "reward")
# the same checkpoint reading its retrieved chunks as text: a heuristics entry whose memory tokens are TEXT tokens
TEXT_RAG = "text RAG, same reader (memory tokens = text tokens)"
# entries that are not budget rules on the soft-token axis: never on the fixed rules' envelope
ORACLE_RULE = "evidence whole (oracle reference)"  # reads the gold evidence: a reference, never a competitor
NOT_ON_ENVELOPE = ("random", TEXT_RAG, ORACLE_RULE)


def upper_envelope(points: list[dict]) -> list[dict]:
    """The fixed points no other dominates, by memory tokens: each more accurate than every cheaper one, so that
    accuracy increases along it (ties in M: the more accurate)."""
    out, best = [], -math.inf
    for p in sorted(points, key=lambda p: (p["memory_tokens"], -p["accuracy"])):
        if p["accuracy"] > best:
            out.append(p)
            best = p["accuracy"]
    return out


def upper_hull(points: list[dict]) -> list[dict]:
    """The corners of the fixed points' upper concave hull over (memory tokens, accuracy), cheapest first. A mix of
    two fixed rules (each question answered by rule i with probability w, else by rule j) spends w m_i + (1 - w) m_j
    memory tokens on average with expected accuracy w a_i + (1 - w) a_j, so every point of the hull's segments is a
    fixed rule too: the comparator without the staircase's gaps."""
    hull: list[dict] = []
    for p in upper_envelope(points):   # increasing in tokens and in accuracy
        while len(hull) >= 2:
            (m0, a0), (m1, a1) = ((q["memory_tokens"], q["accuracy"]) for q in hull[-2:])
            # drop the middle corner when it lies on or below the chord from hull[-2] to p
            if (a1 - a0) * (p["memory_tokens"] - m0) <= (p["accuracy"] - a0) * (m1 - m0):
                hull.pop()
            else:
                break
        hull.append(p)
    return hull


def hull_at(points: list[dict], memory_tokens: float) -> tuple[dict, dict, float] | None:
    """The mix of two hull corners (i, j, w: rule i with probability w, else rule j) that spends `memory_tokens` on
    average; past the last corner that corner alone (w = 1); None below the cheapest fixed point."""
    hull = upper_hull(points)
    if not hull or memory_tokens < hull[0]["memory_tokens"] - 1e-9:
        return None
    for lo, hi in zip(hull, hull[1:]):
        if memory_tokens <= hi["memory_tokens"] + 1e-9:
            span = hi["memory_tokens"] - lo["memory_tokens"]
            w = min(1.0, max(0.0, (hi["memory_tokens"] - memory_tokens) / span)) if span > 0 else 0.0
            return lo, hi, w
    return hull[-1], hull[-1], 1.0


def envelope_at(points: list[dict], memory_tokens: float) -> dict | None:
    """The point attaining E(m) = max {acc(p) : M(p) <= m} (the cheapest among ties); None if none is that cheap."""
    within = [p for p in upper_envelope(points) if p["memory_tokens"] <= memory_tokens + 1e-9]
    return within[-1] if within else None


def envelope_rules(points: list[dict]) -> list[dict]:
    """The fixed rules a learned point is compared with: no memory, uniform budgets, top-k whole, thresholds. Not
    random budgets (one noisy draw, not a rule anyone deploys) and not text RAG (its memory is text tokens)."""
    return [p for p in points if p.get("name") not in NOT_ON_ENVELOPE]


def vs_step0(seed_records: dict, step0_records: dict, token_price: float, full_memory: float, n_boot: int = 1000,
             seed: int = 0) -> dict:
    """What policy training added, paired on the same test questions: each seed's trained policy against its own
    untrained (step-0) policy, both greedy. The reward is the task reward at the point's price, per question
    correct - token_price x memory_tokens / full_memory (rewards.token_price's scale, full_memory = Z x B_max); its
    difference, interval and p resample seeds and memories (stats.paired_difference). The training log's running
    mean compares different questions at each step; this compares the same ones, so a rise shows above their spread."""
    seeds = [s for s in seed_records if s in step0_records]
    if not seeds:
        raise ValueError("vs_step0: no seed has both a trained and a step-0 evaluation")
    runs = [seed_records[s] for s in seeds] + [step0_records[s] for s in seeds]
    qids, x, clusters = evaluate.correctness(runs, "the step-0 comparison")
    tokens = np.array([[{r["qid"]: r for r in run}[q]["memory_tokens"] for q in qids] for run in runs], dtype=float)
    reward = x - token_price * tokens / max(1.0, full_memory)
    k = len(seeds)
    out = {"seeds": seeds, "n": len(qids), "ci_unit": evaluate.ci_unit(clusters)}
    for key, values in (("reward", reward), ("accuracy", x)):
        d = stats.paired_difference(values[:k], values[k:], clusters, n_boot, seed)
        out[key] = {"difference": d["difference"], "ci": d["ci"], "p": d["p"], "per_seed": d["per_seed"]}
    out["memory_tokens_difference"] = float(tokens[:k].mean() - tokens[k:].mean())
    return out


def _clean(x):
    """JSON-safe numbers: NaN -> None, numpy scalars -> float."""
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return None if math.isnan(x) else float(x)
    if isinstance(x, np.integer):
        return int(x)
    return x


def _entries(points: list[dict], keys: tuple[str, ...], kind: str, optional: tuple[str, ...] = ()) -> list[dict]:
    out = []
    for p in points:
        missing = [k for k in keys if k not in p]
        if missing:
            raise ValueError(f"budget_pareto {kind} entry {p.get('name', p.get('token_price'))!r} lacks "
                             f"{', '.join(missing)}")
        out.append({k: p[k] for k in keys + tuple(k for k in optional if k in p)})
    return out


def write_pareto(path: str | Path, setting: str, split: str, n: int, uniform: list[dict], heuristics: list[dict],
                 learned: list[dict], oracle: list[dict] | None = None, probe: dict | None = None) -> Path:
    """metrics/budget_pareto.json: {"setting", "split", "n", "uniform": [{budget, accuracy, ci, memory_tokens}],
    "heuristics": [{name, accuracy, ci, memory_tokens}], "learned": [{token_price, accuracy, ci, memory_tokens,
    entropy, entropy_uniform, evidence_budget, other_budget, drop_rate, seeds[, vs_envelope, vs_hull, per_rank,
    distinct_budget_vectors, step0, training (per seed: the policy-only run's curve and whether it moved)]}], "hull":
    [{name, memory_tokens, accuracy}] (the fixed rules' upper concave hull's corners)}, plus "oracle" (the
    oracle-feature policy's points, the learned points' keys) and "probe" (`relevance_probe`) when given; points may
    carry more (records), which are left out; NaN is written as null."""
    body = {"setting": setting, "split": split, "n": int(n),
            "uniform": _entries(uniform, UNIFORM_KEYS, "uniform"),
            "heuristics": _entries(heuristics, HEURISTIC_KEYS, "heuristics"),
            "learned": _entries(learned, LEARNED_KEYS, "learned", LEARNED_OPTIONAL),
            "hull": [{"name": p["name"], "memory_tokens": p["memory_tokens"], "accuracy": p["accuracy"]}
                     for p in upper_hull(envelope_rules(_fixed_entries({"uniform": uniform, "heuristics": heuristics})))]}
    if oracle:
        body["oracle"] = _entries(oracle, LEARNED_KEYS, "oracle", LEARNED_OPTIONAL)
    if probe:
        body["probe"] = probe
    return write_json(path, _clean(body))


def _fixed_entries(data: dict) -> list[dict]:
    """The file's uniform and heuristics entries, each named (uniform: "no memory" or "uniform <b>") with a family."""
    out = [{"family": "uniform", "name": "no memory" if e["budget"] == 0 else f"uniform {e['budget']}", **e}
           for e in data["uniform"]]
    return out + [{"family": "text" if e["name"] == TEXT_RAG else "heuristics", **e} for e in data["heuristics"]]


def point_label(family: str, point: dict) -> str:
    """How a learned entry is named in tables and figures: learned (the task reward), learned (dense reward) or
    oracle-feature."""
    if family == "oracle":
        return "oracle-feature (sees evidence)"
    return "learned" if point.get("reward", "task") == "task" else f"learned ({point['reward']} reward)"


def pareto_table(data: dict):
    """One row per point of a budget_pareto.json (a pandas DataFrame): family, name, memory tokens, accuracy and
    its 95% interval, whether it is on the fixed rules' envelope; learned points also their seed range, diagnostics
    and the paired difference against the envelope's point at their memory tokens, with its p (bootstrap over
    memories) and p_holm (Holm over the learned points; the oracle points apart), and against the hull's mix of two
    rules at their memory tokens (hull_*: the comparator without gaps, when the file has it), and the reward gained
    over their step-0 policies (reward_vs_step0, with the low end of its interval)."""
    import pandas as pd

    fixed = _fixed_entries(data)
    envelope = {p["name"] for p in upper_envelope(envelope_rules(fixed))}
    rows = [{"family": p["family"], "name": p["name"], "memory_tokens": p["memory_tokens"],
             "accuracy": p["accuracy"], "ci_low": p["ci"][0], "ci_high": p["ci"][1],
             "on_envelope": p["name"] in envelope} for p in fixed]
    for family, p in [("learned", p) for p in data["learned"]] + [("oracle", p) for p in data.get("oracle") or []]:
        acc = [s["accuracy"] for s in p["seeds"]]
        vs, hull = p.get("vs_envelope") or {}, p.get("vs_hull") or {}
        label = point_label(family, p)
        rows.append({"family": family, "name": f"{label}, price {p['token_price']:g}",
                     "memory_tokens": p["memory_tokens"], "accuracy": p["accuracy"], "ci_low": p["ci"][0],
                     "ci_high": p["ci"][1], "on_envelope": False, "seeds": len(acc), "seed_accuracy_min": min(acc),
                     "seed_accuracy_max": max(acc), "entropy": p["entropy"], "entropy_uniform": p["entropy_uniform"],
                     "evidence_budget": p["evidence_budget"], "other_budget": p["other_budget"],
                     "drop_rate": p["drop_rate"], "vs_envelope": vs.get("against"),
                     "diff": vs.get("difference", vs.get("diff")),  # "diff": files written before stats.py
                     "diff_ci_low": (vs.get("ci") or [None])[0], "diff_ci_high": (vs.get("ci") or [None, None])[1],
                     "p": vs.get("p"), "p_holm": vs.get("p_holm"),
                     "vs_hull": hull.get("against"), "hull_diff": hull.get("difference"),
                     "hull_ci_low": (hull.get("ci") or [None])[0], "hull_ci_high": (hull.get("ci") or [None, None])[1],
                     "hull_p_holm": hull.get("p_holm"),
                     # what training added: reward at its price minus the step-0 policy's, paired on test
                     "reward_vs_step0": (p.get("vs_step0") or {}).get("reward", {}).get("difference"),
                     "reward_vs_step0_ci_low": ((p.get("vs_step0") or {}).get("reward", {}).get("ci") or [None])[0]})
    return pd.DataFrame(rows)


def plot_pareto(data: dict, ax=None):
    """Accuracy (95% intervals) against memory tokens per question from a budget_pareto.json: uniform budgets
    (b = 0 is no memory), top-k whole and thresholds, random budgets, text RAG with the same reader (x = its text
    tokens), the fixed rules' upper envelope as a step line, and each learned point (mean over seeds, its interval,
    and its seeds' range in accuracy and in memory tokens)."""
    import matplotlib.pyplot as plt

    if ax is None:
        ax = plt.subplots(figsize=(8, 5))[1]
    fixed = _fixed_entries(data)

    def draw(points, fmt, label, **kw):
        if points:
            x = [p["memory_tokens"] for p in points]
            y = [p["accuracy"] for p in points]
            yerr = [[p["accuracy"] - (p["ci"][0] if p["ci"][0] is not None else p["accuracy"]) for p in points],
                    [(p["ci"][1] if p["ci"][1] is not None else p["accuracy"]) - p["accuracy"] for p in points]]
            ax.errorbar(x, y, yerr=yerr, fmt=fmt, capsize=3, label=label, **kw)

    uniform = sorted([p for p in fixed if p["family"] == "uniform"], key=lambda p: p["memory_tokens"])
    draw(uniform, "o-", "uniform b (b = 0: no memory)", color="C0")
    for p in uniform:
        ax.annotate(str(p["budget"]), (p["memory_tokens"], p["accuracy"]), xytext=(3, -10),
                    textcoords="offset points", fontsize=7, color="C0")
    rules = [p for p in fixed if p["family"] == "heuristics" and p["name"] not in NOT_ON_ENVELOPE]
    draw(rules, "s", "top-k whole, score threshold", color="C1")
    for p in rules:
        ax.annotate(p["name"], (p["memory_tokens"], p["accuracy"]), xytext=(4, 4), textcoords="offset points",
                    fontsize=7, color="C1")
    draw([p for p in fixed if p["name"] == "random"], "x", "random budgets (not on the envelope)", color="grey")
    draw([p for p in fixed if p["family"] == "text"], "D", "text RAG, same reader (x = TEXT tokens)", color="C2")
    env = upper_envelope(envelope_rules(fixed))
    trained = [("learned" if p.get("reward", "task") == "task" else "dense", p) for p in data["learned"]] + \
        [("oracle", p) for p in data.get("oracle") or []]
    right = max([p["memory_tokens"] for p in fixed] + [p["memory_tokens"] for _, p in trained] + [1.0])
    if env:
        ax.step([p["memory_tokens"] for p in env] + [right], [p["accuracy"] for p in env] + [env[-1]["accuracy"]],
                where="post", color="black", lw=1, ls="--", label="envelope of the fixed rules")
    hull = upper_hull(envelope_rules(fixed))
    if len(hull) > 1:  # mixes of two rules reach every point of these segments
        ax.plot([p["memory_tokens"] for p in hull], [p["accuracy"] for p in hull], color="black", lw=1.5,
                alpha=0.5, label="hull: mixes of two fixed rules")
    first = set()
    for family, p in trained:
        m, a = p["memory_tokens"], p["accuracy"]
        color, marker = {"learned": ("C3", "*"), "dense": ("C5", "v"), "oracle": ("C4", "P")}[family]
        label = None if family in first else {"learned": "learned policy (mean over seeds)",
                                              "dense": "learned policy, dense reward (gold log-probability)",
                                              "oracle": "oracle-feature policy (sees the evidence flag)"}[family]
        draw([p], marker, label, color=color, ms=12 if family == "learned" else 9)
        xs, ys = [s["memory_tokens"] for s in p["seeds"]], [s["accuracy"] for s in p["seeds"]]
        ax.plot([min(xs), max(xs)], [a, a], color=color, lw=4, alpha=0.35,
                label="seed range" if not first else None)
        first.add(family)
        ax.plot([m, m], [min(ys), max(ys)], color=color, lw=4, alpha=0.35)
        ax.plot(xs, ys, ".", color=color, alpha=0.6)
        ax.annotate(f"{'oracle ' if family == 'oracle' else ''}λ = {p['token_price']:g}", (m, a), xytext=(6, 4),
                    textcoords="offset points", fontsize=8, color=color)
    ax.set(xlabel="memory tokens per question (soft tokens; text RAG: text tokens)", ylabel="accuracy",
           title=f"{data['setting']}, {data['split']} (n = {data['n']}): the budget frontier")
    ax.legend(fontsize=7, loc="best")
    return ax


def plot_training(data: dict, key: str = "reward_mean", axes=None):
    """Each learned (and oracle-feature) point's training curve from a budget_pareto.json: per seed, the running
    mean of `key` over a quarter of the steps with its 95% interval; one panel per point."""
    import matplotlib.pyplot as plt

    points = [("learned", p) for p in data["learned"]] + [("oracle", p) for p in data.get("oracle") or []]
    points = [(f, p) for f, p in points if p.get("training")]
    if not points:
        raise ValueError("this budget_pareto.json has no training curves (made before they were saved)")
    if axes is None:
        _, axes = plt.subplots(1, len(points), figsize=(3.2 * len(points), 3), squeeze=False)  # rewards differ in scale
        axes = axes[0]
    for ax, (family, p) in zip(axes, points):
        for t in p["training"]:
            curve = t.get(f"{key}_curve") or []
            steps = [c["step"] for c in curve]
            ax.plot(steps, [c["mean"] for c in curve], label=f"seed {t['seed']} ({t.get(f'{key}_moved', {}).get('moved', '?')})")
            ax.fill_between(steps, [c["ci"][0] for c in curve], [c["ci"][1] for c in curve], alpha=0.2)
        ax.set_title(f"{point_label(family, p)}, price {p['token_price']:g}", fontsize=9)
        ax.set_xlabel("policy-only GRPO step")
        ax.legend(fontsize=7)
    axes[0].set_ylabel(f"{key} (running mean, 95% interval)")
    return axes
