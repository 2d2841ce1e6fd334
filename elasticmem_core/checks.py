"""The checks a run's config passes before anything starts: config.validate (the config's own fields) and the checks
against the parts' registries (a retrieval mode, a budget policy, a projector kind, a reward term, an alignment
objective, an AgeMem episode reward). Each allowed value is named once, in its part's registry; this module only
asks. It sits above the parts so that config.py imports none of them.

    cfg = checks.load("params/mini.yaml", ["grpo.lr=1e-5"])   # config.load, then every check
    checks.validate(derived_cfg, "frontier point")           # a config derived in code
"""
from __future__ import annotations

from pathlib import Path

from . import agemem, alignment, retrieval_loss, rewards
from .budget import LEARNED, POLICIES
from .config import Config, ConfigError, align_used
from .config import load as load_config
from .config import validate as validate_fields
from .projector import KINDS
from .retrieval import MODES


def validate(cfg: Config, source: str = "<params>") -> None:
    """config.validate, then every value a part's registry decides; ConfigError names `source` and the key."""
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
    if cfg.budget.sees_evidence and cfg.budget.policy not in LEARNED:
        raise ConfigError(f"{source}: budget.sees_evidence = true needs a learned budget policy (transformer or mlp), "
                          f"not budget.policy = {cfg.budget.policy!r}")
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
    """config.load (a params file, or a base and overlays, then `section.key=value` overrides), then every check."""
    cfg = load_config(path, overrides)
    validate(cfg, " + ".join(str(p) for p in ([] if path is None else [path] if isinstance(path, (str, Path))
                                              else path)) or "<defaults>")
    return cfg
