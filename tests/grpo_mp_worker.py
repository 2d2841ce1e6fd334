"""Worker for test_grpo's multi-process tests: GRPO steps (and optionally stage-0 steps), then save the trainable
parameters and every summed gradient the trainer applied. Each process seeds its initial weights by its rank, so only
the trainer's broadcast from rank 0 can make the processes agree.

Every optimizer here is plain SGD: AdamW divides by a running gradient scale, so float noise on an entry whose true
gradient is zero (an attention key bias) becomes a full lr-sized step, and weights after AdamW differ between one and
two processes by more than any sound tolerance. Under SGD a weight moves by lr x its gradient, so the comparison stays
exact up to float order. `sabotage` = drop | double scales rank 1's gradient share before the sum, to show the test
catches a lost or double-counted share; `dynamic_sampling` sets grpo.dynamic_sampling."""
import sys

import torch
from accelerate import Accelerator
from tinydata import QUESTIONS, tiny_cfg, tiny_model

from elasticmem_core.method import bank as bank_mod
from elasticmem_core.training import grpo


class RecordingSGD(torch.optim.SGD):
    """Plain SGD that keeps each step's gradient (as applied: summed over processes, clipped)."""
    applied: list = []

    def step(self, closure=None):
        RecordingSGD.applied.append(torch.cat([
            (p.grad if p.grad is not None else torch.zeros_like(p)).flatten()
            for g in self.param_groups for p in g["params"]]).clone())
        return super().step(closure)


def _sgd(params, lr, weight_decay=0.0, **_):
    return RecordingSGD(params, lr=lr)


def main(bank_path, run_dir, target, questions_per_step="2", n_questions="2", steps="2", sft_steps="0",
         sabotage="none", dynamic_sampling="0"):
    acc = Accelerator(cpu=True)
    overrides = ("lora.dropout=0", "projector.dropout=0", "budget.dropout=0", f"grpo.max_steps={steps}",
                 f"grpo.questions_per_step={questions_per_step}", "grpo.eval_every=100", "grpo.lr=1e-3",
                 "grpo.max_new_tokens=3", "grpo.sft_batch_size=1", f"grpo.dynamic_sampling={dynamic_sampling}")
    from elasticmem_core.core.backbone import load_backbone
    bank = bank_mod.load(bank_path, load_backbone("tiny-random"), tiny_cfg().bank)
    torch.manual_seed(0 + 1000 * acc.process_index)  # rank 1 starts elsewhere: the broadcast must fix it
    model = tiny_model(bank, *overrides)
    grpo.torch.optim.AdamW = _sgd      # the trainer's and the warm-up's optimizers (grpo looks AdamW up at call time)
    trainer = grpo.Trainer(model, QUESTIONS[:int(n_questions)], [], run_dir, accelerator=acc)
    if sabotage != "none" and acc.process_index == 1:
        scale = {"drop": 0.0, "double": 2.0}[sabotage]
        reduce = acc.reduce
        # only the flat gradient vector (the largest tensor reduced) is scaled; loss and count sums stay honest
        n_params = sum(p.numel() for p in model.trainable_parameters())
        acc.reduce = lambda t, reduction="sum": reduce(t * scale if t.numel() == n_params else t, reduction=reduction)
    trainer.supervised(int(sft_steps), "text", "reader_warmup")
    records = [trainer.train_step() for _ in range(int(steps))]
    if acc.is_main_process:
        params = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        torch.save({"params": params, "grads": RecordingSGD.applied, "processes": acc.num_processes,
                    "swapped": [r.get("swapped_questions") for r in records]}, target)
    acc.wait_for_everyone()


if __name__ == "__main__":
    main(*sys.argv[1:])
