"""The methods `eval.method` names, in one registry: how each one's model is built, how it trains, what it reads.

A baseline is one module (its model, e.g. `full_context.FullContext`), one entry in `METHODS` and one overlay in
`params/baselines/` that sets `eval.method`; harness/variants.py, the config checks and 04 read everything else from here.

| eval.method     | memory                               | trained (eval.variant_steps)                        |
|-----------------|--------------------------------------|-----------------------------------------------------|
| no_memory       | none                                 | no                                                  |
| full_context    | the whole memory as text, newest     | no; chunks that do not fit the window are dropped   |
|                 | chunks kept within the window        | (oldest first) and counted per question             |
| text_rag        | top-k chunks as text (retrieval.mode | no; semantic = the sentence embedder, frozen_state  |
|                 | chooses the ranking)                 | = the bank's keys against the question's state      |
| lora_text_sft   | retrieved chunks as text             | supervised (cross-entropy on the gold letter)       |
| lora_text_grpo  | retrieved chunks as text             | GRPO (grpo.Trainer with model memory "text"); also  |
|                 |                                      | at a higher LoRA rank (lora_text_grpo_high_rank)    |
| elasticmem      | soft tokens (the method)             | GRPO; ablations and the identity projector          |
| memgen          | K latents a LoRA weaver writes from  | supervised weaver steps, then GRPO; the reasoner    |
|                 | the retrieved chunks (memgen.py)     | frozen (MemGen-style: the latent-space baseline)    |
| mem0            | top-k facts the backbone extracted   | no (the stores are built by the frozen backbone);   |
|                 | and managed, as text (mem0.py)       | also with the warmed-up reader                      |
| agemem          | the context the agent kept + facts   | step-wise GRPO over a three-stage curriculum        |
|                 | its tool calls retrieved (agemem.py) | (agemem.store / .filter / .answer)                  |
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..core.config import Config, ConfigError
from ..method import assemble
from ..method.model import CHECKPOINT_META, ElasticMem
from ..training.grpo import Trainer
from . import agemem, memgen
from .full_context import FullContext
from .mem0 import Mem0


@dataclass(frozen=True)
class Method:
    """What one `eval.method` is. `build(cfg, dataset, backbone, bank)` makes its model (default: ElasticMem with
    `memory`); `train(model, dataset, folder, progress, from_reader)` trains it and returns the checkpoint to
    evaluate (None: the method is not trained); `check(cfg, source)` refuses params it cannot run with."""
    memory: str
    build: Callable | None = None
    train: Callable | None = None
    own_reader: bool = False     # never starts from 03's warmed-up reader (MemGen's reasoner is frozen)
    text_reader: bool = False    # an untrained text reader: also reported with the warmed-up reader, as <name>+reader
    check: Callable | None = None

    def model(self, cfg: Config, dataset, backbone, bank) -> ElasticMem:
        """The method's model (LoRA is injected into `backbone` in place: baselines.release after)."""
        if self.build is not None:
            return self.build(cfg, dataset, backbone, bank)
        return assemble.model_for(cfg, dataset, backbone, bank, memory=self.memory)


# ---- training ---------------------------------------------------------------------------------------------------
def sft_steps(cfg: Config, n_train: int) -> int:
    """Supervised steps of the text-SFT baseline: eval.variant_steps, else grpo.sft_steps, else grpo.epochs over
    the training questions (capped by grpo.max_steps)."""
    if cfg.eval.variant_steps > 0:
        return cfg.eval.variant_steps
    if cfg.grpo.sft_steps > 0:
        return cfg.grpo.sft_steps
    steps = cfg.grpo.epochs * math.ceil(n_train / cfg.grpo.sft_batch_size)
    return min(steps, cfg.grpo.max_steps) if cfg.grpo.max_steps > 0 else steps


def train_grpo(model, dataset, folder: Path, progress: bool, from_reader: bool) -> Path:
    """GRPO (stage 0 first unless the model starts from 03's reader); resumes from last/, selects best/."""
    trainer = Trainer(model, dataset.split("train"), dataset.split("val"), folder, setting=dataset.setting)
    trainer.train(progress, reader_warmup=not from_reader)
    return folder / "best"


def train_text_sft(model, dataset, folder: Path, progress: bool, from_reader: bool) -> Path:
    """Supervised cross-entropy on the gold letter with the retrieved chunks as text (`sft_steps` steps)."""
    done = folder / "sft"
    if not (done / CHECKPOINT_META).is_file():
        trainer = Trainer(model, dataset.split("train"), dataset.split("val"), folder, setting=dataset.setting)
        trainer.supervised(sft_steps(model.cfg, len(trainer.train_q)), "text", "text_sft")
        model.save(done)
    return done


# ---- the methods' own models and checks -----------------------------------------------------------------------
def build_full_context(cfg, dataset, backbone, bank):
    return FullContext(backbone, bank, cfg, {c.chunk_id: c.text for c in dataset.chunks()})


def build_with(model_class: type, with_embedder: bool = False) -> Callable:
    def build(cfg, dataset, backbone, bank):
        return assemble.model_for(cfg, dataset, backbone, bank, with_embedder=with_embedder, model_class=model_class)
    return build


def check_memgen(cfg: Config, source: str) -> None:
    if cfg.grpo.gradient_checkpointing or cfg.grpo.kl_beta > 0:
        raise ConfigError(f"{source}: the MemGen-style baseline switches LoRA adapters inside its passes: "
                          f"grpo.gradient_checkpointing (recomputation would run with another adapter) and "
                          f"grpo.kl_beta (its reasoner is already the frozen model) are not supported with it")


def check_agemem(cfg: Config, source: str) -> None:
    if cfg.grpo.kl_beta > 0 or cfg.grpo.policy_only:
        raise ConfigError(f"{source}: the AgeMem-style baseline trains its tool steps' tokens only: grpo.kl_beta and "
                          f"grpo.policy_only are not supported with it")


METHODS: dict[str, Method] = {
    "elasticmem": Method("latent", train=train_grpo),
    "no_memory": Method("none", text_reader=True),
    "full_context": Method("text", build=build_full_context, text_reader=True),
    "text_rag": Method("text", text_reader=True),
    "lora_text_sft": Method("text", train=train_text_sft),
    "lora_text_grpo": Method("text", train=train_grpo),
    "memgen": Method("text", build=build_with(memgen.MemGen),
                     train=lambda model, dataset, folder, progress, from_reader: memgen.train(model, dataset, folder,
                                                                                             progress),
                     own_reader=True, check=check_memgen),
    # the text-memory systems: their own stores, ranked by the sentence embedder
    "mem0": Method("text", build=build_with(Mem0, with_embedder=True), text_reader=True),
    "agemem": Method("text", build=build_with(agemem.AgeMem, with_embedder=True),
                     train=lambda model, dataset, folder, progress, from_reader: agemem.train(model, dataset, folder,
                                                                                              progress),
                     check=check_agemem),
}


def method(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"eval.method = {name!r}; choose one of {', '.join(sorted(METHODS))}") from None
