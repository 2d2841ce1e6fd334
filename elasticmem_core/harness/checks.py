"""A run's params, read and checked before anything starts.

`load` reads a params file (or a base and overlays, then `section.key=value` overrides) into a Config (config.py
checks keys and types); `validate` then checks the values: the config's own fields (choices, ranges, fields that need
each other) and every value a part's registry decides (a retrieval mode, a budget policy, a projector kind, a reward
term, an alignment objective, an AgeMem episode reward). Each allowed value is named once, in its part's registry;
this module only asks. It sits above the parts so that config.py imports none of them.

    cfg = checks.load("params/mini.yaml", ["grpo.lr=1e-5"])   # read, then every check
    checks.validate(config.derive(cfg, ...), "frontier point")  # a config derived in code
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from ..alfworld import AGENTS
from ..baselines import agemem
from ..baselines.methods import METHODS
from ..core.config import Config, ConfigError, from_sections
from ..core.experiment import resolve
from ..method import retrieval_loss, rewards
from ..method.budget import LEARNED, POLICIES
from ..method.projector import KINDS
from ..method.retrieval import MODES
from ..training import alignment


def validate(cfg: Config, source: str = "<params>") -> None:
    """Every check of the values (the fields' own, then the registries'); ConfigError names `source` and the key."""
    validate_fields(cfg, source)
    choices = {
        "retrieval.mode": (cfg.retrieval.mode, MODES),
        "budget.policy": (cfg.budget.policy, POLICIES),
        "projector.kind": (cfg.projector.kind, KINDS),
        "eval.compression_projector": (cfg.eval.compression_projector, KINDS),
    }
    for key, (value, allowed) in choices.items():
        if value not in allowed:
            raise ConfigError(f"{source}: {key} = {value!r}; choose one of {', '.join(sorted(allowed))}")
    if cfg.grpo.policy_only and cfg.budget.policy not in LEARNED:
        raise ConfigError(f"{source}: grpo.policy_only = true needs a trainable budget policy, but budget.policy = "
                          f"{cfg.budget.policy!r} has no parameters (use transformer or mlp)")
    for flag in ("sees_evidence", "sees_length"):
        if getattr(cfg.budget, flag) and cfg.budget.policy not in LEARNED:
            raise ConfigError(f"{source}: budget.{flag} = true needs a learned budget policy (transformer or mlp), "
                              f"not budget.policy = {cfg.budget.policy!r}")
    if cfg.grpo.reward_terms.get("gold_logprob") and not cfg.grpo.policy_only:
        raise ConfigError(f"{source}: grpo.reward_terms.gold_logprob (the teacher-forced log-probability of the gold "
                          f"answer) is a reward for the budget policy under a frozen reasoner: it needs "
                          f"grpo.policy_only = true (a trained reader would raise it by itself)")
    try:
        rewards.check_reward_terms(cfg.grpo.reward_terms)
        if cfg.retrieval.aux_loss != "none":
            retrieval_loss.check_aux_loss(cfg.retrieval.aux_loss, cfg.retrieval.mode)
        if align_used(cfg):
            alignment.check_objectives(cfg.align.objectives)
        caches = [alignment.parse_cache(c, 10**6) for c in cfg.eval.compression_caches] if cfg.eval.compression \
            else []
        for stage in agemem.STAGES:
            sc = getattr(cfg.agemem, stage)
            agemem.check_rewards(sc.rewards, f"agemem.{stage}.rewards")
            if sc.steps < -1:
                raise ValueError(f"agemem.{stage}.steps must be >= -1 (-1 = one epoch), got {sc.steps}")
    except ValueError as e:
        raise ConfigError(f"{source}: {e}") from None
    if any(a for _, a in caches) and (cfg.eval.compression_align_steps < 1 or not cfg.eval.compression_seeds):
        raise ConfigError(f"{source}: an aligned cache in eval.compression_caches needs "
                          f"eval.compression_align_steps >= 1 and at least one eval.compression_seeds entry")


def load(path: str | Path | list | None = None, overrides: list[str] | None = None) -> Config:
    """read_config (a params file, or a base and overlays, then `section.key=value` overrides), then every check."""
    cfg = read_config(path, overrides)
    validate(cfg, " + ".join(str(p) for p in ([] if path is None else [path] if isinstance(path, (str, Path))
                                              else path)) or "<defaults>")
    return cfg


def validate_fields(cfg: Config, source: str = "<params>") -> None:
    """The values of the config's own fields that types alone cannot express: choices, ranges, fields that need
    each other."""
    choices = {
        "runtime.dtype": (cfg.runtime.dtype, {"auto", "float32", "bfloat16", "float16"}),
        "runtime.device": (cfg.runtime.device, {"auto", "cpu", "cuda"}),
        "bank.padding_side": (cfg.bank.padding_side, {"left", "right"}),
        "bank.storage_dtype": (cfg.bank.storage_dtype, {"bfloat16", "float16", "float32"}),
        "bank.index": (cfg.bank.index, {"flat", "ivf"}),
        "projector.ln_gain_init": (cfg.projector.ln_gain_init, {"embedding_rms", "one"}),
        "budget.arch": (cfg.budget.arch, {"package", "authors"}),
        "data.prompt": (cfg.data.prompt, {"generic", "authors"}),
        "eval.frontier_train_split": (cfg.eval.frontier_train_split, {"train", "val"}),
        "alfworld.cards": (cfg.alfworld.cards, {"template", "backbone"}),
        "alfworld.action_selection": (cfg.alfworld.action_selection, {"generate", "rank"}),
        "grpo.loss_type": (cfg.grpo.loss_type, {"token_mean", "sequence_mean"}),
        "grpo.backward": (cfg.grpo.backward, {"group", "rollout"}),
        "grpo.advantage_norm": (cfg.grpo.advantage_norm, {"std", "mean"}),
        "grpo.tracker": (cfg.grpo.tracker, {"", "tensorboard", "wandb"}),
        "eval.method": (cfg.eval.method, set(METHODS)),
        "memgen.bridge_init": (cfg.memgen.bridge_init, {"identity", "default"}),
        "memgen.trigger": (cfg.memgen.trigger, {"off", "learned"}),
    }
    for key, (value, allowed) in choices.items():
        if value not in allowed:
            raise ConfigError(f"{source}: {key} = {value!r}; choose one of {', '.join(sorted(allowed))}")
    if not 0 < cfg.grpo.sft_min_lr_ratio <= 1 or cfg.grpo.sft_warmup_steps < 0 or cfg.grpo.reader_eval_every < 0:
        raise ConfigError(f"{source}: grpo.sft_min_lr_ratio must be in (0, 1] and grpo.sft_warmup_steps, "
                          f"grpo.reader_eval_every >= 0 (got {cfg.grpo.sft_min_lr_ratio}, {cfg.grpo.sft_warmup_steps},"
                          f" {cfg.grpo.reader_eval_every})")
    if not set(cfg.alfworld.agents) <= set(AGENTS):
        raise ConfigError(f"{source}: alfworld.agents = {cfg.alfworld.agents}: comparison agents are "
                          f"{', '.join(AGENTS)}")
    if not cfg.alfworld.elasticmem and not (cfg.alfworld.agents and cfg.alfworld.bc_epochs > 0):
        raise ConfigError(f"{source}: alfworld.elasticmem is false: 06 then trains only alfworld.agents, by imitation "
                          f"(set alfworld.agents and alfworld.bc_epochs)")
    if min(cfg.grpo.sft_eval_every, cfg.grpo.sft_patience, cfg.alfworld.bc_epochs, cfg.alfworld.bc_patience,
           cfg.grpo.dynamic_sampling) < 0:
        raise ConfigError(f"{source}: grpo.sft_eval_every, grpo.sft_patience, grpo.dynamic_sampling, "
                          f"alfworld.bc_epochs and alfworld.bc_patience must be >= 0")
    if not 0 <= cfg.grpo.min_lr_ratio <= 1:
        raise ConfigError(f"{source}: grpo.min_lr_ratio must be in [0, 1], got {cfg.grpo.min_lr_ratio}")
    if cfg.budget.policy == "rank_profile" and not cfg.budget.rank_budgets:
        raise ConfigError(f"{source}: budget.policy = rank_profile needs budget.rank_budgets (a budget per rank)")
    if cfg.budget.min_budget not in (0, 1):
        raise ConfigError(f"{source}: budget.min_budget must be 0 or 1, got {cfg.budget.min_budget}")
    if cfg.budget.b_max > cfg.bank.n_c:
        raise ConfigError(f"{source}: budget.b_max ({cfg.budget.b_max}) exceeds bank.n_c ({cfg.bank.n_c})")
    if not cfg.budget.min_budget <= cfg.budget.uniform_budget <= cfg.budget.b_max:
        raise ConfigError(f"{source}: budget.uniform_budget ({cfg.budget.uniform_budget}) is outside the budget levels "
                          f"{cfg.budget.min_budget}..{cfg.budget.b_max} (budget.min_budget..budget.b_max)")
    if any(b < 0 for b in cfg.eval.frontier_uniform):
        raise ConfigError(f"{source}: eval.frontier_uniform = {cfg.eval.frontier_uniform}: budgets must be >= 0")
    for key in ("frontier_prices", "frontier_oracle_prices", "frontier_dense_prices"):
        if any(p < 0 for p in getattr(cfg.eval, key)):
            raise ConfigError(f"{source}: eval.{key} = {getattr(cfg.eval, key)}: a token price must be >= 0")
    if cfg.grpo.retrieval_warmup_steps > 0 and cfg.retrieval.mode not in retrieval_loss.TRAINABLE_MODES:
        raise ConfigError(f"{source}: grpo.retrieval_warmup_steps = {cfg.grpo.retrieval_warmup_steps} trains the "
                          f"retrieval query, but retrieval.mode = {cfg.retrieval.mode!r} has no control token or "
                          f"trainable query state (choose one of {', '.join(retrieval_loss.TRAINABLE_MODES)})")
    g = cfg.grpo
    if g.retrieval_warmup_reading_weight < 0 or g.retrieval_warmup_guard < 0 or g.retrieval_warmup_check_every < 1:
        raise ConfigError(f"{source}: grpo.retrieval_warmup_reading_weight and grpo.retrieval_warmup_guard must be "
                          f">= 0 and grpo.retrieval_warmup_check_every >= 1")
    if g.retrieval_warmup_reading_retrieval not in ("", *MODES):
        raise ConfigError(f"{source}: grpo.retrieval_warmup_reading_retrieval = {g.retrieval_warmup_reading_retrieval!r};"
                          f" choose \"\" (retrieval.mode) or one of {', '.join(MODES)}")
    if cfg.retrieval.head_rank < 1:
        raise ConfigError(f"{source}: retrieval.head_rank must be >= 1, got {cfg.retrieval.head_rank}")
    if cfg.retrieval.aux_loss != "none" or cfg.retrieval.aux_weight or cfg.grpo.retrieval_warmup_steps:
        if cfg.retrieval.aux_loss == "none":
            raise ConfigError(f"{source}: retrieval.aux_weight / grpo.retrieval_warmup_steps need a "
                              f"retrieval.aux_loss (kl or contrastive), not none")
        if cfg.retrieval.aux_weight < 0 or cfg.retrieval.aux_temperature <= 0:
            raise ConfigError(f"{source}: retrieval.aux_weight must be >= 0 and retrieval.aux_temperature > 0")
    if cfg.align.steps < 0:
        raise ConfigError(f"{source}: align.steps must be >= 0 (0 = no alignment stage), got {cfg.align.steps}")
    if align_used(cfg):
        hi = cfg.align.b_max or cfg.budget.b_max
        if not 1 <= cfg.align.b_min <= hi <= cfg.bank.n_c:
            raise ConfigError(f"{source}: align.b_min..align.b_max = {cfg.align.b_min}..{hi} (align.b_max 0 = "
                              f"budget.b_max) must lie within 1..bank.n_c = {cfg.bank.n_c}")
        if cfg.align.lr <= 0 or cfg.align.kl_temperature <= 0 or cfg.align.save_every < 1:
            raise ConfigError(f"{source}: align.lr and align.kl_temperature must be > 0, align.save_every >= 1")
        a = cfg.align
        if a.b_start and not hi < a.b_start <= cfg.bank.n_c:
            raise ConfigError(f"{source}: align.b_start = {a.b_start}: a curriculum over b starts above align.b_max "
                              f"({hi}) and within bank.n_c = {cfg.bank.n_c} (0 = no curriculum)")
        if a.curve_steps and not 1 <= a.curve_b <= cfg.bank.n_c:
            raise ConfigError(f"{source}: align.curve_b = {a.curve_b} must lie within 1..bank.n_c = {cfg.bank.n_c}")
        if a.corpus_memories in (1, 2) or a.corpus_memories < 0 or any(s < 0 for s in a.curve_steps):
            raise ConfigError(f"{source}: align.corpus_memories must be 0 (the training memories) or >= 3 (the "
                              f"generator splits what it writes), align.curve_steps >= 0")
        if a.corpus_memories and a.steps:
            raise ConfigError(f"{source}: align.corpus_memories is the compression table's (05_compression); the "
                              f"training run's alignment stage (align.steps) aligns on the training memories")
        steps = a.steps or cfg.eval.compression_align_steps
        if any(s > steps for s in a.curve_steps):
            raise ConfigError(f"{source}: align.curve_steps {a.curve_steps} reach beyond the stage's {steps} steps "
                              f"(align.steps, else eval.compression_align_steps)")
    if cfg.align.steps and cfg.projector.kind == "identity" and not cfg.align.train_lora:
        raise ConfigError(f"{source}: align.steps > 0 with projector.kind = identity and align.train_lora = "
                          f"false: nothing would learn")
    if cfg.eval.compression:
        fit = [b for b in cfg.eval.compression_budgets if 1 <= b <= cfg.bank.n_c]
        if not cfg.eval.compression_caches or not fit or min(cfg.eval.compression_budgets) < 1:
            raise ConfigError(f"{source}: eval.compression = true needs eval.compression_caches and "
                              f"eval.compression_budgets >= 1, at least one within bank.n_c = {cfg.bank.n_c} (got "
                              f"{cfg.eval.compression_budgets})")
    if cfg.eval.retrieval_study and not (cfg.eval.retrieval_seeds and cfg.eval.retrieval_variants):
        raise ConfigError(f"{source}: eval.retrieval_study = true needs at least one eval.retrieval_seeds entry and "
                          f"one eval.retrieval_variants entry")
    for name in cfg.eval.retrieval_variants if cfg.eval.retrieval_study else []:
        if not resolve(f"params/ablations/{name}.yaml").is_file():
            raise ConfigError(f"{source}: eval.retrieval_variants names {name!r}, but params/ablations/{name}.yaml "
                              f"does not exist")
    if cfg.eval.frontier and not (cfg.eval.frontier_prices and cfg.eval.frontier_seeds):
        raise ConfigError(f"{source}: eval.frontier = true needs at least one eval.frontier_prices entry and one "
                          f"eval.frontier_seeds entry")
    if len(set(cfg.eval.frontier_seeds)) != len(cfg.eval.frontier_seeds):
        raise ConfigError(f"{source}: eval.frontier_seeds = {cfg.eval.frontier_seeds}: seeds must be distinct")
    if cfg.eval.frontier_policy_lr <= 0:
        raise ConfigError(f"{source}: eval.frontier_policy_lr must be > 0, got {cfg.eval.frontier_policy_lr}")
    if cfg.eval.frontier_clip_eps < 0 or cfg.eval.frontier_group_size < 0:
        raise ConfigError(f"{source}: eval.frontier_clip_eps and eval.frontier_group_size must be >= 0 "
                          f"(0 = grpo's own), got {cfg.eval.frontier_clip_eps}, {cfg.eval.frontier_group_size}")
    if cfg.memgen.max_insertions < 0 or cfg.memgen.sft_steps < -1 or cfg.memgen.trigger_steps < 0 or \
            cfg.memgen.weaver_lr < 0:
        raise ConfigError(f"{source}: memgen.max_insertions, memgen.trigger_steps and memgen.weaver_lr must be >= 0, "
                          f"memgen.sft_steps >= -1 (-1 = as the method's supervised stages)")
    if cfg.memgen.trigger == "learned" and not (cfg.memgen.insert_delimiters and cfg.memgen.trigger_steps > 0):
        raise ConfigError(f"{source}: memgen.trigger = learned decides at delimiter insertion points after its own "
                          f"GRPO stage: set memgen.insert_delimiters = true and memgen.trigger_steps > 0")
    if METHODS[cfg.eval.method].check is not None:  # what a method cannot run with: its registry entry says
        METHODS[cfg.eval.method].check(cfg, source)
    for key in ("mem0.similar", "mem0.top_k", "agemem.retrieve_k", "agemem.distractors", "agemem.loss_steps",
                "agemem.format_steps", "agemem.val_memories"):
        section, name = key.split(".")
        if getattr(getattr(cfg, section), name) < 0:
            raise ConfigError(f"{source}: {key} must be >= 0, got {getattr(getattr(cfg, section), name)}")
    if not cfg.memgen.delimiters or any(not d for d in cfg.memgen.delimiters):
        raise ConfigError(f"{source}: memgen.delimiters must be a non-empty list of non-empty strings")
    for key in ("mem0.extract_max_new_tokens", "mem0.max_facts_per_turn", "mem0.batch_size", "agemem.max_tool_tokens",
                "agemem.context_tokens", "memgen.latents", "bank.n_c", "bank.max_length", "bank.batch_size",
                "bank.shard_size", "retrieval.top_z", "grpo.group_size", "grpo.questions_per_step", "budget.b_max",
                "budget.keep_top", "eval.frontier_steps", "eval.frontier_questions_per_step", "align.batch_size"):
        sec, name = key.split(".")
        if getattr(getattr(cfg, sec), name) < 1:
            raise ConfigError(f"{source}: {key} must be >= 1")


def align_used(cfg: Config) -> bool:
    """Whether the align section is used: by the trainer's alignment stage or by an aligned cache of the compression
    table."""
    aligned_caches = cfg.eval.compression and any("+align" in str(c) for c in cfg.eval.compression_caches)
    return bool(cfg.align.steps or aligned_caches)


def read_params(path: str | Path) -> dict[str, Any]:
    """The raw sections of a params file, with a clear error for a missing or malformed file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: params file not found")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected sections (runtime:, data:, ...) at the top level")
    return {k: ({} if v is None else v) for k, v in raw.items()}


def apply_overrides(sections: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    """Apply `section.key=value` overrides (value parsed as YAML) to raw sections, returning a new mapping."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in sections.items()}
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected section.key=value")
        dotted, value = item.split("=", 1)
        parts = dotted.strip().split(".")
        if len(parts) < 2:
            raise ConfigError(f"override {item!r}: expected section.key=value")
        node = out.setdefault(parts[0], {})
        for p in parts[1:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = yaml.safe_load(value)
    return out


def merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    """`overlay` on top of `base`, mapping by mapping (an overlay file names only the keys it changes)."""
    out = dict(base)
    for key, value in overlay.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def read_config(path: str | Path | list | None = None, overrides: list[str] | None = None) -> Config:
    """Config from a params file, or several layered in order (a base, then overlays such as params/ablations/*),
    or the paper defaults when None; then `section.key=value` overrides. Keys and types checked, values not yet."""
    paths = [] if path is None else [path] if isinstance(path, (str, Path)) else list(path)
    sections: dict[str, Any] = {}
    for p in paths:
        sections = merge(sections, read_params(p))
    source = " + ".join(str(p) for p in paths) or "<defaults>"
    return from_sections(source, **apply_overrides(sections, overrides))
