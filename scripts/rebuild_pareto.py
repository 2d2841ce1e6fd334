"""Rebuild a budget frontier's metrics/budget_pareto.json from the records its run saved (no model, no training):
the fixed rules' and text RAG's records (`fixed-<split>.json`), each learned and oracle-feature point's seeds
(`price<p>/seed<s>/<split>.json`, `oracle-price<p>/...`) and the relevance probe, compared with the current code's
comparators (the staircase envelope and the hull of mixes of two rules).

    python scripts/rebuild_pareto.py outputs/<run>/frontier/<setting> outputs/<run>/metrics/budget_pareto.json \
        [--bootstrap 1000] [--seed 42] [--split test]
"""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from elasticmem_core.studies import frontier, pareto


def rebuild(folder: Path, out: Path, n_boot: int, seed: int, split: str) -> dict:
    saved = json.loads((folder / f"fixed-{split}.json").read_text())
    fixed = [{**p, **frontier.point_summary(p["records"], n_boot, seed)} for p in saved["fixed"]]
    text = {**saved["text"], **frontier.point_summary(saved["text"]["records"], n_boot, seed)}
    rules = pareto.envelope_rules(fixed)
    points = {"learned": [], "oracle": []}
    for kind, pattern in (("learned", r"price([0-9.]+)"), ("oracle", r"oracle-price([0-9.]+)")):
        for where in sorted(folder.iterdir(), key=lambda p: p.name):
            m = re.fullmatch(pattern, where.name)
            if not m:
                continue
            runs = []
            for s in sorted(where.glob(f"seed*/{split}.json")):
                got = json.loads(s.read_text())
                runs.append({"seed": int(s.parent.name[4:]), "records": got["records"],
                             "diagnostics": got["diagnostics"]})
            if runs:
                points[kind].append(frontier.learned_point(float(m.group(1)), runs, rules, n_boot, seed))
    for kind in points:
        frontier.with_holm(sorted(points[kind], key=lambda p: p["token_price"]))
    probe_file = folder / f"probe-{split}.json"
    probe = json.loads(probe_file.read_text())["probe"] if probe_file.is_file() else None
    uniform = [p for p in fixed if p["family"] == "uniform"]
    heuristics = [p for p in fixed if p["family"] == "heuristics"] + [text]
    path = pareto.write_pareto(out, saved["setting"], split, len(saved["qids"]), uniform, heuristics,
                               sorted(points["learned"], key=lambda p: p["token_price"]),
                               sorted(points["oracle"], key=lambda p: p["token_price"]), probe)
    return json.loads(path.read_text())


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path, help="the frontier folder: <run>/frontier/<setting>")
    ap.add_argument("out", type=Path, help="the budget_pareto.json to write")
    ap.add_argument("--bootstrap", type=int, default=1000, help="bootstrap replicates (the run's eval.bootstrap)")
    ap.add_argument("--seed", type=int, default=42, help="bootstrap seed (the run's runtime.seed)")
    ap.add_argument("--split", default="test")
    args = ap.parse_args()
    data = rebuild(args.folder, args.out, args.bootstrap, args.seed, args.split)
    for kind in ("learned", "oracle"):
        for p in data.get(kind, []):
            e, h = p.get("vs_envelope") or {}, p.get("vs_hull") or {}
            print(f"{kind} price {p['token_price']:g}: {p['accuracy']:.3f} at {p['memory_tokens']:.0f} tokens; "
                  f"vs envelope ({e.get('against')}) {e.get('difference', float('nan')):+.3f} {e.get('ci')}; "
                  f"vs hull ({h.get('against')}) {h.get('difference', float('nan')):+.3f} {h.get('ci')} "
                  f"p_holm {h.get('p_holm')}")
    print(f"wrote {args.out}")
