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


def validation_accuracy(model, questions, batch_size: int | None = None) -> float:
    """Greedy accuracy on `questions` (cfg.eval.max_questions caps the count)."""
    cap = model.cfg.eval.max_questions
    qs = questions[:cap] if cap > 0 else questions
    bs = batch_size or model.cfg.eval.batch_size
    correct = 0
    for i in range(0, len(qs), bs):
        correct += sum(o["correct"] for o in model.answer(qs[i:i + bs]))
    return correct / max(1, len(qs))
