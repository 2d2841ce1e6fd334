"""Does reasoner-state retrieval learn? recall@Z and accuracy of each retrieval, on one run's checkpoints.

On the test split (05_retrieval with eval.retrieval_study), for one trained setting:

- recall@Z (Z = 1, 2, 4, 8) of the gold evidence chunks for: random chunks; the sentence embedder (semantic); the
  frozen base model's state (frozen_state); the LoRA reasoner's question state (query_state) and control-token state
  (control_token, "untrained": 03's stage-0 reader, before any retrieval training); the control token after the
  retrieval warm-up (one run per seed in eval.retrieval_seeds, from the same reader); and after GRPO (the
  `retrieval_control_token_warmup` ablation's selected checkpoint, when 05_ablations trained it);
- ElasticMem's accuracy (and memory tokens) with each retrieval mode on that one checkpoint (after GRPO, else after
  the warm-up): only the retrieval differs, the reader, projector and budget policy are the same.

Written to metrics/retrieval.json: {"setting", "split", "n", "recall": [{"mode", "z", "recall", "ci", "seeds"?}],
"accuracy": [{"mode", "accuracy", "ci", "memory_tokens"}], "checkpoint", "paired_control_token_minus": {mode:
{"difference", "ci", "p", "p_holm", "p_mcnemar"}}}. Intervals and p-values are stats.py's bootstrap over memories
(recall: and seeds); the control token's paired tests against the other modes are one family, Holm-adjusted. Every
piece is saved (named by the checkpoint it measured) and reused like a result, and a
warm-up folder records what made it (reader, seed, steps, loss), so that one of other params is retrained.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from ..core import evaluate, stats
from ..core.config import derive
from ..core.experiment import train_dir, write_json
from ..method.retrieval_loss import RECALL_ZS, recall_at
from ..training import grpo

VARIANT = "retrieval_control_token_warmup"   # the ablation whose checkpoint is "after GRPO"
RECALL_MODES = ("random", "semantic", "frozen_state", "query_state", "control_token")
ACCURACY_MODES = ("control_token", "query_state", "frozen_state", "semantic", "oracle")
UNTRAINED, WARMED, GRPO_TRAINED = "control token, untrained", "control token, after warm-up", \
    "control token, after GRPO"


def _recall_rows(mode: str, per_seed: dict[int, dict[int, list[float]]], n_boot: int, seed: int,
                 clusters=None) -> list[dict]:
    """One row per Z: the mean over seeds of the mean recall, its 95% bootstrap interval over seeds and `clusters`
    (the questions' memory ids; None: questions), and (several seeds) each seed's recall."""
    rows = []
    for z in next(iter(per_seed.values())):
        x = np.array([r[z] for r in per_seed.values()], dtype=float)  # [seeds, questions]
        row = {"mode": mode, "z": int(z), "recall": float(x.mean()),
               "ci": stats.bootstrap_mean(x, clusters, n_boot, seed)["ci"]}
        if len(per_seed) > 1:
            row["seeds"] = [{"seed": s, "recall": float(np.mean(r[z]))} for s, r in per_seed.items()]
        rows.append(row)
    return rows


def accuracy_with(model, questions, mode: str, batch_size: int | None = None) -> list[dict]:
    """Greedy records of `model` with its retrieval mode swapped for `mode` (restored afterwards)."""
    with model.using(retrieval={"mode": mode}):
        return evaluate.answer_questions(model.answer, questions, batch_size or model.cfg.eval.batch_size,
                                         bank=model.bank, device=model.device)


def run_retrieval_study(cfg, run_dir: str | Path, setting: str, model, dataset, split: str = "test",
                        log=print) -> dict:
    """The study above for `model` (an ElasticMem of `dataset`'s bank built with the sentence embedder:
    assemble.model_for(..., with_embedder=True), under the variant's params), written to
    metrics/retrieval.json (retrieval-<setting>.json when the run trains several settings)."""
    from ..harness.variants import checkpoint_id, reader_checkpoint

    e, seed0 = cfg.eval, cfg.runtime.seed
    n_boot = e.bootstrap
    questions = list(dataset.split(split))
    questions = questions[:e.max_questions] if e.max_questions > 0 else questions
    questions = [q for q in questions if getattr(q, "evidence", None)]
    if not questions:
        raise ValueError(f"{setting} {split}: no questions with gold evidence: recall cannot be measured")
    reader = reader_checkpoint(run_dir, setting, seed0)
    if reader is None:
        raise FileNotFoundError(f"no stage-0 reader at {train_dir(run_dir, setting, seed0) / 'reader'}: run 03 first")
    folder = Path(run_dir) / "retrieval" / setting
    variant_dir = Path(run_dir) / "ablations" / VARIANT / setting / f"seed{seed0}"
    meta = {"kind": "retrieval_study", "setting": setting, "split": split, "backbone": model.backbone.identity,
            "qids": [q.qid for q in questions]}
    recall, accuracy, seconds = [], [], {}
    clusters = evaluate.memory_clusters([q.memory_id for q in questions])  # recall's resampling units

    def recall_of(checkpoint: Path, modes, tag: str) -> dict:
        ckid = checkpoint_id(checkpoint)
        m = {**meta, "checkpoint_id": ckid, "modes": list(modes)}

        def compute():
            model.load(checkpoint)
            return {mode: {str(z): v for z, v in recall_at(model, questions, mode, RECALL_ZS).items()}
                    for mode in modes}
        # named by the checkpoint: another checkpoint in the same role gets its own file, never a clash
        got = evaluate.cached(folder / f"recall-{tag}-{ckid}-{split}.json", cfg, m,
                              lambda: {"body": compute()})["body"]
        return {mode: {int(z): v for z, v in got[mode].items()} for mode in modes}

    t0 = time.perf_counter()
    base = recall_of(reader, RECALL_MODES, "reader")
    for mode in RECALL_MODES:
        recall += _recall_rows(UNTRAINED if mode == "control_token" else mode, {seed0: base[mode]}, n_boot, seed0,
                               clusters)
    seconds["recall, reader"] = round(time.perf_counter() - t0, 1)

    # the warm-up alone, one run per seed, each from the same reader
    warmed = {}
    for s in e.retrieval_seeds:
        t0 = time.perf_counter()
        where = folder / f"warmup-seed{s}"
        g, r = cfg.grpo, cfg.retrieval
        made = {"reader": checkpoint_id(reader), "seed": s, "steps": g.retrieval_warmup_steps,
                "lr": g.retrieval_warmup_lr, "batch_size": g.sft_batch_size, "aux_loss": r.aux_loss,
                "aux_temperature": r.aux_temperature, "mode": r.mode}
        if (where / "warmup.json").is_file() and json.loads((where / "warmup.json").read_text()) != made:
            log(f"{setting}: {where} was warmed up otherwise ({(where / 'warmup.json').read_text().strip()}): "
                f"retraining it")
            import shutil
            shutil.rmtree(where)
            shutil.rmtree(folder / f"warmup-seed{s}-log", ignore_errors=True)
        if s == seed0 and (variant_dir / "retrieval_warmup").is_dir():
            where = variant_dir / "retrieval_warmup"   # the variant's own warm-up (same reader, steps and seed)
        elif not (where / "warmup.json").is_file():
            model.load(reader)
            train_q = list(dataset.split("train"))
            with model.using(cfg=derive(cfg, f"retrieval warm-up seed {s}", runtime={"seed": s})):
                grpo.Trainer(model, train_q, [], folder / f"warmup-seed{s}-log", setting=setting) \
                    .retrieval_warmup(cfg.grpo.retrieval_warmup_steps)
            model.save(where)
            write_json(where / "warmup.json", made)  # what made it: a warm-up of other params is retrained
        warmed[s] = recall_of(where, ("control_token",), f"warmup-seed{s}")["control_token"]
        seconds[f"warm-up seed {s}"] = round(time.perf_counter() - t0, 1)
        log(f"{setting}: retrieval warm-up seed {s}: recall@4 {np.mean(warmed[s][4]):.3f} "
            f"({seconds[f'warm-up seed {s}']:.0f} s)")
    recall += _recall_rows(WARMED, warmed, n_boot, seed0, clusters)

    evaluated = None
    if (variant_dir / "best" / "elasticmem.json").is_file():
        evaluated = variant_dir / "best"
        after = recall_of(evaluated, ("control_token",), "grpo")["control_token"]
        recall += _recall_rows(GRPO_TRAINED, {seed0: after}, n_boot, seed0, clusters)
    else:
        log(f"{setting}: no {VARIANT} checkpoint at {variant_dir / 'best'} (05_ablations trains it): no "
            f"'after GRPO' row; accuracy is measured on the warm-up checkpoint of seed {e.retrieval_seeds[0]}")
        evaluated = (variant_dir / "retrieval_warmup") if e.retrieval_seeds[0] == seed0 and \
            (variant_dir / "retrieval_warmup").is_dir() else folder / f"warmup-seed{e.retrieval_seeds[0]}"

    t0 = time.perf_counter()
    m = {**meta, "checkpoint_id": checkpoint_id(evaluated), "modes": list(ACCURACY_MODES)}

    def compute_accuracy():
        model.load(evaluated)
        return {mode: accuracy_with(model, questions, mode) for mode in ACCURACY_MODES}
    records = evaluate.cached(folder / f"accuracy-{m['checkpoint_id']}-{split}.json", cfg, m,
                              lambda: {"body": compute_accuracy()})["body"]
    for mode in ACCURACY_MODES:
        s = evaluate.summarize(records[mode], n_boot, seed0)
        accuracy.append({"mode": mode, "accuracy": s["accuracy"], "ci": [s["ci_low"], s["ci_high"]],
                         "memory_tokens": float(np.mean([r["tokens"]["memory"] for r in records[mode]]))})
    seconds["accuracy"] = round(time.perf_counter() - t0, 1)
    paired = {mode: evaluate.paired_comparison(records["control_token"], records[mode], n_boot, seed0)
              for mode in ACCURACY_MODES if mode != "control_token"}
    stats.with_holm(list(paired.values()))  # the control token against every other mode: one family
    settings = cfg.grpo.settings or cfg.data.settings
    name = "retrieval.json" if len(settings) <= 1 else f"retrieval-{setting}.json"
    out = write_json(Path(run_dir) / "metrics" / name,
                     {"setting": setting, "split": split, "n": len(questions), "recall": recall, "accuracy": accuracy,
                      "checkpoint": str(evaluated),
                      "paired_control_token_minus": {k: {"difference": v["difference"],
                                                         "ci": [v["ci_low"], v["ci_high"]], "p": v["p"],
                                                         "p_holm": v["p_holm"], "p_mcnemar": v["p_mcnemar"]}
                                                     for k, v in paired.items()}})
    model.load(evaluated)
    return {"path": out, "data": json.loads(out.read_text()), "seconds": seconds}


def recall_table(data: dict):
    """recall@Z per mode (rows) and Z (columns) from a retrieval.json, as a DataFrame."""
    import pandas as pd

    df = pd.DataFrame(data["recall"])
    order = list(dict.fromkeys(df["mode"]))
    return df.pivot(index="mode", columns="z", values="recall").loc[order].round(3)
