"""GRPO: joint training of the reasoner's LoRA, the projector and the budget policy on the task reward.

One training step (as the authors run it; TRL's names):

    for each question of the step (split across processes):
        rollouts   : G samples of (control token, budgets, answer), evaluated as ONE padded batch
        rewards    : reward_fn(answer)                    -> advantages = (r - mean) / (std + eps), clamped
    for each inner pass (a full AdamW step each):
        old logp   : at the first pass, the pass's own log-probs, detached: control + answer tokens and budget
                     actions (exact: no weight has changed since the rollouts, and dropout is off; saves the
                     separate no-grad forward pass that TRL runs when it makes several passes per batch)
        loss = clipped surrogate over control + answer tokens
             + clipped surrogate over budget actions
             - entropy_coef * policy entropy
             (+ kl_beta * KL to the frozen base model, off by default as the authors)
        gradients averaged over the step's questions (and processes); a non-finite gradient is skipped and counted

The loss of a step is the mean over its questions of each question's group loss, so splitting questions across
processes (accelerate) gives the same gradient as one process. Sampling uses a generator seeded by (seed, step,
question index), so rollouts do not depend on how questions are split.

Stage 0 (optional, `grpo.reader_warmup_steps`): supervised LoRA training with the retrieved memory as TEXT, which
teaches a small reader to read at all (SmolLM2-135M is at chance even with the right chunk as text). The retrieval
warm-up (optional, `grpo.retrieval_warmup_steps`): LoRA trained on the auxiliary retrieval loss alone
(retrieval_loss.py), which retrieval.aux_weight also adds to every GRPO step. Stage 1 (optional, `grpo.sft_steps`):
the same supervised loss as stage 0 through the latent path. Stages 0 and 1 use `supervised()`.
"""
from __future__ import annotations

import hashlib
import json
import math
import random
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from ..core import sampling
from ..core.experiment import peak_memory_mb, write_folder, write_json
from ..method import retrieval_loss
from ..method.rewards import WeightedReward
from ..method.rollout import Group, layer_checkpointing, passes_mode, select_rows, token_logprobs
from . import alignment, retrieval_warmup, stage_state
from .stage_state import RunMismatchError
from .supervision import prefix_shared_loss, supervised_loss, validation_accuracy  # noqa: F401 (grpo's names)

RUN_IDENTITY = "run_identity.json"


# ---- the loss, as pure functions ------------------------------------------------------------------------------
def clipped_surrogate(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                      clip_eps: float, loss_type: str = "token_mean", weights: torch.Tensor | None = None,
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO-clipped surrogate loss over actions [N, T] with per-row advantages [N]; returns (loss, clip fraction).

    token_mean averages over all real actions of the group; sequence_mean averages within each row first.
    `weights` [N] (from `row_weights` of the whole group) weighs each row's action sum instead: a pass over some of
    a group's rows then gives exactly its share of the group's loss (the per-rollout backward).
    """
    mask = mask.float()
    ratio = torch.exp(logp - old_logp)
    adv = advantages[:, None]
    per_action = -torch.min(ratio * adv, ratio.clamp(1 - clip_eps, 1 + clip_eps) * adv)
    if weights is not None:
        loss = ((per_action * mask).sum(1) * weights).sum()
    elif loss_type == "token_mean":
        loss = (per_action * mask).sum() / mask.sum().clamp(min=1)
    else:
        rows = mask.sum(1) > 0
        loss = ((per_action * mask).sum(1)[rows] / mask.sum(1)[rows]).mean() if rows.any() else per_action.sum() * 0
    clipped = ((ratio - 1).abs() > clip_eps).float()
    return loss, (clipped * mask).sum() / mask.sum().clamp(min=1)


def row_weights(counts: torch.Tensor, loss_type: str) -> torch.Tensor:
    """Weight [N] of each row's action sum in its group's loss, from the group's action counts per row [N]."""
    counts = counts.float()
    if loss_type == "token_mean":
        return torch.ones_like(counts) / counts.sum().clamp(min=1)
    rows = counts > 0
    return torch.where(rows, 1.0 / (counts.clamp(min=1) * rows.sum().clamp(min=1)), torch.zeros_like(counts))


def group_loss(model, g: Group, rows: list[int] | None = None, lm: bool = True) -> tuple[torch.Tensor, dict]:
    """The GRPO loss of one group (see the module docstring) and its diagnostics.

    With `rows`, only those rollouts go through the reasoner and the loss returned is their exact share of the
    group's loss (the group's normalisers are computed from its action counts): summing the shares of a partition
    of the rollouts, each backpropagated on its own, gives the group's gradient (grpo.backward = rollout).
    `lm=False` (grpo.policy_only): the budget policy's terms only; the reasoner is not run at all.
    """
    cfg = model.cfg
    whole = rows is None
    rows = list(range(len(g.questions))) if whole else rows
    sub = lambda t: t if whole else t[rows]  # noqa: E731
    plan = g.plan if whole else select_rows(g.plan, rows)
    adv = sub(g.advantages).to(model.device)
    weights = None if whole else sub(row_weights(g.action_counts(), cfg.grpo.loss_type)).to(model.device)
    loss, stats = torch.zeros((), device=model.device), {}
    if lm:
        logp, mask = token_logprobs(model, [g.questions[i] for i in rows], plan, [g.answers[i] for i in rows],
                                    with_grad=True)
        if g.old_logp is None and whole:  # first inner pass: the weights are still the rollouts' (module docstring)
            g.old_logp = logp.detach()
        old = g.old_logp if whole else _old_rows(g, "old_logp", rows, logp)
        lm_loss, lm_clip = clipped_surrogate(logp, old, adv, mask, cfg.grpo.clip_eps, cfg.grpo.loss_type, weights)
        loss = lm_loss
        stats = {"lm_loss": lm_loss.item(), "clip_frac": lm_clip.item()}
    if model.policy.trainable and model.memory == "latent":
        plogp, entropy = model.policy_logprob(plan)
        if g.old_policy_logp is None and whole:
            g.old_policy_logp = plogp.detach()
        old_p = g.old_policy_logp if whole else _old_rows(g, "old_policy_logp", rows, plogp)
        pmask = plan.retrieved.mask.to(model.device)
        pweights = None
        if not whole:
            pweights = sub(row_weights(g.plan.retrieved.mask.sum(1), cfg.grpo.loss_type)).to(model.device)
        p_loss, p_clip = clipped_surrogate(plogp, old_p, adv, pmask, cfg.grpo.clip_eps, cfg.grpo.loss_type, pweights)
        ent = (entropy * pmask).sum() / (pmask.sum() if whole else g.plan.retrieved.mask.sum()).clamp(min=1)
        loss = loss + p_loss - cfg.budget.entropy_coef * ent
        stats.update(policy_loss=p_loss.item(), policy_clip_frac=p_clip.item(), policy_entropy=ent.item())
    extra = model.extra_action_logprobs([g.questions[i] for i in rows], plan, [g.answers[i] for i in rows])
    if extra is not None:  # e.g. the MemGen-style trigger's decisions: the same clipped surrogate
        elogp, emask = extra
        if g.old_extra_logp is None and whole:
            g.old_extra_logp = elogp.detach()
        old_e = g.old_extra_logp if whole else _old_rows(g, "old_extra_logp", rows, elogp)
        eweights = None
        if not whole:
            counts = torch.tensor([len(t) for t in g.plan.triggers or [{}] * len(g.questions)])
            eweights = sub(row_weights(counts, cfg.grpo.loss_type)).to(model.device)
        e_loss, e_clip = clipped_surrogate(elogp, old_e, adv, emask, cfg.grpo.clip_eps, cfg.grpo.loss_type, eweights)
        loss = loss + e_loss
        stats.update(extra_loss=e_loss.item(), extra_clip_frac=e_clip.item(), extra_actions=float(emask.sum()))
    if cfg.grpo.kl_beta > 0 and lm:
        ref, _ = token_logprobs(model, [g.questions[i] for i in rows], plan, [g.answers[i] for i in rows],
                                with_grad=False, reference=True)
        diff = ref - logp
        total = mask.sum() if whole else g.action_counts().sum().to(mask.device)
        kl = ((diff.exp() - diff - 1) * mask).sum() / total.clamp(min=1)   # k3 estimator
        loss = loss + cfg.grpo.kl_beta * kl
        stats["kl"] = kl.item()
    return loss, stats


def _old_rows(g: Group, field: str, rows: list[int], now: torch.Tensor) -> torch.Tensor:
    """Old log-probs (`field`: old_logp [., 1 + A] or old_policy_logp [., Z]) of `rows` for a per-rollout pass; at
    the first inner pass they are this pass's own (`now`, detached). Stored per row, trimmed or padded to this
    pass's width (a sub-batch pads its answers to its own length; the policy's width is always Z)."""
    width, stored = now.shape[1], getattr(g, field)
    if isinstance(stored, torch.Tensor):  # from `score_old`: padded to the whole group's answer length
        return stored[rows][:, :width].to(now.device)
    if stored is None:
        stored = [None] * len(g.questions)
        setattr(g, field, stored)
    for k, i in enumerate(rows):
        if stored[i] is None:
            stored[i] = now[k].detach()
    return torch.stack([torch.nn.functional.pad(stored[i][:width], (0, width - min(width, stored[i].shape[0])))
                        for i in rows])


# ---- supervised warm-ups --------------------------------------------------------------------------------------
def _warmup_cosine(step: int, total: int, warmup: int, floor: float = 0.0) -> float:
    """Learning-rate factor: linear warm-up over `warmup` steps, then a cosine from 1 down to `floor` at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


# ---- the trainer ----------------------------------------------------------------------------------------------
class Trainer:
    """Runs stage 0, stage 1 and GRPO with validation-based model selection, checkpoints and resume."""

    def __init__(self, model, train_questions, val_questions, run_dir: str | Path, reward_fn: WeightedReward | None = None,
                 accelerator=None, evaluate_fn=None, setting: str | None = None):
        self.model, self.cfg = model, model.cfg
        self.train_q, self.val_q = list(train_questions), list(val_questions)
        if not self.train_q:
            raise ValueError("no training questions")
        self.dir = Path(run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.reward_fn = reward_fn or WeightedReward(self.cfg.grpo.reward_terms)
        if self.cfg.grpo.policy_only:  # only the budget policy learns: freeze the rest before the optimizer sees it
            if not (model.policy.trainable and model.memory == "latent"):
                raise ValueError("grpo.policy_only needs latent memory and a trainable budget policy")
            policy = {id(p) for p in model.policy.parameters()}
            for p in model.parameters():
                if id(p) not in policy:
                    p.requires_grad_(False)
        self.acc = accelerator
        self.rank, self.world = (accelerator.process_index, accelerator.num_processes) if accelerator else (0, 1)
        self.evaluate_fn = evaluate_fn or (lambda qs: validation_accuracy(model, qs))
        self.setting = setting
        if self.world > 1:
            self._broadcast_weights()
        g = self.cfg.grpo
        # the budget policy may have its own learning rate (grpo.policy_lr): it starts from scratch, unlike the reader
        groups = model.optimizer_groups(g.lr)
        if g.policy_lr > 0:
            policy = {id(p) for p in model.policy.parameters()}
            groups = [{**x, "params": [p for p in x["params"] if id(p) not in policy]} for x in groups] + \
                [{"params": [p for x in groups for p in x["params"] if id(p) in policy], "lr": g.policy_lr}]
            groups = [x for x in groups if x["params"]]
        self.optimizer = torch.optim.AdamW(groups, lr=g.lr, weight_decay=g.weight_decay)
        per_epoch = math.ceil(len(self.train_q) / g.questions_per_step)
        self.total_steps = g.epochs * per_epoch if g.max_steps <= 0 else min(g.max_steps, g.epochs * per_epoch)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        self.step, self.best, self.skipped = 0, -1.0, 0
        self.log_path = self.dir / "train_log.jsonl"
        self.tracker = None
        if g.tracker:  # optional; accelerate raises a clear error if the tracker's package is not installed
            from accelerate import Accelerator

            self.tracker = accelerator or Accelerator(cpu=model.device.type == "cpu", log_with=g.tracker,
                                                      project_dir=str(self.dir))
            self.tracker.init_trackers("elasticmem", config={"lr": g.lr, "group_size": g.group_size})

    def _broadcast_weights(self) -> None:
        """Every process starts from rank 0's trainable weights (not only from identical seeding)."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            with torch.no_grad():
                for p in self.model.trainable_parameters():
                    dist.broadcast(p.data, src=0)

    def _reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        return self.acc.reduce(t, reduction="sum") if self.world > 1 else t

    def _lr_factor(self, step: int) -> float:
        return _warmup_cosine(step, self.total_steps, self.cfg.grpo.warmup_steps, self.cfg.grpo.min_lr_ratio)

    def _log(self, record: dict) -> None:
        if self.rank == 0:
            with open(self.log_path, "a") as f:
                f.write(json.dumps(record) + "\n")
            if self.tracker is not None:
                numbers = {f"{record['stage']}/{k}": v for k, v in record.items() if isinstance(v, (int, float))}
                self.tracker.log(numbers, step=record.get("step"))

    def _order(self, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(self.cfg.runtime.seed + epoch)
        return torch.randperm(len(self.train_q), generator=g).tolist()

    def _step_questions(self, step: int) -> tuple[list[tuple[int, object]], int]:
        """(global index, question) of this process's share of a step's questions, and the step's question count
        over all processes (a process may get none: one question per step on two GPUs, a ragged last step)."""
        k = self.cfg.grpo.questions_per_step
        per_epoch = math.ceil(len(self.train_q) / k)
        epoch, i = divmod(step, per_epoch)
        idx = self._order(epoch)[i * k:(i + 1) * k]
        return [(j, self.train_q[j]) for n, j in enumerate(idx) if n % self.world == self.rank], len(idx)

    # ---- gradient bookkeeping -------------------------------------------------------------------------------
    def _apply_gradients(self, params: list | None = None, optimizer=None) -> float | None:
        """Sum gradients over processes (each loss is already divided by the step's global question count), skip
        non-finite ones, clip, step `optimizer` (default: GRPO's, over every trainable parameter; the warm-ups pass
        their own). Returns the grad norm or None."""
        params = list(self.model.trainable_parameters() if params is None else params)
        optimizer = optimizer or self.optimizer
        if self.world > 1:
            flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in params])
            flat = self.acc.reduce(flat, reduction="sum")
            offset = 0
            for p in params:
                n = p.numel()
                p.grad = flat[offset:offset + n].view_as(p).clone()
                offset += n
        norm = torch.nn.utils.clip_grad_norm_(params, self.cfg.grpo.grad_clip)
        if not torch.isfinite(norm):
            self.skipped += 1
            optimizer.zero_grad(set_to_none=True)
            return None
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(norm)

    # ---- stages -----------------------------------------------------------------------------------------------
    def supervised(self, steps: int, memory: str, tag: str) -> list[dict]:
        """Stage 0 (memory='text') or stage 1 (memory='latent'): cross-entropy on the gold answers, at grpo.sft_lr
        after grpo.sft_warmup_steps of linear warm-up, decaying (cosine) to grpo.sft_min_lr_ratio of it. Each stage
        may draw its learning curve and keep its best point: stage 0 every grpo.reader_eval_every steps (text-memory
        validation accuracy: a curve that still rises at the end says the stage stopped too early), stage 1 every
        grpo.sft_eval_every steps (the GRPO validation measure, `evaluate_fn`), stopping after grpo.sft_patience
        checks without a better one (ALFWorld's behaviour cloning: epochs until held-out step accuracy plateaus)."""
        if steps <= 0:
            return []
        g = self.cfg.grpo
        if tag == "reader_warmup":   # logged as stages reader_val / reader_selected
            curve = (g.reader_eval_every, lambda: validation_accuracy(self.model, self.val_q), "reader",
                     "val_text_accuracy", 0)
        else:
            curve = (g.sft_eval_every, lambda: self.evaluate_fn(self.val_q), tag, "val_accuracy", g.sft_patience)
        with self.model.using(memory=memory):
            return self._supervised(steps, tag, *curve)

    def _supervised(self, steps: int, tag: str, every: int, check, name: str, key: str, patience: int) -> list[dict]:
        model, g = self.model, self.cfg.grpo
        opt = torch.optim.AdamW(model.optimizer_groups(g.sft_lr), lr=g.sft_lr, weight_decay=g.weight_decay)
        schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _warmup_cosine(s, steps, g.sft_warmup_steps,
                                                                                  g.sft_min_lr_ratio))
        curve = every > 0 and bool(self.val_q)
        best = (-1.0, 0, None)   # (validation accuracy, step, trainable weights) of the best point so far
        stale = 0                # checks since the best one
        order = self._order(10_000 + len(tag))
        loss_fn = supervised_loss
        if g.sft_prefix_batches:   # one question's items in a row (in its first item's place): their prefix runs once
            by_question: dict[str, list[int]] = {}
            for j in order:
                by_question.setdefault(self.train_q[j].question, []).append(j)
            order, loss_fn = [j for items in by_question.values() for j in items], prefix_shared_loss
        history, first = [], 0
        partial = self.dir / f"{tag}.partial"
        want = stage_state.recipe(self.cfg, model.memory, self.world, tag, steps) if g.sft_save_every > 0 else None
        if want is not None:   # continue a stopped stage; one started over keeps none of its old log lines
            if (partial / stage_state.STATE).is_file():
                self._check_identity()
            state = stage_state.load(model, partial, want, self.rank)
            if state is not None:
                opt.load_state_dict(state["optimizer"])
                schedule.load_state_dict(state["schedule"])
                first, best, stale, history = state["step"], state["best"], state["stale"], state["history"]
            if self.rank == 0:
                stage_state.keep_log_until(self.log_path, tag, f"{name}_val", first)
            if first:
                self._log({"stage": f"{tag}_resumed", "step": first})
        model.train()
        for step in range(first, steps):
            start = (step * g.sft_batch_size) % len(order)
            idx = (order + order)[start:start + g.sft_batch_size]
            if g.sft_prefix_batches:   # a contiguous share per process: an episode's steps stay together
                share = -(-len(idx) // self.world)
                mine = [self.train_q[j] for j in idx[self.rank * share:(self.rank + 1) * share]]
            else:
                mine = [self.train_q[j] for n, j in enumerate(idx) if n % self.world == self.rank]
            t0 = time.perf_counter()
            # a token mean over the whole batch, whichever process holds which question (one may hold none)
            total, count = loss_fn(model, mine, reduction="sum")
            count = self._reduce_sum(count.detach().float())
            if mine:
                (total / count.clamp(min=1)).backward()
            loss = self._reduce_sum(total.detach()) / count.clamp(min=1)
            lr = opt.param_groups[0]["lr"]
            norm = self._apply_gradients(optimizer=opt)
            schedule.step()
            rec = {"stage": tag, "step": step, "loss": loss.item(), "grad_norm": norm if norm is not None else math.nan,
                   "lr": lr, "seconds": round(time.perf_counter() - t0, 3)}
            history.append(rec)
            self._log(rec)
            if curve and ((step + 1) % every == 0 or step + 1 == steps):
                # one verdict for every process (a bf16 near-tie could differ): an early stop on one alone would hang
                acc = check()
                if self.world > 1:
                    total = self._reduce_sum(torch.tensor(acc, dtype=torch.float64, device=model.device))
                    acc = float(total) / self.world
                model.train()
                self._log({"stage": f"{name}_val", "step": step + 1, key: acc})
                if acc > best[0]:  # the same accuracy on every process, so all keep the same weights
                    best, stale = (acc, step + 1, {n: p.detach().clone() for n, p in model.named_parameters()
                                                   if p.requires_grad}), 0
                else:
                    stale += 1
                    if patience and stale >= patience:
                        break
            if g.sft_save_every > 0 and (step + 1) % g.sft_save_every == 0 and step + 1 < steps:
                stage_state.save(model, partial, {"recipe": want, "step": step + 1, "optimizer": opt.state_dict(),
                                                  "schedule": schedule.state_dict(), "best": best, "stale": stale,
                                                  "history": history}, self.rank, self.acc)
        if partial.exists() and self.rank == 0:
            shutil.rmtree(partial)
        if curve:
            with torch.no_grad():
                for n, p in model.named_parameters():
                    if n in best[2]:
                        p.copy_(best[2][n])
            self._log({"stage": f"{name}_selected", "step": best[1], key: best[0], "steps_run": len(history)})
        return history

    def retrieval_warmup(self, steps: int) -> list[dict]:
        """The retrieval warm-up on retrieval.aux_loss (retrieval_warmup.py: LoRA with the reading loss and the reading
        guard, or the retrieval head alone)."""
        return retrieval_warmup.run(self, steps)

    def align(self, progress: bool = True) -> list[dict]:
        """The alignment stage (align.steps; alignment.py): the projector learns to make the cache readable.
        Resumable in <dir>/align.partial/, finished in <dir>/align/ (reused under the same recipe)."""
        return alignment.run(self.model, self.train_q, self.dir, self._log, progress, save=self.rank == 0,
                             val_questions=self.val_q)

    def train_step(self) -> dict:
        g = self.cfg.grpo
        if self.model.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.model.device)  # the step's own peak (the GPU sizing figure)
        t0 = time.perf_counter()
        mine, n_step = self._step_questions(self.step)
        groups, swapped = [], 0
        for j, q in mine:
            tried = {j}
            for t in range(g.dynamic_sampling + 1):
                # seeded by (seed, step, question index, swap): rollouts do not depend on how questions are split
                seed = self.cfg.runtime.seed * 1_000_003 + self.step * 10_007 + j
                if t:  # a swap's own stream, apart from every other step's and item's
                    seed = int(np.random.SeedSequence([self.cfg.runtime.seed, self.step, j, t]).generate_state(1)[0])
                gen = sampling.generator_for(self.model.device, seed)
                grp = self.model.rollout(q, g.group_size, self.reward_fn, gen)
                alike = bool(grp.rewards.eq(grp.rewards[0]).all())
                if t == g.dynamic_sampling or not alike or len(tried) == len(self.train_q):
                    break
                # every rollout scored alike: nothing to learn from this question now; one not tried yet instead
                pick = random.Random(seed).choice([i for i in range(len(self.train_q)) if i not in tried])
                tried.add(pick)
                q, swapped = self.train_q[pick], swapped + 1
            groups.append(grp)
        if g.dynamic_sampling:  # over all processes, as the step's other statistics
            swapped = int(self._reduce_sum(torch.tensor(float(swapped), device=self.model.device)).item())
        # The surrogate's ratio compares the policy with itself: dropout stays off here too unless
        # grpo.train_mode_passes (measured on mini: clip fraction 0.73 with dropout on, zero advantages).
        norms, stats, aux_stats = [], [], {}
        with passes_mode(self.model, g.train_mode_passes), layer_checkpointing(self.model, g.gradient_checkpointing):
            for _ in range(g.inner_passes):
                stats = []
                for grp in groups:
                    # each question weighs 1 / (the step's questions over all processes): the gradients are
                    # summed over processes, so any split of the questions gives one process's gradient
                    per_rollout = g.backward == "rollout" and not g.policy_only
                    parts = [[i] for i in range(len(grp.questions))] if per_rollout else [None]
                    for rows in parts:
                        if rows is not None and grp.skip_zero_advantage and float(grp.advantages[rows[0]]) == 0.0:
                            continue
                        loss, st = group_loss(self.model, grp, rows, lm=not g.policy_only)
                        if loss.requires_grad:  # nothing to learn from (e.g. a trigger stage with no decisions)
                            (loss / n_step).backward()
                        stats.append(st)
                aux = self.cfg.retrieval.aux_weight > 0 and not g.policy_only
                if aux and mine:  # the auxiliary retrieval loss of the step's questions, on the same 1 / n_step scale
                    loss, st = retrieval_loss.aux_loss(self.model, [grp.questions[0] for grp in groups])
                    (self.cfg.retrieval.aux_weight * loss * len(mine) / n_step).backward()
                    aux_stats = st
                norms.append(self._apply_gradients())
        self.scheduler.step()
        record = {"stage": "grpo", "phase": "policy_only" if g.policy_only else "joint", "step": self.step,
                  **self._step_stats(groups), **({"swapped_questions": swapped} if g.dynamic_sampling else {}),
                  "grad_norm": norms[-1], "skipped_total": self.skipped, "lr": self.scheduler.get_last_lr()[0],
                  "seconds": round(time.perf_counter() - t0, 3), "peak_mb": round(peak_memory_mb(self.model.device), 1),
                  "processes": self.world, "questions": n_step,
                  **{k: float(np.mean([st[k] for st in stats])) for k in (stats[0] if stats else {})}, **aux_stats}
        self.step += 1
        return record

    def _step_stats(self, groups: list[Group]) -> dict:
        """Reward, accuracy (the task term), each reward term and the budgets of the step over all processes'
        rollouts; budgets also split into the question's evidence chunks and the others where the data knows them."""
        terms = list(self.reward_fn.terms)
        chunk_ids = self.model.bank.chunk_ids
        rewards, parts, budgets, evidence, other, memory, zero = [], [], [], [], [], [], 0.0
        for grp in groups:
            rewards += grp.rewards.float().tolist()
            parts += [[p[t] for t in terms] for p in grp.reward_parts]
            memory += [float(c["memory"]) for c in grp.counts]
            zero += float(bool(grp.rewards.eq(grp.rewards[0]).all()))
            gold = set(grp.questions[0].evidence) if getattr(grp.questions[0], "evidence", None) else None
            for rs, bs in zip(grp.plan.retrieved.rows.tolist(), grp.plan.budgets.budgets.tolist()):
                for r, b in zip(rs, bs):
                    if r >= 0:
                        budgets.append(b)
                        if gold is not None:
                            (evidence if chunk_ids[r] in gold else other).append(b)
        t = lambda xs: torch.tensor(xs, dtype=torch.float64)  # noqa: E731
        r = t(rewards)
        part_sums = t(parts).sum(0) if parts else torch.zeros(len(terms), dtype=torch.float64)
        sums = torch.cat([torch.stack([r.sum(), (r ** 2).sum(), t([len(rewards)])[0], t(budgets).sum(),
                                       t([len(budgets)])[0], t(memory).sum(), t([zero])[0], t(evidence).sum(),
                                       t([len(evidence)])[0], t(other).sum(), t([len(other)])[0]]), part_sums])
        total = self._reduce_sum(sums.to(self.model.device)).tolist()
        r_sum, r_sq, n, b_sum, b_n, m_sum, zero, e_sum, e_n, o_sum, o_n = total[:11]
        mean = r_sum / max(n, 1)
        std = math.sqrt(max(0.0, (r_sq - n * mean ** 2) / (n - 1))) if n > 1 else 0.0
        by_term = {f"reward_{name}": v / max(n, 1) for name, v in zip(terms, total[11:])}
        own = {k: float(np.mean([grp.stats[k] for grp in groups if k in grp.stats]))
               for k in dict.fromkeys(k for grp in groups for k in grp.stats)}
        task = next((by_term[f"reward_{k}"] for k in ("task", "alfworld_step") if k in terms),
                    own.get("sampled_accuracy", mean))   # a reward without the task term: the answers' own score
        out = {"reward_mean": mean, "reward_std": std, "accuracy": task, **by_term, **own,
               "mean_budget": b_sum / max(b_n, 1), "soft_tokens": m_sum / max(n, 1),
               "zero_advantage_groups": int(zero)}
        if e_n:
            out.update(evidence_budget=e_sum / e_n, other_budget=o_sum / max(o_n, 1))
        return out

    def train(self, progress: bool = True, reader_warmup: bool = True) -> list[dict]:
        """Stage 0 and 1 (when set and not resumed past them), then GRPO to total_steps with validation.
        `reader_warmup=False` skips stage 0 (the caller loaded a warmed-up reader)."""
        from ..core.experiment import progress as tqdm

        resumed = self.resume()
        g = self.cfg.grpo
        if not resumed:
            if reader_warmup and self.supervised(g.reader_warmup_steps, "text", "reader_warmup") and self.rank == 0:
                self.model.save(self.dir / "reader")  # the warmed-up text reader, for the text baselines
            if self.retrieval_warmup(g.retrieval_warmup_steps) and self.rank == 0:
                self.model.save(self.dir / "retrieval_warmup")  # the reader after the retrieval warm-up (recall)
            self.align(progress)
            # stage 1 in the model's own memory mode (latent for ElasticMem; an ALFWorld agent without memory or
            # with cards as text imitates the expert the same way)
            if self.supervised(g.sft_steps, self.model.memory, "sft") and self.rank == 0 and g.sft_eval_every:
                self.model.save(self.dir / "sft")  # the imitation policy GRPO starts from
            self._validate()
        history = []
        bar = tqdm(total=self.total_steps, initial=self.step, desc="GRPO", disable=not progress or self.rank != 0)
        while self.step < self.total_steps:
            record = self.train_step()
            self._log(record)
            history.append(record)
            bar.update(1)
            bar.set_postfix(reward=f"{record['reward_mean']:.2f}")
            if self.step % g.eval_every == 0 or self.step == self.total_steps:
                self._validate()
        bar.close()
        return history

    def _validate(self) -> None:
        acc = self.evaluate_fn(self.val_q) if self.val_q else float("nan")
        self._log({"stage": "val", "step": self.step, "val_accuracy": acc})
        if self.rank == 0:
            if acc > self.best:  # model selection on validation only; the test split never enters training
                self.best = acc
                self.model.save(self.dir / "best")
                write_json(self.dir / "best" / "selection.json", {"step": self.step, "val_accuracy": acc})
            self.save_last()
        if self.acc is not None:
            self.acc.wait_for_everyone()

    # ---- checkpoints ------------------------------------------------------------------------------------------
    def save_last(self) -> Path:
        """last/: model + optimizer, scheduler, step, best, RNG states; written aside, then swapped in."""
        def write(tmp: Path) -> None:
            self.model.save(tmp)
            torch.save({"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                        "step": self.step, "best": self.best, "skipped": self.skipped,
                        "rng": stage_state.rng_state()}, tmp / "trainer_state.pt")
        return write_folder(self.dir / "last", write)

    def identity(self) -> dict:
        """What a run folder's checkpoints belong to: a resume under anything else is refused."""
        qids = ",".join(sorted(q.qid for q in self.train_q))
        return {"seed": self.cfg.runtime.seed, "backbone": self.model.backbone.identity,
                "setting": self.setting or "(not named)",
                "train_questions": hashlib.sha256(qids.encode()).hexdigest()[:16]}

    def _check_identity(self) -> None:
        """Refuse to resume (or overwrite) the checkpoints of another seed, backbone, setting or training set."""
        path = self.dir / RUN_IDENTITY
        now = self.identity()
        if path.is_file():
            was = json.loads(path.read_text())
            diff = [f"{k}: folder {was.get(k)!r}, this run {v!r}" for k, v in now.items() if was.get(k) != v]
            if diff:
                raise RunMismatchError(f"{self.dir} holds the training of another run ({'; '.join(diff)}); give this "
                                       f"run its own folder (the seed is part of train/<setting>/seed<seed>) or "
                                       f"delete the folder to start over")
        elif self.rank == 0:
            write_json(path, now)

    def resume(self) -> bool:
        """Continue from last/ if present (same weights as an uninterrupted run), only if it is this run's."""
        self._check_identity()
        last = self.dir / "last"
        if not (last / "trainer_state.pt").is_file():
            return False
        self.model.load(last)
        state = torch.load(last / "trainer_state.pt", weights_only=False)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step, self.best, self.skipped = state["step"], state["best"], state["skipped"]
        stage_state.set_rng(state["rng"])
        return True
