"""07's tables, built from saved results only (nothing is recomputed): the main table with the paper's numbers beside
ours, each method's family for the accuracy-vs-#Tok figure, the budget given per retrieved slot, the MemGen-style and
the text-memory comparisons paired on the same questions, and the training logs as one frame.

Each function takes the test results as `evaluate.load_results` returns them (one dict per results file)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from ..core import evaluate


def main_table(test: list[dict], n_boot: int, seed: int) -> pd.DataFrame:
    """Accuracy / #Tok per method (rows) and setting (columns; `weighted` = the average weighted by test-set size,
    as the paper's), then the paper's rows labelled `[paper, ...]` in the column of the mini setting they imitate."""
    methods = [r for r in test if r["kind"] != "ablations"]
    per = evaluate.summary_table(methods).groupby(["method", "setting"])[["accuracy", "tok"]].mean()
    overall = evaluate.overall_table(methods, n_boot, seed).groupby("method")[["accuracy", "tok"]].mean()
    main = pd.concat([per, overall.assign(setting="weighted").set_index("setting", append=True)])
    main = main.assign(cell=main.accuracy.map("{:.3f}".format) + " / " + main.tok.map("{:.0f}".format))
    table = main.cell.unstack("setting")
    paper_rows = {}
    for p in evaluate.PAPER_QA:
        column = p["setting"] if p["setting"] == "weighted" else next(
            (m for m, real in evaluate.MINI_COUNTERPART.items() if real == p["setting"]), p["setting"])
        if column in table.columns:
            tok = "" if "tok" not in p else f" / {p['tok']:.0f}"
            paper_rows.setdefault(f"[paper, {p['backbone']}, real data] {p['method']}", {})[column] = \
                f"{p['accuracy']:.3f}{tok}"
    return pd.concat([table, pd.DataFrame.from_dict(paper_rows, orient="index")]).fillna("")


def family(result: dict) -> str:
    """What kind of method a result is, for the figure's legend."""
    m, method = result["method"], result["params"]["eval"]["method"]
    if m.startswith("elasticmem"):
        return "ElasticMem"
    if result["kind"] == "ablations":
        return "ablation"
    if method == "memgen":
        return "latent baseline (MemGen-style)"
    if method in ("mem0", "agemem"):
        return "text-memory system (Mem0-/AgeMem-style)"
    return "baseline, warmed-up reader" if m.endswith("+reader") else "baseline"


def budget_slots(test: list[dict]) -> pd.DataFrame:
    """One row per retrieved chunk of every ElasticMem-family answer with memory: method, rank, budget, holds evidence."""
    return pd.DataFrame([{"method": r["method"], "rank": j + 1, "budget": b, "holds evidence": e}
                         for r in test if r["params"]["eval"]["method"] == "elasticmem"
                         for x in r["records"] if x["tokens"]["memory"]
                         for j, (row, b, e) in enumerate(zip(x["rows"], x["budgets"], x["in_evidence"])) if row >= 0])


def training_logs(run_dir: str | Path, pattern: str) -> pd.DataFrame:
    """Every train_log.jsonl under run_dir matching `pattern` (…/<setting>/seed<s>/train_log.jsonl) as one frame,
    with `setting` and `seed` columns from the path."""
    return pd.DataFrame([dict(json.loads(line), setting=f.parts[-3], seed=f.parts[-2])
                         for f in sorted(Path(run_dir).glob(pattern))
                         for line in f.read_text().splitlines() if line.strip()])


def _paired_cell(a: dict, b: dict, n_boot: int, seed: int) -> tuple[dict, str]:
    d = evaluate.paired_comparison(a["records"], b["records"], n_boot, seed)
    return d, f"{d['difference']:+.3f} [{d['ci_low']:+.2f}, {d['ci_high']:+.2f}]"


def _accuracy_cell(s: dict) -> str:
    return f"{s['accuracy']:.3f} [{s['ci_low']:.2f}, {s['ci_high']:.2f}]"


def memgen_table(test: list[dict], n_boot: int, seed: int) -> pd.DataFrame:
    """The MemGen-style rows: accuracy, #Tok counted two ways (what the reasoner reads; plus what the weaver read),
    and paired against ElasticMem on the same setting and seed."""
    elasticmem = {(r["setting"], r["seed"]): r for r in test if r["method"] == "elasticmem"}
    rows = []
    for r in (r for r in test if r["params"]["eval"]["method"] == "memgen"):
        s = r["summary"]
        row = {"method": r["method"], "setting": r["setting"], "seed": r["seed"], "n": s["n"],
               "accuracy [95% CI]": _accuracy_cell(s), "#Tok (reasoner)": round(s["tok"]),
               "#Tok (+ weaver)": round(s.get("tok_with_weaver", math.nan))}
        em = elasticmem.get((r["setting"], r["seed"]))
        if em is not None:
            d, cell = _paired_cell(r, em, n_boot, seed)
            row.update({"ElasticMem": f"{d['accuracy_b']:.3f}", "MemGen-style - ElasticMem [95% CI]": cell,
                        "McNemar p": float(f"{d['p_mcnemar']:.2g}")})
        rows.append(row)
    return pd.DataFrame(rows)


def text_memory_table(test: list[dict], n_boot: int, seed: int) -> pd.DataFrame:
    """The Mem0- and AgeMem-style rows: accuracy, #Tok, tool tokens, each paired against text RAG with the same
    reader and against ElasticMem on the same setting and seed."""
    by_name = {(r["method"], r["setting"], r["seed"]): r for r in test}
    rows = []
    for r in (r for r in test if r["params"]["eval"]["method"] in ("mem0", "agemem")):
        s = r["summary"]
        row = {"method": r["method"], "setting": r["setting"], "seed": r["seed"], "n": s["n"],
               "accuracy [95% CI]": _accuracy_cell(s), "#Tok": round(s["tok"]),
               "tool tokens": round(s.get("tool_tokens", 0))}
        reader = r["method"].endswith("+reader") or r["params"]["eval"]["method"] == "agemem"
        rag = "text_rag_semantic" + ("+reader" if reader else "")
        for label, other in (("text RAG", by_name.get((rag, r["setting"], r["seed"]))),
                             ("ElasticMem", by_name.get(("elasticmem", r["setting"], r["seed"])))):
            if other is not None:
                d, cell = _paired_cell(r, other, n_boot, seed)
                row[f"minus {label} ({other['method']}) [95% CI], McNemar p"] = f"{cell}, p {d['p_mcnemar']:.2g}"
        rows.append(row)
    return pd.DataFrame(rows)
