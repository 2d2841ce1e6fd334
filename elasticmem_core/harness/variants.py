"""Baselines and ablations: variants of the method, each a params file, run and evaluated the same way.

A variant is an overlay file in `params/baselines/` or `params/ablations/`: only the keys that define it. When a
notebook runs a variant, those keys are applied onto the run's own params: under smoke a variant runs at smoke
sizes, under mini at mini sizes, under a paper file at paper sizes (alone: `elasticmem run NOTEBOOK -p
params/mini.yaml -p params/ablations/<name>.yaml`). `eval.method` says what a variant is (methods.py's registry:
its model, its training, what it reads).

Every variant goes through ElasticMem's own retrieval and injection layout, so #Tok counts the same parts for
every method. The untrained text readers (no_memory, full_context, text_rag) are also reported with the stage-0
warmed-up reader (`<run>/train/<setting>/seed<seed>/reader`, written by 03_train for runtime.seed) where it exists,
as `<name>+reader`; the trained variants (ablations, LoRA + text, identity projector) start from that reader's LoRA
instead of repeating stage 0, so they differ from the method only in their defining keys (and the run saves stage
0's cost per variant). Results are files (evaluate.py): a variant whose results exist is neither retrained nor
re-evaluated.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

from ..baselines.methods import method
from ..core import evaluate
from ..core.config import Config, derive, from_sections
from ..core.experiment import resolve, seed_everything, train_dir, write_json
from ..method import assemble
from ..method import bank as bank_mod
from ..method.model import CHECKPOINT_META, ElasticMem
from .checks import apply_overrides, merge, read_params, validate


# ---- variants as params files ---------------------------------------------------------------------------------
def variant_file(kind: str, name: str) -> Path:
    path = resolve(f"params/{kind}/{name}.yaml")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such {kind[:-1]} params file (eval.{kind} names files in params/{kind}/)")
    return path


def _leaves(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        return {k: v for key, val in d.items() for k, v in _leaves(val, f"{prefix}{key}.").items()}
    return {prefix[:-1]: d}


def variant_overrides(path: str | Path, base: Config | None = None) -> list[str]:
    """The `section.key=value` overrides that define a variant: the keys its overlay file names, validated on
    `base` (the run's params; default the paper's defaults), so that a bad key is named with the file."""
    raw = read_params(path)
    validate(from_sections(str(path), **merge((base or Config()).to_dict(), raw)), str(path))
    return [f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}" for k, v in _leaves(raw).items()]


def variant_config(cfg: Config, path: str | Path, seed: int | None = None) -> Config:
    """The run's params with a variant's defining keys applied (and its seed, its step cap, its text top-k)."""
    v = from_sections(str(path), **apply_overrides(cfg.to_dict(), variant_overrides(path, cfg)))
    validate(v, str(path))
    if seed is not None:
        v.runtime.seed = seed
    steps = v.eval.variant_steps
    if steps > 0:
        v.grpo.max_steps = steps if v.grpo.max_steps <= 0 else min(steps, v.grpo.max_steps)
    if v.eval.method == "text_rag" and v.eval.text_top_k > 0:
        v.retrieval.top_z = v.eval.text_top_k
    return v


# ---- models, banks, training ----------------------------------------------------------------------------------
def build_model(cfg: Config, dataset, backbone, bank) -> ElasticMem:
    """The model a variant's eval.method describes (LoRA is injected into `backbone` in place: `release` after)."""
    return method(cfg.eval.method).model(cfg, dataset, backbone, bank)


def release(model: ElasticMem) -> None:
    """Take the model's LoRA adapters out of the shared backbone again (the next model, or a bank build, needs it bare)."""
    model.reasoner.unload()


def bank_for(variant: Config, run_cfg: Config, dataset, backbone, run_dir: str | Path, progress: bool = True):
    """The run's bank, or (a variant with other bank settings, e.g. the B_max sweep's N_c) a bank of its own."""
    folder = assemble.bank_dir(run_dir, dataset.setting)
    if variant.bank != run_cfg.bank:
        diff = [f"{f.name}={getattr(variant.bank, f.name)}" for f in dataclasses.fields(variant.bank)
                if getattr(variant.bank, f.name) != getattr(run_cfg.bank, f.name)]
        folder = folder.with_name(f"{dataset.setting}@{','.join(diff)}")
    return bank_mod.build(dataset.chunks(), backbone, variant.bank, folder, progress=progress)


def reader_checkpoint(run_dir: str | Path, setting: str, seed: int) -> Path | None:
    """03_train's stage-0 warmed-up text reader for a setting and seed (runtime.seed), if it exists."""
    path = train_dir(run_dir, setting, seed) / "reader"
    return path if (path / CHECKPOINT_META).is_file() else None


def starting_reader(folder: Path, run_dir: str | Path, setting: str, seed: int) -> Path | None:
    """The stage-0 reader a trained variant's training folder starts from: 03's reader if the run has one when the
    folder is first used, else None (the variant runs stage 0 itself). Recorded in `start.json`, so that 03 writing
    its reader later (02 runs before 03) or a rerun never changes what a folder's training began with."""
    record, reader = folder / "start.json", reader_checkpoint(run_dir, setting, seed)
    if not record.is_file():
        write_json(record, {"reader": checkpoint_id(reader) if reader else None})
        return reader
    wanted = json.loads(record.read_text())["reader"]
    if wanted is None:
        return None
    now = checkpoint_id(reader) if reader else None
    if now != wanted:
        raise evaluate.ResultsError(f"{folder} started from the stage-0 reader {wanted}, but "
                                    f"{train_dir(run_dir, setting, seed) / 'reader'} is now {now}; delete {folder} "
                                    f"and this variant's results to retrain it")
    return reader


def checkpoint_id(path: Path) -> str:
    """A short content hash of a checkpoint (its adapter, projector and policy), recorded with each result."""
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in (".safetensors", ".pt")):
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def train(model: ElasticMem, dataset, folder: Path, progress: bool = True, reader: Path | None = None) -> Path | None:
    """Train a variant (resumable) as its method trains (methods.py) and return the checkpoint to evaluate; None
    when eval.variant_steps is 0 or the method is not trained.

    With `reader` (03_train's stage-0 reader of this setting) the variant starts from its LoRA instead of
    repeating stage 0: every trained variant then shares one warmed-up reader, as the method does."""
    m = method(model.cfg.eval.method)
    if model.cfg.eval.variant_steps == 0 or m.train is None:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    if reader is not None:
        model.load(reader, parts=("lora",))
    return m.train(model, dataset, folder, progress, reader is not None)


# ---- running a variant ----------------------------------------------------------------------------------------
def run_variant(kind: str, name: str, cfg: Config, run_dir: str | Path, backbone, datasets: dict,
                splits: list[str] | None = None, progress: bool = True) -> list[dict]:
    """Evaluate one baseline or ablation on every setting (and seed, and reader), training it first if it trains.

    Returns the results (reused from their files where they exist). Training folders:
    `<run>/<kind>/<name>/<setting>/seed<seed>/`.
    """
    path = variant_file(kind, name)
    splits = splits or ["test"]
    results = []
    base = variant_config(cfg, path)  # the run's params with the variant's keys (its seed set per seed below)
    overrides = variant_overrides(path, cfg)
    m = method(base.eval.method)
    for setting, ds in datasets.items():
        seeds = cfg.eval.seeds if m.train else [cfg.runtime.seed]  # untrained: deterministic
        # 03_train's reader is the run's (runtime.seed): every seed of a variant starts from that one reader
        reader = reader_checkpoint(run_dir, setting, cfg.runtime.seed) if m.text_reader else None
        for seed in seeds:
            folder = Path(run_dir) / kind / name / setting / f"seed{seed}"
            # trained variants start from 03's warmed-up reader (if the run has one) rather than repeat stage 0;
            # one with other LoRA shapes (the high-rank row) cannot load it and runs its own stage 0
            start = starting_reader(folder, run_dir, setting, cfg.runtime.seed) \
                if m.train and not m.own_reader and cfg.grpo.reader_warmup_steps > 0 and base.lora == cfg.lora \
                else None
            for with_reader in ([False, True] if reader else [False]):
                v = derive(base, f"{name} seed {seed}", runtime={"seed": seed})
                label = name + ("+reader" if with_reader else "")
                meta = {"method": label, "kind": kind, "variant": f"params/{kind}/{name}.yaml",
                        "overrides": overrides, "setting": setting, "seed": seed,
                        "backbone": backbone.identity,
                        "reader": checkpoint_id(reader) if with_reader else checkpoint_id(start) if start else None}
                paths = {s: evaluate.result_path(run_dir, label, setting, s, seed) for s in splits}
                saved = [evaluate.existing(paths[s], v, {**meta, "split": s}) for s in splits]
                if all(r is not None for r in saved):
                    results += saved
                    continue
                bank = bank_for(v, cfg, ds, backbone, run_dir, progress)
                seed_everything(seed)
                model = build_model(v, ds, backbone, bank)
                try:
                    if with_reader:
                        model.load(reader)
                    checkpoint = train(model, ds, folder, progress, start)
                    if checkpoint is not None:
                        model.load(checkpoint)
                    for s in splits:
                        cap = v.eval.max_questions  # the questions evaluate answers: e.g. Mem0-style stores for them
                        model.prepare(ds.split(s)[:cap] if cap > 0 else ds.split(s), folder, progress)
                        results.append(evaluate.evaluate(model.answer, ds.split(s), paths[s], {**meta, "split": s},
                                                         v, bank, backbone.device, progress))
                finally:
                    release(model)
    return results


def checkpoint_meta(cfg: Config, run_dir: str | Path, setting: str, backbone) -> tuple[Path, bool, dict]:
    """The checkpoint evaluated as the trained ElasticMem of a setting (eval.checkpoint, default
    <run>/train/<setting>/seed<seed>/best, seed = runtime.seed), whether it exists, and the meta its results are
    saved under (03_train saves its own evaluation of best/ under it, so 04_evaluate reuses it instead of answering
    the same questions again)."""
    seed = cfg.runtime.seed
    ckpt = resolve(cfg.eval.checkpoint.format(setting=setting, seed=seed) if cfg.eval.checkpoint
                   else train_dir(run_dir, setting, seed) / "best")
    found = (ckpt / CHECKPOINT_META).is_file()
    meta = {"method": "elasticmem" if found else "elasticmem_untrained", "kind": "method", "setting": setting,
            "seed": seed, "backbone": backbone.identity, "checkpoint": str(ckpt) if found else None,
            "checkpoint_id": checkpoint_id(ckpt) if found else None}
    return ckpt, found, meta


def run_checkpoint(cfg: Config, run_dir: str | Path, backbone, datasets: dict, splits: list[str],
                   progress: bool = True) -> tuple[list[dict], dict[str, str]]:
    """Evaluate the trained ElasticMem of each setting (eval.checkpoint, default
    <run>/train/<setting>/seed<seed>/best).

    A missing checkpoint is reported (second return value: setting -> message) and the UNTRAINED model is evaluated
    instead, under the method name `elasticmem_untrained`, so that it can never pass for the trained one.
    """
    results, notes = [], {}
    for setting, ds in datasets.items():
        ckpt, found, meta = checkpoint_meta(cfg, run_dir, setting, backbone)
        if not found:
            notes[setting] = f"no trained checkpoint at {ckpt}: evaluating the UNTRAINED model (elasticmem_untrained)"
        label, seed = meta["method"], meta["seed"]
        paths = {s: evaluate.result_path(run_dir, label, setting, s, seed) for s in splits}
        saved = [evaluate.existing(paths[s], cfg, {**meta, "split": s}) for s in splits]
        if all(r is not None for r in saved):
            results += saved
            continue
        bank = assemble.bank_for(cfg, ds, backbone, run_dir, progress=progress)
        seed_everything(seed)
        model = assemble.model_for(cfg, ds, backbone, bank)
        try:
            if found:
                model.load(ckpt)
            for s in splits:
                results.append(evaluate.evaluate(model.answer, ds.split(s), paths[s], {**meta, "split": s}, cfg,
                                                 bank, backbone.device, progress))
        finally:
            release(model)
    return results, notes
