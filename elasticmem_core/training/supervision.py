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
    """`supervised_loss`, with the prompt prefix (question, control token, memory) run once for the items that share
    it (an ALFWorld episode's steps: one objective, so one retrieval and one memory), then repeated in the KV cache
    for each item's own tail and answer. The same loss and gradient as `supervised_loss` up to float order; cheaper
    when prefixes are long and shared (skill cards as text: ~1,200 tokens before a ~300-token step prompt)."""
    if not questions:
        zero = torch.zeros((), device=model.device)
        return (zero, zero) if reduction == "sum" else zero
    plan = model.plan(questions, sample=False)
    batch = model.build(questions, plan, [model.answer_ids(q.gold) for q in questions])
    if batch.answer_columns is not None:
        raise ValueError("prefix_shared_loss: this model puts latents between answer tokens; use supervised_loss")
    p, a = batch.prompt_len, batch.answer_ids.shape[1]
    first = [s["question"][0] for s in batch.spans]   # a row's first real column (left padding before it)
    tail = [s["tail"][0] for s in batch.spans]        # where its own part begins
    groups: list[list[int]] = []                       # rows whose prefixes are the same embeddings
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
    total = torch.zeros((), device=model.device)
    for grp in groups:
        j, rows = grp[0], torch.tensor(grp, device=model.device)
        n = tail[j] - first[j]
        cache = model.reasoner(inputs_embeds=batch.inputs_embeds[j:j + 1, first[j]:tail[j]],
                               attention_mask=batch.attention_mask[j:j + 1, first[j]:tail[j]],
                               position_ids=torch.arange(n, device=model.device)[None], use_cache=True,
                               logits_to_keep=1).cache
        if len(grp) > 1:
            cache.batch_repeat_interleave(len(grp))
        w = max(p - tail[i] for i in grp)       # the widest tail; shorter ones are left-padded inside the block
        mask = batch.attention_mask[rows, p - w:].clone()
        for k, i in enumerate(grp):
            mask[k, :tail[i] - (p - w)] = 0        # this row's prefix columns (and padding) are in the cache
        positions = n + (mask.cumsum(-1) - 1).clamp(min=0)
        logits = model.reasoner(inputs_embeds=batch.inputs_embeds[rows, p - w:],
                                attention_mask=torch.cat([mask.new_ones(len(grp), n), mask], 1),
                                position_ids=positions, cache=cache, use_cache=True,
                                logits_to_keep=torch.arange(w - 1, w - 1 + a, device=model.device)).logits
        logp = torch.log_softmax(logits.float() / t_answer, -1).gather(-1, batch.answer_ids[rows, :, None])[..., 0]
        total = total - (logp * batch.answer_mask[rows]).sum()
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
