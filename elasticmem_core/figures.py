"""Plot helpers the notebooks share: forest plots of intervals and of paired differences, and point labels that do
not overlap. Figures are drawn from saved results only; the notebooks save them under `<run>/figures/`."""
from __future__ import annotations

import pandas as pd


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
