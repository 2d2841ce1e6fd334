"""Does reasoner-state retrieval learn, and does the reader still read? recall@Z, reading and accuracy per retrieval.

On the test split (05_retrieval with eval.retrieval_study), for one trained setting, from 03's stage-0 reader:

- recall@Z (Z = 1, 2, 4, 8) of the gold evidence chunks for: random chunks; the sentence embedder (semantic); the
  frozen base model's state (frozen_state); the reader's question state (query_state) and control-token state
  (control_token, "untrained": before any retrieval training);
- for each retrieval variant in eval.retrieval_variants (params/ablations/<name>.yaml: the paper's single LoRA warmed
  up with the reading loss beside the retrieval loss, and beyond the paper a retrieval head on the detached control
  token) and each seed in eval.retrieval_seeds: the variant's retrieval warm-up and then GRPO as the variant trains
  (the control token's log-probability in the clipped surrogate), both from the same reader; recall of its own
  retrieval after the warm-up and after GRPO; reading (validation accuracy with memory as text and ORACLE retrieval:
  reading, not retrieval) before the warm-up, after it and after GRPO; and the GRPO checkpoint's accuracy (and memory
  tokens) with each retrieval mode, only the retrieval differing.

Written to metrics/retrieval.json: {"setting", "split", "n", "recall": [{"mode", "z", "recall", "ci", "seeds"?,
"variant"?}], "accuracy": [{"variant", "mode", "accuracy", "ci", "memory_tokens", "seeds"}], "reading": [{"warmup",
"seed", "before", "after", "after_grpo", "rolled_back_at", "steps_run"}], "paired": [{"variant", "a", "b",
"difference", "ci", "p", "p_holm", "seeds"}], "quality_bar": [{"variant", ...}], "checkpoint", "checkpoints",
"paired_control_token_minus": {mode: {...}} (the first variant's, the paper's: what the claims ledger's C6 reads)}.
Intervals are stats.py's bootstrap over memories and seeds; each variant's trained retrieval against the other modes
is one family, Holm-adjusted. Every piece is saved (in the reader's or the variant's folder, named by the checkpoint
it measured) and reused like a result;
each training folder records the params and reader that made it, and one made otherwise is retrained.
"""
from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..core import evaluate, stats
from ..core.config import Config, derive
from ..core.experiment import seed_everything, train_dir, write_json
from ..method.retrieval_loss import RECALL_ZS, recall_at
from ..training import grpo
from ..training.retrieval_warmup import reading_accuracy

RECALL_MODES = ("random", "semantic", "frozen_state", "query_state", "control_token")
OTHER_MODES = ("query_state", "frozen_state", "semantic", "oracle")   # beside each variant's own retrieval
AGAINST = ("semantic", "frozen_state", "query_state")                  # the paper's claim: above each of these
UNTRAINED = "control token, untrained"
READING_GUARD = 0.03     # the quality bar: reading within 0.03 of the reader before the warm-up
RECALL_RATIO = 0.8       # ... and recall@4 at least 0.8x the embedder's


def _recall_rows(mode: str, per_seed: dict[int, dict[int, list[float]]], n_boot: int, seed: int,
                 clusters=None, **extra) -> list[dict]:
    """One row per Z: the mean over seeds of the mean recall, its 95% bootstrap interval over seeds and `clusters`
    (the questions' memory ids; None: questions), and (several seeds) each seed's recall."""
    rows = []
    for z in next(iter(per_seed.values())):
        x = np.array([r[z] for r in per_seed.values()], dtype=float)  # [seeds, questions]
        row = {"mode": mode, **extra, "z": int(z), "recall": float(x.mean()),
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


def train_variant(v: Config, name: str, seed: int, model, reader: Path, dataset, folder: Path, log=print) -> Path:
    """The variant's retrieval warm-up and GRPO for one seed, from `reader` (its LoRA, projector and policy; a
    retrieval head starts at the identity with the seed's random down-projection), in `folder` (resumable: GRPO
    resumes from last/). Returns `folder`. A folder made with other params or from another reader is retrained."""
    from ..harness.variants import checkpoint_id

    vs = derive(v, f"{name} seed {seed}", runtime={"seed": seed})
    made = {"kind": "retrieval_variant", "variant": name, "seed": seed, "reader": checkpoint_id(reader)}
    try:
        done = evaluate.existing(folder / "made.json", vs, made, even_fresh=True)  # training resumes under --fresh
    except evaluate.ResultsError as e:
        log(f"{e}: retraining {folder}")
        shutil.rmtree(folder)
        done = None
    if done is not None and done.get("finished"):
        return folder
    # recorded before training, so that a run stopped midway is resumed only under the same params and reader
    evaluate.save_result(folder / "made.json", vs, made, {"finished": False})
    seed_everything(seed)
    model.load(reader, parts=model.PARTS)
    if model.retrieval_head is not None:
        model.retrieval_head.reset()
    with model.using(cfg=vs):
        trainer = grpo.Trainer(model, dataset.split("train"), dataset.split("val"), folder, setting=dataset.setting)
        trainer.train(progress=False, reader_warmup=False)
    evaluate.save_result(folder / "made.json", vs, made, {"finished": True})
    return folder


def _paired_rows(name: str, mine: str, records: dict, seeds: list[int], n_boot: int, seed: int) -> list[dict]:
    """The variant's own retrieval minus each of AGAINST on the same checkpoints, pooled over seeds: one family."""
    rows = []
    for other in AGAINST:
        _, x, clusters = evaluate.correctness([records[(s, mine)] for s in seeds])
        _, y, _ = evaluate.correctness([records[(s, other)] for s in seeds])
        d = stats.paired_difference(x, y, clusters, n_boot, seed)
        rows.append({"variant": name, "a": mine, "b": other, "n": int(x.shape[1]), "difference": d["difference"],
                     "ci": d["ci"], "p": d["p"],
                     "seeds": [{"seed": s, "difference": v} for s, v in zip(seeds, d["per_seed"])]})
    return stats.with_holm(rows)


def run_retrieval_study(cfg: Config, run_dir: str | Path, setting: str, variants: dict[str, Config],
                        build: Callable[[Config], object], dataset, split: str = "test", log=print) -> dict:
    """The study above. `variants` maps each retrieval variant's name to its params (variants.variant_config of
    params/ablations/<name>.yaml); `build(params)` makes an ElasticMem of `dataset`'s bank under them with the
    sentence embedder (assemble.model_for(..., with_embedder=True)); each model is released after its variant."""
    from ..harness.variants import checkpoint_id, reader_checkpoint, release

    e, seed0 = cfg.eval, cfg.runtime.seed
    n_boot, seeds = e.bootstrap, list(e.retrieval_seeds)
    if not variants:
        raise ValueError("eval.retrieval_variants is empty: the retrieval study trains at least one retrieval variant")
    questions = list(dataset.split(split))
    questions = questions[:e.max_questions] if e.max_questions > 0 else questions
    questions = [q for q in questions if getattr(q, "evidence", None)]
    if not questions:
        raise ValueError(f"{setting} {split}: no questions with gold evidence: recall cannot be measured")
    val = [q for q in dataset.split("val") if getattr(q, "evidence", None)]
    if not val:
        raise ValueError(f"{setting} val: no questions with gold evidence: reading (oracle retrieval) cannot be "
                         f"checked")
    reader = reader_checkpoint(run_dir, setting, seed0)
    if reader is None:
        raise FileNotFoundError(f"no stage-0 reader at {train_dir(run_dir, setting, seed0) / 'reader'}: run 03 first")
    folder = Path(run_dir) / "retrieval" / setting
    meta = {"kind": "retrieval_study", "setting": setting, "split": split, "backbone": None,
            "qids": [q.qid for q in questions]}
    clusters = evaluate.memory_clusters([q.memory_id for q in questions])  # the resampling units
    recall, accuracy, reading, paired, bar, seconds, checkpoints = [], [], [], [], [], {}, {}

    def piece(model, v: Config, checkpoint: Path, what: str, compute, role: str) -> dict:
        """A measurement of one checkpoint under params `v`, saved in `role`'s folder (the reader's, or a
        variant's: a warm-up the guard rolled back is the reader's checkpoint measured under the variant's params)
        under the checkpoint's content hash, and reused like a result."""
        ckid = checkpoint_id(checkpoint)
        m = {**meta, "backbone": model.backbone.identity, "checkpoint_id": ckid, "what": what}

        def run():
            model.load(checkpoint, parts=model.parts if (checkpoint / "retrieval_head.pt").is_file()
                       else model.PARTS)
            return {"body": compute()}
        return evaluate.cached(folder / role / f"{what}-{ckid}.json", v, m, run)["body"]

    def recall_of(model, v, checkpoint, modes, role) -> dict:
        got = piece(model, v, checkpoint, f"recall-{'-'.join(modes)}-{split}", lambda: {
            mode: {str(z): r for z, r in recall_at(model, questions, mode, RECALL_ZS).items()} for mode in modes},
            role)
        return {mode: {int(z): r for z, r in got[mode].items()} for mode in modes}

    def reading_of(model, v, checkpoint, role) -> float:
        return piece(model, v, checkpoint, "reading-val", lambda: {"accuracy": reading_accuracy(model, val)},
                     role)["accuracy"]

    for k, (name, v) in enumerate(variants.items()):
        mine = v.retrieval.mode
        model = build(v)
        try:
            if k == 0:   # the reader's own retrievals, before any retrieval training (one reader: seed0's)
                t0 = time.perf_counter()
                base = recall_of(model, cfg, reader, RECALL_MODES, "reader")   # the run's params: any variant order
                for mode in RECALL_MODES:
                    recall += _recall_rows(UNTRAINED if mode == "control_token" else mode, {seed0: base[mode]},
                                           n_boot, seed0, clusters)
                before = reading_of(model, cfg, reader, "reader")
                seconds["reader"] = round(time.perf_counter() - t0, 1)
            warmed, trained, records, checkpoints[name] = {}, {}, {}, {}
            for s in seeds:
                t0 = time.perf_counter()
                where = train_variant(v, name, s, model, reader, dataset, folder / name / f"seed{s}", log)
                best = where / "best"
                checkpoints[name][s] = str(best)
                warmed[s] = recall_of(model, v, where / "retrieval_warmup", (mine,), name)[mine]
                trained[s] = recall_of(model, v, best, (mine,), name)[mine]
                guard = _guard_record(where)
                reading.append({"warmup": name, "seed": s, "before": before,
                                "after": reading_of(model, v, where / "retrieval_warmup", name),
                                "after_grpo": reading_of(model, v, best, name), **guard})
                got = piece(model, v, best, f"accuracy-{split}", lambda: {
                    mode: accuracy_with(model, questions, mode) for mode in (mine, *OTHER_MODES)}, name)
                for mode, recs in got.items():
                    records[(s, mode)] = recs
                seconds[f"{name} seed {s}"] = round(time.perf_counter() - t0, 1)
                r = reading[-1]
                log(f"{setting}: {name} seed {s}: reading {r['before']:.3f} -> {r['after']:.3f} (warm-up) -> "
                    f"{r['after_grpo']:.3f} (GRPO); recall@4 {np.mean(warmed[s][4]):.3f} -> "
                    f"{np.mean(trained[s][4]):.3f}; accuracy {mine} {np.mean([x['correct'] for x in got[mine]]):.3f}"
                    f", semantic {np.mean([x['correct'] for x in got['semantic']]):.3f} "
                    f"({seconds[f'{name} seed {s}']:.0f} s)")
        finally:
            release(model)
        recall += _recall_rows(f"{name}, after warm-up", warmed, n_boot, seed0, clusters, variant=name)
        recall += _recall_rows(f"{name}, after GRPO", trained, n_boot, seed0, clusters, variant=name)
        for mode in (mine, *OTHER_MODES):
            _, x, units = evaluate.correctness([records[(s, mode)] for s in seeds])  # sorted by qid
            b = stats.bootstrap_mean(x, units, n_boot, seed0)
            accuracy.append({"variant": name, "mode": mode, "accuracy": b["mean"], "ci": b["ci"],
                             "memory_tokens": float(np.mean([r["tokens"]["memory"] for s in seeds
                                                             for r in records[(s, mode)]])),
                             "seeds": [{"seed": s, "accuracy": a} for s, a in zip(seeds, b["per_seed"])]})
        paired += _paired_rows(name, mine, records, seeds, n_boot, seed0)
        bar.append(_quality_bar(name, mine, reading, recall, paired, base))

    first = next(iter(variants))
    out = write_json(Path(run_dir) / "metrics" / _file_name(cfg, setting),
                     {"setting": setting, "split": split, "n": len(questions), "seeds": seeds,
                      "variants": list(variants), "recall": recall, "accuracy": accuracy, "reading": reading,
                      "paired": paired, "quality_bar": bar,
                      "checkpoint": checkpoints[first][seeds[0]], "checkpoints": checkpoints,
                      "paired_control_token_minus": {x["b"]: {k: x[k] for k in ("difference", "ci", "p", "p_holm",
                                                                                "seeds")}
                                                     for x in paired if x["variant"] == first}})
    import json
    return {"path": out, "data": json.loads(out.read_text()), "seconds": seconds}


def _file_name(cfg: Config, setting: str) -> str:
    settings = cfg.grpo.settings or cfg.data.settings
    return "retrieval.json" if len(settings) <= 1 else f"retrieval-{setting}.json"


def _guard_record(folder: Path) -> dict:
    """What the warm-up's reading guard did (training/retrieval_warmup.py's closing log line), if it ran."""
    import json

    log = folder / "train_log.jsonl"
    lines = [json.loads(x) for x in log.read_text().splitlines()] if log.is_file() else []
    starts = [i for i, r in enumerate(lines) if r.get("stage") == "retrieval_warmup" and r.get("step") == 0]
    lines = lines[starts[-1]:] if starts else lines   # an interrupted warm-up restarts: its last run counts
    last = [r for r in lines if r.get("stage") == "retrieval_warmup_reading" and "steps_run" in r]
    steps = sum(r.get("stage") == "retrieval_warmup" for r in lines)
    return {"rolled_back_at": last[-1]["rolled_back_at"] if last else None, "steps_run": steps}


def _quality_bar(name: str, mine: str, reading: list, recall: list, paired: list, base: dict) -> dict:
    """The issue's bar for one variant: reading held on every seed, recall@4 after GRPO >= 0.8x the embedder's,
    accuracy not below the embedder's (the paired interval reaching 0 or above)."""
    mine_r = [r for r in reading if r["warmup"] == name]
    rec = next(r["recall"] for r in recall if r["mode"] == f"{name}, after GRPO" and r["z"] == 4)
    sem = float(np.mean(base["semantic"][4]))
    vs = next(x for x in paired if x["variant"] == name and x["b"] == "semantic")
    return {"variant": name, "mode": mine,
            "reading_holds": all(r["after"] >= r["before"] - READING_GUARD for r in mine_r),
            "worst_reading_drop": max(r["before"] - r["after"] for r in mine_r),
            "recall_at_4": rec, "semantic_recall_at_4": sem, "recall_ratio": rec / sem if sem else float("nan"),
            "recall_holds": rec >= RECALL_RATIO * sem,
            "accuracy_minus_semantic": vs["difference"], "ci": vs["ci"], "accuracy_holds": vs["ci"][1] >= 0}


def recall_table(data: dict):
    """recall@Z per mode (rows) and Z (columns) from a retrieval.json, as a DataFrame."""
    import pandas as pd

    df = pd.DataFrame(data["recall"])
    order = list(dict.fromkeys(df["mode"]))
    return df.pivot(index="mode", columns="z", values="recall").loc[order].round(3)
