"""Benchmark (a script, not collected by pytest): seconds per GRPO step, grouped vs naive rollouts, and peak memory.

    .venv/bin/python tests/benchmarks/bench_grpo.py [--params params/mini.yaml] [--steps 3] [--group-size 4]

Same questions, seed and model, in one run:
- grouped: `grpo.Trainer.train_step` - the G rollouts of a question are sampled, scored and trained on as ONE padded
  batch (plan, generation, old log-probs and each inner pass's loss);
- naive (the authors' way): the same step with each of the G rollouts run separately (batch 1) for sampling, old
  log-probs and the loss passes; advantages still normalised over the G.
Steps alternate between the two modes (this shared CPU's speed drifts); the median seconds per step give the ratio.
Peak memory: each mode once more in a fresh process, peak RSS minus RSS after setup.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import torch

from elasticmem_core import assemble, config, experiment, grpo
from elasticmem_core import backbone as bb


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def setup(params: str, group_size: int, folder: str):
    cfg = config.load(params, [f"grpo.group_size={group_size}", "grpo.questions_per_step=1",
                               "data.settings=[mini-personamem]"])
    experiment.seed_everything(cfg.runtime.seed)
    backbone = bb.from_config(cfg)
    dataset = assemble.load_setting(cfg, "mini-personamem", backbone, folder)
    bank = assemble.bank_for(cfg, dataset, backbone, folder, progress=False)
    model = assemble.model_for(cfg, dataset, backbone, bank)
    return grpo.Trainer(model, dataset.split("train"), [], f"{folder}/train")


def naive_step(trainer: grpo.Trainer) -> None:
    """train_step with every rollout of the group run on its own."""
    model, g = trainer.model, trainer.cfg.grpo
    (j, q), = trainer._step_questions(trainer.step)
    gen = torch.Generator().manual_seed(trainer.cfg.runtime.seed * 1_000_003 + trainer.step * 10_007 + j)
    singles = [grpo.rollout(model, q, 1, trainer.reward_fn, gen) for _ in range(g.group_size)]
    advantages = grpo.group_advantages(torch.cat([s.rewards for s in singles]), g.adv_clip)
    for s, a in zip(singles, advantages):
        s.advantages = a.reshape(1)
    model.eval()
    for _ in range(g.inner_passes):
        for s in singles:
            loss, _ = grpo.group_loss(model, s)
            (loss / len(singles)).backward()
        trainer._apply_gradients()
    trainer.scheduler.step()
    trainer.step += 1


def timed(trainer, mode: str) -> float:
    t0 = time.perf_counter()
    trainer.train_step() if mode == "grouped" else naive_step(trainer)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--params", default="params/mini.yaml")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--group-size", type=int, default=4)
    ap.add_argument("--peak-child", choices=["grouped", "naive"])
    args = ap.parse_args()
    folder = tempfile.mkdtemp(prefix="bench_grpo_")
    trainer = setup(args.params, args.group_size, folder)
    if args.peak_child:
        base = rss_mb()
        for _ in range(2):
            timed(trainer, args.peak_child)
        print(json.dumps({"peak_mb": rss_mb() - base}))
        return
    timed(trainer, "grouped")  # warm-up (allocator, kernels)
    times = {"grouped": [], "naive": []}
    for _ in range(args.steps):
        for mode in ("grouped", "naive"):
            times[mode].append(timed(trainer, mode))
    med = {m: statistics.median(t) for m, t in times.items()}
    peaks = {}
    for mode in ("grouped", "naive"):
        out = subprocess.run([sys.executable, __file__, "--params", args.params, "--group-size",
                              str(args.group_size), "--peak-child", mode], capture_output=True, text=True, check=True)
        peaks[mode] = json.loads(out.stdout.strip().splitlines()[-1])["peak_mb"]
    print(f"backbone {trainer.model.backbone.name}, G={args.group_size}, {args.steps} steps per mode, "
          f"torch threads {torch.get_num_threads()}")
    for mode in ("grouped", "naive"):
        print(f"  {mode:8s} median {med[mode]:7.2f} s/step  (all: {', '.join(f'{t:.2f}' for t in times[mode])})"
              f"  peak +{peaks[mode]:.0f} MB")
    print(f"  speed-up grouped vs naive: {med['naive'] / med['grouped']:.2f}x")


if __name__ == "__main__":
    main()
