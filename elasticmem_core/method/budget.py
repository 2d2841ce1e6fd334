"""Budget policy: decides, chunk by chunk in rank order, how many soft tokens b_j each retrieved chunk gets.

The paper's policy is a small causal Transformer (hidden 256, 4 heads, 2 layers, dropout 0.1). Its input sequence is
a query token (a projection of the query state q) followed by one token per retrieved chunk:

    x_0 = proj_q(q) + seg[0]
    x_j = proj_k(k_j) + proj_s(s_j) + prev[b_{j-1}] + seg[1] + rank(j)        j = 1..Z  (prev[b_0] = a start symbol)

and the output at chunk token j is a categorical over the budget levels {min_budget .. B_max}. Because token j sees
only tokens <= j and carries the previous choice, the log-probabilities of a given budget sequence come from ONE
teacher-forced forward pass; sampling runs Z passes (Z is small). The rank encoding is sinusoidal, so no parameter
depends on Z: a policy trained with Z=20 loads and runs with Z=10.

`budget.arch` chooses the network around that layout. `package` (the default): LayerNorm on q and k before their
projections (LLM hidden states carry a few huge outlier dimensions), pre-LN Transformer layers and the sinusoidal
ranks above. `authors` (what the authors' code runs): plain Linear projections of q and k, post-LN layers and a
learned position table with one row per position (0 = the query token, j = chunk j), sized by retrieval.top_z, so
that policy only runs, and only loads, at the top_z it was built for.

Ablation variants (budget.policy): `uniform` (every chunk gets uniform_budget), `random` (uniform over the levels),
`mlp` (the same per-chunk features, no attention across chunks and no previous choice). Fixed rules a user tries
first (no parameters, like uniform and random): `top_k_whole` (the budget.keep_top best-ranked chunks get B_max, a
whole chunk: min(B_max, chunk length) real states; the rest min_budget, i.e. dropped when min_budget = 0) and
`threshold` (b_j = B_max if s_j >= budget.score_threshold, else min_budget), `rank_profile` (a fixed budget per
retrieval rank, budget.rank_budgets: "top-1 whole + uniform b for the rest" is [B_max, b]), `score_softmax` (b_j
proportional to the softmax of the retrieval scores, budget.softmax_total in all) and the oracle reference
`evidence_whole` (the gold evidence chunks whole, the rest dropped; it reads the evidence, so it bounds, never competes).

The oracle-feature policy (`budget.sees_evidence`, beyond the paper, for the budget frontier only): each chunk token
also carries e_j = 1 if chunk j is one of the question's gold evidence chunks, x_j += evid[e_j]. No deployable policy
has that flag; what it learns bounds what a policy can learn from its real inputs (q, k_j, s_j, ranks).

Chunk lengths (`budget.sees_length`, beyond the paper): each chunk token also carries l_j = min(L_j, B_max) / B_max,
L_j = the chunk's real cached states (bank.cache_len), x_j += W_l l_j. A budget above L_j injects nothing more, so a
policy priced on injected tokens needs L_j to know what a budget costs; the paper's policy does not see it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from ..core import sampling


# ---- the budget policies: one registry, read by the config's validation and by checkpoint loading -------------
# A fixed rule: (policy, scores [B, Z] in rank order, mask [B, Z] real chunks, evidence [B, Z] or None, generator)
# -> budgets [B, Z].
def _uniform(policy: "BudgetPolicy", scores, mask, evidence, generator) -> torch.Tensor:
    return torch.full(scores.shape, policy.uniform_budget, dtype=torch.long, device=scores.device)


def _random(policy: "BudgetPolicy", scores, mask, evidence, generator) -> torch.Tensor:
    return sampling.integers(policy.min_budget, policy.b_max + 1, tuple(scores.shape), scores.device, generator,
                             "random budget")


def _top_k_whole(policy: "BudgetPolicy", scores, mask, evidence, generator) -> torch.Tensor:
    b, z = scores.shape
    return policy.whole(torch.arange(z, device=scores.device).lt(policy.keep_top).expand(b, z))


def _threshold(policy: "BudgetPolicy", scores, mask, evidence, generator) -> torch.Tensor:
    return policy.whole(scores >= policy.score_threshold)


def _rank_profile(policy: "BudgetPolicy", scores, mask, evidence, generator) -> torch.Tensor:
    """budget.rank_budgets[j] for rank j (ranks past its end get its last entry): what learned policies collapse to."""
    b, z = scores.shape
    profile = list(policy.rank_budgets) + [policy.rank_budgets[-1]] * z
    return torch.tensor(profile[:z], dtype=torch.long, device=scores.device).expand(b, z).clone()


def _score_softmax(policy: "BudgetPolicy", scores, mask, evidence, generator) -> torch.Tensor:
    """b_j = round(budget.softmax_total x softmax(s / budget.softmax_temperature)_j) over the real chunks."""
    w = torch.softmax((scores.float() / policy.softmax_temperature).masked_fill(~mask, float("-inf")), dim=-1)
    return (policy.softmax_total * w.nan_to_num(0.0)).round().long().clamp(policy.min_budget, policy.b_max)


def _evidence_whole(policy: "BudgetPolicy", scores, mask, evidence, generator) -> torch.Tensor:
    """The gold evidence chunks whole, the rest min_budget: an oracle reference (no deployed rule knows the evidence)."""
    if evidence is None:
        raise ValueError("budget.policy = evidence_whole needs each question's gold evidence chunks")
    return policy.whole(evidence.bool())


# Rules without parameters: name -> budgets [B, Z]. A new rule is one function here; a new learned policy is a
# network in BudgetPolicy and a name in LEARNED. EVIDENCE_RULES read the gold evidence (oracle references only).
FIXED_RULES = {"uniform": _uniform, "random": _random, "top_k_whole": _top_k_whole, "threshold": _threshold,
               "rank_profile": _rank_profile, "score_softmax": _score_softmax, "evidence_whole": _evidence_whole}
EVIDENCE_RULES = ("evidence_whole",)
LEARNED = ("transformer", "mlp")
POLICIES = LEARNED + tuple(FIXED_RULES)


@dataclass
class BudgetDecision:
    budgets: torch.Tensor    # [B, Z] long, soft tokens per chunk (0 for padding chunks)
    logprob: torch.Tensor    # [B, Z] log-probability of each choice (0 where the policy has no parameters or padding)
    entropy: torch.Tensor    # [B, Z] entropy of each categorical (0 likewise)


def rank_encoding(z: int, dim: int, device) -> torch.Tensor:
    """Sinusoidal encoding of retrieval ranks 0..z-1, [z, dim]."""
    pos = torch.arange(z, device=device, dtype=torch.float32)[:, None]
    div = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim))
    enc = torch.zeros(z, dim, device=device)
    enc[:, 0::2] = torch.sin(pos * div)
    enc[:, 1::2] = torch.cos(pos * div)
    return enc


class BudgetPolicy(nn.Module):
    def __init__(self, hidden_size: int, cfg, top_z: int | None = None):
        super().__init__()
        self.kind = cfg.policy
        if self.kind not in POLICIES:
            raise ValueError(f"budget.policy = {self.kind!r}; choose one of {', '.join(POLICIES)}")
        self.arch = cfg.arch
        if self.arch not in ("package", "authors"):
            raise ValueError(f"budget.arch = {self.arch!r}; choose package or authors")
        self.min_budget, self.b_max = cfg.min_budget, cfg.b_max
        self.uniform_budget = cfg.uniform_budget
        self.keep_top, self.score_threshold = cfg.keep_top, cfg.score_threshold
        self.rank_budgets = list(cfg.rank_budgets)
        self.softmax_total, self.softmax_temperature = cfg.softmax_total, cfg.softmax_temperature
        if self.kind == "rank_profile" and not self.rank_budgets:
            raise ValueError("budget.policy = rank_profile needs budget.rank_budgets (a budget per retrieval rank)")
        if any(not self.min_budget <= x <= self.b_max for x in self.rank_budgets):
            raise ValueError(f"budget.rank_budgets = {self.rank_budgets}: each must be in {self.min_budget}..{self.b_max}")
        if self.softmax_temperature <= 0 or self.softmax_total < 0:
            raise ValueError("budget.softmax_temperature must be > 0 and budget.softmax_total >= 0")
        self.sees_evidence = bool(getattr(cfg, "sees_evidence", False))
        self.sees_length = bool(getattr(cfg, "sees_length", False))
        for flag in ("sees_evidence", "sees_length"):
            if getattr(self, flag) and self.kind in FIXED_RULES:
                raise ValueError(f"budget.{flag} needs a learned policy (transformer or mlp), not {self.kind!r}")
        if self.keep_top < 1:
            raise ValueError(f"budget.keep_top = {self.keep_top}; keep at least 1 chunk")
        self.levels = self.b_max - self.min_budget + 1
        if not self.min_budget <= self.uniform_budget <= self.b_max:
            raise ValueError(f"budget.uniform_budget ({self.uniform_budget}) outside the levels "
                             f"{self.min_budget}..{self.b_max}")
        d = cfg.hidden
        # Hidden states of LLMs carry a few huge outlier dimensions: normalise before projecting (authors: plain Linear)
        if self.arch == "package":
            self.norm_q, self.norm_k = nn.LayerNorm(hidden_size), nn.LayerNorm(hidden_size)
        else:
            self.norm_q, self.norm_k = nn.Identity(), nn.Identity()
        self.proj_q, self.proj_k = nn.Linear(hidden_size, d), nn.Linear(hidden_size, d)
        self.proj_s = nn.Linear(1, d)
        self.prev = nn.Embedding(self.b_max + 2, d)   # budgets 0..B_max plus a start symbol
        self.seg = nn.Embedding(2, d)                 # 0 = query token, 1 = chunk token
        if self.sees_evidence:
            self.evid = nn.Embedding(2, d)            # 0 = not evidence, 1 = a gold evidence chunk (the oracle's flag)
        if self.sees_length:
            self.proj_len = nn.Linear(1, d)           # min(L_j, B_max) / B_max: what a budget can inject at most
        self.hidden = d
        self.top_z = None
        if self.kind == "transformer" and self.arch == "authors":
            if top_z is None or top_z < 1:
                raise ValueError("budget.arch = authors sizes the policy's position table by retrieval.top_z: "
                                 f"pass top_z (got {top_z!r})")
            self.top_z = top_z
            self.positions = nn.Embedding(top_z + 1, d)   # 0 = the query token, 1..top_z = the chunks in rank order
        if self.kind == "transformer":
            layer = nn.TransformerEncoderLayer(d, cfg.heads, 4 * d, cfg.dropout, batch_first=True,
                                               norm_first=self.arch == "package")
            self.body = nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)
        elif self.kind == "mlp":
            self.body = nn.Sequential(nn.Linear(2 * d, 4 * d), nn.GELU(), nn.Dropout(cfg.dropout), nn.Linear(4 * d, d))
        self.head = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, self.levels))

    @property
    def start_symbol(self) -> int:
        return self.b_max + 1

    # ------------------------------------------------------------------------------------------------------------
    def logits(self, query: torch.Tensor, keys: torch.Tensor, scores: torch.Tensor,
               prev_budgets: torch.Tensor, evidence: torch.Tensor | None = None,
               lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Teacher-forced logits [B, Z, levels]; prev_budgets[:, j] is the budget chosen for chunk j-1; `evidence`
        [B, Z] (0/1) only for the oracle-feature policy, `lengths` [B, Z] (L_j) only for budget.sees_length."""
        dt = self.proj_q.weight.dtype
        q = self.proj_q(self.norm_q(query.to(dt)))                               # [B, d]
        chunk = self.proj_k(self.norm_k(keys.to(dt))) + self.proj_s(scores.to(dt)[..., None])  # [B, Z, d]
        if self.sees_evidence:
            if evidence is None:
                raise ValueError("the oracle-feature budget policy (budget.sees_evidence) needs the evidence flags "
                                 "of the retrieved chunks (ElasticMem.plan computes them from question.evidence)")
            chunk = chunk + self.evid(evidence.long().to(chunk.device))
        if self.sees_length:
            if lengths is None:
                raise ValueError("the budget policy with budget.sees_length needs the retrieved chunks' lengths "
                                 "(ElasticMem.plan reads them from bank.cache_len)")
            frac = lengths.to(chunk.device, dt).clamp(0, self.b_max) / self.b_max
            chunk = chunk + self.proj_len(frac[..., None])
        z = keys.shape[1]
        if self.kind == "mlp":
            h = self.body(torch.cat([chunk, q[:, None].expand_as(chunk)], dim=-1))
            return self.head(h)
        if self.top_z is None:
            ranks = rank_encoding(z, self.hidden, keys.device)
        else:  # the authors' learned table: the query token at position 0, chunk j at position j
            if z > self.top_z:
                raise ValueError(f"{z} chunks per question, but this budget policy's position table (budget.arch = "
                                 f"authors) was sized for retrieval.top_z = {self.top_z}")
            q = q + self.positions.weight[0]
            ranks = self.positions.weight[1:z + 1]
        chunk = chunk + self.prev(prev_budgets) + self.seg.weight[1] + ranks
        x = torch.cat([(q + self.seg.weight[0])[:, None], chunk], dim=1)          # [B, 1+Z, d]
        causal = nn.Transformer.generate_square_subsequent_mask(z + 1, device=x.device, dtype=x.dtype)
        h = self.body(x, mask=causal, is_causal=True)
        return self.head(h[:, 1:])                                               # outputs at the chunk tokens

    def _prev(self, budgets: torch.Tensor) -> torch.Tensor:
        start = torch.full_like(budgets[:, :1], self.start_symbol)
        return torch.cat([start, budgets[:, :-1]], dim=1)

    def decide(self, query: torch.Tensor, keys: torch.Tensor, scores: torch.Tensor, mask: torch.Tensor,
               sample: bool, generator: torch.Generator | None = None,
               evidence: torch.Tensor | None = None, lengths: torch.Tensor | None = None) -> BudgetDecision:
        """Budgets for the retrieved chunks; `mask` [B, Z] is False where a memory had fewer than Z chunks;
        `evidence` [B, Z] only for the oracle-feature policy, `lengths` [B, Z] only for budget.sees_length."""
        b, z = scores.shape
        zeros = torch.zeros(b, z, device=scores.device)
        if self.kind in FIXED_RULES:
            return BudgetDecision(self._fixed(scores, mask, evidence, generator).masked_fill(~mask, 0), zeros, zeros)
        budgets = torch.zeros(b, z, dtype=torch.long, device=scores.device)
        steps = range(z) if self.kind == "transformer" else [z - 1]  # the mlp policy decides all chunks at once
        for j in steps:
            logits = self.logits(query, keys, scores, self._prev(budgets), evidence, lengths)
            dist = torch.distributions.Categorical(logits=logits.float())
            if sample:
                u = sampling.uniform(logits.shape[:2], logits.device, generator, "budget")
                choice = (dist.probs.cumsum(-1) < u[..., None]).sum(-1).clamp(max=self.levels - 1)
            else:
                choice = logits.argmax(-1)
            level = choice + self.min_budget
            if self.kind == "transformer":
                budgets[:, j] = level[:, j]
            else:
                budgets = level
        budgets = budgets.masked_fill(~mask, 0)
        logprob, entropy = self.evaluate(query, keys, scores, mask, budgets, evidence, lengths)
        return BudgetDecision(budgets, logprob.detach(), entropy.detach())

    def _fixed(self, scores: torch.Tensor, mask: torch.Tensor, evidence: torch.Tensor | None,
               generator: torch.Generator | None) -> torch.Tensor:
        """Budgets [B, Z] of a rule without parameters; chunks arrive in rank order (scores high to low)."""
        return FIXED_RULES[self.kind](self, scores, mask, evidence, generator)

    @property
    def needs_evidence(self) -> bool:
        """The gold-evidence flags go in: the oracle-feature policy's input, or an oracle reference rule."""
        return self.sees_evidence or self.kind in EVIDENCE_RULES

    def whole(self, keep: torch.Tensor) -> torch.Tensor:
        """B_max where `keep`, else min_budget (dropped at 0): the fixed rules' all-or-nothing budgets."""
        return torch.where(keep, self.b_max, self.min_budget).long()

    def evaluate(self, query, keys, scores, mask, budgets, evidence=None,
                 lengths=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-probability and entropy [B, Z] of given budgets in one teacher-forced pass (0 at padding chunks)."""
        if self.kind in FIXED_RULES:
            zeros = torch.zeros(budgets.shape, device=budgets.device)
            return zeros, zeros
        logp = F.log_softmax(self.logits(query, keys, scores, self._prev(budgets), evidence, lengths).float(), dim=-1)
        level = (budgets - self.min_budget).clamp(0, self.levels - 1)
        chosen = logp.gather(-1, level[..., None]).squeeze(-1)
        entropy = -(logp.exp() * logp).sum(-1)
        return chosen * mask, entropy * mask

    @property
    def trainable(self) -> bool:
        return self.kind in LEARNED
