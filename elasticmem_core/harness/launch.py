"""Multi-process (multi-GPU) entry point for the two long jobs, writing the same run folder the notebooks use.

    accelerate launch --multi_gpu --num_processes 4 -m elasticmem_core.harness.launch bank  -p params/paper/qwen2.5-7b-locomo-mc10.yaml
    accelerate launch --multi_gpu --num_processes 4 -m elasticmem_core.harness.launch train -p params/paper/qwen2.5-7b-locomo-mc10.yaml

`bank`: every process encodes a disjoint share of the shards of each setting's bank (bank.build).
`train`: every process takes its share of each step's questions; gradients are averaged (grpo.Trainer). The
`alfworld` setting trains as 06_alfworld does (alfworld.training.train: expert-step items, the expert-action
reward, model selection on step accuracy; its folders are named by the game set, e.g.
train/alfworld-offline/seed<seed>/).
Results land in <runtime.output_dir>/<runtime.run_name>/ (banks/<setting>/, train/<setting>/seed<seed>/), where
notebooks 04, 05 and 07 read them. On CPU (tests), use `torchrun --nproc_per_node 2` instead of `accelerate launch
--cpu`, which starts a single process.
"""
from __future__ import annotations

import argparse

from ..alfworld import environment, training
from ..core import backbone as bb
from ..core.experiment import resolve, seed_everything, train_dir, write_yaml
from ..method import assemble
from .runner import resolve_params

ALFWORLD = "alfworld"  # the setting trained by training.train (as 06_alfworld), not by the QA path


def main(argv: list[str] | None = None) -> None:
    from accelerate import Accelerator

    ap = argparse.ArgumentParser(prog="python -m elasticmem_core.harness.launch")
    ap.add_argument("job", choices=["bank", "train"])
    ap.add_argument("-p", "--params", action="append", required=True, help="params file(s), layered in order")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    args = ap.parse_args(argv)
    cfg = resolve_params(args.params, args.overrides)
    acc = Accelerator(cpu=cfg.runtime.device == "cpu")
    seed_everything(cfg.runtime.seed)
    run_dir = resolve(cfg.runtime.output_dir) / cfg.runtime.run_name
    if acc.is_main_process:
        write_yaml(run_dir / "params.yaml", cfg.to_dict())
    settings = cfg.data.settings if args.job == "bank" else (cfg.grpo.settings or cfg.data.settings)
    for setting in settings:
        backbone = bb.from_config(cfg)
        if acc.device.type == "cuda":
            backbone.model.to(acc.device)
            backbone.device = acc.device
        if setting == ALFWORLD:  # step items, the expert-action reward and step accuracy: 06_alfworld's path
            if args.job == "train":
                trainer = training.train(cfg, run_dir, backbone, accelerator=acc)
                if acc.is_main_process:
                    print(f"{setting}: {trainer.step} steps on {acc.num_processes} process(es); best validation "
                          f"step accuracy {trainer.best:.3f}")
                continue
            with acc.main_process_first():  # the offline game set is generated once, by process 0
                dataset = environment.load(cfg, run_dir)
        else:
            with acc.main_process_first():  # MemorySuite-mini files are generated once, by process 0
                dataset = assemble.load_setting(cfg, setting, backbone, run_dir)
        bank = assemble.bank_for(cfg, dataset, backbone, run_dir, accelerator=acc)
        if args.job == "train":
            from ..training.grpo import Trainer

            model = assemble.model_for(cfg, dataset, backbone, bank)
            trainer = Trainer(model, dataset.split("train"), dataset.split("val"),
                              train_dir(run_dir, setting, cfg.runtime.seed), accelerator=acc)
            trainer.train()
            if acc.is_main_process:
                print(f"{setting}: {trainer.step} steps on {acc.num_processes} process(es); best validation "
                      f"accuracy {trainer.best:.3f}")


if __name__ == "__main__":
    main()
