"""The paper's path, on CPU: every params/paper file trains 2 GRPO steps and evaluates, in bfloat16, on tiny-random.

Each file's settings are kept (control-token retrieval, last-layer cache, MLP projector, the authors' trainer and
prompt choices, Z, G, answer lengths); only the backbone (tiny-random), the data (the real-format fixtures in
tests/fixtures, split by their own split files) and the step counts change. The device check that runs the same
path on a GPU (tests/benchmarks/gpu_check.py, scripts/gpu_check.sh) runs here on CPU so that it cannot rot.
"""
from __future__ import annotations

import math
import shutil
import sys
from pathlib import Path

import pytest
import torch

from elasticmem_core.core import backbone as bb
from elasticmem_core.core import evaluate, experiment
from elasticmem_core.harness import checks
from elasticmem_core.memorysuite import splits
from elasticmem_core.method import assemble
from elasticmem_core.training import grpo

FIX = Path(__file__).parent / "fixtures"
PAPER = sorted(Path(experiment.resolve("params/paper")).glob("*.yaml"))
QA = [p for p in PAPER if "alfworld" not in p.name]
# fixture folder (tests/fixtures/<name>) of each real setting; PersonaMem-128K reads the 32K fixture under its names
FIXTURE = {"personamem-32k": "personamem", "personamem-128k": "personamem", "locomo-mc10": "locomo-mc10",
           "longmemeval-mc10": "longmemeval-mc10", "alfworld": "alfworld"}
CPU_SIZED = ["runtime.backbone=tiny-random", "runtime.dtype=bfloat16", "runtime.device=cpu", "grpo.max_steps=2",
             "grpo.eval_every=1", "eval.max_questions=2", "eval.batch_size=2", "eval.bootstrap=50"]


@pytest.fixture()
def fixture_data(tmp_path, monkeypatch):
    """A data folder in the published layout, built from tests/fixtures; each setting split by its fixture's file."""
    root = tmp_path / "data"
    shutil.copytree(FIX, root)
    for name in ("questions", "shared_contexts"):
        src = next((root / "personamem").glob(f"{name}_32k.*"))
        shutil.copy(src, src.with_name(src.name.replace("32k", "128k")))
    monkeypatch.setattr(splits, "package_split_file", lambda setting: root / FIXTURE[setting] / "split.json")
    return root


def test_there_is_a_paper_file_per_backbone_and_setting():
    names = {p.stem for p in PAPER}
    for size in ("3b", "7b"):
        for setting in ("personamem-32k", "personamem-128k", "locomo-mc10", "longmemeval-mc10", "alfworld"):
            assert f"qwen2.5-{size}-{setting}" in names


@pytest.mark.parametrize("params", QA, ids=lambda p: p.stem)
def test_paper_file_trains_and_evaluates_in_bfloat16(params, fixture_data, tmp_path):
    cfg = checks.load(params, CPU_SIZED + [f"data.data_dir={fixture_data}", f"runtime.output_dir={tmp_path}"])
    assert cfg.retrieval.mode == "control_token" and cfg.bank.cache_layer == -1 and cfg.projector.kind == "mlp"
    (setting,) = cfg.data.settings
    experiment.seed_everything(cfg.runtime.seed)
    backbone = bb.from_config(cfg)
    assert backbone.dtype == torch.bfloat16
    run_dir = tmp_path / cfg.runtime.run_name
    dataset = assemble.load_setting(cfg, setting, backbone, run_dir)
    bank = assemble.bank_for(cfg, dataset, backbone, run_dir, progress=False)
    model = assemble.model_for(cfg, dataset, backbone, bank)
    trainer = grpo.Trainer(model, dataset.split("train"), dataset.split("val"), run_dir / "train", setting=setting)
    trainer.train(progress=False)
    assert trainer.step == 2 and trainer.skipped == 0
    steps = _grpo_records(trainer.log_path)
    assert len(steps) == 2 and all(math.isfinite(r["lm_loss"]) for r in steps)
    test = dataset.split("test")[:2]
    summary = evaluate.evaluate(model.answer, test, run_dir / "test.json", {"method": "elasticmem", "setting": setting,
                                "split": "test", "seed": cfg.runtime.seed, "backbone": backbone.identity}, cfg,
                                progress=False)
    assert len(summary["records"]) == len(test) > 0 and "accuracy" in summary["summary"]


def _grpo_records(path):
    import json

    return [r for r in map(json.loads, Path(path).read_text().splitlines()) if r["stage"] == "grpo"]


def test_device_check_runs_on_cpu():
    """scripts/gpu_check.sh's script, on CPU with tiny-random: the same code as the GPU run."""
    sys.path.insert(0, str(experiment.resolve("tests/benchmarks")))
    import gpu_check

    summary = gpu_check.main(["--device", "cpu", "--backbone", "tiny-random", "--steps", "2",
                              "--params", str(experiment.resolve("params/smoke.yaml"))])
    assert summary["skipped"] == 0 and summary["steps"] == 2 and summary["left_padding_rel_diff"] < 0.05


@pytest.mark.parametrize("params", [p for p in PAPER if "alfworld" in p.name], ids=lambda p: p.stem)
def test_alfworld_paper_file_trains_through_its_own_path_in_bfloat16(params, fixture_data, tmp_path):
    """ALFWorld's paper files: the authors' replay and card files (fixtures), GRPO on expert steps with the step
    reward (training.train, as 06 and launch.py), then step accuracy on held-out steps."""
    pytest.importorskip("alfworld")
    from elasticmem_core.alfworld import training

    cfg = checks.load(params, CPU_SIZED + [f"data.data_dir={fixture_data}", f"runtime.output_dir={tmp_path}",
                                           "alfworld.max_train_steps=2", "alfworld.sft_steps=0"])
    experiment.seed_everything(cfg.runtime.seed)
    backbone = bb.from_config(cfg)
    trainer = training.train(cfg, tmp_path / cfg.runtime.run_name, backbone, progress=False)
    assert trainer.step == 2 and trainer.skipped == 0 and trainer.model.cfg.grpo.group_size == 8
    assert trainer.model.cfg.grpo.reward_terms == {"alfworld_step": 1.0}
    steps = _grpo_records(trainer.log_path)
    assert len(steps) == 2 and all(math.isfinite(r["lm_loss"]) for r in steps)
    assert 0.0 <= training.step_accuracy(trainer.model, trainer.val_q) <= 1.0


@pytest.mark.parametrize("params,extra", [
    (QA[0], []),
    (QA[-1], ["memgen.insert_delimiters=true", "memgen.trigger=learned", "memgen.trigger_steps=1",
              "memgen.delimiters=[' ', ',', '.']"])], ids=lambda x: getattr(x, "stem", "trigger" if x else "plain"))
def test_memgen_row_trains_and_evaluates_under_the_paper_files(params, extra, fixture_data, tmp_path):
    """The MemGen-style baseline under the paper recipe (control-token retrieval by the frozen reasoner, the authors'
    prompt and trainer settings, bfloat16): supervised weaver steps (one epoch here: the paper has no supervised
    stage), 2 GRPO steps, and with the learned trigger its GRPO stage too."""
    from elasticmem_core.harness import variants

    cfg = checks.load(params, CPU_SIZED + [f"data.data_dir={fixture_data}", f"runtime.output_dir={tmp_path}",
                                           "eval.variant_steps=-1", "eval.seeds=[42]", "grpo.sft_batch_size=4", *extra])
    (setting,) = cfg.data.settings
    backbone = bb.from_config(cfg)
    run_dir = tmp_path / cfg.runtime.run_name
    datasets = {setting: assemble.load_setting(cfg, setting, backbone, run_dir)}
    (res,) = variants.run_variant("baselines", "memgen", cfg, run_dir, backbone, datasets, progress=False)
    folder = run_dir / "baselines" / "memgen" / setting / "seed42"
    log = (folder / "train_log.jsonl").read_text()
    assert '"stage": "memgen_sft"' in log and len(_grpo_records(folder / "train_log.jsonl")) == 2
    assert res["summary"]["n"] > 0 and res["summary"]["tok_with_weaver"] > res["summary"]["tok"]
    if extra:
        trigger = _grpo_records(folder / "trigger" / "train_log.jsonl")
        assert len(trigger) == 1 and "extra_actions" in trigger[0]
        assert (folder / "trigger" / "best" / "trigger_head.pt").is_file()


@pytest.mark.parametrize("params", [QA[0]], ids=lambda p: p.stem)
def test_text_memory_rows_run_under_the_paper_files(params, fixture_data, tmp_path):
    """The Mem0-style and AgeMem-style rows under the paper recipe in bfloat16: stores built by the backbone, the
    agent's curriculum one epoch per stage (capped here by eval.variant_steps), every tool step in the loss."""
    from elasticmem_core.baselines import agemem
    from elasticmem_core.harness import variants

    cfg = checks.load(params, CPU_SIZED + [f"data.data_dir={fixture_data}", f"runtime.output_dir={tmp_path}",
                                           "eval.variant_steps=1", "eval.seeds=[42]", "grpo.group_size=2",
                                           "mem0.extract_max_new_tokens=4", "agemem.max_tool_tokens=4"])
    assert cfg.agemem.format_steps == 0 and cfg.agemem.loss_steps == 0 and cfg.agemem.store.steps == -1
    (setting,) = cfg.data.settings
    backbone = bb.from_config(cfg)
    run_dir = tmp_path / cfg.runtime.run_name
    datasets = {setting: assemble.load_setting(cfg, setting, backbone, run_dir)}
    for name in ("mem0", "agemem"):
        (res,) = variants.run_variant("baselines", name, cfg, run_dir, backbone, datasets, progress=False)
        assert res["summary"]["n"] > 0 and all(r["tok"] == sum(r["tokens"].values()) for r in res["records"])
    folder = run_dir / "baselines" / "agemem" / setting / "seed42"
    for stage in agemem.STAGES:
        assert len(_grpo_records(folder / stage / "train_log.jsonl")) == 1
