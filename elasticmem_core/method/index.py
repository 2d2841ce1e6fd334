"""Cosine top-Z retrieval over the bank's keys, restricted to a question's own memory.

The only module of the package that imports faiss (faiss-cpu and torch each bundle OpenMP; importing both in many
places invites clashes). torch is imported first on purpose.

`MemoryIndex.search(query, memory_id, top_z)` scores s_i = cos(q, k_i) over the chunks of `memory_id` only (its
conversation / haystack / context; the ALFWorld bank is one memory) and returns the top Z as bank rows.
- `flat` (default): exact inner product over L2-normalised keys (= cosine).
- `ivf`: an approximate inverted-file index per memory, for very large memories. It needs about 39 training points
  per list, so a memory gets min(ivf_nlist, rows // 39) lists (at least 1); it may find fewer than Z chunks, the
  missing places are row -1 with score -inf.
"""
from __future__ import annotations

from typing import Sequence

import faiss  # noqa: E402  (after torch: see the module docstring)
import numpy as np
import torch

from ..core.config import BankConfig


class MemoryIndex:
    """One faiss index per memory, built lazily on its first search."""

    def __init__(self, keys: torch.Tensor, memory_ids: Sequence[str], kind: str = "flat", ivf_nlist: int = 64,
                 ivf_nprobe: int = 8):
        if kind not in ("flat", "ivf"):
            raise ValueError(f"index kind {kind!r}: choose flat or ivf")
        if len(keys) != len(memory_ids):
            raise ValueError(f"{len(keys)} keys but {len(memory_ids)} memory ids")
        self.keys = torch.nn.functional.normalize(keys.float(), dim=-1).numpy()  # [N, H] unit rows
        self.kind, self.ivf_nlist, self.ivf_nprobe = kind, ivf_nlist, ivf_nprobe
        self._rows: dict[str, np.ndarray] = {}
        for i, m in enumerate(memory_ids):
            self._rows.setdefault(m, []).append(i)
        self._rows = {m: np.asarray(r, dtype=np.int64) for m, r in self._rows.items()}
        self._index: dict[str, faiss.Index] = {}

    @classmethod
    def from_bank(cls, bank, cfg: BankConfig) -> "MemoryIndex":
        return cls(bank.keys(), bank.memory_ids, cfg.index, cfg.ivf_nlist, cfg.ivf_nprobe)

    def memory_rows(self, memory_id: str) -> np.ndarray:
        if memory_id not in self._rows:
            raise KeyError(f"memory {memory_id!r} has no chunks in the bank")
        return self._rows[memory_id]

    def _memory_index(self, memory_id: str) -> faiss.Index:
        if memory_id not in self._index:
            vectors = np.ascontiguousarray(self.keys[self.memory_rows(memory_id)])
            dim = vectors.shape[1]
            nlist = max(1, min(self.ivf_nlist, len(vectors) // 39))
            if self.kind == "flat":
                index = faiss.IndexFlatIP(dim)
            else:
                index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
                index.train(vectors)
                index.nprobe = min(self.ivf_nprobe, nlist)
            index.add(vectors)
            self._index[memory_id] = index
        return self._index[memory_id]

    def search(self, query: torch.Tensor, memory_id: str, top_z: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Cosine top-Z of `query` ([H] or [B, H]) within one memory: (scores, bank rows), each [Z] or [B, Z].

        Z = min(top_z, chunks in the memory); scores are sorted high to low.
        """
        single = query.dim() == 1
        q = torch.nn.functional.normalize(query.detach().float().cpu().reshape(-1, query.shape[-1]), dim=-1)
        rows = self.memory_rows(memory_id)
        z = min(top_z, len(rows))
        scores, local = self._memory_index(memory_id).search(np.ascontiguousarray(q.numpy()), z)
        found = local >= 0
        bank_rows = np.where(found, rows[np.clip(local, 0, None)], -1)
        scores = np.where(found, scores, -np.inf)
        scores, bank_rows = torch.from_numpy(scores), torch.from_numpy(bank_rows)
        return (scores[0], bank_rows[0]) if single else (scores, bank_rows)


def recall_at_z(ranked_rows: torch.Tensor, gold_rows: Sequence[int]) -> float:
    """Share of the gold rows found among `ranked_rows` [Z] (the top Z of one question)."""
    if not gold_rows:
        raise ValueError("recall needs at least one gold row")
    found = set(ranked_rows.tolist())
    return sum(g in found for g in gold_rows) / len(gold_rows)
