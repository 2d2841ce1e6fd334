"""The relevance probe: can a budget policy's inputs tell the gold evidence chunks from the other retrieved ones?

When a learned budget policy does not give evidence more soft tokens, this separates "the signal is not in its
inputs" from "GRPO did not find it": logistic regressions on each feature set of the policy's inputs (query state,
keys, retrieval scores, ranks; `PROBE_FEATURES`), fitted on training questions' retrieved chunks, L2 chosen on
validation, AUC on test with a bootstrap interval. 05_frontier runs it beside the budget frontier (`eval.frontier_probe`).

    data = [probe_data(model, qs) for qs in (train_q, val_q, test_q)]
    probe = relevance_probe(*data)          # {"probes": [{"features", "auc", "ci", ...}], ...}
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ..method.rollout import passes_mode

# the probe's feature sets, each a function of (LN(q) [n, H], LN(k) [n, H], s [n], rank one-hot [n, Z])
PROBE_FEATURES = {
    "score": lambda q, k, s, r: s[:, None],
    "rank": lambda q, k, s, r: r,
    "score + rank": lambda q, k, s, r: torch.cat([s[:, None], r], 1),
    "key": lambda q, k, s, r: k,
    "query x key": lambda q, k, s, r: torch.cat([q * k, (q * k).sum(1, keepdim=True)], 1),
    "all policy inputs": lambda q, k, s, r: torch.cat([q, k, q * k, s[:, None], r], 1),
}


def probe_data(model, questions, batch_size: int | None = None) -> dict:
    """The policy's inputs for every retrieved chunk of `questions` (greedy retrieval, as at evaluation):
    {"q", "k" (layer-normalised, [n, H]), "s" [n], "rank" (one-hot [n, Z]), "y" (1 = gold evidence) [n],
    "question" (index of its question) [n]}."""
    questions = list(questions)
    if not questions:
        raise ValueError("no questions: the relevance probe needs at least one")
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
