"""Latent memory that compresses: accuracy against tokens per chunk, truncated text against each content cache.

On one reader (03's stage-0 reader: the same LoRA for every row) and the same questions, every retrieved chunk gets
the same b tokens, b in eval.compression_budgets (those above N_c skipped: a chunk has no more cached states):

    text, last b tokens   the chunk truncated to its last b text tokens, as text (memory mode text_tail): what an
                          input-embedding cache behind an identity projector is
    cache <L>             the chunk's last b cached states of layer L (0 = the input embeddings; -1 = the last
                          layer, the paper's) through the projector; "<L>+align" first trains the projector with the
                          alignment stage (alignment.py, the align section, eval.compression_align_steps steps) on
                          the training memories, once per seed of eval.compression_seeds

and the two ends: no memory, and the whole retrieved chunks as text. Each cache row is paired with the truncated
text at the same b (an aligned cache: its seeds pooled, each seed's difference listed); intervals and p-values are
stats.py's bootstrap over memories (and seeds), and the rows' p-values against truncated text are one family,
Holm-adjusted (`p_holm`). The caches come
from eval.compression_caches; a layer other than 0 reads through an eval.compression_projector projector (the
run's own projector, e.g. the residual one, is for layer 0, whose states are embeddings already). Each layer has its
bank (`banks/<setting>@cache_layer=<L>`), each point its saved records (`compression/<setting>/`), each aligned
projector its alignment folder: everything resumes and is reused under the same params.

    out = compression.run_compression(cfg, run.dir, setting, backbone, dataset)   # -> metrics/compression.json
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from ..core import evaluate, stats
from ..core.config import derive
from ..core.experiment import seed_everything, write_json
from ..method import assemble
from ..training import alignment
from . import frontier

TEXT_TAIL = "text, last b tokens"
ROW_KEYS = ("cache", "layer", "aligned", "tokens_per_chunk", "accuracy", "ci")
PAIRED_KEYS = ("a", "b", "tokens_per_chunk", "n", "difference", "ci", "p", "p_holm")


def cache_label(layer: int, aligned: str) -> str:
    """aligned: "" (untrained projector), "align" (the projector aligned) or "align+lora" (LoRA aligned too)."""
    name = "input embeddings" if layer == 0 else "last layer" if layer == -1 else f"layer {layer}"
    return f"cache: {name}" + {"": "", "align": ", aligned", "align+lora": ", aligned with LoRA"}[aligned]


def check(cfg, n_layers: int, n_c: int) -> list[tuple[int, str]]:
    """The caches of eval.compression_caches, checked against the backbone's layers, N_c and the align section."""
    e = cfg.eval
    caches = list(dict.fromkeys(alignment.parse_cache(s, n_layers) for s in e.compression_caches))  # "mid" may be "15"
    for layer, aligned in caches:
        if not -1 <= layer <= n_layers:
            raise ValueError(f"eval.compression_caches: layer {layer} is outside -1..{n_layers} (the backbone has "
                             f"{n_layers} layers; 0 = the input embeddings, -1 = the last layer)")
    if not any(1 <= b <= n_c for b in e.compression_budgets) or min(e.compression_budgets) < 1:
        raise ValueError(f"eval.compression_budgets {e.compression_budgets}: b >= 1, at least one within "
                         f"bank.n_c = {n_c}")
    if any(a for _, a in caches) and e.compression_align_steps < 1:
        raise ValueError("eval.compression_caches has an aligned cache but eval.compression_align_steps < 1")
    table = [b for b in e.compression_budgets if b <= n_c]
    a = cfg.align
    if a.b_start and not a.b_max:   # align.b_max 0 is the table's largest b here: no room for a curriculum above it
        raise ValueError(f"align.b_start = {a.b_start} needs align.b_max (the b the curriculum falls to) below it")
    for key, b in (("align.b_start", a.b_start), ("align.b_max", a.b_max),
                   ("align.curve_b", a.curve_b if a.curve_steps else 0)):
        if b and not min(table) <= b <= max(table):   # the stage would train or judge b the table never reads
            raise ValueError(f"{key} = {b} leaves b outside the table's range {min(table)}..{max(table)} "
                             f"(eval.compression_budgets within bank.n_c = {n_c})")
    return caches


def variant(cfg, layer: int, aligned: str):
    """The run's params for one cache: its layer, its projector, uniform budgets (B_max = N_c), and (aligned) the
    alignment stage with eval.compression_align_steps steps, b up to align.b_max (0 = the table's largest b)."""
    e = cfg.eval
    b_max = cfg.bank.n_c  # not max(b): the saved points must not depend on which b the table lists
    projector = {} if layer == 0 else {"kind": e.compression_projector}
    # align.b_max 0: b drawn up to the table's largest b (not to N_c: the table asks about few tokens per chunk)
    largest = max(b for b in e.compression_budgets if b <= cfg.bank.n_c)
    return derive(cfg, f"compression cache {layer}{'+' + aligned if aligned else ''}", bank={"cache_layer": layer},
                  projector=projector, budget={"policy": "uniform", "b_max": b_max,
                                               "uniform_budget": min(cfg.budget.uniform_budget, b_max)},
                  align={"steps": e.compression_align_steps if aligned else 0, "b_max": cfg.align.b_max or largest,
                         "train_lora": aligned == "align+lora"})


def _records(path: Path, cfg, meta: dict, compute) -> list[dict]:
    """A point's records, computed once and saved with what made them (evaluate's fingerprint)."""
    return evaluate.cached(path, cfg, meta, lambda: {"records": compute()})["records"]

def _summary(records_per_seed: list[list[dict]], n_boot: int, seed: int) -> tuple[float, list[float], np.ndarray]:
    """Seed-mean accuracy, its 95% bootstrap interval over seeds and memories (stats.bootstrap_mean), and the
    [seeds, questions] correctness (questions by qid)."""
    _, x, clusters = evaluate.correctness(records_per_seed, "compression")
    return float(x.mean()), stats.bootstrap_mean(x, clusters, n_boot, seed)["ci"], x


def paired(a_label: str, a_runs: list[list[dict]], b_label: str, b_records: list[dict], b: int, n_boot: int,
           seed: int) -> dict:
    """a (its seeds pooled) minus b on the same questions, with its 95% interval and p over seeds and memories
    (stats.paired_difference); each seed's difference."""
    try:
        _, x, clusters = evaluate.correctness([b_records, *a_runs])
    except evaluate.ResultsError:
        raise evaluate.ResultsError(f"compression: {a_label} and {b_label} at b = {b} answered other questions") \
            from None
    d = stats.paired_difference(x[1:], x[0], clusters, n_boot, seed)
    out = {"a": a_label, "b": b_label, "tokens_per_chunk": b, "n": d["n"], "units": d["clusters"],
           "ci_unit": evaluate.ci_unit(clusters), "difference": d["difference"], "ci": d["ci"], "p": d["p"]}
    if len(a_runs) > 1:
        out["seeds"] = d["per_seed"]
    return out


def run_compression(cfg, run_dir: str | Path, setting: str, backbone, dataset, split: str = "test",
                    progress: bool = False, log=print) -> dict:
    """The compression table of `setting` from 03's stage-0 reader, written to metrics/compression.json
    (compression-<setting>.json when the run trains several settings)."""
    from ..harness.variants import bank_for, checkpoint_id, reader_checkpoint, release

    e, seed0 = cfg.eval, cfg.runtime.seed
    reader = reader_checkpoint(run_dir, setting, seed0)
    if reader is None:
        raise FileNotFoundError(f"{run_dir}: no stage-0 reader of {setting} (train/{setting}/seed{seed0}/reader): "
                                f"run 03_train first")
    caches = check(cfg, backbone.model.config.num_hidden_layers, cfg.bank.n_c)
    folder = Path(run_dir) / "compression" / setting
    questions = list(dataset.split(split))
    cap = e.max_questions
    questions = questions[:cap] if cap > 0 else questions
    train_q = dataset.split("train")
    base = {"setting": setting, "split": split, "backbone": backbone.identity, "reader": checkpoint_id(reader)}
    budgets = sorted(b for b in set(e.compression_budgets) if b <= cfg.bank.n_c)  # a chunk has N_c cached states
    results: dict[tuple, list[list[dict]]] = {}   # (label, b) -> records per seed

    def build(v, seed):
        bank = bank_for(v, cfg, dataset, backbone, run_dir, progress)  # bare backbone: before LoRA goes in
        made = assemble.alignment_corpus(v, dataset, backbone, run_dir, progress) if v.align.steps else None
        corpus = alignment.Corpus.whole(*made) if made else None
        seed_everything(seed)
        model = assemble.model_for(v, dataset, backbone, bank)
        model.load(reader, parts=("lora",))
        return model, corpus

    val_q = dataset.split("val")
    val_q = val_q[:cap] if cap > 0 else val_q

    def val_accuracy(model):   # the learning curve's accuracy: validation, align.curve_b tokens per chunk
        b = model.cfg.align.curve_b
        records = frontier.evaluate_point(model, val_q, {"policy": "uniform", "uniform_budget": b})
        return {"val_accuracy": float(np.mean([r["correct"] for r in records]))}

    curves = []

    # the ends and truncated text: memory modes that do not read a cache (the run's own bank)
    text_v = variant(cfg, cfg.bank.cache_layer, "")
    model, _ = build(text_v, seed0)
    try:
        ends = {
            "no memory": _records(folder / "no_memory.json", text_v, {**base, "point": "no memory"},
                                  lambda: frontier.evaluate_point(model, questions, None, "none")),
            "text_full": _records(folder / "text_full.json", text_v, {**base, "point": "text_full"},
                                  lambda: frontier.evaluate_text(model, questions)),
        }
        for b in budgets:
            meta = {**base, "point": TEXT_TAIL, "tokens_per_chunk": b}
            results[(TEXT_TAIL, b)] = [_records(
                folder / f"text_tail-b{b}.json", text_v, meta,
                lambda: frontier.evaluate_point(model, questions, {"policy": "uniform", "uniform_budget": b},
                                                "text_tail"))]
    finally:
        release(model)

    for layer, aligned in caches:
        label = cache_label(layer, aligned)
        v = variant(cfg, layer, aligned)
        for seed in (e.compression_seeds if aligned else [seed0]):
            v_seed = derive(v, f"compression seed {seed}", runtime={"seed": seed})
            tag = f"layer{layer}" + (f"-{aligned.replace('+', '-')}-seed{seed}" if aligned else "")
            model, corpus = build(v_seed, seed)
            try:
                projector = "projector (untrained)"
                if aligned:
                    history = alignment.run(model, train_q, folder / tag, progress=progress, corpus=corpus,
                                            val_questions=val_q, evaluate=lambda: val_accuracy(model))
                    projector = f"aligned {checkpoint_id(folder / tag / alignment.FOLDER)}"
                    steps = [r for r in history if r["stage"] == "align"]
                    if steps:
                        log(f"{setting} {label} seed {seed}: alignment {len(steps)} steps, loss "
                            f"{steps[0]['loss']:.3f} -> {steps[-1]['loss']:.3f}")
                    made = json.loads((folder / tag / alignment.FOLDER / alignment.RECIPE).read_text())
                    curves.append({"cache": label, "seed": seed, "steps": made["steps"],
                                   "nonfinite_steps": made.get("nonfinite_steps", 0), "points": made.get("curve", [])})
                for b in budgets:
                    meta = {**base, "point": label, "tokens_per_chunk": b, "projector": projector, "seed": seed}
                    results.setdefault((label, b), []).append(_records(
                        folder / f"{tag}-b{b}.json", v_seed, meta,
                        lambda: frontier.evaluate_point(model, questions, {"policy": "uniform", "uniform_budget": b})))
            finally:
                release(model)

    n_boot = e.bootstrap
    rows, pairs = [], []
    for (label, b), runs in results.items():
        acc, ci, _ = _summary(runs, n_boot, seed0)
        layer, aligned = (None, "") if label == TEXT_TAIL else next(
            (lay, al) for lay, al in caches if cache_label(lay, al) == label)
        row = {"cache": label, "layer": layer, "aligned": bool(aligned), "align_lora": aligned == "align+lora",
               "tokens_per_chunk": b, "accuracy": acc, "ci": ci,
               "memory_tokens": float(np.mean([r["memory_tokens"] for r in runs[0]]))}
        if len(runs) > 1:
            row["seeds"] = [float(np.mean([r["correct"] for r in recs])) for recs in runs]
        rows.append(row)
        if label != TEXT_TAIL:
            pairs.append(paired(label, runs, TEXT_TAIL, results[(TEXT_TAIL, b)][0], b, n_boot, seed0))
    out = {"setting": setting, "split": split, "n": len(questions)}
    for name, key in (("no memory", "no_memory"), ("text_full", "text_full")):
        acc, ci, _ = _summary([ends[name]], n_boot, seed0)
        out[key] = {"accuracy": acc, "ci": ci}
    out["text_full"]["memory_tokens"] = float(np.mean([r["memory_tokens"] for r in ends["text_full"]]))
    out["rows"], out["paired"] = rows, stats.with_holm(pairs)  # every cache row against truncated text: one family
    out["curves"] = curves   # each alignment's learning curve on validation (align.curve_steps) and non-finite steps
    out["meta"] = {"reader": base["reader"], "caches": list(e.compression_caches), "budgets": budgets,
                   "skipped_budgets": sorted(b for b in set(e.compression_budgets) if b > cfg.bank.n_c),
                   "align_steps": e.compression_align_steps, "align_seeds": list(e.compression_seeds),
                   "align": dataclasses.asdict(cfg.align), "projector_deeper": e.compression_projector}
    settings = cfg.grpo.settings or cfg.data.settings
    name = "compression.json" if len(settings) <= 1 else f"compression-{setting}.json"
    write_json(Path(run_dir) / "metrics" / name, out)
    return out


def compression_table(data: dict):
    """One row per (cache, b): accuracy [95% CI], and the paired difference against truncated text at that b, with
    its p (bootstrap over memories) and p_holm (Holm over every row's test)."""
    import pandas as pd

    diff = {(p["a"], p["tokens_per_chunk"]): p for p in data["paired"]}
    rows = []
    for r in sorted(data["rows"], key=lambda r: (r["cache"] != TEXT_TAIL, r["cache"], r["tokens_per_chunk"])):
        p = diff.get((r["cache"], r["tokens_per_chunk"]))
        rows.append({"cache": r["cache"], "b": r["tokens_per_chunk"], "accuracy": round(r["accuracy"], 3),
                     "95% CI": f"[{r['ci'][0]:.2f}, {r['ci'][1]:.2f}]",
                     "seeds": "" if "seeds" not in r else ", ".join(f"{x:.3f}" for x in r["seeds"]),
                     "minus text, last b": "" if p is None else
                     f"{p['difference']:+.3f} [{p['ci'][0]:+.2f}, {p['ci'][1]:+.2f}]",
                     "p": None if p is None else p.get("p"), "p (Holm)": None if p is None else p.get("p_holm")})
    return pd.DataFrame(rows)


def plot_compression(data: dict, ax=None):
    """Accuracy (95% CI) against tokens per chunk, one line per row kind; no memory and whole text as lines."""
    import matplotlib.pyplot as plt

    ax = ax or plt.subplots(figsize=(6.5, 4))[1]
    for label in sorted({r["cache"] for r in data["rows"]}, key=lambda x: x != TEXT_TAIL):
        pts = sorted((r for r in data["rows"] if r["cache"] == label), key=lambda r: r["tokens_per_chunk"])
        x = [r["tokens_per_chunk"] for r in pts]
        y = [r["accuracy"] for r in pts]
        err = [[r["accuracy"] - r["ci"][0] for r in pts], [r["ci"][1] - r["accuracy"] for r in pts]]
        ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=label,
                    linestyle="--" if label == TEXT_TAIL else "-")
    ax.axhline(data["no_memory"]["accuracy"], color="grey", linestyle=":", label="no memory")
    ax.axhline(data["text_full"]["accuracy"], color="black", linestyle=":", label="whole chunks as text")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("tokens per retrieved chunk (b)")
    ax.set_ylabel(f"accuracy ({data['split']}, n = {data['n']})")
    ax.set_title(f"{data['setting']}: compressed memory against truncated text")
    ax.legend(fontsize=8)
    return ax


def plot_curves(data: dict, axes=None):
    """Each alignment's learning curve on validation (align.curve_steps): accuracy at align.curve_b tokens per
    chunk, and the reconstruction loss, against steps; one line per (cache, seed). None when no curve was measured."""
    import matplotlib.pyplot as plt

    curves = [c for c in data.get("curves", []) if c["points"]]
    if not curves:
        return None
    axes = axes if axes is not None else plt.subplots(1, 2, figsize=(10, 3.6))[1]
    for c in curves:
        steps = [p["step"] for p in c["points"]]
        label = f"{c['cache']}, seed {c['seed']}"
        if "val_accuracy" in c["points"][0]:
            axes[0].plot(steps, [p["val_accuracy"] for p in c["points"]], marker="o", label=label)
        axes[1].plot(steps, [p["val_reconstruction"] for p in c["points"]], marker="o", label=label)
    b = curves[0]["points"][0]["b"]
    axes[0].set(xlabel="alignment steps", ylabel=f"validation accuracy at b = {b}", title="learning curve")
    axes[1].set(xlabel="alignment steps", ylabel="validation reconstruction (nats per token)")
    axes[0].legend(fontsize=8)
    return axes
