"""Device check (a script, not collected by pytest): the paper path's GRPO on an accelerator, in bfloat16.

    .venv/bin/python tests/benchmarks/gpu_check.py                   # on a machine with a GPU (scripts/gpu_check.sh)
    .venv/bin/python tests/benchmarks/gpu_check.py --device cpu --backbone tiny-random --steps 2   # the CPU test

On the shipped SmolLM2-135M and MemorySuite-mini's PersonaMem setting, with the paper's choices (control-token
retrieval, last-layer cache, MLP projector, Transformer budget policy, the authors' trainer settings):
1. left padding: the last-column logits of a left-padded batch equal each row's batch-1 logits within bfloat16
   tolerance, and no real position is NaN (a left-padded row's pad queries see no key at all; transformers 5.x no
   longer works around that, so a wrong mask would show here);
2. `--steps` GRPO steps: every loss finite, no skipped (non-finite) gradient, each rollout's generator on the
   model's device;
3. prints seconds and peak memory per step (CUDA: max allocated in the step; CPU: process peak RSS).
Exits non-zero on any failure. Under 8 minutes on one GPU (10 steps; the bank build is the first minute).
"""
from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time

import torch

from elasticmem_core.core import backbone as bb
from elasticmem_core.core import experiment
from elasticmem_core.harness import checks
from elasticmem_core.method import assemble
from elasticmem_core.method import rollout as rollouts
from elasticmem_core.training import grpo

SETTING = "mini-personamem"


def build(args, folder: str):
    overrides = [f"runtime.backbone={args.backbone}", f"runtime.device={args.device}", "runtime.dtype=bfloat16",
                 f"data.settings=[{SETTING}]", f"grpo.settings=[{SETTING}]", "retrieval.mode=control_token",
                 "bank.cache_layer=-1", "projector.kind=mlp", "budget.policy=transformer",
                 "grpo.reader_warmup_steps=0", "grpo.sft_steps=0", f"grpo.max_steps={args.steps}",
                 "grpo.eval_every=1000000", "grpo.train_mode_passes=true", "grpo.loss_type=sequence_mean",
                 "grpo.backward=rollout" if args.per_rollout else "grpo.backward=group"]
    if args.backbone == "tiny-random":
        overrides += ["bank.n_c=8", "budget.b_max=8", "budget.uniform_budget=4", "retrieval.top_z=4",
                      "budget.hidden=64", "projector.hidden=256", "lora.r=8", "lora.alpha=16"]
    cfg = checks.load(experiment.resolve(args.params), overrides)
    experiment.seed_everything(cfg.runtime.seed)
    backbone = bb.from_config(cfg)
    dataset = assemble.load_setting(cfg, SETTING, backbone, folder)
    bank = assemble.bank_for(cfg, dataset, backbone, folder, progress=False)
    return cfg, dataset, assemble.model_for(cfg, dataset, backbone, bank)


def check_left_padding(model, questions, rel_tol: float) -> float:
    """Max |batched - batch-1| of the last-column logits, relative to the logits' scale; raises above rel_tol."""
    model.eval()
    with torch.no_grad():
        plan = model.plan(questions, sample=False)
        batch = model.build(questions, plan)
        assert len({int(m.sum()) for m in batch.attention_mask}) > 1, "the check needs rows of different lengths"
        out = model.reasoner(inputs_embeds=batch.inputs_embeds, attention_mask=batch.attention_mask,
                             position_ids=batch.position_ids).logits.float()
        real = batch.attention_mask.bool()
        if not torch.isfinite(out[real]).all():
            raise AssertionError("left-padded batch: non-finite logits at real positions")
        worst = 0.0
        for i, q in enumerate(questions):
            alone = model.build([q], rollouts.select_rows(plan, [i]))
            one = model.reasoner(inputs_embeds=alone.inputs_embeds, attention_mask=alone.attention_mask,
                                 position_ids=alone.position_ids).logits.float()[0, -1]
            scale = one.abs().max().clamp(min=1.0)
            worst = max(worst, float((out[i, -1] - one).abs().max() / scale))
    if worst > rel_tol:
        raise AssertionError(f"left-padded logits differ from batch-1 logits by {worst:.4f} of their scale "
                             f"(tolerance {rel_tol})")
    return worst


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda", help="cuda (the check) | cpu (the test suite's run of it)")
    ap.add_argument("--backbone", default="smollm2-135m", help="a backbone the package ships (or tiny-random)")
    ap.add_argument("--params", default="params/mini.yaml")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--per-rollout", action="store_true", help="grpo.backward=rollout")
    ap.add_argument("--rel-tol", type=float, default=0.05, help="left-padding tolerance (bfloat16: ~3 digits)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        t0 = time.perf_counter()
        cfg, dataset, model = build(args, folder)
        print(f"setup {time.perf_counter() - t0:.1f} s: {args.backbone} on {model.device} ({model.backbone.dtype}), "
              f"{len(model.bank.chunk_ids)} chunks in the bank")
        train = dataset.split("train")
        worst = check_left_padding(model, train[:4], args.rel_tol)
        print(f"left padding: max |batched - batch-1| = {worst:.4f} of the logits' scale (tolerance {args.rel_tol})")
        trainer = grpo.Trainer(model, train, [], folder + "/train", setting=SETTING,
                               evaluate_fn=lambda qs: float("nan"))
        records = []
        for _ in range(args.steps):
            r = trainer.train_step()
            records.append(r)
            print(f"step {r['step']}: {r['seconds']:.2f} s, peak {r['peak_mb']:.0f} MB, reward {r['reward_mean']:.2f}, "
                  f"lm_loss {r['lm_loss']:+.4f}, policy_loss {r.get('policy_loss', 0.0):+.4f}")
    bad = [r["step"] for r in records if not all(math.isfinite(r[k]) for k in ("lm_loss", "policy_loss")
                                                 if k in r)]
    if bad or trainer.skipped:
        raise AssertionError(f"non-finite losses at steps {bad}; {trainer.skipped} skipped gradient(s)")
    secs = sorted(r["seconds"] for r in records[1:] or records)
    summary = {"device": str(model.device), "steps": len(records), "median_seconds": secs[len(secs) // 2],
               "peak_mb": max(r["peak_mb"] for r in records), "left_padding_rel_diff": worst,
               "skipped": trainer.skipped}
    print("OK", summary)
    return summary


if __name__ == "__main__":
    try:
        main()
    except AssertionError as e:
        print("FAILED:", e, file=sys.stderr)
        sys.exit(1)
