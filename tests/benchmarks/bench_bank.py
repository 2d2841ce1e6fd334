"""Benchmark (a script, not collected by pytest): bank build throughput and peak memory.

    .venv/bin/python tests/benchmarks/bench_bank.py [--chunks 48] [--batch-size 16] [--rounds 3]

Compares, on the same chunks and backbone (the embedded SmolLM2-135M by default), in one run:
- authors: one chunk per forward pass of the full causal LM with output_hidden_states (logits computed and
  discarded), key and cache sliced from hidden_states[-1], all kept in memory and saved as one .pt file;
- bank.build at batch size 1 (this implementation without batching);
- bank.build batched (length-bucketed, decoder stack only, shards written, checksummed and reloaded).
The methods run interleaved over several rounds (this shared CPU's speed drifts by 2-4x within seconds); the
median wall time per method gives the ratios. Peak memory: bank.build of N and 4N chunks in fresh processes,
peak RSS minus RSS after loading the backbone.
"""
from __future__ import annotations

import argparse
import json
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from elasticmem_core.core.backbone import load_backbone
from elasticmem_core.core.config import BankConfig
from elasticmem_core.memorysuite.records import Chunk
from elasticmem_core.method import bank as B

WORDS = ("i moved to lisbon last spring and started learning portuguese my sister visits every month we like "
         "hiking near the coast the weather was warm so we cooked fish rice and salad then watched a film about "
         "music travel work project deadline coffee morning dog garden book friend city train").split()


def make_chunks(n: int, seed: int = 0) -> list[Chunk]:
    """Turn pairs of varied length (about 20-300 tokens), spread over memories of 16 chunks."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        user = " ".join(rng.choices(WORDS, k=rng.randint(4, 120)))
        assistant = " ".join(rng.choices(WORDS, k=rng.randint(4, 120)))
        out.append(Chunk(f"m{i // 16}#{i % 16}", f"m{i // 16}", i % 16, f"User: {user}\nAssistant: {assistant}"))
    return out


@torch.no_grad()
def authors_build(chunks: list[Chunk], backbone, cfg: BankConfig, out: Path) -> None:
    """The authors' approach: one chunk per forward pass of the full model."""
    keys, caches = [], []
    for c in chunks:
        enc = backbone.tokenizer(c.text, return_tensors="pt", truncation=True, max_length=cfg.max_length)
        h = backbone.model(**enc, output_hidden_states=True).hidden_states[-1][0]  # [T, H]
        cache = h[-cfg.n_c:]
        if len(cache) < cfg.n_c:
            cache = torch.cat([cache.new_zeros(cfg.n_c - len(cache), h.shape[-1]), cache])
        keys.append(h[-1].to(torch.bfloat16))
        caches.append(cache.to(torch.bfloat16))
    torch.save({"keys": torch.stack(keys), "caches": torch.stack(caches)}, out / "bank.pt")


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def peak_child(n: int, batch_size: int) -> None:
    """Run in a fresh process: peak RSS of building n chunks, above the RSS of the loaded backbone."""
    backbone = load_backbone("smollm2-135m")
    base = rss_mb()
    with tempfile.TemporaryDirectory() as tmp:
        B.build(make_chunks(n), backbone, BankConfig(batch_size=batch_size, shard_size=16, max_length=512), tmp,
                progress=False)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"chunks": n, "rss_after_load_mb": round(base, 1), "peak_rss_mb": round(peak, 1)}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--chunks", type=int, default=48)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--peak-chunks", type=int, default=40, help="N for the peak-memory check (N and 4N)")
    p.add_argument("--peak-child", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.peak_child:
        return peak_child(args.peak_child, args.batch_size)

    backbone = load_backbone("smollm2-135m")
    chunks = make_chunks(args.chunks)
    cfg = BankConfig(max_length=512, shard_size=16)
    tokens = sum(len(x) for x in B.tokenize(backbone, [c.text for c in chunks], cfg.max_length)[0])
    print(f"{backbone.name}: {len(chunks)} chunks, {tokens} tokens ({tokens / len(chunks):.0f}/chunk), "
          f"{torch.get_num_threads()} threads, N_c={cfg.n_c}, batch {args.batch_size}")
    methods = {
        "authors (batch 1, full model)": lambda out: authors_build(chunks, backbone, cfg, out),
        "bank.build batch 1": lambda out: B.build(chunks, backbone, BankConfig(**{**cfg.__dict__, "batch_size": 1}),
                                                  out, progress=False),
        f"bank.build batch {args.batch_size}": lambda out: B.build(
            chunks, backbone, BankConfig(**{**cfg.__dict__, "batch_size": args.batch_size}), out, progress=False),
    }
    seconds: dict[str, list[float]] = {m: [] for m in methods}
    for r in range(args.rounds):
        for name, run in methods.items():
            with tempfile.TemporaryDirectory() as tmp:
                t0 = time.perf_counter()
                run(Path(tmp))
                seconds[name].append(time.perf_counter() - t0)
        print(f"round {r + 1}: " + ", ".join(f"{m} {s[-1]:.1f}s" for m, s in seconds.items()), flush=True)

    authors = statistics.median(seconds["authors (batch 1, full model)"])
    print(f"\n{'method':34s} {'median s':>9s} {'chunks/s':>9s} {'tokens/s':>9s} {'vs authors':>10s}")
    for name, s in seconds.items():
        med = statistics.median(s)
        print(f"{name:34s} {med:9.2f} {len(chunks) / med:9.2f} {tokens / med:9.0f} {authors / med:9.2f}x")

    print("\npeak memory of bank.build (fresh process each; shard 16, batch %d):" % args.batch_size)
    for n in (args.peak_chunks, 4 * args.peak_chunks):
        out = subprocess.run([sys.executable, __file__, "--peak-child", str(n), "--batch-size", str(args.batch_size)],
                             capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"  {n:4d} chunks: peak RSS {r['peak_rss_mb']:.0f} MB, {r['peak_rss_mb'] - r['rss_after_load_mb']:.0f} MB"
              f" above the loaded backbone")


if __name__ == "__main__":
    main()
