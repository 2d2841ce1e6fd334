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
  chunk is gold evidence), the bound on what a policy can learn from its inputs;
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
    frontier.write_pareto(run.path("metrics", "budget_pareto.json"), setting, "test", len(test_q), uniform,
                          heuristics, [learned])

or all of it, resumable, as 05_ablations runs it (`run_frontier`; eval.frontier_* give the prices, seeds and steps):

    out = frontier.run_frontier(cfg, run.dir, setting, model, dataset, checkpoint)   # -> metrics/budget_pareto.json
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from . import evaluate, grpo, stats
from .budget import FIXED_RULES, LEARNED, BudgetPolicy
from .checks import validate
from .config import derive
from .experiment import write_json
from .rollout import passes_mode

TOP_K_WHOLE = (1, 2)          # the top-k-whole rules of the frontier
POINT_FILE = "frontier_point.json"
UNIFORM_KEYS = ("budget", "accuracy", "ci", "memory_tokens")
HEURISTIC_KEYS = ("name", "accuracy", "ci", "memory_tokens")
LEARNED_KEYS = ("token_price", "accuracy", "ci", "memory_tokens", "entropy", "entropy_uniform", "evidence_budget",
                "other_budget", "drop_rate", "seeds")
# the probe's feature sets, each a function of (LN(q) [n, H], LN(k) [n, H], s [n], rank one-hot [n, Z])
PROBE_FEATURES = {
    "score": lambda q, k, s, r: s[:, None],
    "rank": lambda q, k, s, r: r,
    "score + rank": lambda q, k, s, r: torch.cat([s[:, None], r], 1),
    "key": lambda q, k, s, r: k,
    "query x key": lambda q, k, s, r: torch.cat([q * k, (q * k).sum(1, keepdim=True)], 1),
    "all policy inputs": lambda q, k, s, r: torch.cat([q, k, q * k, s[:, None], r], 1),
}
# the same checkpoint reading its retrieved chunks as text: a heuristics entry whose memory tokens are TEXT tokens
TEXT_RAG = "text RAG, same reader (memory tokens = text tokens)"
# entries that are not budget rules on the soft-token axis: never on the fixed rules' envelope
NOT_ON_ENVELOPE = ("random", TEXT_RAG)


# ---- the fixed rules --------------------------------------------------------------------------------------------
def fixed_points(cfg) -> list[dict]:
    """The fixed rules a user compares first, each {"family" (uniform | heuristics), "name", "budget", "memory",
    "overrides" (budget keys of its BudgetPolicy; None = no policy)}: no memory (budget 0, memory "none", the same
    layout as every chunk dropped), uniform b in eval.frontier_uniform (0 < b <= B_max), top-1 and top-2 whole,
    thresholds eval.frontier_thresholds, random."""
    b_max, top_z = cfg.budget.b_max, cfg.retrieval.top_z
    points = [{"family": "uniform", "name": "no memory", "budget": 0, "memory": "none", "overrides": None}]
    points += [{"family": "uniform", "name": f"uniform {b}", "budget": b, "memory": "latent",
                "overrides": {"policy": "uniform", "uniform_budget": b}}
               for b in sorted(set(cfg.eval.frontier_uniform)) if 0 < b <= b_max]
    heuristic = lambda name, **o: {"family": "heuristics", "name": name, "budget": None,  # noqa: E731
                                   "memory": "latent", "overrides": o}
    points += [heuristic(f"top-{k} whole", policy="top_k_whole", keep_top=k) for k in TOP_K_WHOLE if k <= top_z]
    points += [heuristic(f"threshold {t:g}", policy="threshold", score_threshold=float(t))
               for t in sorted(set(cfg.eval.frontier_thresholds))]
    return points + [heuristic("random", policy="random")]


def soft_tokens(record: dict, memory: str = "latent") -> int:
    """M of one answered question: tokens["memory"] less one separator per injected chunk (b_j > 0; every chunk
    has >= 1 cached state). 0 without memory."""
    if memory == "none":
        return 0
    if memory not in ("latent", "text_tail"):
        raise ValueError(f"memory = {memory!r}: the frontier counts soft tokens (latent, text_tail or none)")
    injected = sum(1 for r, b in zip(record["rows"], record["budgets"]) if r >= 0 and b > 0)
    return int(record["tokens"]["memory"]) - injected


def _questions(questions) -> list:
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
    questions = _questions(questions)
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
                   seed: int | None = None, progress: bool = False) -> list[dict]:
    """Every fixed point (default `fixed_points(model.cfg)`) evaluated: the point with its summary and records."""
    cfg = model.cfg
    n_boot = cfg.eval.bootstrap if n_boot is None else n_boot
    seed = cfg.runtime.seed if seed is None else seed
    out = []
    for p in fixed_points(cfg) if points is None else points:
        records = evaluate_point(model, questions, p["overrides"], p["memory"], seed=seed, progress=progress)
        out.append({**p, **point_summary(records, n_boot, seed), "records": records})
    return out


# ---- a learned point ------------------------------------------------------------------------------------------
def train_learned_point(model, train_q, val_q, folder: str | Path, token_price: float, seed: int, steps: int,
                        questions_per_step: int | None = None, policy_lr: float | None = None,
                        advantage_norm: str | None = None, select: str = "last", setting: str | None = None,
                        progress: bool = False, sees_evidence: bool = False):
    """Train a fresh budget policy (seeded by `seed`) on the model's current reasoner and projector: grpo.Trainer
    with grpo.policy_only, reward_terms {task: 1, token_price: lambda}, `steps` GRPO steps, no warm-up stages;
    `sees_evidence` trains the oracle-feature policy instead (budget.sees_evidence).

    advantage_norm defaults to "mean" when lambda > 0 (a std-normalised price collapses to the cheapest budget when
    the task rewards of a group tie: docs/rewards.md), else to the params' value. `select`: "last" keeps the policy
    after the last step (validation accuracy ignores the price), "best" loads best/ (the highest validation accuracy).
    The model keeps the trained policy; its cfg and its parameters' requires_grad are restored. `folder` holds one
    point (one price and seed): a finished run there is reused, one of another point is refused.
    Returns the trainer (train_log.jsonl: policy_entropy, evidence_budget, other_budget per step).
    """
    train_q = _questions(train_q)
    if token_price < 0:
        raise ValueError(f"token_price = {token_price}: a price must be >= 0")
    if steps < 1:
        raise ValueError(f"steps = {steps}: train at least one step")
    if select not in ("last", "best"):
        raise ValueError(f"select = {select!r}; choose last or best")
    if model.memory != "latent":
        raise ValueError(f"a learned budget needs latent memory (model.memory = {model.memory!r})")
    cfg = model.cfg
    qps = questions_per_step or cfg.grpo.questions_per_step
    kind = cfg.budget.policy if cfg.budget.policy in LEARNED else "transformer"
    source = f"frontier point (token_price {token_price}, seed {seed})"
    # the policy alone trains: every warm-up and the alignment stage are the reader's, already done
    train_cfg = derive(cfg, source, grpo={
        "policy_only": True, "reward_terms": {"task": 1.0, "token_price": float(token_price)},
        "advantage_norm": advantage_norm or ("mean" if token_price > 0 else cfg.grpo.advantage_norm),
        "policy_lr": cfg.grpo.policy_lr if policy_lr is None else policy_lr, "questions_per_step": qps,
        "max_steps": steps, "epochs": max(1, math.ceil(steps * qps / len(train_q))), "eval_every": steps,
        "reader_warmup_steps": 0, "sft_steps": 0, "retrieval_warmup_steps": 0},
        budget={"policy": kind, "sees_evidence": bool(sees_evidence)}, runtime={"seed": seed}, align={"steps": 0})
    validate(train_cfg, source)
    g = train_cfg.grpo
    folder = Path(folder)
    point = {"token_price": float(token_price), "seed": seed, "steps": steps, "policy": kind,
             "advantage_norm": g.advantage_norm, "policy_lr": g.policy_lr, "questions_per_step": qps}
    if sees_evidence:
        point["sees_evidence"] = True
    if (folder / POINT_FILE).is_file() and json.loads((folder / POINT_FILE).read_text()) != point:
        raise ValueError(f"{folder} holds another frontier point ({(folder / POINT_FILE).read_text().strip()}); "
                         f"give {point} its own folder")
    write_json(folder / POINT_FILE, point)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        policy = BudgetPolicy(model.bank.hidden_size, train_cfg.budget, cfg.retrieval.top_z).to(model.device)
    grads = [(p, p.requires_grad) for p in model.parameters()]
    model.cfg, model.policy = train_cfg, policy
    try:
        trainer = grpo.Trainer(model, train_q, list(val_q), folder, setting=setting)
        trainer.train(progress=progress, reader_warmup=False)
        if select == "best":
            model.load(folder / "best", parts=("policy",))
    finally:
        model.cfg = derive(cfg, source, budget={"policy": kind, "sees_evidence": bool(sees_evidence)})  # its policy's
        for p, flag in grads:
            p.requires_grad_(flag)
    return trainer


def diagnostics(model, questions, batch_size: int | None = None) -> dict:
    """What the model's budget policy does on `questions` (greedy plans, as at evaluation), over retrieved chunks:

    entropy          mean H(pi(. | chunk j)) in nats (0 for a fixed rule)
    entropy_uniform  ln(levels), levels = B_max - min_budget + 1: the entropy of a uniform choice
    evidence_budget  mean b_j of the question's evidence chunks (q.evidence), other_budget of the rest (NaN if none)
    drop_rate        share of chunks with b_j = 0
    """
    questions = _questions(questions)
    if model.memory != "latent":
        raise ValueError(f"budget diagnostics need latent memory (model.memory = {model.memory!r})")
    bs = batch_size or model.cfg.eval.batch_size
    entropy, evidence, other, budgets = [], [], [], []
    with passes_mode(model, False), torch.no_grad():
        for i in range(0, len(questions), bs):
            batch = questions[i:i + bs]
            plan = model.plan(batch, sample=False)
            _, ent = model.policy_logprob(plan)
            rows, mask = plan.retrieved.rows.tolist(), plan.retrieved.mask.tolist()
            for q, rs, bs_, es, ms in zip(batch, rows, plan.budgets.budgets.tolist(), ent.tolist(), mask):
                gold = set(getattr(q, "evidence", None) or ())
                for r, b, e, m in zip(rs, bs_, es, ms):
                    if m:
                        entropy.append(e)
                        budgets.append(b)
                        (evidence if model.bank.chunk_ids[r] in gold else other).append(b)
    mean = lambda xs: float(np.mean(xs)) if xs else float("nan")  # noqa: E731
    return {"entropy": mean(entropy), "entropy_uniform": math.log(model.policy.levels),
            "evidence_budget": mean(evidence), "other_budget": mean(other),
            "drop_rate": mean([float(b == 0) for b in budgets]), "chunks": len(budgets)}


# ---- can the policy's inputs tell evidence from the rest? --------------------------------------------------------
def probe_data(model, questions, batch_size: int | None = None) -> dict:
    """The policy's inputs for every retrieved chunk of `questions` (greedy retrieval, as at evaluation):
    {"q", "k" (layer-normalised, [n, H]), "s" [n], "rank" (one-hot [n, Z]), "y" (1 = gold evidence) [n],
    "question" (index of its question) [n]}."""
    questions = _questions(questions)
    bs = batch_size or model.cfg.eval.batch_size
    z = model.cfg.retrieval.top_z
    qs, ks, ss, ranks, ys, owner = [], [], [], [], [], []
    norm = lambda x: torch.nn.functional.layer_norm(x.float(), x.shape[-1:])  # noqa: E731  (what the policy does)
    # the query state is only computed for latent memory
    with model.using(memory="latent"), passes_mode(model, False), torch.no_grad():
        for i in range(0, len(questions), bs):
            batch = questions[i:i + bs]
            r = model.retriever(model.reasoner, batch, False, None, need_query=True)
            keys = model._keys(r.rows).cpu()
            for b, q in enumerate(batch):
                gold = set(getattr(q, "evidence", None) or ())
                for j in range(r.rows.shape[1]):
                    row = int(r.rows[b, j])
                    if row < 0:
                        continue
                    qs.append(norm(r.query[b].cpu()))
                    ks.append(norm(keys[b, j]))
                    ss.append(float(r.scores[b, j]))
                    ranks.append(torch.nn.functional.one_hot(torch.tensor(min(j, z - 1)), z).float())
                    ys.append(float(model.bank.chunk_ids[row] in gold))
                    owner.append(i + b)
    return {"q": torch.stack(qs), "k": torch.stack(ks), "s": torch.tensor(ss), "rank": torch.stack(ranks),
            "y": torch.tensor(ys), "question": np.array(owner)}


def auc(scores: np.ndarray, y: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney; ties count half); NaN without both classes."""
    pos, neg = scores[y > 0.5], scores[y <= 0.5]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).mean()
    ties = (pos[:, None] == neg[None, :]).mean()
    return float(greater + 0.5 * ties)


def _fit_logistic(x: torch.Tensor, y: torch.Tensor, l2: float, steps: int = 200) -> tuple[torch.Tensor, torch.Tensor]:
    """L2-regularised logistic regression by L-BFGS (features standardised by the caller): weights, bias."""
    w = torch.zeros(x.shape[1], requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(x @ w + b, y) + l2 * (w * w).sum()
        loss.backward()
        return loss
    opt.step(closure)
    return w.detach(), b.detach()


def relevance_probe(train: dict, val: dict, test: dict, l2_grid=(1e-4, 1e-3, 1e-2, 1e-1), n_boot: int = 1000,
                    seed: int = 0) -> dict:
    """Linear probes (logistic regression) of "is this retrieved chunk gold evidence?" from each PROBE_FEATURES set
    of the policy's inputs (`probe_data` of the training, validation and test questions): fitted on train, the L2
    weight chosen by validation AUC, reported on test: AUC with a 95% bootstrap interval over test questions, and
    top1 = how often the chunk the probe ranks first in a question is evidence (questions with evidence retrieved).
    The retrieval's own order gives "top1" of rank 1 ("rank" features). A probe near AUC 0.5 says the policy cannot
    see relevance in that input; a good probe with a flat policy says the GRPO signal, not the input, is short."""
    rng = np.random.default_rng(seed)
    ytr, yva, yte = train["y"], val["y"], test["y"].numpy()
    tq = test["question"]
    with_evidence = sorted({int(i) for i, y in zip(tq, yte) if y > 0.5})
    out = {"n_train_chunks": int(len(ytr)), "n_test_chunks": int(len(yte)),
           "evidence_rate_test": float(yte.mean()), "questions_with_evidence_retrieved": len(with_evidence),
           "probes": []}
    groups = {int(i): np.flatnonzero(tq == i) for i in np.unique(tq)}
    for name, feats in PROBE_FEATURES.items():
        f = [feats(d["q"], d["k"], d["s"], d["rank"]) for d in (train, val, test)]
        mu, sd = f[0].mean(0), f[0].std(0).clamp_min(1e-6)
        xtr, xva, xte = ((x - mu) / sd for x in f)
        best = None
        for l2 in l2_grid:
            w, b = _fit_logistic(xtr, ytr, l2)
            a = auc((xva @ w + b).numpy(), yva.numpy()) if len(yva) else float("nan")
            if best is None or (not math.isnan(a) and (math.isnan(best[0]) or a > best[0])):
                best = (a, l2, w, b)
        _, l2, w, b = best
        p = (xte @ w + b).numpy()
        qids = list(groups)
        boots = []
        for _ in range(n_boot):
            idx = np.concatenate([groups[qids[i]] for i in rng.integers(0, len(qids), len(qids))])
            boots.append(auc(p[idx], yte[idx]))
        boots = [x for x in boots if not math.isnan(x)]
        top1 = [float(yte[groups[i][np.argmax(p[groups[i]])]] > 0.5) for i in with_evidence]
        out["probes"].append({"features": name, "dims": int(xtr.shape[1]), "l2": l2, "val_auc": best[0],
                              "auc": auc(p, yte), "ci": [float(np.percentile(boots, 2.5)),
                                                         float(np.percentile(boots, 97.5))] if boots else None,
                              "top1": float(np.mean(top1)) if top1 else float("nan")})
    out["rank1_is_evidence"] = float(np.mean([yte[groups[i][0]] > 0.5 for i in with_evidence])) \
        if with_evidence else float("nan")
    return out


def probe_table(data: dict):
    """The probe of a budget_pareto.json as a DataFrame (features, dims, AUC [95% interval], top1); None without."""
    import pandas as pd

    probe = data.get("probe")
    if not probe:
        return None
    r3 = lambda x: None if x is None else round(x, 3)  # noqa: E731  (NaN is stored as null)
    return pd.DataFrame([{"features": p["features"], "dims": p["dims"], "test AUC": r3(p["auc"]),
                          "95% CI": f"[{p['ci'][0]:.3f}, {p['ci'][1]:.3f}]" if p["ci"] else "",
                          "top-1 is evidence": r3(p["top1"])} for p in probe["probes"]])


# ---- envelope and paired differences ----------------------------------------------------------------------------
def upper_envelope(points: list[dict]) -> list[dict]:
    """The fixed points no other dominates, by memory tokens: each more accurate than every cheaper one, so that
    accuracy increases along it (ties in M: the more accurate)."""
    out, best = [], -math.inf
    for p in sorted(points, key=lambda p: (p["memory_tokens"], -p["accuracy"])):
        if p["accuracy"] > best:
            out.append(p)
            best = p["accuracy"]
    return out


def envelope_at(points: list[dict], memory_tokens: float) -> dict | None:
    """The point attaining E(m) = max {acc(p) : M(p) <= m} (the cheapest among ties); None if none is that cheap."""
    within = [p for p in upper_envelope(points) if p["memory_tokens"] <= memory_tokens + 1e-9]
    return within[-1] if within else None


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


def with_holm(points: list[dict]) -> list[dict]:
    """The points' tests against the envelope as one family: "p_holm" added to each "vs_envelope" (in place)."""
    stats.with_holm([p["vs_envelope"] for p in points if p.get("vs_envelope")])
    return points


def learned_point(token_price: float, runs: list[dict], fixed: list[dict] | None = None, n_boot: int = 1000,
                  seed: int = 0) -> dict:
    """One learned point from its seeds' runs [{"seed", "records" (evaluate_point), "diagnostics"}]: accuracy and
    memory tokens = the means over seeds, ci = the bootstrap over seeds and memories (stats.bootstrap_mean),
    diagnostics averaged over seeds, "seeds" per seed; "vs_envelope" against `fixed` when given."""
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
    if fixed:
        vs = vs_envelope({r["seed"]: r["records"] for r in runs}, point["memory_tokens"], fixed, n_boot, seed)
        if vs is not None:
            point["vs_envelope"] = vs
    return point


# ---- the results file -----------------------------------------------------------------------------------------
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
    entropy, entropy_uniform, evidence_budget, other_budget, drop_rate, seeds[, vs_envelope]}]}, plus "oracle" (the
    oracle-feature policy's points, the learned points' keys) and "probe" (`relevance_probe`) when given; points may
    carry more (records), which are left out; NaN is written as null."""
    body = {"setting": setting, "split": split, "n": int(n),
            "uniform": _entries(uniform, UNIFORM_KEYS, "uniform"),
            "heuristics": _entries(heuristics, HEURISTIC_KEYS, "heuristics"),
            "learned": _entries(learned, LEARNED_KEYS, "learned", ("vs_envelope",))}
    if oracle:
        body["oracle"] = _entries(oracle, LEARNED_KEYS, "oracle", ("vs_envelope",))
    if probe:
        body["probe"] = probe
    return write_json(path, _clean(body))


# ---- the whole frontier of one checkpoint, resumable (05_ablations) -------------------------------------------
def evaluate_text(model, questions, batch_size: int | None = None, progress: bool = False) -> list[dict]:
    """Greedy records of the same checkpoint reading its retrieved chunks as TEXT (model.memory = "text": the same
    retrieval, every retrieved chunk whole, no budget policy): "text RAG with the same reader". Each record's
    "memory_tokens" = the text tokens of its retrieved chunks (separators not counted, as for soft tokens): another
    unit than a soft token, which is why this point is labelled and kept off the envelope."""
    questions = _questions(questions)
    with model.using(memory="text"):
        records = evaluate.answer_questions(model.answer, questions, batch_size or model.cfg.eval.batch_size,
                                            bank=model.bank, device=model.device, progress=progress)
    for r in records:
        r["memory_tokens"] = sum(len(model._chunk_ids(row)) for row in r["rows"] if row >= 0)
    return records


def envelope_rules(points: list[dict]) -> list[dict]:
    """The fixed rules a learned point is compared with: no memory, uniform budgets, top-k whole, thresholds. Not
    random budgets (one noisy draw, not a rule anyone deploys) and not text RAG (its memory is text tokens)."""
    return [p for p in points if p.get("name") not in NOT_ON_ENVELOPE]


def learned_folder(run_dir: str | Path, setting: str, token_price: float, seed: int, oracle: bool = False) -> Path:
    """Where one learned point trains: <run>/frontier/<setting>/price<lambda>/seed<seed> (oracle-price<lambda>/...
    for the oracle-feature policy)."""
    return Path(run_dir) / "frontier" / setting / f"{'oracle-' if oracle else ''}price{float(token_price):g}" / \
        f"seed{seed}"


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
    for key in ("policy_entropy", "evidence_budget", "other_budget", "mean_budget", "accuracy", "reward_token_price"):
        out[f"{key}_first"] = steps[0].get(key, float("nan"))
        out[f"{key}_last"] = steps[-1].get(key, float("nan"))
    return out


def run_frontier(cfg, run_dir: str | Path, setting: str, model, dataset, checkpoint: str | Path,
                 path: str | Path | None = None, split: str = "test", progress: bool = False,
                 log=print) -> dict:
    """The budget frontier of one trained checkpoint, written to `path` (default `pareto_path` for one setting):

    1. the checkpoint (LoRA, projector, policy) is loaded into `model` (an ElasticMem of `dataset`'s bank);
    2. every fixed rule (`fixed_points(cfg)`) and text RAG with the same reader (`evaluate_text`) on `split`
       (capped by eval.max_questions, as every result), saved in <run>/frontier/<setting>/fixed-<split>.json;
    3. the relevance probe (eval.frontier_probe; `relevance_probe` fitted on train, chosen on val, reported on
       `split`), saved in <run>/frontier/<setting>/probe-<split>.json;
    4. per price in eval.frontier_prices (and, with the oracle-feature policy, eval.frontier_oracle_prices) and seed
       in eval.frontier_seeds, a fresh policy trained by policy-only GRPO on the training split (`train_learned_point`: eval.frontier_steps steps of eval.frontier_questions_per_step
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
    from .baselines import checkpoint_id  # baselines does not import this module

    e = cfg.eval
    checkpoint = Path(checkpoint)
    test_q = list(dataset.split(split))
    test_q = _questions(test_q[:e.max_questions] if e.max_questions > 0 else test_q)
    train_q = _questions(dataset.split("train"))
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
            points = fixed_points(cfg)
            fixed_meta = {**meta, "points": [{k: p[k] for k in ("name", "memory", "overrides")} for p in points]}
            t0 = time.perf_counter()
            got = evaluate.existing(folder / f"fixed-{split}.json", cfg, fixed_meta)
            if got is None:
                fixed = evaluate_fixed(model, test_q, points, n_boot, bseed, progress)
                records = evaluate_text(model, test_q, progress=progress)
                text = {"family": "heuristics", "name": TEXT_RAG, "budget": None, "memory": "text", "overrides": None,
                        **point_summary(records, n_boot, bseed), "records": records}
                got = evaluate.save_result(folder / f"fixed-{split}.json", cfg, fixed_meta, {"fixed": fixed, "text": text})
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
            oracle = []
            oracle_prices = e.frontier_oracle_prices if with_evidence else []
            for price, is_oracle in [(p, False) for p in e.frontier_prices] + [(p, True) for p in oracle_prices]:
                kind = "oracle-feature point" if is_oracle else "learned point"
                runs = []
                for seed in e.frontier_seeds:
                    where = learned_folder(run_dir, setting, price, seed, is_oracle)
                    point_meta = {**meta, "token_price": float(price), "seed": seed, "steps": e.frontier_steps,
                                  "questions_per_step": e.frontier_questions_per_step, "policy_lr": e.frontier_policy_lr}
                    if is_oracle:
                        point_meta["sees_evidence"] = True
                    t0 = time.perf_counter()
                    got = evaluate.existing(where / f"{split}.json", cfg, point_meta)
                    reused = got is not None
                    if got is None:
                        with model.using():  # the point's own policy and config, for its training and evaluation only
                            model.load(checkpoint, parts=("lora", "projector"))  # the reader every point shares
                            train_learned_point(model, train_q, [], where, price, seed, e.frontier_steps,
                                                e.frontier_questions_per_step, e.frontier_policy_lr, setting=setting,
                                                progress=progress, sees_evidence=is_oracle)
                            records = evaluate_point(model, test_q, seed=bseed, progress=progress)
                            got = evaluate.save_result(where / f"{split}.json", cfg, point_meta,
                                                       {"records": records, "diagnostics": diagnostics(model, test_q)})
                    took = round(time.perf_counter() - t0, 1)
                    seconds[f"{'oracle ' if is_oracle else ''}price {float(price):g}, seed {seed}"] = took
                    runs.append({"seed": seed, "records": got["records"], "diagnostics": got["diagnostics"]})
                    training.append({"token_price": float(price), "oracle": is_oracle, "seed": seed, "reused": reused,
                                     "seconds": took, **training_summary(where)})
                    log(f"{setting}: {kind} price {float(price):g} seed {seed}: "
                        f"{'reused' if reused else 'trained and evaluated'} ({took:.0f} s)")
                (oracle if is_oracle else learned).append(learned_point(price, runs, rules, n_boot, bseed))
            with_holm(learned)  # "a learned budget beats every fixed rule" is tested at every price at once
            with_holm(oracle)
            uniform = [p for p in fixed if p["family"] == "uniform"]
            heuristics = [p for p in fixed if p["family"] == "heuristics"] + [text]
            out = write_pareto(path or pareto_path(run_dir, setting, [setting]), setting, split, len(test_q), uniform,
                               heuristics, learned, oracle, probe)
        finally:
            model.load(checkpoint)  # the checkpoint's own policy (and reader) again
    return {"path": out, "pareto": json.loads(out.read_text()), "fixed": fixed, "text": text, "learned": learned,
            "oracle": oracle, "probe": probe, "training": training, "envelope": [p["name"] for p in upper_envelope(rules)], "seconds": seconds}


# ---- reading budget_pareto.json (05 and 07) ----------------------------------------------------------------------
def _fixed_entries(data: dict) -> list[dict]:
    """The file's uniform and heuristics entries, each named (uniform: "no memory" or "uniform <b>") with a family."""
    out = [{"family": "uniform", "name": "no memory" if e["budget"] == 0 else f"uniform {e['budget']}", **e}
           for e in data["uniform"]]
    return out + [{"family": "text" if e["name"] == TEXT_RAG else "heuristics", **e} for e in data["heuristics"]]


def pareto_table(data: dict):
    """One row per point of a budget_pareto.json (a pandas DataFrame): family, name, memory tokens, accuracy and
    its 95% interval, whether it is on the fixed rules' envelope; learned points also their seed range, diagnostics
    and the paired difference against the envelope's point at their memory tokens, with its p (bootstrap over
    memories) and p_holm (Holm over the learned points; the oracle points apart)."""
    import pandas as pd

    fixed = _fixed_entries(data)
    envelope = {p["name"] for p in upper_envelope(envelope_rules(fixed))}
    rows = [{"family": p["family"], "name": p["name"], "memory_tokens": p["memory_tokens"],
             "accuracy": p["accuracy"], "ci_low": p["ci"][0], "ci_high": p["ci"][1],
             "on_envelope": p["name"] in envelope} for p in fixed]
    for family, p in [("learned", p) for p in data["learned"]] + [("oracle", p) for p in data.get("oracle") or []]:
        acc = [s["accuracy"] for s in p["seeds"]]
        vs = p.get("vs_envelope") or {}
        label = "learned" if family == "learned" else "oracle-feature (sees evidence)"
        rows.append({"family": family, "name": f"{label}, price {p['token_price']:g}",
                     "memory_tokens": p["memory_tokens"], "accuracy": p["accuracy"], "ci_low": p["ci"][0],
                     "ci_high": p["ci"][1], "on_envelope": False, "seeds": len(acc), "seed_accuracy_min": min(acc),
                     "seed_accuracy_max": max(acc), "entropy": p["entropy"], "entropy_uniform": p["entropy_uniform"],
                     "evidence_budget": p["evidence_budget"], "other_budget": p["other_budget"],
                     "drop_rate": p["drop_rate"], "vs_envelope": vs.get("against"),
                     "diff": vs.get("difference", vs.get("diff")),  # "diff": files written before stats.py
                     "diff_ci_low": (vs.get("ci") or [None])[0], "diff_ci_high": (vs.get("ci") or [None, None])[1],
                     "p": vs.get("p"), "p_holm": vs.get("p_holm")})
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
    trained = [("learned", p) for p in data["learned"]] + [("oracle", p) for p in data.get("oracle") or []]
    right = max([p["memory_tokens"] for p in fixed] + [p["memory_tokens"] for _, p in trained] + [1.0])
    if env:
        ax.step([p["memory_tokens"] for p in env] + [right], [p["accuracy"] for p in env] + [env[-1]["accuracy"]],
                where="post", color="black", lw=1, ls="--", label="envelope of the fixed rules")
    first = set()
    for family, p in trained:
        m, a = p["memory_tokens"], p["accuracy"]
        color, marker = ("C3", "*") if family == "learned" else ("C4", "P")
        label = None if family in first else ("learned policy (mean over seeds)" if family == "learned" else
                                              "oracle-feature policy (sees the evidence flag)")
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
