"""Does reading move when the stage-0 reader keeps training on its own reading loss alone (no retrieval loss)?

    .venv/bin/python scripts/reading_drift.py [-p params/mini.yaml] [--run outputs/mini] [--seed 42]
        [--lrs 3e-4 1e-4] [--steps 20] [--check-every 10] [--retrieval control_token semantic oracle]
        [--out outputs/reading-drift]

The control of the one-LoRA retrieval warm-up's reading guard (retrieval_control_token_reading_warmup): from the
run's stage-0 reader of `--seed`, `--steps` steps of the stage-0 loss (memory as text, gold answer) at each learning
rate, with the text memory retrieved by each `--retrieval` mode (the warm-up's reading loss reads what the control
token retrieves), validation reading (memory as text, oracle retrieval: what the guard checks) every
`--check-every` steps. If reading falls by more than the guard's 0.03 without any retrieval loss, the guard measures
the reader's own drift, not damage done by retrieval training. Writes <out>/reading_drift.json and one line per run.
"""
from __future__ import annotations

import argparse

import torch

from elasticmem_core.core import backbone as bb
from elasticmem_core.core.experiment import code_version, environment, resolve, seed_everything, write_json
from elasticmem_core.harness import variants
from elasticmem_core.harness.runner import resolve_params
from elasticmem_core.method import assemble
from elasticmem_core.training.retrieval_warmup import reading_accuracy
from elasticmem_core.training.supervision import supervised_loss


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-p", "--params", action="append", default=None)
    ap.add_argument("--run", default="outputs/mini", help="run folder holding 03's stage-0 reader")
    ap.add_argument("--setting", default="mini-personamem")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--lrs", type=float, nargs="+", default=[3e-4, 1e-4])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--check-every", type=int, default=10)
    ap.add_argument("--retrieval", nargs="+", default=["control_token", "semantic", "oracle"])
    ap.add_argument("--out", default="outputs/reading-drift")
    args = ap.parse_args()
    params = args.params or ["params/mini.yaml"]
    cfg = resolve_params(params, [f"runtime.seed={args.seed}"])
    run, out = resolve(args.run), resolve(args.out)
    reader = variants.reader_checkpoint(run, args.setting, args.seed)
    if reader is None:
        raise SystemExit(f"no stage-0 reader of seed {args.seed} in {run} (run 03_train first)")
    backbone = bb.from_config(cfg)
    dataset = assemble.load_setting(cfg, args.setting, backbone, run)
    model = assemble.model_for(cfg, dataset, backbone, assemble.bank_for(cfg, dataset, backbone, run),
                               with_embedder=True)
    val = [q for q in dataset.split("val") if q.evidence]
    train = list(dataset.split("train"))
    rows = []
    for mode in args.retrieval:
        for lr in args.lrs:
            seed_everything(args.seed)
            model.load(reader, parts=model.PARTS)
            params_ = model.trainable_parameters()
            opt = torch.optim.AdamW(params_, lr=lr, weight_decay=cfg.grpo.weight_decay)
            order = torch.randperm(len(train), generator=torch.Generator().manual_seed(args.seed)).tolist()
            checks = [(0, reading_accuracy(model, val))]
            model.train()
            for step in range(args.steps):   # the warm-up's reading loss alone: memory as text, gold answer
                start = (step * cfg.grpo.sft_batch_size) % len(order)
                batch = [train[j] for j in (order + order)[start:start + cfg.grpo.sft_batch_size]]
                with model.using(memory="text", retrieval={"mode": mode}):
                    supervised_loss(model, batch).backward()
                torch.nn.utils.clip_grad_norm_(params_, cfg.grpo.grad_clip)
                opt.step()
                opt.zero_grad(set_to_none=True)
                if (step + 1) % args.check_every == 0:   # what the guard checks: oracle retrieval, memory as text
                    checks.append((step + 1, reading_accuracy(model, val)))
                    model.train()
            rows.append({"retrieval": mode, "lr": lr, "checks": checks,
                         "largest_drop": max(checks[0][1] - a for _, a in checks)})
            print(f"reading loss on text retrieved by {mode}, lr {lr:g}: " +
                  ", ".join(f"{s}: {a:.4f}" for s, a in checks), flush=True)
    write_json(out / "reading_drift.json", {"params": params, "run": str(run), "setting": args.setting,
                                            "seed": args.seed, "reader": str(reader), "n_val": len(val),
                                            "steps": args.steps, "rows": rows, "code_version": code_version(),
                                            "environment": environment()})


if __name__ == "__main__":
    main()
