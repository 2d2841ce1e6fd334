"""Worker for test_grpo's multi-process tests: GRPO steps (and optionally stage-0 steps), then save the trainable
parameters. Each process seeds its initial weights by its rank, so only the trainer's broadcast from rank 0 can
make the processes agree."""
import sys

import torch
from accelerate import Accelerator

from elasticmem_core import bank as bank_mod
from elasticmem_core import grpo
from tinydata import QUESTIONS, tiny_cfg, tiny_model


def main(bank_path, run_dir, target, questions_per_step="2", n_questions="2", steps="2", sft_steps="0"):
    acc = Accelerator(cpu=True)
    overrides = ("lora.dropout=0", "projector.dropout=0", "budget.dropout=0", f"grpo.max_steps={steps}",
                 f"grpo.questions_per_step={questions_per_step}", "grpo.eval_every=100", "grpo.lr=1e-3",
                 "grpo.max_new_tokens=3", "grpo.sft_batch_size=1")
    from elasticmem_core.backbone import load_backbone
    bank = bank_mod.load(bank_path, load_backbone("tiny-random"), tiny_cfg().bank)
    torch.manual_seed(0 + 1000 * acc.process_index)  # rank 1 starts elsewhere: the broadcast must fix it
    model = tiny_model(bank, *overrides)
    trainer = grpo.Trainer(model, QUESTIONS[:int(n_questions)], [], run_dir, accelerator=acc)
    trainer.supervised(int(sft_steps), "text", "reader_warmup")
    for _ in range(int(steps)):
        trainer.train_step()
    if acc.is_main_process:
        params = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        torch.save({"params": params, "processes": acc.num_processes}, target)
    acc.wait_for_everyone()


if __name__ == "__main__":
    main(*sys.argv[1:])
