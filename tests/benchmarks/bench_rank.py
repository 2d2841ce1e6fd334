"""Benchmark (a script, not collected by pytest): what ranking the admissible commands costs per ALFWorld step.

    .venv/bin/python tests/benchmarks/bench_rank.py [--params params/mini.yaml] [--rounds 5] [--dtype auto]

`model.continuation_logprobs` (one prompt pass, then every candidate teacher-forced in one packed row under a block
mask) against the way it worked before (the prompt's KV cache copied once per candidate, the candidates as a padded
batch), on the same model, prompt and commands, alternating over --rounds rounds (medians). Prompts of 400 and 1,500
tokens (about an ElasticMem step and a cards-as-text step of the ALFWorld overlay) with 10 and 30 admissible commands.
Prints s per step for both, the ratio, the largest difference between their scores and whether both rank the same
command first. In float32 the scores agree to ~1e-4; in bf16 the two passes round differently (other matmul shapes),
so scores differ by up to a few tenths of a nat and a close pair of commands can swap.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from types import SimpleNamespace

import torch

from bench_dtype import build_model   # this folder is on sys.path when the script runs

COMMANDS = ["go to countertop {n}", "go to cabinet {n}", "open drawer {n}", "take apple {n} from countertop 1",
            "move mug {n} to coffeemachine 1", "examine shelf {n}", "use desklamp {n}", "heat egg {n} with microwave 1"]


def repeated_cache_scores(model, batch, candidates: list[list[int]]) -> list[float]:
    """The ranking as it was before the packed row: the prompt's KV cache repeated k times, candidates right-padded."""
    mask, pos = batch.attention_mask, batch.position_ids
    out = model.reasoner(inputs_embeds=batch.inputs_embeds, attention_mask=mask, position_ids=pos, use_cache=True,
                         logits_to_keep=1)
    k, longest = len(candidates), max(map(len, candidates))
    ids = torch.full((k, longest), model.tokenizer.pad_token_id, dtype=torch.long, device=model.device)
    real = torch.zeros(k, longest, device=model.device)
    for i, c in enumerate(candidates):
        ids[i, :len(c)] = torch.tensor(c, device=model.device)
        real[i, :len(c)] = 1
    scores = torch.log_softmax(out.logits[0, -1].float(), -1)[ids[:, 0]]
    cache = out.cache
    cache.batch_repeat_interleave(k)
    steps = torch.arange(1, longest, device=model.device)[None]
    rest = model.reasoner(inputs_embeds=model.reasoner.get_input_embeddings()(ids[:, :-1]),
                          attention_mask=torch.cat([mask.expand(k, -1), real[:, :-1].to(mask.dtype)], 1),
                          position_ids=(pos[:, -1:] + steps).expand(k, -1), cache=cache, use_cache=True)
    logp = torch.log_softmax(rest.logits.float(), -1).gather(-1, ids[:, 1:, None])[..., 0]
    return (scores + (logp * real[:, 1:]).sum(1)).tolist()


def timed(fn) -> tuple[float, list[float]]:
    t = time.perf_counter()
    with torch.no_grad():
        out = fn()
    return time.perf_counter() - t, out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--params", default="params/mini.yaml")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--dtype", default="auto", help="runtime.dtype: auto, float32 or bfloat16")
    args = ap.parse_args()
    model = build_model(args.params, args.dtype, tempfile.mkdtemp(prefix="bench_rank_"), [])[0]
    model.eval()
    gen = torch.Generator().manual_seed(0)
    vocab = model.reasoner.get_input_embeddings().weight.shape[0]
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, dtype "
          f"{model.reasoner.get_input_embeddings().weight.dtype}, rounds {args.rounds}")
    for length in (400, 1500):
        ids = torch.randint(0, vocab, (1, length), generator=gen).to(model.device)
        batch = SimpleNamespace(inputs_embeds=model.reasoner.get_input_embeddings()(ids).detach(),
                                attention_mask=torch.ones(1, length, dtype=torch.long, device=model.device),
                                position_ids=torch.arange(length, device=model.device)[None])
        for k in (10, 30):
            candidates = [model.answer_ids(COMMANDS[i % len(COMMANDS)].format(n=1 + i // len(COMMANDS)))
                          for i in range(k)]
            packed, repeated, diff, same_top = [], [], 0.0, True
            timed(lambda: model.continuation_logprobs(batch, candidates))   # warm-up
            for _ in range(args.rounds):
                t_new, new = timed(lambda: model.continuation_logprobs(batch, candidates))
                t_old, old = timed(lambda: repeated_cache_scores(model, batch, candidates))
                packed.append(t_new)
                repeated.append(t_old)
                diff = max(diff, max(abs(a - b) for a, b in zip(new, old)))
                same_top &= new.index(max(new)) == old.index(max(old))
            a, b = statistics.median(packed), statistics.median(repeated)
            print(f"  prompt {length:5d} tokens, {k:2d} commands: packed {a:.3f} s, repeated cache {b:.3f} s "
                  f"({b / a:.2f}x); largest score difference {diff:.2e}, same top command: {same_top}")


if __name__ == "__main__":
    main()
