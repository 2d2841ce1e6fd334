"""The retrieval head (beyond the paper): a small map on the DETACHED control-token state that retrieval ranks with.

The paper trains one LoRA for reading and retrieving, so a retrieval warm-up that moves the control-token state also
moves how the reasoner reads (on mini, 100 contrastive steps took oracle-retrieval reading from 0.500 to 0.2875).
With `retrieval.mode: control_token_head` the query is

    q = s + U V s,   s = the last-layer state at the control token (no gradient into the reasoner),
                     V [r, H], U [H, r], U zero-initialised (the head starts as the control token's own state),

so training the head on the retrieval loss cannot change a single reading weight: reading stays bit-identical.
"""
from __future__ import annotations

import torch
from torch import nn


class RetrievalHead(nn.Module):
    def __init__(self, hidden_size: int, rank: int):
        super().__init__()
        if rank < 1:
            raise ValueError(f"retrieval.head_rank = {rank}: the head needs rank >= 1")
        self.hidden_size, self.rank = hidden_size, rank
        self.down = nn.Linear(hidden_size, rank, bias=False)
        self.up = nn.Linear(rank, hidden_size, bias=False)
        self.reset()

    def reset(self) -> None:
        """A fresh head: random V, U = 0 (the identity: retrieval begins where the control token is)."""
        self.down.reset_parameters()
        nn.init.zeros_(self.up.weight)

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        s = state.detach().to(self.down.weight.dtype)   # the reasoner gets no gradient from retrieval
        return s + self.up(self.down(s))
