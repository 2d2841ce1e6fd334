"""Rewards: the task's (pure functions of a generated text and what the data says is right) and the weighted reward
terms GRPO optimises (functions of a whole rollout, `REWARD_TERMS`; chosen by grpo.reward_terms).

- Multiple choice (MemorySuite QA): 1 if the parsed option label equals the gold label, else 0.
- ALFWorld expert-action reward: the output's first line snapped to the nearest admissible command (exact match,
  then substring, then token overlap), 1 if that command equals the expert action, else 0.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

_LETTER_IN_PARENS = re.compile(r"\(([a-zA-Z])\)")
_BARE_LETTER = re.compile(r"\b([a-zA-Z])\b")


def parse_answer(text: str, n_options: int) -> str | None:
    """The option label in a generated answer: "(x)" first, then a bare letter (as the authors); None if neither."""
    valid = {chr(ord("a") + i) for i in range(n_options)}
    for pattern in (_LETTER_IN_PARENS, _BARE_LETTER):
        for m in pattern.finditer(text):
            letter = m.group(1).lower()
            if letter in valid:
                return f"({letter})"
    return None


def choice_reward(text: str, gold: str, n_options: int) -> float:
    """1.0 if the answer's option label is the gold label ("(c)"), else 0.0."""
    return float(parse_answer(text, n_options) == gold)


def _tokens(s: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", s.lower())


def snap_to_admissible(text: str, admissible: list[str]) -> str | None:
    """The admissible command the output's first line means: exact, then substring, then most token overlap."""
    if not admissible:
        return None
    line = (text.strip().splitlines() or [""])[0].strip().lower().rstrip(".")
    commands = [c.strip() for c in admissible]
    lowered = [c.lower() for c in commands]
    if line in lowered:
        return commands[lowered.index(line)]
    if line:
        # the longest command contained in the line, else the shortest command containing it
        inside = [c for c, low in zip(commands, lowered) if low in line]
        if inside:
            return max(inside, key=len)
        around = [c for c, low in zip(commands, lowered) if line in low]
        if around:
            return min(around, key=len)
    words = set(_tokens(line))
    if not words:
        return None
    overlap = [len(words & set(_tokens(c))) / len(set(_tokens(c)) | words) for c in commands]
    best = max(range(len(commands)), key=lambda i: overlap[i])
    return commands[best] if overlap[best] > 0 else None


def expert_action_reward(text: str, admissible: list[str], expert_action: str) -> float:
    """1.0 if the output, snapped to the admissible commands, is the expert's action."""
    snapped = snap_to_admissible(text, admissible)
    return float(snapped is not None and snapped.strip().lower() == expert_action.strip().lower())


# ---- reward terms: what GRPO optimises ----------------------------------------------------------------------------
# A term sees the whole rollout, not only its text; `grpo.reward_terms` weighs terms by name (TRL's reward_funcs
# with reward_weights). A new term is one function registered in REWARD_TERMS.
@dataclass
class Rollout:
    """One rollout as a reward term sees it."""
    question: object          # the Question (or an ALFWorld step item: gold = the expert action)
    text: str                 # the generated answer
    rows: list[int]           # retrieved bank rows in rank order (-1 = an empty slot)
    budgets: list[int]        # soft tokens given to each retrieved chunk (0 = dropped)
    tokens: dict[str, int]    # counts by part: task_text, memory (soft tokens + separators), output
    top_z: int                # Z
    b_max: int                # B_max
    gold_logprob: float | None = None  # log p(gold answer | prompt, memory), teacher-forced (only when a term asks)

    @property
    def memory_tokens(self) -> int:
        """Soft tokens injected, sum_j min(b_j, L_j) (separators excluded): what the budget policy spends, counted as
        the frontier counts it. A budget above a chunk's length L_j costs nothing more: nothing more is injected."""
        injected = sum(1 for r, b in zip(self.rows, self.budgets) if r >= 0 and b > 0)
        return int(self.tokens["memory"]) - injected


def task_reward(r: Rollout) -> float:
    """The paper's reward: 1 if the answer's option label is the gold label, else 0."""
    return choice_reward(r.text, r.question.gold, len(r.question.options))


def alfworld_step_reward(r: Rollout) -> float:
    """ALFWorld's: 1 if the output, snapped to the step's admissible commands, is the expert action (the question is
    an alfworld.training.StepItem: gold = the expert action)."""
    return expert_action_reward(r.text, r.question.turn.admissible, r.question.gold)


def gold_logprob(r: Rollout) -> float:
    """A dense task reward (beyond the paper): the reasoner's teacher-forced log-probability of the gold answer with
    this rollout's retrieval and budgets, log p(" (c)" EOS | prompt, memory) at temperature 1. No answer is sampled,
    so two rollouts with the same budgets get the same reward: the noise left is the budgets' own. Meant for a frozen
    reasoner (grpo.policy_only), where it ranks budget vectors by how well the reader can answer from them."""
    if r.gold_logprob is None:
        raise ValueError("reward term gold_logprob: the rollout carries no gold log-probability (rollout.rollout "
                         "computes it when grpo.reward_terms names gold_logprob)")
    return float(r.gold_logprob)


def token_price(r: Rollout) -> float:
    """Minus the memory spent, as a share of a full memory: -memory tokens / (Z x B_max), in [-1, 0]. Its weight
    lambda (grpo.reward_terms.token_price) is then the reward given up for a full memory."""
    return -r.memory_tokens / max(1, r.top_z * r.b_max)


REWARD_TERMS: dict[str, Callable[[Rollout], float]] = {
    "task": task_reward,
    "alfworld_step": alfworld_step_reward,
    "token_price": token_price,
    "gold_logprob": gold_logprob,
}
NONNEGATIVE = ("token_price",)  # a negative price would pay the policy for memory


def check_reward_terms(terms: dict[str, float], where: str = "grpo.reward_terms") -> None:
    """Raise ValueError naming `where` for an unknown term, a negative price or weights that sum to nothing."""
    for name, weight in terms.items():
        if name not in REWARD_TERMS:
            raise ValueError(f"{where}.{name}: unknown reward term; known: {', '.join(REWARD_TERMS)}")
        if name in NONNEGATIVE and weight < 0:
            raise ValueError(f"{where}.{name} = {weight}: a price must be >= 0")
    if not any(w != 0 for n, w in terms.items() if n not in NONNEGATIVE):
        raise ValueError(f"{where} = {terms}: no task term with a non-zero weight (the reward would ignore the task)")


class WeightedReward:
    """r = sum_k w_k x term_k(rollout); `parts` keeps each term's value for the training log."""

    def __init__(self, terms: dict[str, float]):
        check_reward_terms(terms)
        self.terms = dict(terms)

    @property
    def needs_gold_logprob(self) -> bool:
        return bool(self.terms.get("gold_logprob"))

    def parts(self, r: Rollout) -> dict[str, float]:
        return {name: REWARD_TERMS[name](r) for name in self.terms}

    def total(self, parts: dict[str, float]) -> float:
        return float(sum(self.terms[n] * v for n, v in parts.items()))

    def __call__(self, r: Rollout) -> float:
        return self.total(self.parts(r))
