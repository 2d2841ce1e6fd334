"""Worker for test_grpo.test_two_processes_equal_one: two GRPO steps, then save the trainable parameters."""
import sys

import torch
from accelerate import Accelerator

from elasticmem_core import bank as bank_mod
from elasticmem_core import grpo
from tinydata import QUESTIONS, tiny_cfg, tiny_model


def main(bank_path, run_dir, target):
    acc = Accelerator(cpu=True)
    overrides = ("lora.dropout=0", "projector.dropout=0", "budget.dropout=0", "grpo.max_steps=2",
                 "grpo.questions_per_step=2", "grpo.eval_every=100", "grpo.lr=1e-3", "grpo.max_new_tokens=3")
    from elasticmem_core.backbone import load_backbone
    bank = bank_mod.load(bank_path, load_backbone("tiny-random"), tiny_cfg().bank)
    torch.manual_seed(0)
    model = tiny_model(bank, *overrides)
    trainer = grpo.Trainer(model, QUESTIONS[:2], [], run_dir, accelerator=acc)
    for _ in range(2):
        trainer.train_step()
    if acc.is_main_process:
        params = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        torch.save({"params": params, "processes": acc.num_processes}, target)
    acc.wait_for_everyone()


if __name__ == "__main__":
    main(*sys.argv[1:])
