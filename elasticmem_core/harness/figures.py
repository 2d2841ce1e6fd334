"""Plot helpers the notebooks share: forest plots of intervals and of paired differences, bars of accuracy with the
package's own intervals, and point labels that do not overlap. Figures are drawn from saved results only; the
notebooks save them under `<run>/figures/`."""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..core import stats


def forest(ax, table: pd.DataFrame, label: str, value: str = "accuracy", low: str = "ci_low", high: str = "ci_high",
           zero: float | None = None, xlabel: str | None = None) -> None:
    """One row per `table` row, top to bottom in its order: the point `value` and its interval [`low`, `high`].
    `zero`: a vertical reference line (0 for paired differences, chance for accuracies)."""
    rows = table.reset_index(drop=True)
    y = list(range(len(rows)))[::-1]
    ax.errorbar(rows[value], y, xerr=[rows[value] - rows[low], rows[high] - rows[value]], fmt="o", color="#4c72b0",
                ecolor="grey", capsize=3)
    if zero is not None:
        ax.axvline(zero, color="#c44e52", lw=0.8, ls="--")
    ax.set_yticks(y)
    ax.set_yticklabels(rows[label], fontsize=8)
    ax.set_ylim(-0.7, len(rows) - 0.3)
    ax.set_xlabel(xlabel or value)
    ax.grid(axis="x", alpha=0.3)


def label_points(ax, points: pd.DataFrame, x: str, y: str, name: str) -> None:
    """A name beside each point of a scatter (colours alone do not tell a dozen methods apart). Where names would
    overlap, the nearest free slot above or below, tied to its point by a thin line."""
    placed = []
    for _, row in points.sort_values([x, y], ascending=[True, False]).iterrows():
        px, py = ax.transData.transform((row[x], row[y]))
        dy = next((d for d in (3, 12, -9, 21, -18, 30, -27, 39, -36, 48)
                   if not any(abs(px - qx) < 90 and abs(py + d - qy) < 9 for qx, qy in placed)), 3)
        placed.append((px, py + dy))
        ax.annotate(row[name], (row[x], row[y]), xytext=(6, dy), textcoords="offset points", fontsize=7,
                    arrowprops=None if dy == 3 else dict(arrowstyle="-", color="grey", lw=0.5))


def accuracy_table(records: pd.DataFrame, by: list[str], value: str = "correct", cluster: str | None = "memory_id",
                   n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Per group of `by` (columns of evaluate.records_table): the mean of `value` over its seeds and questions, with
    stats.bootstrap_mean's 95% interval (the `cluster` column's groups resampled, and the seeds; None: each question
    its own cluster, e.g. ALFWorld games). The intervals of every table, not seaborn's i.i.d. ones."""
    rows = []
    for key, g in records.groupby(by, sort=False):
        wide = g.pivot_table(index="seed", columns="qid", values=value, aggfunc="mean").dropna(axis=1)
        clusters = None if cluster is None else list(g.drop_duplicates("qid").set_index("qid").loc[wide.columns, cluster])
        s = stats.bootstrap_mean(wide.to_numpy(dtype=float), clusters, n_boot, seed)
        rows.append({**dict(zip(by, key if isinstance(key, tuple) else (key,))), value: s["mean"],
                     "ci_low": s["ci"][0], "ci_high": s["ci"][1], "n": s["n"], "seeds": s["seeds"]})
    return pd.DataFrame(rows)


def bars(ax, table: pd.DataFrame, x: str, value: str, hue: str | None = None, order: list | None = None) -> None:
    """Bars of `value` per `x` (side by side per `hue`), each with its [ci_low, ci_high] interval when the table has
    one (accuracy_table's)."""
    xs = order or list(dict.fromkeys(table[x]))
    hues = list(dict.fromkeys(table[hue])) if hue else [None]
    width = 0.8 / len(hues)
    for i, h in enumerate(hues):
        part = table if h is None else table[table[hue] == h]
        part = part.set_index(x).reindex(xs)
        pos = np.arange(len(xs)) + (i - (len(hues) - 1) / 2) * width
        err = None
        if "ci_low" in part:
            err = [(part[value] - part["ci_low"]).clip(lower=0), (part["ci_high"] - part[value]).clip(lower=0)]
        ax.bar(pos, part[value], width, yerr=err, capsize=3, label=h, color=None if hue else "steelblue")
    ax.set_xticks(np.arange(len(xs)))
    ax.set_xticklabels(xs)
    if hue:
        ax.legend(fontsize=8)


def alfworld_success(results: list[dict], n_boot: int, seed: int):
    """06's figure (and `alfworld-pair`'s): success per split and agent with its interval over games (each game its
    own cluster), and #Tok per episode; returns the figure."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    from ..core import evaluate

    records = evaluate.records_table(results)
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    bars(axes[0], accuracy_table(records, ["split", "method"], cluster=None, n_boot=n_boot, seed=seed), "split",
         "correct", hue="method")
    sns.barplot(data=records, x="split", y="tok", hue="method", errorbar=None, ax=axes[1], legend=False)
    axes[0].set(ylabel="success rate", ylim=(0, 1), title="success")
    axes[1].set(ylabel="#Tok per episode", title="cost")
    fig.tight_layout()
    return fig
