"""Benchmark (a script, not collected by pytest): what one alignment step costs, float32 against bfloat16, side by side.

    .venv/bin/python tests/benchmarks/bench_align.py [--params params/mini.yaml] [--rounds 3] [--layer mid]
                                                     [--set align.train_lora=true ...]

The alignment stage of the compression table (params/grids/compression.yaml's objectives: reconstruction,
self-distillation and answer cross-entropy, batch align.batch_size) on the cache of --layer behind an MLP projector,
the same params, seed, data and bank recipe for both dtypes in one run; the dtypes alternate over --rounds rounds (this
shared CPU's speed drifts) and the medians give the ratio. The base model's own LoRA (untrained) reads: a step's cost
does not depend on the reader's weights. Prints s/step per dtype and objective, then what N, 4N and 16N steps cost at
the faster dtype for --n, the learning curve's unit (one seed, one arm).
The last line reads `alignment step bf16 vs fp32: <r>x; <N>/<4N>/<16N> steps: <m>/<m>/<m> min at <dtype>`. On a CPU
without native bf16 (no amx_bf16 / avx512_bf16 flag) only float32 is timed and the ratio says so.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from bench_dtype import build_model   # this folder is on sys.path when the script runs

from elasticmem_core.core import backbone as bb
from elasticmem_core.harness import checks
from elasticmem_core.training import alignment

OBJECTIVES = "align.objectives={reconstruction: 1.0, self_distill: 1.0, answer: 0.5}"


def setup(params: str, dtype: str, layer: int, folder: str, extra: list[str]):
    model, dataset, bank_s = build_model(params, dtype, folder, [
        f"bank.cache_layer={layer}", "projector.kind=mlp", "budget.policy=uniform", "align.steps=1000",
        "align.b_max=32", OBJECTIVES, *extra])
    cfg = model.cfg
    alignment.check(model)
    questions = dataset.split("train")
    corpus = alignment.corpus_of(model, questions)
    params = alignment.trainable(model)
    opt = torch.optim.AdamW(params, lr=cfg.align.lr)
    model.train()
    return model, cfg, corpus, questions, params, opt, bank_s


def step(run, i: int) -> dict[str, float]:
    """One alignment step as the stage runs it; seconds per objective (forward) and in all."""
    model, cfg, corpus, questions, params, opt, _ = run
    batch = alignment.step_batch(cfg, corpus, questions, i)
    t0 = time.perf_counter()
    parts, losses = {}, []
    for name, w in cfg.align.objectives.items():
        t = time.perf_counter()
        losses.append(w * alignment.OBJECTIVES[name](model, batch))
        parts[name] = time.perf_counter() - t
    sum(losses).backward()
    torch.nn.utils.clip_grad_norm_(params, cfg.grpo.grad_clip)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return {**parts, "step": time.perf_counter() - t0}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--params", default="params/mini.yaml")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--layer", default="mid", help="cache layer: a number or mid")
    ap.add_argument("--n", type=int, default=50, help="the learning curve's N (points at 0, N, 4N, 16N steps)")
    ap.add_argument("--set", nargs="*", default=[], help="extra params overrides for both dtypes")
    args = ap.parse_args()
    folder = tempfile.mkdtemp(prefix="bench_align_")
    n_layers = bb.from_config(checks.load(args.params)).model.config.num_hidden_layers
    layer = n_layers // 2 if args.layer == "mid" else int(args.layer)
    # bf16 only where the CPU computes it natively: elsewhere the package refuses it (runtime.dtype), as torch would
    # emulate it slower than float32, so the ratio is not measured there
    dtypes = ("float32", "bfloat16") if bb.cpu_supports_bf16() or torch.cuda.is_available() else ("float32",)
    runs = {d: setup(args.params, d, layer, folder, args.set) for d in dtypes}
    for d in dtypes:   # warm-up: allocator, oneDNN kernels
        step(runs[d], 0)
    times = {d: [] for d in dtypes}
    for r in range(args.rounds):
        for d in dtypes:
            times[d].append(step(runs[d], r + 1))
    a = runs["float32"][1].align
    print(f"backbone {runs['float32'][0].backbone.name}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"bf16 CPU support: {bb.cpu_supports_bf16()}, cache layer {layer}, batch {a.batch_size}, "
          f"rounds {args.rounds}, train_lora {a.train_lora}")
    med = {}
    for d in dtypes:
        med[d] = {k: statistics.median(t[k] for t in times[d]) for k in times[d][0]}
        # answer CE reads the logits of self_distill's latent pass (cached on the batch): its own time is ~0
        reused = {"answer": " (self_distill's pass)"} if "self_distill" in med[d] else {}
        print(f"  {d:9s} bank build {runs[d][6]:6.1f} s; step {med[d]['step']:6.2f} s (forward: "
              + ", ".join(f"{k} {v:.2f} s{reused.get(k, '')}" for k, v in med[d].items() if k != "step")
              + "; steps " + ", ".join(f"{t['step']:.2f}" for t in times[d]) + ")")
    ratio = f"{med['float32']['step'] / med['bfloat16']['step']:.2f}x" if "bfloat16" in med else \
        "not measured (no native bf16 on this CPU)"
    fast = min(dtypes, key=lambda d: med[d]["step"])
    cost = [k * args.n * med[fast]["step"] / 60 for k in (1, 4, 16)]
    print(f"alignment step bf16 vs fp32: {ratio}; {args.n}/{4 * args.n}/{16 * args.n} steps: "
          f"{cost[0]:.0f}/{cost[1]:.0f}/{cost[2]:.0f} min at {fast}")


if __name__ == "__main__":
    main()
