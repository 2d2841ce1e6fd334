"""The full-context baseline: the whole memory as text in ElasticMem's layout (eval.method = full_context)."""
from __future__ import annotations

import torch

from ..core.config import derive
from ..method.budget import BudgetDecision
from ..method.model import ElasticMem, Plan
from ..method.retrieval import Retrieved, question_ids


class FullContext(ElasticMem):
    """The whole memory as text in the ElasticMem layout: every chunk of the question's memory, chronological.

    A memory longer than the window (eval.context_window or the backbone's max_position_embeddings, less the task
    text and the answer tokens) keeps its newest chunks; the dropped chunks are counted per question.

    A prompt longer than eval.full_context_batch_tokens is answered alone: a batch of one has no padding, so its
    attention mask is all ones and SDPA runs causal without one, where a padded batch of B such prompts would
    materialise a dense [B, 1, P, P] mask (8 GiB at B = 8, P = 32k). Shorter prompts are batched as given.
    """

    def __init__(self, backbone, bank, cfg, chunk_texts):
        # the whole memory goes in, nothing is retrieved: whatever retrieval.mode says, build no semantic index
        cfg = derive(cfg, "full context", retrieval={"mode": "frozen_state"})
        super().__init__(backbone, bank, cfg, chunk_texts, memory="text")
        self.window = cfg.eval.context_window or backbone.model.config.max_position_embeddings
        self.dropped: dict[str, int] = {}
        self.prompt_tokens: dict[str, int] = {}  # qid -> prompt length (task text + memory), set by plan()

    def plan(self, questions, sample: bool = False, generator=None) -> Plan:
        kept = []
        for q in questions:
            task = len(question_ids(self.tokenizer, q.question, self.cfg.retrieval.chat_template)) + \
                len(self.tail_ids(q))
            room = self.window - task - self.cfg.grpo.max_new_tokens
            rows, used = [], 0
            for r in reversed(self.bank.rows(q.memory_id)):  # newest first
                need = len(self._chunk_ids(r)) + 1  # its text and the "\n" separator
                if used + need > room:
                    break
                rows.insert(0, r)
                used += need
            self.dropped[q.qid] = len(self.bank.rows(q.memory_id)) - len(rows)
            self.prompt_tokens[q.qid] = task + used
            kept.append(rows)
        z = max(1, max(len(r) for r in kept))
        rows = torch.full((len(questions), z), -1, dtype=torch.long)
        for i, r in enumerate(kept):
            rows[i, :len(r)] = torch.tensor(r, dtype=torch.long)
        zeros = torch.zeros(len(questions), z)
        retrieved = Retrieved(query=torch.zeros(len(questions), self.bank.hidden_size), control_ids=[None] * len(kept),
                              control_logprob=torch.zeros(len(kept)), rows=rows, scores=zeros, mask=rows.ge(0))
        return Plan(retrieved, BudgetDecision(torch.zeros_like(rows), zeros, zeros))

    def answer(self, questions, max_new_tokens: int | None = None) -> list[dict]:
        """ElasticMem's greedy answers; prompts above eval.full_context_batch_tokens one at a time (see above)."""
        self.plan(questions)  # prompt lengths: full context plans from token counts alone, no forward pass
        limit = self.cfg.eval.full_context_batch_tokens
        alone = [i for i, q in enumerate(questions) if self.prompt_tokens[q.qid] > limit] if len(questions) > 1 else []
        rest = [i for i in range(len(questions)) if i not in alone]
        out: list[dict] = [{}] * len(questions)
        for group in ([rest] if rest else []) + [[i] for i in alone]:
            for i, o in zip(group, super().answer([questions[i] for i in group], max_new_tokens)):
                out[i] = o
        for o in out:
            o["truncated_chunks"] = self.dropped[o["qid"]]
        return out
