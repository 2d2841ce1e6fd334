"""Intervals and tests for every table: bootstrap over memories (and seeds), paired differences, Holm's adjustment.

Questions of one memory share its chunks, so they are not independent: the bootstrap resamples whole memories
(a cluster bootstrap), and, when a result has several training seeds, the seeds too (a two-level bootstrap: seeds
with replacement, then memories with replacement; each replicate is the mean over its seeds and its memories'
questions). With one question per memory and one seed it is the ordinary percentile bootstrap over questions.
"""
from __future__ import annotations

import math

import numpy as np


def _as_matrix(values) -> np.ndarray:
    """[seeds, questions] float matrix from a list of per-question values or a list of such lists (one per seed)."""
    try:
        x = np.asarray(values, dtype=float)
    except ValueError:  # numpy's own message ("inhomogeneous shape") does not say which
        raise ValueError("per-seed lists of different lengths: every seed must answer the same questions") from None
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2 or x.shape[1] == 0:
        raise ValueError(f"expected per-question values (one list, or one list per seed), got shape {x.shape}")
    return x


def _replicates(x: np.ndarray, clusters, n_boot: int, seed: int) -> tuple[np.ndarray, int]:
    """Bootstrap replicates of the mean of x [seeds, questions]: seeds with replacement (when several), then clusters
    with replacement; each replicate is the mean over its seeds and its clusters' questions. Returns (replicates,
    number of clusters)."""
    n_seeds, n = x.shape
    labels = list(range(n)) if clusters is None else list(clusters)
    if len(labels) != n:
        raise ValueError(f"{len(labels)} cluster labels for {n} questions")
    ids = {c: i for i, c in enumerate(dict.fromkeys(labels))}
    col = np.array([ids[c] for c in labels])
    m = len(ids)
    sums = np.zeros((n_seeds, m))
    np.add.at(sums.T, col, x.T)                                    # [seeds, clusters] per-cluster sums
    counts = np.bincount(col, minlength=m).astype(float)           # questions per cluster
    rng = np.random.default_rng(seed)
    pick_c = rng.integers(0, m, size=(n_boot, m))
    pick_s = rng.integers(0, n_seeds, size=(n_boot, n_seeds)) if n_seeds > 1 else np.zeros((n_boot, 1), int)
    num = sums[pick_s[:, :, None], pick_c[:, None, :]].sum(axis=(1, 2))
    return num / (counts[pick_c].sum(axis=1) * n_seeds), m


def _summary(x: np.ndarray, clusters, n_boot: int, seed: int, level: float) -> tuple[dict, np.ndarray]:
    """bootstrap_mean's dict and the replicates it was read from."""
    reps, m = _replicates(x, clusters, n_boot, seed)
    tail = (1 - level) / 2 * 100
    return {"mean": float(x.mean()), "ci": [float(np.percentile(reps, tail)), float(np.percentile(reps, 100 - tail))],
            "n": x.shape[1], "clusters": m, "seeds": x.shape[0], "per_seed": [float(v) for v in x.mean(axis=1)]}, reps


def bootstrap_mean(values, clusters=None, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> dict:
    """Mean of `values` (per question, or [seed][question]) with its percentile interval, resampling the clusters
    (memory ids, one per question; None: each question its own) and, with several rows, the seeds.
    Returns {"mean", "ci": [low, high], "n" (questions), "clusters", "seeds", "per_seed" (each seed's mean)}."""
    return _summary(_as_matrix(values), clusters, n_boot, seed, level)[0]


def _paired(a, b) -> np.ndarray:
    xa, xb = _as_matrix(a), _as_matrix(b)
    if xa.shape[1] != xb.shape[1]:
        raise ValueError(f"paired difference needs the same questions: {xa.shape[1]} vs {xb.shape[1]}")
    if xa.shape[0] != xb.shape[0] and 1 not in (xa.shape[0], xb.shape[0]):
        raise ValueError(f"paired difference: {xa.shape[0]} seeds of a against {xb.shape[0]} of b")
    return xa - xb


def paired_difference(a, b, clusters=None, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> dict:
    """a minus b on the same questions (per question, or [seed][question] each; one side may have one seed for all
    of the other's), bootstrapped as `bootstrap_mean`, with a two-sided bootstrap p-value of no difference.
    Returns {"difference", "ci", "p", "n", "clusters", "seeds", "per_seed"}."""
    d = _paired(a, b)
    out, reps = _summary(d, clusters, n_boot, seed, level)
    out["difference"] = out.pop("mean")
    # the p-value: how often the replicates centred at 0 (each shifted by the observed mean: the replicates of
    # d - mean(d)) lie as far from 0 as the observed difference
    centred = reps - out["difference"]
    out["p"] = max(float(np.mean(np.abs(centred) >= abs(out["difference"]) - 1e-12)), 1.0 / n_boot)
    return out


def _missing(p) -> bool:
    return p is None or math.isnan(p)


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjustment of several p-values tested together (family-wise error), in the input order.
    A missing p (None or NaN: a test that did not run) stays NaN and is not counted in the family."""
    tested = [i for i, p in enumerate(p_values) if not _missing(p)]
    order = sorted(tested, key=lambda i: p_values[i])  # a NaN in the sort would leave the order undefined
    adjusted, running = [float("nan")] * len(p_values), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def with_holm(rows: list[dict], p: str = "p") -> list[dict]:
    """`rows` (one test each, all of one family: several points against one baseline) with "p_holm" added, in place;
    returns them."""
    for row, adjusted in zip(rows, holm([row.get(p) for row in rows])):
        row["p_holm"] = adjusted
    return rows


def verdict(ci: list[float]) -> str:
    """The ledger's rule: `holds` when the 95% interval lies above 0, `reversed` below 0, else `not shown`."""
    if ci is None or any(_missing(v) for v in ci):  # JSON writes a NaN bound as null
        return "not shown"
    lo, hi = ci
    return "holds" if lo > 0 else "reversed" if hi < 0 else "not shown"


def running_mean(values, window: int, z: float = 1.96) -> list[dict]:
    """A training curve as running means: per step t >= window - 1, the mean of the last `window` values with a
    normal 95% interval (mean +- z x sd / sqrt(window); steps see different questions, so their values are taken as
    independent). [{"step", "mean", "ci"}]; [] when there are fewer values than `window`."""
    x = np.asarray(values, dtype=float)
    if window < 2:
        raise ValueError(f"window = {window}: a running mean with an interval needs at least 2 values")
    out = []
    for t in range(window - 1, len(x)):
        w = x[t - window + 1:t + 1]
        half = z * float(w.std(ddof=1)) / math.sqrt(window)
        out.append({"step": t, "mean": float(w.mean()), "ci": [float(w.mean()) - half, float(w.mean()) + half]})
    return out


def window_difference(values, window: int, z: float = 1.96) -> dict:
    """Did a training curve move? The mean of its last `window` values minus that of its first `window`, with a
    normal (Welch) 95% interval; "rose" when the interval lies above 0, "fell" below, else "flat"."""
    x = np.asarray(values, dtype=float)
    if window < 2 or len(x) < 2 * window:
        raise ValueError(f"{len(x)} values: comparing a first and a last window of {window} needs >= {2 * window}")
    a, b = x[:window], x[-window:]
    d = float(b.mean() - a.mean())
    half = z * math.sqrt(a.var(ddof=1) / window + b.var(ddof=1) / window)
    ci = [d - half, d + half]
    return {"first": float(a.mean()), "last": float(b.mean()), "difference": d, "ci": ci, "window": window,
            "moved": "rose" if ci[0] > 0 else "fell" if ci[1] < 0 else "flat"}
