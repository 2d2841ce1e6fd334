"""Benchmark (a script, not collected by pytest): float32 against bfloat16 compute on this CPU, side by side.

    .venv/bin/python tests/benchmarks/bench_dtype.py [--params params/mini.yaml] [--rounds 3] [--parity-steps 150]

bfloat16 here means the route `runtime.dtype: bfloat16` (and `auto` on a CPU with AMX/AVX512-BF16) takes: the frozen
base held in bfloat16 once, LoRA, projector and budget policy in float32 (peft keeps adapters in float32), log-probs
computed from float32 logits. Same params, seed, data and bank recipe for both, in one run:
- a stage-0 step (reader warm-up: memory as text, cross-entropy on the gold answer, batch grpo.sft_batch_size);
- a GRPO step (grpo.questions_per_step questions, G rollouts, inner passes);
- a greedy evaluation of 16 validation questions (ElasticMem's latent path);
the modes alternate over --rounds rounds (this shared CPU's speed drifts) and the medians give the ratios;
- reading-accuracy parity: a stage-0 reader trained for --parity-steps steps in each dtype from the same seed, then
  text-memory accuracy on the validation split, paired per question; the interval is a bootstrap over memories.
The last line reads `bf16 vs fp32: training step <r>x, evaluation <r>x, reading accuracy <d> [<lo>, <hi>]`.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from elasticmem_core.core import backbone as bb
from elasticmem_core.core import experiment, stats
from elasticmem_core.harness import checks
from elasticmem_core.method import assemble
from elasticmem_core.training import grpo


def build_model(params: str, dtype: str, folder: str, extra: list[str]):
    """mini-personamem's model in `dtype` under `params` + `extra`, its bank built (and timed) in folder/<dtype>:
    (model, dataset, bank seconds); bench_align.py builds its models here too."""
    cfg = checks.load(params, [f"runtime.dtype={dtype}", "data.settings=[mini-personamem]", *extra])
    experiment.seed_everything(cfg.runtime.seed)
    backbone = bb.from_config(cfg)
    dataset = assemble.load_setting(cfg, "mini-personamem", backbone, folder)
    t0 = time.perf_counter()
    bank = assemble.bank_for(cfg, dataset, backbone, f"{folder}/{dtype}", progress=False)
    bank_s = time.perf_counter() - t0
    experiment.seed_everything(cfg.runtime.seed)
    return assemble.model_for(cfg, dataset, backbone, bank), dataset, bank_s


def setup(params: str, dtype: str, folder: str, extra: list[str]):
    model, dataset, bank_s = build_model(params, dtype, folder, extra)
    trainer = grpo.Trainer(model, dataset.split("train"), dataset.split("val"), f"{folder}/{dtype}/train")
    return trainer, dataset, bank_s


def seconds(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def reading(trainer, dataset, steps: int) -> list[dict]:
    """Train a fresh stage-0 reader for `steps` steps, then greedy text-memory answers on the validation split."""
    trainer.supervised(steps, "text", "parity")
    model, previous = trainer.model, trainer.model.memory
    model.memory = "text"
    qs = dataset.split("val")
    out = [o for i in range(0, len(qs), 16) for o in model.answer(qs[i:i + 16])]
    model.memory = previous
    for o, q in zip(out, qs):
        o["memory_id"] = q.memory_id
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--params", default="params/mini.yaml")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--parity-steps", type=int, default=150, help="stage-0 steps of each reader (0: skip parity)")
    ap.add_argument("--set", nargs="*", default=[], help="extra params overrides for both dtypes")
    args = ap.parse_args()
    folder = tempfile.mkdtemp(prefix="bench_dtype_")
    if not (bb.cpu_supports_bf16() or torch.cuda.is_available()):
        raise SystemExit("bench_dtype: this CPU has no native bf16 (no amx_bf16 or avx512_bf16 flag in /proc/cpuinfo); "
                         "bfloat16 would be emulated here (slower than float32) and auto takes float32, so there is nothing "
                         "to compare")
    dtypes = ("float32", "bfloat16")
    runs = {d: setup(args.params, d, folder, args.set) for d in dtypes}
    val16 = runs["float32"][1].split("val")[:16]
    work = {
        "stage-0 step": lambda t: t.supervised(1, "text", "bench"),
        "GRPO step": lambda t: t.train_step(),
        "evaluation of 16": lambda t: t.model.answer(val16),
    }
    times = {(w, d): [] for w in work for d in dtypes}
    for d in dtypes:  # warm-up: allocator, oneDNN kernels
        for fn in work.values():
            fn(runs[d][0])
    for _ in range(args.rounds):
        for w, fn in work.items():
            for d in dtypes:
                times[w, d].append(seconds(lambda: fn(runs[d][0])))
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"backbone {runs['float32'][0].model.backbone.name}, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}, bf16 CPU support: {bb.cpu_supports_bf16()}, rounds {args.rounds}")
    print(f"  {'bank build':18s} fp32 {runs['float32'][2]:7.1f} s  bf16 {runs['bfloat16'][2]:7.1f} s  "
          f"{runs['float32'][2] / runs['bfloat16'][2]:.2f}x")
    for w in work:
        print(f"  {w:18s} fp32 {med[w, 'float32']:7.2f} s  bf16 {med[w, 'bfloat16']:7.2f} s  "
              f"{med[w, 'float32'] / med[w, 'bfloat16']:.2f}x   (fp32 {', '.join(f'{t:.2f}' for t in times[w, 'float32'])};"
              f" bf16 {', '.join(f'{t:.2f}' for t in times[w, 'bfloat16'])})")
    train_r = min(med["stage-0 step", "float32"] / med["stage-0 step", "bfloat16"],
                  med["GRPO step", "float32"] / med["GRPO step", "bfloat16"])
    eval_r = med["evaluation of 16", "float32"] / med["evaluation of 16", "bfloat16"]
    parity = "not measured (--parity-steps 0)"
    if args.parity_steps > 0:
        answers = {}
        for d in dtypes:
            trainer, dataset, _ = setup(args.params, d, folder + "/parity", args.set)  # a fresh reader, same seed
            answers[d] = reading(trainer, dataset, args.parity_steps)
            print(f"  reader after {args.parity_steps} stage-0 steps, {d}: text-memory validation accuracy "
                  f"{sum(o['correct'] for o in answers[d]) / len(answers[d]):.3f} (n = {len(answers[d])})")
        diff = stats.paired_difference([o["correct"] for o in answers["bfloat16"]],
                                       [o["correct"] for o in answers["float32"]],
                                       [o["memory_id"] for o in answers["float32"]])
        parity = f"{diff['difference']:+.3f} [{diff['ci'][0]:+.3f}, {diff['ci'][1]:+.3f}]"
    print(f"bf16 vs fp32: training step {train_r:.2f}x, evaluation {eval_r:.2f}x, reading accuracy {parity}")


if __name__ == "__main__":
    main()
