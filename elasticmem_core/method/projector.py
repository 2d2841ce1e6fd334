"""Projector: maps content-cache states into the reasoner's input-embedding space (the soft tokens).

Paper: Linear(H, 2560) -> GELU -> Dropout(0.1) -> Linear(2560, H) -> LayerNorm. Sizes are read from the backbone
(H is never hard-coded). `identity` is the ablation that feeds the cache states in unchanged. `residual` (not in
the paper) starts as the identity and learns a correction: with input-embedding caches (bank.cache_layer = 0) the
latent memory then starts equal to the text it replaces, a remedy for small backbones where the paper's projector
trained from scratch stays at chance (measured on SmolLM2-135M).

Why the LayerNorm gain starts at the embedding scale: a LayerNorm output has unit variance per dimension, while a
reasoner's input embeddings are typically far smaller (SmolLM2: RMS ~0.07), so soft tokens at unit scale would
swamp the text around them. The gain is initialised to the RMS of the backbone's embedding matrix instead; the
bias starts at zero but the output is never exactly zero (an all-zero soft token gives NaN gradients on
llama-type models), since a LayerNorm of a non-constant input has unit variance before the gain.
`projector.ln_gain_init: one` keeps torch's default gain of 1 instead, as the authors' code does (the paper files set
it); the package default stays at the embedding RMS for the reason above.
"""
from __future__ import annotations

import torch
from torch import nn

KINDS = ("mlp", "identity", "residual")  # projector.kind's values (a new kind: a name here and a branch below)


class Projector(nn.Module):
    def __init__(self, hidden_size: int, inner: int = 2560, dropout: float = 0.1, kind: str = "mlp",
                 embedding_rms: float = 1.0):
        super().__init__()
        self.kind = kind
        self.hidden_size = hidden_size
        if kind == "identity":
            self.net = nn.Identity()
        elif kind == "residual":
            # x + MLP(x) with the output layer at zero: soft tokens start as the cache states themselves, so
            # input-embedding caches (bank.cache_layer = 0) start as exactly the text tokens they replace
            self.net = nn.Sequential(nn.Linear(hidden_size, inner), nn.GELU(), nn.Dropout(dropout),
                                     nn.Linear(inner, hidden_size))
            nn.init.zeros_(self.net[-1].weight)
            nn.init.zeros_(self.net[-1].bias)
        elif kind == "mlp":
            self.net = nn.Sequential(
                nn.Linear(hidden_size, inner), nn.GELU(), nn.Dropout(dropout), nn.Linear(inner, hidden_size),
                nn.LayerNorm(hidden_size),
            )
            with torch.no_grad():
                self.net[-1].weight.fill_(embedding_rms)
        else:
            raise ValueError(f"projector.kind = {kind!r}; choose one of {', '.join(KINDS)}")

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        """[..., H] cache states -> [..., H] soft tokens (computed in the projector's dtype, returned in the input's)."""
        if self.kind == "identity":
            return states
        dtype = self.net[0].weight.dtype
        x = states.to(dtype)
        out = x + self.net(x) if self.kind == "residual" else self.net(x)
        return out.to(states.dtype)


def embedding_rms(model) -> float:
    """RMS of the reasoner's input-embedding matrix: the scale soft tokens should start at."""
    w = model.get_input_embeddings().weight
    return float(w.detach().float().pow(2).mean().sqrt())


def from_config(cfg_projector, backbone) -> Projector:
    if cfg_projector.ln_gain_init not in ("embedding_rms", "one"):
        raise ValueError(f"projector.ln_gain_init = {cfg_projector.ln_gain_init!r}; choose embedding_rms or one")
    gain = embedding_rms(backbone.model) if cfg_projector.ln_gain_init == "embedding_rms" else 1.0
    return Projector(backbone.hidden_size, cfg_projector.hidden, cfg_projector.dropout, cfg_projector.kind,
                     gain).to(backbone.device)
