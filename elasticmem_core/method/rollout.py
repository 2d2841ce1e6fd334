"""Rollouts: G samples of (control token, budgets, answer) for one question, scored by the reward, with their
group-relative advantages, and the teacher-forced log-probabilities of those actions. The model samples through
here (`ElasticMem.rollout`); the GRPO loss (grpo.py) and the AgeMem-style agent read the same `Group`.
"""
from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass

import torch

from .retrieval import control_logprobs
from .rewards import Rollout, choice_reward


def group_advantages(rewards: torch.Tensor, clip: float, eps: float = 1e-4, norm: str = "std") -> torch.Tensor:
    """(r - mean) / (std + eps) within one question's group [G] (norm="mean": r - mean), clamped to [-clip, clip].

    With "std", a group whose task rewards all tie keeps only the token price's differences, scaled up to unit
    variance: however small lambda is, the cheapest rollouts then get advantage ~+1 (the collapse to the cheapest
    budget that unnormalised costs are known for). "mean" keeps the price on the task reward's scale.
    """
    centred = rewards - rewards.mean()
    if norm == "mean":
        return centred.clamp(-clip, clip)
    std = rewards.std() if rewards.numel() > 1 else rewards.new_zeros(())
    return (centred / (std + eps)).clamp(-clip, clip)


def token_logprobs(model, questions, plan, answers: list[list[int]], with_grad: bool,
                   reference: bool = False, temperature: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probabilities [N, 1 + A] of the control token (column 0) and answer tokens, with their mask.

    One teacher-forced pass over the injected input; the control token's probability comes from the same pass
    (the model is causal, so it equals the retrieval pass's). `reference` runs with the LoRA adapters disabled.
    The answer tokens' distribution is at `temperature` (default grpo.temperature, the one answers are sampled at).
    """
    ctx = torch.enable_grad() if with_grad else torch.no_grad()
    with ctx:
        batch = model.build(questions, plan, answers)
        # Only the columns that predict an action go through the vocabulary head: the answer columns (shared by
        # every row) and each row's control-token column. On SmolLM2-135M the head is ~20% of a pass's FLOPs.
        cols = batch.row_logit_columns()   # [N, A]: the same for every row unless latents sit between answers
        ctrl_cols = [batch.spans[i]["control"][0] - 1 if cid is not None else None  # one to the left predicts it
                     for i, cid in enumerate(plan.retrieved.control_ids)]
        keep = sorted(set(cols.flatten().tolist()) | {c for c in ctrl_cols if c is not None})
        at = {c: k for k, c in enumerate(keep)}
        keep_ids = torch.tensor(keep, dtype=torch.long, device=model.device)
        with model.reasoner.disable_adapter() if reference else contextlib.nullcontext():
            logits = model.reasoner(inputs_embeds=batch.inputs_embeds, attention_mask=batch.attention_mask,
                                    position_ids=batch.position_ids, logits_to_keep=keep_ids).logits   # [N, K, V]
        n = logits.shape[0]
        t_answer = model.cfg.grpo.temperature if temperature is None else temperature
        picks = torch.tensor([[at[c] for c in row] for row in cols.tolist()], dtype=torch.long, device=logits.device)
        picked = logits.gather(1, picks[..., None].expand(-1, -1, logits.shape[-1]))                # [N, A, V]
        ans_logp = torch.log_softmax(picked.float() / t_answer, dim=-1)
        ans = ans_logp.gather(-1, batch.answer_ids[..., None]).squeeze(-1)                     # [N, A]
        ctrl, ctrl_mask = [], torch.zeros(n, dtype=torch.bool, device=logits.device)
        for i, col in enumerate(ctrl_cols):
            if col is None:
                ctrl.append(logits.new_zeros((), dtype=torch.float32))
                continue
            # the distribution the control token was sampled from: ordinary tokens only (retrieval.sample_control)
            lp = control_logprobs(logits[i, at[col]], model.retriever.allowed(logits.shape[-1], logits.device),
                                  model.cfg.retrieval.temperature)
            cid = plan.retrieved.control_ids[i]
            ctrl.append(lp[cid])
            ctrl_mask[i] = True
        logp = torch.cat([torch.stack(ctrl)[:, None], ans], dim=1)
        mask = torch.cat([ctrl_mask[:, None], batch.answer_mask], dim=1)
    return logp, mask


@dataclass
class Group:
    """G rollouts of one question and everything the loss needs from them."""
    questions: list           # the question repeated G times
    plan: object
    answers: list[list[int]]
    texts: list[str]
    rewards: torch.Tensor     # [G]
    advantages: torch.Tensor  # [G]
    counts: list[dict]
    reward_parts: list[dict] = dataclasses.field(default_factory=list)  # per rollout: each reward term's value
    old_logp: torch.Tensor | None = None         # [G, 1 + A], set by the first inner pass (or `score_old`)
    old_policy_logp: torch.Tensor | None = None  # [G, Z]
    old_extra_logp: torch.Tensor | None = None   # [G, T] (model.extra_action_logprobs)
    stats: dict = dataclasses.field(default_factory=dict)  # a model's own rollout diagnostics for the training log
    # rows with advantage 0 add nothing to an LM-only loss: a per-rollout backward may skip them (AgeMem-style
    # step rows; never set where a budget policy, extra actions or a KL term also train)
    skip_zero_advantage: bool = False

    def action_counts(self) -> torch.Tensor:
        """Reasoner actions per rollout [G]: its control token (when sampled) and its answer tokens."""
        return torch.tensor([len(a) + (c is not None) for a, c in zip(self.answers, self.plan.retrieved.control_ids)])


def select_rows(obj, idx: list[int]):
    """The rows `idx` of a batch dataclass (Plan, Retrieved, BudgetDecision): tensors and lists sliced alike."""
    values = {}
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if isinstance(v, torch.Tensor):
            v = v[torch.tensor(idx, dtype=torch.long, device=v.device)]
        elif isinstance(v, list):
            v = [v[i] for i in idx]
        elif dataclasses.is_dataclass(v):
            v = select_rows(v, idx)
        values[f.name] = v
    return type(obj)(**values)


@contextlib.contextmanager
def passes_mode(model, train: bool):
    """Rollouts and loss passes in train mode (dropout on, grpo.train_mode_passes) or eval mode; restored after."""
    was = model.training
    model.train(train)
    try:
        yield
    finally:
        model.train(was)


@contextlib.contextmanager
def layer_checkpointing(model, on: bool):
    """Gradient checkpointing of the reasoner's decoder layers (grpo.gradient_checkpointing), in any mode.

    transformers checkpoints a layer only while that layer's own `training` flag is set; the flag is set on the
    layers alone (not on their children), so dropout stays as the passes' mode says and the gradient is unchanged.
    """
    if not on:
        yield
        return
    from transformers.modeling_layers import GradientCheckpointingLayer

    base = model.reasoner.get_base_model()
    base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    layers = [m for m in base.modules() if isinstance(m, GradientCheckpointingLayer)]
    flags = [m.training for m in layers]
    for m in layers:
        m.training = True
    try:
        yield
    finally:
        for m, f in zip(layers, flags):
            m.training = f
        base.gradient_checkpointing_disable()


def rollout(model, question, group_size: int, reward_fn, generator: torch.Generator) -> Group:
    """Sample G rollouts of one question as one padded batch and score them with `reward_fn` (a
    rewards.WeightedReward: weighted terms of the whole rollout)."""
    cfg = model.cfg.grpo
    qs = [question] * group_size
    # rollouts without dropout unless grpo.train_mode_passes (the authors sample in train mode)
    with passes_mode(model, cfg.train_mode_passes), torch.no_grad():
        plan = model.plan(qs, sample=True, generator=generator)
        batch = model.build(qs, plan)
        gen = model.generate(batch, cfg.max_new_tokens, sample=True, temperature=cfg.temperature,
                             generator=generator)
        rows, budgets = plan.retrieved.rows.tolist(), plan.budgets.budgets.tolist()
        gold = gold_logprobs(model, qs, plan) if getattr(reward_fn, "needs_gold_logprob", False) else [None] * len(qs)
        parts = [reward_fn.parts(Rollout(question, t, rows[i], budgets[i], batch.counts[i],
                                         model.cfg.retrieval.top_z, model.cfg.budget.b_max, gold[i]))
                 for i, t in enumerate(gen.texts)]
        rewards = torch.tensor([reward_fn.total(p) for p in parts])
    stats = {}
    if "task" not in reward_fn.terms and getattr(question, "options", None):  # e.g. the dense reward: still log
        right = [choice_reward(t, question.gold, len(question.options)) for t in gen.texts]
        stats["sampled_accuracy"] = sum(right) / len(right)   # whether the sampled answers were right
    return Group(qs, plan, gen.tokens, gen.texts, rewards,
                 group_advantages(rewards, cfg.adv_clip, norm=cfg.advantage_norm), batch.counts, parts, stats=stats)


def gold_logprobs(model, questions, plan) -> list[float]:
    """log p(gold answer | prompt, memory) per row at temperature 1, teacher-forced with the plan's retrieval and
    budgets (the dense reward term rewards.gold_logprob)."""
    answers = [model.answer_ids(q.gold) for q in questions]
    logp, mask = token_logprobs(model, questions, plan, answers, with_grad=False, temperature=1.0)
    return (logp[:, 1:] * mask[:, 1:]).sum(1).tolist()   # column 0 is the control token


def score_old(model, g: Group) -> None:
    """Old log-probs in a separate no-grad pass (the authors' way; the trainer takes them from its first pass)."""
    with passes_mode(model, model.cfg.grpo.train_mode_passes), torch.no_grad():
        g.old_logp = token_logprobs(model, g.questions, g.plan, g.answers, with_grad=False)[0]
        g.old_policy_logp = model.policy_logprob(g.plan)[0].detach()
