"""The stage-0 reader's learning curve over seeds: does the reader warm-up reach the same reading on every seed?

    .venv/bin/python scripts/reader_curve.py [-p params/mini.yaml] [--seeds 42 43 44] [--set KEY=VALUE ...]
                                             [--out outputs/reader-curve]

For each seed: a fresh LoRA on the params' backbone, stage 0 (grpo.reader_warmup_steps steps, memory as text, the
params' schedule), with text-memory validation accuracy every grpo.reader_eval_every steps (default 50 here).
Writes <out>/reader_curve.json (per seed: the curve, the best point, seconds per step) and prints one line per seed
and the spread. The target: every seed >= 0.55 at its best point, all within 0.10 of each other.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

from elasticmem_core.core import backbone as bb
from elasticmem_core.core.backbone import compute_dtype
from elasticmem_core.core.experiment import code_version, environment, resolve, seed_everything, write_json
from elasticmem_core.harness.runner import resolve_params
from elasticmem_core.method import assemble
from elasticmem_core.training import grpo


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-p", "--params", action="append", default=None)
    ap.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    ap.add_argument("--set", dest="overrides", nargs="*", default=[])
    ap.add_argument("--out", default="outputs/reader-curve")
    ap.add_argument("--setting", default="mini-personamem")
    args = ap.parse_args()
    params = args.params or ["params/mini.yaml"]
    out = resolve(args.out)
    rows = []
    for seed in args.seeds:
        cfg = resolve_params(params, ["grpo.reader_eval_every=50", *args.overrides, f"runtime.seed={seed}"])
        seed_everything(seed)
        backbone = bb.from_config(cfg)
        dataset = assemble.load_setting(cfg, args.setting, backbone, out)
        bank = assemble.bank_for(cfg, dataset, backbone, out, progress=False)
        seed_everything(seed)
        model = assemble.model_for(cfg, dataset, backbone, bank)
        folder = out / f"seed{seed}"
        if (folder / "train_log.jsonl").exists():
            (folder / "train_log.jsonl").unlink()  # a curve is drawn whole: no mix of two runs' lines
        trainer = grpo.Trainer(model, dataset.split("train"), dataset.split("val"), folder, setting=args.setting)
        t0 = time.perf_counter()
        history = trainer.supervised(cfg.grpo.reader_warmup_steps, "text", "reader_warmup")
        seconds = time.perf_counter() - t0
        log = [json.loads(line) for line in (folder / "train_log.jsonl").read_text().splitlines()]
        curve = [(r["step"], r["val_text_accuracy"]) for r in log if r["stage"] == "reader_val"]
        best = next(r for r in log if r["stage"] == "reader_selected")
        step_s = statistics.median(r["seconds"] for r in history)
        rows.append({"seed": seed, "curve": curve, "best_step": best["step"], "best": best["val_text_accuracy"],
                     "final_loss": statistics.mean(r["loss"] for r in history[-10:]),
                     "seconds_per_step": step_s, "seconds": round(seconds, 1)})
        print(f"seed {seed}: " + ", ".join(f"{s}: {a:.3f}" for s, a in curve) +
              f" | best {best['val_text_accuracy']:.3f} at {best['step']} | loss(last 10) "
              f"{rows[-1]['final_loss']:.3f} | {step_s:.2f} s/step, {seconds / 60:.1f} min", flush=True)
        del trainer, model, backbone, bank
    bests = [r["best"] for r in rows]
    verdict = min(bests) >= 0.55 and max(bests) - min(bests) <= 0.10
    summary = {"params": params, "overrides": args.overrides, "setting": args.setting,
               "dtype": compute_dtype(cfg), "backbone": cfg.runtime.backbone,
               "n_val": len(dataset.split("val")), "seeds": rows, "min_best": min(bests),
               "spread": max(bests) - min(bests), "target_met": verdict,
               "code_version": code_version(), "environment": environment()}
    write_json(out / "reader_curve.json", summary)
    print(f"reader: best text-memory validation accuracy {', '.join(f'{b:.3f}' for b in bests)}; min {min(bests):.3f}, "
          f"spread {max(bests) - min(bests):.3f}; target (>= 0.55 each, spread <= 0.10) "
          f"{'met' if verdict else 'NOT met'}")


if __name__ == "__main__":
    main()
