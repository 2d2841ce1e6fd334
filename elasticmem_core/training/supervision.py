"""The supervised pieces every training stage shares: the cross-entropy on the gold answer through the model's own
injection path (stages 0 and 1, the retrieval warm-up's reading loss) and greedy validation accuracy."""
from __future__ import annotations

import torch

from ..method.rollout import token_logprobs


def supervised_loss(model, questions, reduction: str = "mean"):
    """Cross-entropy on the gold answer tokens through the same injection path (greedy retrieval and budgets).
    `reduction="sum"` returns (summed loss, answer-token count) instead, for a mean over several processes."""
    if not questions:
        zero = torch.zeros((), device=model.device)
        return (zero, zero) if reduction == "sum" else zero
    plan = model.plan(questions, sample=False)
    answers = [model.answer_ids(q.gold) for q in questions]
    logp, mask = token_logprobs(model, questions, plan, answers, with_grad=True)
    total, count = -(logp[:, 1:] * mask[:, 1:]).sum(), mask[:, 1:].sum()
    return (total, count) if reduction == "sum" else total / count


def prefix_shared_loss(model, questions, reduction: str = "mean"):
    """`supervised_loss`, with the prompt prefix (question, control token, memory) run once for the items whose
    prefixes are the same embeddings (the steps of an ALFWorld episode: one objective, so one retrieval and one
    memory), then repeated in the KV cache for each item's own tail and answer; items that share their prefix with
    no other go through one batched pass, as in `supervised_loss`. The same loss and gradients as `supervised_loss`
    up to float order when nothing in the prefix is random (no LoRA dropout: with it, a group shares one mask, the
    same in expectation); cheaper when prefixes are long and shared (skill cards as text: ~1,200 tokens before a
    ~300-token step prompt)."""
    if not questions:
        zero = torch.zeros((), device=model.device)
        return (zero, zero) if reduction == "sum" else zero
    plan = model.plan(questions, sample=False)
    batch = model.build(questions, plan, [model.answer_ids(q.gold) for q in questions])
    if batch.answer_columns is not None:   # latents between answer tokens (MemGen-style): no common answer block
        return supervised_loss(model, questions, reduction)
    p, a, device = batch.prompt_len, batch.answer_ids.shape[1], model.device
    first = [s["question"][0] for s in batch.spans]              # a row's first real column (left padding before it)
    tail = [min(s["tail"][0], p - 1) for s in batch.spans]       # where its own part begins (at least one column)
    groups: list[list[int]] = []                                  # rows whose prefixes are the same embeddings
    for i in range(len(questions)):
        prefix = batch.inputs_embeds[i, first[i]:tail[i]].detach()
        for grp in groups:
            j = grp[0]
            if tail[j] - first[j] == prefix.shape[0] and torch.equal(batch.inputs_embeds[j, first[j]:tail[j]], prefix):
                grp.append(i)
                break
        else:
            groups.append([i])
    t_answer = model.cfg.grpo.temperature

    def nll(logits, rows):   # logits [R, A, V] predicting rows' answer tokens
        logp = torch.log_softmax(logits.float() / t_answer, -1).gather(-1, batch.answer_ids[rows, :, None])[..., 0]
        return -(logp * batch.answer_mask[rows]).sum()

    total = torch.zeros((), device=device)
    alone = torch.tensor([g[0] for g in groups if len(g) == 1], dtype=torch.long, device=device)
    if len(alone):   # one batched pass over the whole prompts, as supervised_loss
        logits = model.reasoner(inputs_embeds=batch.inputs_embeds[alone], attention_mask=batch.attention_mask[alone],
                                position_ids=batch.position_ids[alone],
                                logits_to_keep=torch.arange(p - 1, p - 1 + a, device=device)).logits
        total = total + nll(logits, alone)
    for grp in (g for g in groups if len(g) > 1):
        j, rows = grp[0], torch.tensor(grp, device=device)
        n = tail[j] - first[j]
        cache = model.reasoner(inputs_embeds=batch.inputs_embeds[j:j + 1, first[j]:tail[j]],
                               attention_mask=batch.attention_mask[j:j + 1, first[j]:tail[j]],
                               position_ids=torch.arange(n, device=device)[None], use_cache=True,
                               logits_to_keep=1).cache
        cache.batch_repeat_interleave(len(grp))
        w = max(p - tail[i] for i in grp)       # the widest tail; shorter ones are left-padded inside the block
        mask = batch.attention_mask[rows, p - w:].clone()
        for k, i in enumerate(grp):
            mask[k, :tail[i] - (p - w)] = 0        # this row's prefix columns (and padding) are in the cache
        logits = model.reasoner(inputs_embeds=batch.inputs_embeds[rows, p - w:],
                                attention_mask=torch.cat([mask.new_ones(len(grp), n), mask], 1),
                                position_ids=n + (mask.cumsum(-1) - 1).clamp(min=0), cache=cache, use_cache=True,
                                logits_to_keep=torch.arange(w - 1, w - 1 + a, device=device)).logits
        total = total + nll(logits, rows)
    count = batch.answer_mask.sum()
    return (total, count) if reduction == "sum" else total / count


def validation_accuracy(model, questions, batch_size: int | None = None) -> float:
    """Greedy accuracy on `questions` (cfg.eval.max_questions caps the count)."""
    cap = model.cfg.eval.max_questions
    qs = questions[:cap] if cap > 0 else questions
    bs = batch_size or model.cfg.eval.batch_size
    correct = 0
    for i in range(0, len(qs), bs):
        correct += sum(o["correct"] for o in model.answer(qs[i:i + bs]))
    return correct / max(1, len(qs))
