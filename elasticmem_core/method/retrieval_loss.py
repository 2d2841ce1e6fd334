"""The auxiliary retrieval loss: teaching the reasoner's query state to find the evidence, and measuring recall@Z.

Retrieval itself is not differentiable (a top-Z over cosines); in GRPO it learns only through the control token's
log-probability and through LoRA moving q. The authors' code carries a dense auxiliary loss for that (a KL toward a
MiniLM retriever's scores, `aux_lambda`, switched off in every script). Over the chunks i of the question's own memory,
with student logits cos(q, k_i) / tau (q with gradients, through LoRA; the bank's keys k_i are frozen):

    kl           KL(softmax(t / tau) || softmax(cos(q, k) / tau)),  t_i = cos(e(question), e(chunk_i)) of the
                 sentence embedder (the teacher; the authors' dense_scores)
    contrastive  -log sum_{i in evidence} softmax(cos(q, k) / tau)_i, where the data records the gold evidence
                 (mini, LoCoMo's evidence field): beyond the authors' code

(AUX_LOSSES is the one place a new kind plugs in.) q is the state the retrieval mode ranks with: the control token's
(control_token; the greedy control token, fed back, as at evaluation) or the question's last state (query_state).
frozen_state, semantic and oracle do not rank with a trainable state: the loss is refused there.

It is used by the retrieval warm-up (grpo.Trainer.retrieval_warmup, `grpo.retrieval_warmup_steps`: a forward and
backward over the question and the control token only) and, weighted by retrieval.aux_weight, beside the GRPO loss.

    loss, stats = retrieval_loss.aux_loss(model, questions)      # stats: recall@Z of the greedy ranking
    per_question = retrieval_loss.recall_at(model, questions, "control_token", zs=(1, 2, 4, 8))  # {z: [recall]}
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch.nn import functional as F

from .retrieval import MODES, last_states, question_ids, sample_control

TRAINABLE_MODES = tuple(m for m, spec in MODES.items() if spec.trainable)  # control_token, query_state
RECALL_ZS = (1, 2, 4, 8)


def _kl(student_logp: torch.Tensor, teacher: torch.Tensor | None, gold: torch.Tensor | None, tau: float):
    if teacher is None:
        raise ValueError("retrieval.aux_loss = kl needs the sentence embedder's chunk index (the teacher)")
    p = F.softmax(teacher / tau, dim=-1)
    return (p * (torch.log(p.clamp_min(1e-12)) - student_logp)).sum()


def _contrastive(student_logp: torch.Tensor, teacher, gold: torch.Tensor | None, tau: float):
    if gold is None or not bool(gold.any()):
        return None  # no gold evidence in this question's memory: it adds nothing (aux_loss skips it)
    return -torch.logsumexp(student_logp[gold], dim=0)


# name -> (student log-probs over the memory [n], teacher cosines [n] or None, gold mask [n] or None, tau) -> loss
# (None: the question adds nothing)
AUX_LOSSES: dict[str, Callable] = {"kl": _kl, "contrastive": _contrastive}


def check_aux_loss(name: str, mode: str) -> None:
    """Raise ValueError naming the keys when an auxiliary retrieval loss cannot apply."""
    if name == "none":
        return
    if name not in AUX_LOSSES:
        raise ValueError(f"retrieval.aux_loss = {name!r}; choose none or one of {', '.join(AUX_LOSSES)}")
    if mode not in TRAINABLE_MODES:
        raise ValueError(f"retrieval.aux_loss = {name!r} trains the state retrieval ranks with, but retrieval.mode = "
                         f"{mode!r} does not rank with a trainable state (use one of {', '.join(TRAINABLE_MODES)})")


def query_state(model, questions, mode: str | None = None) -> torch.Tensor:
    """The state retrieval ranks with [B, H], WITH gradients through LoRA: control_token feeds back the greedy
    control token (chosen without gradients, as at evaluation) and returns the state at it; query_state the
    question's last state."""
    r, tok = model.retriever, model.tokenizer
    mode = mode or r.cfg.mode
    device = model.device
    seqs = [question_ids(tok, q.question, r.cfg.chat_template) for q in questions]
    if mode in ("control_token", "control_token_head"):
        with torch.no_grad():
            _, logits, _ = last_states(model.reasoner, seqs, r.pad_id, device)
            ctl, _ = sample_control(logits, r.allowed(logits.shape[-1], device), False, r.cfg.temperature)
        seqs = [s + [int(c)] for s, c in zip(seqs, ctl.tolist())]
    elif mode != "query_state":
        raise ValueError(f"retrieval.mode = {mode!r} has no trainable query state ({', '.join(TRAINABLE_MODES)})")
    if mode == "control_token_head":  # the reasoner's state without gradient; only the head learns
        if getattr(model, "retrieval_head", None) is None:
            raise ValueError("retrieval.mode = control_token_head: the model has no retrieval head")
        with torch.no_grad():
            state, _, _ = last_states(model.reasoner, seqs, r.pad_id, device)
        return model.retrieval_head(state).float()
    state, _, _ = last_states(model.reasoner, seqs, r.pad_id, device)
    return state.float()


def aux_loss(model, questions, kind: str | None = None, tau: float | None = None) -> tuple[torch.Tensor, dict]:
    """The mean auxiliary retrieval loss over `questions` (differentiable; contrastive skips questions without
    gold evidence in their memory, and refuses a batch with none) and {"aux_retrieval_loss", "aux_questions",
    "recall@<Z>"} of the student's greedy ranking (recall over questions whose evidence is known)."""
    cfg = model.cfg.retrieval
    kind, tau = kind or cfg.aux_loss, tau or cfg.aux_temperature
    check_aux_loss(kind, cfg.mode)
    if kind == "none":
        raise ValueError("retrieval.aux_loss = none: no auxiliary retrieval loss to compute")
    if not questions:
        return torch.zeros((), device=model.device), {}
    q = F.normalize(query_state(model, questions), dim=-1)
    index, semantic = model.retriever.index, model.retriever.semantic_index
    teacher_q = model.retriever.embedder.encode([x.question for x in questions]) \
        if kind == "kl" and model.retriever.embedder is not None else None
    losses, recalls = [], []
    for i, x in enumerate(questions):
        rows = index.memory_rows(x.memory_id)
        keys = torch.from_numpy(index.keys[rows]).to(q.device)
        logp = F.log_softmax(keys @ q[i] / tau, dim=-1)
        teacher = None
        if teacher_q is not None and semantic is not None:
            teacher = torch.from_numpy(semantic.keys[rows]).to(q.device) @ teacher_q[i].to(q.device)
        gold_ids = set(getattr(x, "evidence", None) or ())
        gold = torch.tensor([model.bank.chunk_ids[r] in gold_ids for r in rows], device=q.device) if gold_ids else None
        loss = AUX_LOSSES[kind](logp, teacher, gold, tau)
        if loss is not None:
            losses.append(loss)
        if gold is not None and bool(gold.any()):
            z = min(cfg.top_z, len(rows))
            top = logp.topk(z).indices
            recalls.append(float(gold[top].sum() / gold.sum()))
    if not losses:
        raise ValueError(f"retrieval.aux_loss = {kind}: none of the {len(questions)} questions has its gold evidence "
                         f"in its memory (contrastive needs an evidence field)")
    stats = {"aux_retrieval_loss": float(torch.stack(losses).mean().detach()), "aux_questions": len(losses)}
    if recalls:
        stats[f"recall@{cfg.top_z}"] = float(np.mean(recalls))
    return torch.stack(losses).mean(), stats


def recall_at(model, questions, mode: str, zs=RECALL_ZS, batch_size: int | None = None) -> dict[int, list[float]]:
    """Per question recall@Z of its gold evidence chunks for each Z in `zs`, ranking its memory the way retrieval
    mode `mode` does with the model's current weights (greedy control token): {Z: [recall per question]}. `random`
    gives the expected recall of Z chunks drawn at random, min(Z, n) / n. Questions without evidence are skipped."""
    questions = [q for q in questions if getattr(q, "evidence", None)]
    if not questions:
        raise ValueError("recall needs questions with gold evidence")
    out = {z: [] for z in zs}
    r = model.retriever
    if mode == "random":
        for q in questions:
            n = len(r.index.memory_rows(q.memory_id))
            for z in zs:
                out[z].append(min(z, n) / n)
        return out
    if mode == "semantic" and (r.embedder is None or r.semantic_index is None):
        raise ValueError("recall of semantic retrieval needs the sentence embedder and its chunk index "
                         "(assemble.model_for builds them for retrieval.mode = semantic or retrieval.aux_loss = kl)")
    bs = batch_size or model.cfg.eval.batch_size
    with model.using(retrieval={"mode": mode, "top_z": max(zs)}):
        for i in range(0, len(questions), bs):
            batch = questions[i:i + bs]
            got = r(model.reasoner, batch, False, None, need_query=mode not in ("semantic", "oracle"))
            for q, rows in zip(batch, got.rows):
                gold = {model.bank.row(c) for c in q.evidence}
                for z in zs:
                    found = set(rows[:z].tolist())
                    out[z].append(len(gold & found) / len(gold))
    return out
