"""Benchmark (a script, not collected by pytest): seconds per GRPO step, grouped vs naive rollouts vs the policy-only
phase (questions per minute), and peak memory.

    .venv/bin/python tests/benchmarks/bench_grpo.py [--params params/mini.yaml] [--steps 3] [--group-size 4]

Same questions, seed and model, in one run:
- grouped: `grpo.Trainer.train_step` - the G rollouts of a question are sampled, scored and trained on as ONE padded
  batch (plan, generation, old log-probs and each inner pass's loss);
- naive (the authors' way): the same step with each of the G rollouts run separately (batch 1) for sampling, old
  log-probs and the loss passes; advantages still normalised over the G.
- policy_only (grpo.policy_only): the same rollouts, then only the budget policy's surrogate (no reasoner pass in
  the loss, no backward through the LM); target: at least 3x the joint (grouped) step's questions per minute.
Steps alternate between the modes (this shared CPU's speed drifts); the median seconds per step give the ratio.
Peak memory: RSS sampled every 20 ms during each step, minus the RSS just before it (ru_maxrss cannot be used:
setup - backbone conversion, bank build - already sets the process maximum).
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time

import torch

from elasticmem_core.core import backbone as bb
from elasticmem_core.core import experiment, sampling
from elasticmem_core.harness import checks
from elasticmem_core.method import assemble
from elasticmem_core.method import rollout as rollouts
from elasticmem_core.training import grpo


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def setup(params: str, group_size: int, folder: str, policy_only: bool = False):
    cfg = checks.load(params, [f"grpo.group_size={group_size}", "grpo.questions_per_step=1",
                               "data.settings=[mini-personamem]", f"grpo.policy_only={str(policy_only).lower()}"])
    experiment.seed_everything(cfg.runtime.seed)
    backbone = bb.from_config(cfg)
    dataset = assemble.load_setting(cfg, "mini-personamem", backbone, folder)
    bank = assemble.bank_for(cfg, dataset, backbone, folder, progress=False)
    model = assemble.model_for(cfg, dataset, backbone, bank)
    return grpo.Trainer(model, dataset.split("train"), [], f"{folder}/train")


def naive_step(trainer: grpo.Trainer) -> None:
    """train_step with every rollout of the group run on its own."""
    model, g = trainer.model, trainer.cfg.grpo
    (j, q), = trainer._step_questions(trainer.step)[0]
    gen = sampling.generator_for(model.device, trainer.cfg.runtime.seed * 1_000_003 + trainer.step * 10_007 + j)
    singles = [rollouts.rollout(model, q, 1, trainer.reward_fn, gen) for _ in range(g.group_size)]
    advantages = rollouts.group_advantages(torch.cat([s.rewards for s in singles]), g.adv_clip)
    for s, a in zip(singles, advantages):
        s.advantages = a.reshape(1)
        rollouts.score_old(model, s)  # the authors compute old log-probs in their own pass
    model.eval()
    for _ in range(g.inner_passes):
        for s in singles:
            loss, _ = grpo.group_loss(model, s)
            (loss / len(singles)).backward()
        trainer._apply_gradients()
    trainer.scheduler.step()
    trainer.step += 1


def measure(fn) -> tuple[float, float, object]:
    """Seconds of fn(), its peak RSS above the RSS before it (MB, sampled every 20 ms), and its result."""
    base, peak, done = rss_mb(), [0.0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], rss_mb())
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    t0 = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - t0
    done.set()
    sampler.join()
    return seconds, max(0.0, peak[0] - base), out


def timed(trainer, mode: str) -> tuple[float, float]:
    """Seconds of one step and its peak RSS above the RSS before it (MB)."""
    seconds, peak, _ = measure(lambda: naive_step(trainer) if mode == "naive" else trainer.train_step())
    return seconds, peak


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--params", default="params/mini.yaml")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--group-size", type=int, default=4)
    args = ap.parse_args()
    folder = tempfile.mkdtemp(prefix="bench_grpo_")
    trainer = setup(args.params, args.group_size, folder)
    # the policy-only phase (grpo.policy_only): its own model, whose reasoner and projector the trainer freezes
    trainers = {"grouped": trainer, "naive": trainer, "policy_only": setup(args.params, args.group_size, folder, True)}
    timed(trainer, "grouped")  # warm-up (allocator, kernels)
    timed(trainers["policy_only"], "policy_only")
    modes = ("grouped", "naive", "policy_only")
    times, peaks = {m: [] for m in modes}, {m: [] for m in modes}
    for _ in range(args.steps):
        for mode in modes:
            seconds, peak = timed(trainers[mode], mode)
            times[mode].append(seconds)
            peaks[mode].append(peak)
    med = {m: statistics.median(t) for m, t in times.items()}
    print(f"backbone {trainer.model.backbone.name}, G={args.group_size}, {args.steps} steps per mode, "
          f"torch threads {torch.get_num_threads()}")
    for mode in modes:
        print(f"  {mode:11s} median {med[mode]:7.2f} s/step = {60 / med[mode]:5.1f} questions/min  "
              f"(all: {', '.join(f'{t:.2f}' for t in times[mode])})  peak +{max(peaks[mode]):.0f} MB")
    print(f"  speed-up grouped vs naive: {med['naive'] / med['grouped']:.2f}x")
    print(f"  policy-only vs joint (grouped) step, questions per minute: {med['grouped'] / med['policy_only']:.2f}x "
          f"(target >= 3x)")


if __name__ == "__main__":
    main()
