"""Retrieval from the reasoner's own hidden state, through a sampled control token.

`control_token` (the paper): the question (raw text, no chat template unless retrieval.chat_template) goes through
the LoRA-adapted reasoner; one ordinary vocabulary token is sampled from its next-token distribution (temperature in
training, argmax at evaluation) and fed back; the last-layer state at that position is the query q. Cosine top-Z
over the chunks of the question's own memory (the bank index) gives the retrieved rows. Retrieval itself is not
differentiable: it learns through the GRPO log-probability of the control token and through LoRA changing q.

Ablations (retrieval.mode):
- `frozen_state`: q = the untrained base model's last state of the question (adapters disabled), which lives in
  exactly the space of the bank's keys; no control token in the layout.
- `query_state`: q = the LoRA-adapted reasoner's last state of the question; no control token.
- `semantic`: the sentence embedder (all-MiniLM-L6-v2) ranks chunk texts against the question; q (for the budget
  policy) is the query_state.
- `oracle`: the gold evidence chunks (where the data records them), score 1; an upper bound, not a method.

Each mode is an entry of `MODES` (how q is made, what ranks the chunks). A memory with fewer than Z chunks yields
what exists: the missing slots have row -1 and mask False (counted).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ..core import sampling
from .index import MemoryIndex


@dataclass
class Retrieved:
    query: torch.Tensor                 # [B, H] the query state q (input of the budget policy)
    control_ids: list[int | None]       # the sampled control token per row (None in modes without one)
    control_logprob: torch.Tensor       # [B] its log-probability when sampled (0 without one)
    rows: torch.Tensor                  # [B, Z] bank rows, -1 where the memory had fewer than Z chunks
    scores: torch.Tensor                # [B, Z] cosine scores (0 at missing slots)
    mask: torch.Tensor                  # [B, Z] True at real retrieved chunks


def ordinary_token_mask(tokenizer, vocab_size: int, device) -> torch.Tensor:
    """[V] True for ordinary vocabulary tokens: the control token is never a special or unused id."""
    allowed = torch.zeros(vocab_size, dtype=torch.bool, device=device)
    allowed[:min(len(tokenizer), vocab_size)] = True
    special = [i for i in tokenizer.all_special_ids if i is not None and i < vocab_size]
    allowed[special] = False
    added = [i for i in getattr(tokenizer, "added_tokens_decoder", {}) if i < vocab_size]
    allowed[added] = False
    return allowed


def question_ids(tokenizer, question: str, chat_template: bool) -> list[int]:
    if chat_template:
        return tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                             return_dict=True)["input_ids"]
    return tokenizer(question, add_special_tokens=False)["input_ids"]


def _left_pad(seqs: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    n = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), n), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros(len(seqs), n, dtype=torch.long, device=device)
    for i, s in enumerate(seqs):
        ids[i, n - len(s):] = torch.tensor(s, dtype=torch.long, device=device)
        mask[i, n - len(s):] = 1
    return ids, mask


def last_states(model, seqs: list[list[int]], pad_id: int, device,
                control: Callable[[torch.Tensor], torch.Tensor] | None = None,
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Last-layer state at the last token of each sequence [B, H] and the next-token logits there [B, V].

    With `control` (next-token logits [B, V] -> control tokens [B]), the control tokens it picks are appended on the
    question's KV cache (one extra position, the question is not run again) and the state returned is the one at
    the control token; the third value is then the control tokens [B] (else None).
    """
    ids, mask = _left_pad(seqs, pad_id, device)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, output_hidden_states=control is None,
                use_cache=control is not None, logits_to_keep=1)
    if control is None:
        return out.hidden_states[-1][:, -1], out.logits[:, -1], None
    tok = control(out.logits[:, -1])
    mask2 = torch.cat([mask, mask.new_ones(len(seqs), 1)], dim=1)
    out2 = model(input_ids=tok[:, None], attention_mask=mask2, position_ids=pos[:, -1:] + 1,
                 cache=out.cache, output_hidden_states=True, use_cache=False, logits_to_keep=1)
    return out2.hidden_states[-1][:, -1], out.logits[:, -1], tok


def control_logprobs(logits: torch.Tensor, allowed: torch.Tensor, temperature: float) -> torch.Tensor:
    """Log-probabilities [..., V] of the control token: a temperature-scaled softmax over ordinary tokens only
    (-inf elsewhere). Sampling and the GRPO loss both use this one distribution."""
    logits = logits.float().masked_fill(~allowed, float("-inf"))
    return torch.log_softmax(logits / max(temperature, 1e-6), dim=-1)


def sample_control(logits: torch.Tensor, allowed: torch.Tensor, sample: bool, temperature: float,
                   generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Control tokens [B] and their log-probabilities [B] under the (temperature-scaled) ordinary-token distribution."""
    logp = control_logprobs(logits, allowed, temperature)
    if sample:
        tok = sampling.categorical(logp.exp(), generator, "control token")
    else:
        tok = logp.argmax(-1)
    return tok, logp.gather(-1, tok[:, None]).squeeze(-1)


def control_token_states(model, tokenizer, texts, chat_template: bool = False, batch_size: int = 16) -> torch.Tensor:
    """The last-layer state at the greedy control token after each text [N, H]: the paper's query with `model`'s
    weights (the base model: the control token before any training, as 01 measures it)."""
    device = next(model.parameters()).device
    allowed = ordinary_token_mask(tokenizer, model.get_output_embeddings().weight.shape[0], device)
    greedy = lambda logits: sample_control(logits, allowed, False, 1.0)[0]  # noqa: E731
    out = []
    with torch.no_grad():
        for i in range(0, len(texts), batch_size):
            seqs = [question_ids(tokenizer, t, chat_template) for t in texts[i:i + batch_size]]
            out.append(last_states(model, seqs, tokenizer.pad_token_id, device, control=greedy)[0].float().cpu())
    return torch.cat(out)


def pad_topz(scores: torch.Tensor, rows: torch.Tensor, top_z: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pad one question's (scores [z], rows [z]) to Z slots; returns scores, rows, mask."""
    z = rows.shape[0]
    out_rows = torch.full((top_z,), -1, dtype=torch.long)
    out_scores = torch.zeros(top_z)
    out_rows[:z], out_scores[:z] = rows, scores.float()
    mask = out_rows.ge(0)
    return out_scores.masked_fill(~mask, 0.0), out_rows, mask


# ---- the retrieval modes: retrieval.mode names one entry of MODES ----------------------------------------------
# A mode is two functions: `query` makes the query state q of a batch (and the control tokens, when it samples one),
# `rank` ranks one question's chunks. A new mode is two functions and one entry here.

def _control_token_query(r, reasoner, seqs, device, sample, generator, need_query):
    picked = {}

    def control(logits):  # sampled between the question pass and the control-token pass
        tok, picked["logprob"] = sample_control(logits, r.allowed(logits.shape[-1], device), sample,
                                                r.cfg.temperature, generator)
        return tok

    query, _, tok = last_states(reasoner, seqs, r.pad_id, device, control=control)
    return query, tok.tolist(), picked["logprob"].cpu()


def _control_token_head_query(r, reasoner, seqs, device, sample, generator, need_query):
    if r.head is None:
        raise ValueError("retrieval.mode = control_token_head needs a retrieval head: build the model with that mode "
                         "(ElasticMem makes the head then) or load a checkpoint that has one")
    query, control_ids, logprob = _control_token_query(r, reasoner, seqs, device, sample, generator, need_query)
    return r.head(query).float(), control_ids, logprob


def _frozen_state_query(r, reasoner, seqs, device, sample, generator, need_query):
    with reasoner.disable_adapter():
        query, _, _ = last_states(reasoner, seqs, r.pad_id, device)
    return query, None, None


def _adapted_query(r, reasoner, seqs, device, sample, generator, need_query):
    query, _, _ = last_states(reasoner, seqs, r.pad_id, device)
    return query, None, None


def _query_if_needed(r, reasoner, seqs, device, sample, generator, need_query):
    """Modes that rank without the reasoner's state: the budget policy still reads the adapted question state."""
    if need_query:
        return _adapted_query(r, reasoner, seqs, device, sample, generator, need_query)
    return torch.zeros(len(seqs), r.bank.hidden_size, device=device), None, None


def _bank_rank(r, question, query):
    return r.index.search(query, question.memory_id, r.cfg.top_z)


def _semantic_rank(r, question, query):
    return r.semantic_index.search(r.embedder.encode([question.question])[0], question.memory_id, r.cfg.top_z)


def _oracle_rank(r, question, query):
    found = torch.tensor([r.bank.row(c) for c in question.evidence][:r.cfg.top_z], dtype=torch.long)
    return torch.ones(len(found)), found


@dataclass(frozen=True)
class Mode:
    query: Callable          # (retriever, reasoner, seqs, device, sample, generator, need_query) -> q, control ids, logp
    rank: Callable           # (retriever, question, q [H]) -> scores [z], bank rows [z]
    control_token: bool = False   # a control token is sampled and sits in the layout
    trainable: bool = False       # ranks with a state LoRA can train (the auxiliary retrieval loss applies)
    embedder: bool = False        # needs the sentence embedder and its chunk index
    head: bool = False            # ranks with a retrieval head on the detached control-token state (retrieval_head.py)


MODES = {
    "control_token": Mode(_control_token_query, _bank_rank, control_token=True, trainable=True),  # the paper's
    # beyond the paper: the control token's state through a retrieval head; reading weights never see its loss
    "control_token_head": Mode(_control_token_head_query, _bank_rank, control_token=True, trainable=True, head=True),
    "frozen_state": Mode(_frozen_state_query, _bank_rank),
    "query_state": Mode(_adapted_query, _bank_rank, trainable=True),
    "semantic": Mode(_query_if_needed, _semantic_rank, embedder=True),
    "oracle": Mode(_query_if_needed, _oracle_rank),  # an upper bound, not a method
}


class Retriever:
    """Top-Z retrieval for a batch of questions, in the mode the params choose."""

    def __init__(self, cfg, tokenizer, bank, index: MemoryIndex, semantic_index: MemoryIndex | None = None,
                 embedder=None):
        if cfg.mode not in MODES:
            raise ValueError(f"retrieval.mode = {cfg.mode!r}; choose one of {', '.join(MODES)}")
        self.cfg, self.tokenizer, self.bank, self.index = cfg, tokenizer, bank, index
        self.semantic_index, self.embedder = semantic_index, embedder
        if MODES[cfg.mode].embedder and (semantic_index is None or embedder is None):
            raise ValueError(f"retrieval.mode = {cfg.mode} needs the sentence embedder and its chunk index")
        self.pad_id = tokenizer.pad_token_id
        self.head = None   # the retrieval head (control_token_head mode), set by the model that owns it
        self._allowed: torch.Tensor | None = None

    def allowed(self, vocab_size: int, device) -> torch.Tensor:
        """[V] the ordinary-token mask of the control token (built once per vocabulary size and device)."""
        if self._allowed is None or self._allowed.shape[0] != vocab_size or self._allowed.device != torch.device(device):
            self._allowed = ordinary_token_mask(self.tokenizer, vocab_size, device)
        return self._allowed

    @property
    def uses_control_token(self) -> bool:
        return MODES[self.cfg.mode].control_token

    def __call__(self, reasoner, questions, sample: bool, generator: torch.Generator | None = None,
                 need_query: bool = True) -> Retrieved:
        """`need_query=False`: the caller has no budget policy to feed (text or no memory), so the modes that rank
        without the reasoner's state (semantic, oracle) skip its forward pass and return a zero query."""
        device = next(p for p in reasoner.parameters()).device
        seqs = [question_ids(self.tokenizer, q.question, self.cfg.chat_template) for q in questions]
        mode = MODES[self.cfg.mode]
        with torch.no_grad():
            query, control_ids, control_logprob = mode.query(self, reasoner, seqs, device, sample, generator,
                                                             need_query)
        rows, scores, masks = [], [], []
        for i, q in enumerate(questions):
            s, r, m = pad_topz(*mode.rank(self, q, query[i]), self.cfg.top_z)
            scores.append(s), rows.append(r), masks.append(m)
        return Retrieved(query=query.float(), control_ids=control_ids or [None] * len(questions),
                         control_logprob=torch.zeros(len(questions)) if control_logprob is None else control_logprob,
                         rows=torch.stack(rows), scores=torch.stack(scores), mask=torch.stack(masks))
