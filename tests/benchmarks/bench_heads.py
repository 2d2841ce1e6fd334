"""Benchmark (a script, not collected by pytest): the vocabulary head on the columns that are used vs on every column.

    .venv/bin/python tests/benchmarks/bench_heads.py [--params params/mini.yaml] [--rounds 5]

SmolLM2-135M's head (576 x 49,152, tied to the embedding) is ~20% of a forward pass's FLOPs, and its logits over
every column of a 170-token batch of 8 are ~270 MB. The package runs it only where a logit is read
(`logits_to_keep`): the answer and control-token columns in `rollout.token_logprobs` (stage 0, stage 1, GRPO) and the
last column when a generation starts (`ElasticMem.generate`) or a query is taken (`retrieval.last_states`).
Measured in one run, on the same batch and model, rounds interleaved (this shared CPU's speed drifts):
- stage-0 step: `grpo.supervised_loss` forward + backward, batch of 8 training questions, memory as text;
  baseline = the same loss from the full [N, T, V] logits (the package's code before the change, kept here);
- greedy answers: `ElasticMem.answer` on 16 test questions (text and latent memory); baseline = the same call with
  `logits_to_keep` taken out of every reasoner call, so every column goes through the head.
Both paths must agree: the largest log-prob difference and the number of differing answers are printed.
Peak memory: RSS sampled every 20 ms during a call, minus the RSS just before it (bench_grpo.measure).
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile

import torch
from bench_grpo import measure

from elasticmem_core.core import backbone as bb
from elasticmem_core.core import experiment
from elasticmem_core.harness import checks
from elasticmem_core.method import assemble
from elasticmem_core.training import grpo


def full_head_loss(model, questions) -> torch.Tensor:
    """supervised_loss as it was: the head over every column, then the answer columns picked out."""
    plan = model.plan(questions, sample=False)
    answers = [model.answer_ids(q.gold) for q in questions]
    batch = model.build(questions, plan, answers)
    logits = model.reasoner(inputs_embeds=batch.inputs_embeds, attention_mask=batch.attention_mask,
                            position_ids=batch.position_ids).logits
    logp = torch.log_softmax(logits[:, batch.answer_logit_columns()].float() / model.cfg.grpo.temperature, dim=-1)
    ans = logp.gather(-1, batch.answer_ids[..., None]).squeeze(-1)
    mask = batch.answer_mask
    return -(ans * mask).sum() / mask.sum()


class FullHead:
    """While active, every reasoner call computes the logits of every column (logits_to_keep removed)."""

    def __init__(self, model):
        self.model, self.forward = model, model.reasoner.forward

    def __enter__(self):
        def forward(*args, **kwargs):
            kwargs.pop("logits_to_keep", None)
            return self.forward(*args, **kwargs)
        self.model.reasoner.forward = forward

    def __exit__(self, *exc):
        self.model.reasoner.forward = self.forward


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--params", default="params/mini.yaml")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    cfg = checks.load(args.params, ["data.settings=[mini-personamem]"])
    experiment.seed_everything(cfg.runtime.seed)
    folder = tempfile.mkdtemp(prefix="bench_heads_")
    backbone = bb.from_config(cfg)
    dataset = assemble.load_setting(cfg, "mini-personamem", backbone, folder)
    bank = assemble.bank_for(cfg, dataset, backbone, folder, progress=False)
    model = assemble.model_for(cfg, dataset, backbone, bank)
    train, test = dataset.split("train")[:8], dataset.split("test")[:16]
    print(f"{args.params}: {backbone.identity}, torch threads {torch.get_num_threads()}, {args.rounds} rounds")

    def step(loss_fn):
        def run():
            torch.manual_seed(0)  # the same dropout masks in both paths
            loss = loss_fn(model, train)
            loss.backward()
            model.zero_grad(set_to_none=True)
            return loss.item()
        return run

    def answers(memory, full):
        def run():
            model.memory = memory
            with FullHead(model) if full else contextlib.nullcontext():
                return [(o["prediction"], o["output"]) for o in model.answer(test)]
        return run

    cases = {"stage-0 step (fwd + bwd, 8 x text)": (step(grpo.supervised_loss), step(full_head_loss), "train"),
             "greedy answers (16, text memory)": (answers("text", False), answers("text", True), "eval"),
             "greedy answers (16, latent memory)": (answers("latent", False), answers("latent", True), "eval")}
    for name, (ours, base, mode) in cases.items():
        model.train(mode == "train")
        ours(), base()  # warm-up
        times = {"kept columns": [], "every column": []}
        peaks = {"kept columns": [], "every column": []}
        outs = {}
        for _ in range(args.rounds):
            for label, fn in (("kept columns", ours), ("every column", base)):
                s, p, outs[label] = measure(fn)
                times[label].append(s)
                peaks[label].append(p)
        a, b = (statistics.median(times[k]) for k in ("kept columns", "every column"))
        if mode == "train":
            agree = f"loss {outs['kept columns']:.6f} vs {outs['every column']:.6f}"
        else:
            agree = f"{sum(x != y for x, y in zip(outs['kept columns'], outs['every column']))} of {len(test)} answers differ"
        print(f"{name}: {a:.2f} s vs {b:.2f} s every column = {b / a:.2f}x; peak +{max(peaks['kept columns']):.0f} MB "
              f"vs +{max(peaks['every column']):.0f} MB; {agree}")
    model.memory = "latent"


if __name__ == "__main__":
    main()
