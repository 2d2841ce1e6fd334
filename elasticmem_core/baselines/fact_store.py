"""A text memory store: facts with stable ids, ranked by the sentence embedder through a faiss index.

The long-term memory of the text-space memory systems (mem0.py's extracted facts, agemem.py's tool-managed
memory). Operations are the ones those systems name: `add`, `update` (by id: the fact's text is replaced),
`delete` (by id) and `search` (top-k facts by cosine similarity to a query). Ids are never reused, so an id an agent
saw earlier still names the same fact or none. Every operation is appended to `ops`, the store's history, which is
what its reports count. A store is plain data (`to_dict` / `from_dict`): builders save it as JSON and resume from it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..method.budget import BudgetDecision
from ..method.index import MemoryIndex
from ..method.model import ElasticMem, Plan
from ..method.retrieval import Retrieved

OPERATIONS = ("ADD", "UPDATE", "DELETE", "NOOP")


class StoreError(ValueError):
    """An operation names a fact the store does not hold; the message says which."""


@dataclass
class FactStore:
    facts: dict[int, str] = field(default_factory=dict)   # id -> text, in insertion order
    next_id: int = 0
    ops: list[dict] = field(default_factory=list)         # {"op", "id", "text", "turn"} per operation
    _vectors: dict[int, torch.Tensor] = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.facts)

    def add(self, text: str, turn: int | None = None) -> int:
        fid = self.next_id
        self.facts[fid] = text
        self.next_id += 1
        self.ops.append({"op": "ADD", "id": fid, "text": text, "turn": turn})
        return fid

    def update(self, fid: int, text: str, turn: int | None = None) -> None:
        self._check(fid, "UPDATE")
        self.ops.append({"op": "UPDATE", "id": fid, "text": text, "was": self.facts[fid], "turn": turn})
        self.facts[fid] = text
        self._vectors.pop(fid, None)

    def delete(self, fid: int, turn: int | None = None) -> None:
        self._check(fid, "DELETE")
        self.ops.append({"op": "DELETE", "id": fid, "text": self.facts.pop(fid), "turn": turn})
        self._vectors.pop(fid, None)

    def noop(self, text: str, turn: int | None = None) -> None:
        self.ops.append({"op": "NOOP", "id": None, "text": text, "turn": turn})

    def _check(self, fid: int, op: str) -> None:
        if fid not in self.facts:
            held = ", ".join(map(str, self.facts)) or "none"
            raise StoreError(f"{op} {fid}: no fact with id {fid} (ids held: {held})")

    def search(self, query: str, k: int, embedder) -> list[tuple[int, str, float]]:
        """The top-k facts for `query`: (id, text, cosine), best first; fewer when the store holds fewer."""
        if not self.facts or k <= 0:
            return []
        ids = list(self.facts)
        missing = [i for i in ids if i not in self._vectors]
        if missing:  # facts are embedded once; an update drops the old vector
            for i, v in zip(missing, embedder.encode([self.facts[i] for i in missing])):
                self._vectors[i] = v
        index = MemoryIndex(torch.stack([self._vectors[i] for i in ids]), ["store"] * len(ids))
        scores, rows = index.search(embedder.encode([query])[0], "store", k)
        return [(ids[r], self.facts[ids[r]], float(s)) for s, r in zip(scores.tolist(), rows.tolist()) if r >= 0]

    def counts(self) -> dict[str, int]:
        """Operations by kind, over the store's whole history."""
        out = {op: 0 for op in OPERATIONS}
        for o in self.ops:
            out[o["op"]] += 1
        return out

    def to_dict(self) -> dict:
        return {"facts": [[i, t] for i, t in self.facts.items()], "next_id": self.next_id, "ops": self.ops}

    @classmethod
    def from_dict(cls, d: dict) -> "FactStore":
        return cls({int(i): t for i, t in d["facts"]}, int(d["next_id"]), list(d["ops"]))

    def holds(self, value: str) -> bool:
        """Whether some fact states `value` (case-insensitive, as a whole phrase): how the reports check that a
        gold answer survived in the store."""
        return any(mentions(t, value) for t in self.facts.values())


def mentions(text: str, value: str) -> bool:
    """`value` occurs in `text` as whole words, case-insensitive."""
    import re

    return re.search(rf"(?<![a-z0-9]){re.escape(value.lower())}(?![a-z0-9])", text.lower()) is not None


class TextMemoryModel(ElasticMem):
    """ElasticMem's reader with a system's own text records as its memory (Mem0-style facts, the AgeMem-style agent's
    context and retrieved facts): no bank chunk is retrieved, no budget given; the sentence embedder ranks facts."""

    def __init__(self, backbone, bank, cfg, chunk_texts, embedder, semantic_index=None, memory: str = "text"):
        if embedder is None:
            raise ValueError(f"the {type(self).__name__}-style baseline needs the sentence embedder "
                             f"(assemble.model_for(..., with_embedder=True))")
        super().__init__(backbone, bank, cfg, chunk_texts, memory="text", embedder=embedder,
                         semantic_index=semantic_index)
        self.embedder = embedder

    def text_plan(self, n: int, texts: list[list[str]] | None = None, scores: torch.Tensor | None = None) -> Plan:
        """A plan whose memory is `texts` (per row, text pieces read as memory items) and no bank row; `scores`
        [n, k], the records' similarities, mark which of the k places hold a record (none without them)."""
        if scores is None:
            scores, mask = torch.zeros(n, 1), torch.zeros(n, 1, dtype=torch.bool)
        else:
            mask = torch.tensor([[j < len(t) for j in range(scores.shape[1])] for t in texts], dtype=torch.bool)
        rows = torch.full(scores.shape, -1, dtype=torch.long)
        retrieved = Retrieved(query=torch.zeros(n, self.bank.hidden_size), control_ids=[None] * n,
                              control_logprob=torch.zeros(n), rows=rows, scores=scores, mask=mask)
        return Plan(retrieved, BudgetDecision(torch.zeros_like(rows), scores * 0, scores * 0), texts=texts)
