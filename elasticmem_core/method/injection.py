"""Soft-token injection: builds the reasoner's inputs_embeds for a batch of rollouts.

Layout of one row (the paper's):

    [question tokens][control token] ([soft tokens of chunk j]["\n"]) x Z [instruction + "\n" + options][answer]

A row may also carry soft tokens at the prompt's end, after the options (`Row.end_memory`): where the MemGen-style
baseline puts its woven latents.

The instruction part follows `data.prompt` (`memorysuite.prompts.tail_text`): `generic` puts one instruction for every setting before
the options and an "Answer:" cue after them; `authors` puts a per-setting instruction (by the option count) and no
cue. ALFWorld steps bring their own tail text.

A chunk given budget 0 is dropped with its separator. In `text_memory` mode the retrieved chunks go in as their
text tokens instead of soft tokens (the controlled comparison's "LoRA + text memory").

Rows have different lengths (different budgets, questions and answers). The prompt part (everything before the
answer) is LEFT-padded so all prompts end at the same column and generation continues from there; answer tokens
are appended after it and RIGHT-padded. Position ids count only real tokens (cumsum of the mask), so a padded row
gets exactly the positions it would have alone.

Every row reports its token counts by part, the unit of the paper's #Tok: task text (question, control token,
instruction and options), injected memory (soft tokens, or text tokens, plus their separators) and output.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class Row:
    question_ids: list[int]
    control_id: int | None  # None in retrieval modes without a control token
    memory: list            # per retrieved chunk: a [b_j, H] soft-token tensor, or a list of text token ids
    tail_ids: list[int]     # instruction + "\n" + options (+ "\n" + answer cue under data.prompt = generic)
    answer_ids: list[int] = field(default_factory=list)  # teacher-forced answer tokens (empty when generating)
    end_memory: torch.Tensor | None = None  # [K, H] soft tokens after the tail, at the prompt's end (MemGen's place)


@dataclass
class Batch:
    inputs_embeds: torch.Tensor   # [B, T, H]
    attention_mask: torch.Tensor  # [B, T] long
    position_ids: torch.Tensor    # [B, T]
    prompt_len: int               # columns of the (left-padded) prompt; answers start here
    answer_mask: torch.Tensor     # [B, A] True at real answer tokens
    answer_ids: torch.Tensor      # [B, A] (pad_id where answer_mask is False)
    counts: list[dict[str, int]]  # per row: task_text, memory (output is added by the generator)
    spans: list[dict[str, tuple[int, int]]]  # per row: columns of question, control, memory, tail, end_memory
    # per row: what a method records beside #Tok (MemGen: the tokens its weaver read)
    extras: list[dict] = field(default_factory=list)
    answer_columns: torch.Tensor | None = None  # [B, A] column of each answer token when rows differ (latents
    #                                             inserted between answer tokens); None: answers start at prompt_len

    def answer_logit_columns(self) -> torch.Tensor:
        """Columns whose logits predict the answer tokens (one to the left of each), shared by every row."""
        if self.answer_columns is not None:
            raise ValueError("this batch's answer tokens sit at different columns per row: use row_logit_columns()")
        a = self.answer_ids.shape[1]
        return torch.arange(self.prompt_len - 1, self.prompt_len - 1 + a, device=self.answer_ids.device)

    def row_logit_columns(self) -> torch.Tensor:
        """[B, A]: per row, the columns whose logits predict its answer tokens (padding entries stay in range)."""
        if self.answer_columns is None:
            return self.answer_logit_columns()[None].expand(self.answer_ids.shape[0], -1)
        return (self.answer_columns - 1).clamp(min=0)


def build_batch(rows: list[Row], embedding: torch.nn.Module, newline_id: int, pad_id: int) -> Batch:
    """inputs_embeds, mask and positions for `rows` (text ids are embedded with the reasoner's own embedding)."""
    weight = embedding.weight
    device, dtype = weight.device, weight.dtype

    def embed(ids: list[int]) -> torch.Tensor:
        return embedding(torch.tensor(ids, dtype=torch.long, device=device)).to(dtype) if ids else \
            weight.new_zeros(0, weight.shape[1])

    newline = embed([newline_id])
    prompts, counts, spans = [], [], []
    for r in rows:
        control = [] if r.control_id is None else [r.control_id]
        parts = [embed(r.question_ids), embed(control)]
        memory_tokens = 0
        for item in r.memory:
            piece = embed(list(item)) if isinstance(item, (list, tuple)) else item.to(dtype)
            if piece.shape[0] == 0:  # budget 0: the chunk is dropped, separator included
                continue
            parts += [piece, newline]
            memory_tokens += piece.shape[0] + 1
        parts.append(embed(r.tail_ids))
        end = 0 if r.end_memory is None else r.end_memory.shape[0]
        if end:
            parts.append(r.end_memory.to(dtype))
        prompt = torch.cat(parts, dim=0)
        prompts.append(prompt)
        q, c, m = len(r.question_ids), len(control), memory_tokens
        counts.append({"task_text": q + c + len(r.tail_ids), "memory": m + end})
        spans.append({"question": (0, q), "control": (q, q + c), "memory": (q + c, q + c + m),
                      "tail": (q + c + m, prompt.shape[0] - end), "end_memory": (prompt.shape[0] - end, prompt.shape[0])})

    p = max(x.shape[0] for x in prompts)
    a = max(len(r.answer_ids) for r in rows)
    b, h = len(rows), weight.shape[1]
    inputs = weight.new_zeros(b, p + a, h)
    mask = torch.zeros(b, p + a, dtype=torch.long, device=device)
    answer_ids = torch.full((b, a), pad_id, dtype=torch.long, device=device)
    answer_mask = torch.zeros(b, a, dtype=torch.bool, device=device)
    for i, (r, prompt) in enumerate(zip(rows, prompts)):
        n = prompt.shape[0]
        inputs[i, p - n:p] = prompt
        mask[i, p - n:p] = 1
        if r.answer_ids:
            k = len(r.answer_ids)
            inputs[i, p:p + k] = embed(r.answer_ids)
            mask[i, p:p + k] = 1
            answer_ids[i, :k] = torch.tensor(r.answer_ids, device=device)
            answer_mask[i, :k] = True
        spans[i] = {name: (s + p - n, e + p - n) for name, (s, e) in spans[i].items()}
    # The padding embedding is a copy of a real token's embedding (not zero): masked anyway, and never all-zero.
    pad_vec = embed([pad_id])[0]
    inputs = torch.where(mask[..., None].bool(), inputs, pad_vec)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return Batch(inputs_embeds=inputs, attention_mask=mask, position_ids=positions, prompt_len=p,
                 answer_mask=answer_mask, answer_ids=answer_ids, counts=counts, spans=spans,
                 extras=[{} for _ in rows])
