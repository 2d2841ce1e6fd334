"""The retrieval warm-up: the query retrieval ranks with, trained on retrieval.aux_loss before GRPO, in a way that
cannot break reading.

- The paper's single LoRA (retrieval.mode control_token): the same LoRA reads and retrieves. Each step may add the
  stage-0 reading loss (memory as text, gold answer) with weight grpo.retrieval_warmup_reading_weight, on the text
  of the chunks grpo.retrieval_warmup_reading_retrieval retrieves (the control token's own picks, while it is still
  learning, are mostly wrong chunks: on the mini reader, 10 steps of the reading loss alone on them took validation
  reading from 0.7125 to 0.575, on the embedder's picks it stayed at 0.7125), and
  grpo.retrieval_warmup_guard checks reading every grpo.retrieval_warmup_check_every steps: validation accuracy with
  memory as text and ORACLE retrieval (the evidence chunks alone: reading, not retrieval). When it falls more than
  the guard below the reader the warm-up started from, LoRA goes back to its last checked state and the warm-up stops.
- Beyond the paper (retrieval.mode control_token_head): only the retrieval head (method/retrieval_head.py) trains, on
  the detached control-token state, so reading is bit-identical by construction; the check still runs when asked,
  to show it.

Every step and check is a line of the training log (stages retrieval_warmup and retrieval_warmup_reading).
"""
from __future__ import annotations

import math
import time

import torch

from ..method import retrieval_loss
from ..method.retrieval import MODES
from ..method.rollout import passes_mode
from .supervision import supervised_loss, validation_accuracy


def reading_accuracy(model, questions) -> float:
    """Greedy validation accuracy with the memory as text and oracle retrieval (the question's evidence chunks)."""
    with model.using(memory="text", retrieval={"mode": "oracle"}):
        return validation_accuracy(model, questions)


def trained_parameters(model) -> list:
    """What the warm-up moves: the retrieval head in control_token_head mode, else the reasoner's LoRA."""
    if MODES[model.cfg.retrieval.mode].head:
        return [p for p in model.retrieval_head.parameters() if p.requires_grad]
    return [p for n, p in model.reasoner.named_parameters() if "lora_" in n and p.requires_grad]


def run(trainer, steps: int) -> list[dict]:
    """`steps` warm-up steps of batches of grpo.sft_batch_size training questions at grpo.retrieval_warmup_lr (see the
    module docstring); returns the step records."""
    if steps <= 0:
        return []
    model, g = trainer.model, trainer.cfg.grpo
    mode = model.cfg.retrieval.mode
    if mode not in retrieval_loss.TRAINABLE_MODES:
        raise ValueError(f"grpo.retrieval_warmup_steps = {steps}: retrieval.mode = {mode!r} has no control token or "
                         f"trainable query state (choose one of {', '.join(retrieval_loss.TRAINABLE_MODES)})")
    params = trained_parameters(model)
    opt = torch.optim.AdamW(params, lr=g.retrieval_warmup_lr, weight_decay=g.weight_decay)
    check = g.retrieval_warmup_guard > 0
    val = [q for q in trainer.val_q if getattr(q, "evidence", None)]
    if check and not val:
        raise ValueError(f"grpo.retrieval_warmup_guard = {g.retrieval_warmup_guard}: the reading check needs validation "
                         f"questions with gold evidence, and none of the {len(trainer.val_q)} has an evidence field")
    before = reading_accuracy(model, val) if check else math.nan
    if check:
        trainer._log({"stage": "retrieval_warmup_reading", "step": 0, "val_oracle_text_accuracy": before})
    # the reading loss reads what a reader reads (grpo.retrieval_warmup_reading_retrieval), not necessarily what the
    # control token retrieves while it is still learning to
    reads = {"mode": g.retrieval_warmup_reading_retrieval} if g.retrieval_warmup_reading_retrieval else None
    kept = [p.detach().clone() for p in params]   # the last state whose reading passed the check
    order = trainer._order(20_000)
    history, stopped, after = [], None, before
    with passes_mode(model, False):
        for step in range(steps):
            start = (step * g.sft_batch_size) % len(order)
            idx = (order + order)[start:start + g.sft_batch_size]
            mine = [trainer.train_q[j] for n, j in enumerate(idx) if n % trainer.world == trainer.rank]
            t0 = time.perf_counter()
            loss, stats = retrieval_loss.aux_loss(model, mine)
            reading = None
            if g.retrieval_warmup_reading_weight > 0 and mine:  # the stage-0 loss keeps the shared LoRA reading
                with model.using(memory="text", retrieval=reads):
                    reading = supervised_loss(model, mine)
                loss = loss + g.retrieval_warmup_reading_weight * reading
            if mine:
                (loss * len(mine) / len(idx)).backward()  # a mean over the batch, summed over processes
            norm = trainer._apply_gradients(params, opt)
            rec = {"stage": "retrieval_warmup", "step": step, "loss": stats.get("aux_retrieval_loss"),
                   "reading_loss": None if reading is None else float(reading.detach()),
                   **{k: v for k, v in stats.items() if k.startswith("recall")},
                   "grad_norm": norm if norm is not None else math.nan, "seconds": round(time.perf_counter() - t0, 3)}
            history.append(rec)
            trainer._log(rec)
            if check and ((step + 1) % g.retrieval_warmup_check_every == 0 or step + 1 == steps):
                acc = reading_accuracy(model, val)
                trainer._log({"stage": "retrieval_warmup_reading", "step": step + 1, "val_oracle_text_accuracy": acc})
                if acc < before - g.retrieval_warmup_guard:
                    with torch.no_grad():
                        for p, k in zip(params, kept):
                            p.copy_(k)
                    stopped = step + 1
                    break
                kept, after = [p.detach().clone() for p in params], acc
    if check:
        trainer._log({"stage": "retrieval_warmup_reading", "before": before, "after": after,
                      "rolled_back_at": stopped, "steps_run": len(history), "guard": g.retrieval_warmup_guard})
    return history
