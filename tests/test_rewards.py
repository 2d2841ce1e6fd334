"""Rewards are pure functions: letter match for multiple choice, snapped expert action for ALFWorld."""
from elasticmem_core.harness import checks
from elasticmem_core.method.rewards import choice_reward, expert_action_reward, parse_answer, snap_to_admissible

ADMISSIBLE = ["go to countertop 1", "go to countertop 2", "take apple 1 from countertop 1", "open fridge 1",
              "look", "inventory"]


def test_choice_reward():
    assert choice_reward(" (b)", "(b)", 4) == 1.0
    assert choice_reward("B. the second", "(b)", 4) == 1.0
    assert choice_reward("(c)", "(b)", 4) == 0.0
    assert choice_reward("", "(a)", 4) == 0.0
    assert choice_reward("(j)", "(j)", 10) == 1.0 and choice_reward("(j)", "(j)", 4) == 0.0
    assert parse_answer("I think (A)", 4) == "(a)"


def test_snap_exact_then_substring_then_overlap():
    assert snap_to_admissible("Open fridge 1.\nthen more", ADMISSIBLE) == "open fridge 1"          # exact (first line)
    assert snap_to_admissible("> take apple 1 from countertop 1 now", ADMISSIBLE) == \
        "take apple 1 from countertop 1"                                                          # command in line
    assert snap_to_admissible("countertop 2", ADMISSIBLE) == "go to countertop 2"                 # line in command
    assert snap_to_admissible("walk towards the fridge", ADMISSIBLE) == "open fridge 1"           # token overlap
    assert snap_to_admissible("???", ADMISSIBLE) is None
    assert snap_to_admissible("look", []) is None


def test_expert_action_reward():
    assert expert_action_reward("go to countertop 1", ADMISSIBLE, "go to countertop 1") == 1.0
    assert expert_action_reward("Go to countertop 1.", ADMISSIBLE, "go to countertop 1") == 1.0
    assert expert_action_reward("go to countertop 2", ADMISSIBLE, "go to countertop 1") == 0.0
    assert expert_action_reward("", ADMISSIBLE, "look") == 0.0


# ---- reward terms of a whole rollout ------------------------------------------------------------------------------
def _rollout(text="(b)", budgets=(8, 0, 4), rows=(3, 5, -1), memory=9):
    from elasticmem_core.memorysuite.records import Question
    from elasticmem_core.method.rewards import Rollout

    q = Question("q", "?", ["x", "y", "z", "w"], "(b)", "fact", "m", "train")
    return Rollout(q, text, list(rows), list(budgets), {"task_text": 10, "memory": memory, "output": 3},
                   top_z=3, b_max=8)


def test_reward_terms_see_the_rollout_and_weigh_by_name():
    from elasticmem_core.method.rewards import WeightedReward, token_price

    r = _rollout()
    # chunk 3 holds 8 states: 8 soft tokens + 1 separator = 9 memory tokens; the empty slot's budget is not spent
    assert r.memory_tokens == 8
    assert token_price(r) == -8 / 24               # a share of a full memory (Z x B_max)
    # a budget above the chunk's length L_j costs what is injected, min(b_j, L_j): a 5-state chunk at budget 8 -> 5
    assert _rollout(memory=6).memory_tokens == 5
    paper = WeightedReward({"task": 1.0})
    assert paper(r) == 1.0 and paper(_rollout("(c)")) == 0.0
    priced = WeightedReward({"task": 1.0, "token_price": 0.3})
    assert priced.parts(r) == {"task": 1.0, "token_price": -8 / 24}
    assert abs(priced(r) - (1.0 - 0.3 * 8 / 24)) < 1e-12
    assert WeightedReward({"task": 1.0, "token_price": 1.0})(_rollout(budgets=(8, 8, 0), memory=18)) == 1.0 - 16 / 24


def test_bad_reward_terms_name_the_params_file_and_key(tmp_path):
    import pytest as _pytest

    from elasticmem_core.core import config
    from elasticmem_core.core.experiment import resolve

    cases = [("{task: 1.0, accuracy: 1.0}", "grpo.reward_terms.accuracy: unknown reward term"),
             ("{task: 1.0, token_price: -0.5}", "grpo.reward_terms.token_price = -0.5: a price must be >= 0"),
             ("{task: 0.0, token_price: 0.5}", "no task term with a non-zero weight"),
             ("{}", "no task term with a non-zero weight")]
    for value, message in cases:
        path = tmp_path / "p.yaml"
        path.write_text(f"grpo:\n  reward_terms: {value}\n")
        with _pytest.raises(config.ConfigError, match=f"{path}: .*{message}".replace("(", r"\(").replace(")", r"\)")
                            .replace("[", r"\[")):
            checks.load([resolve("params/smoke.yaml"), path])
    path.write_text("grpo:\n  policy_only: true\nbudget:\n  policy: uniform\n")
    with _pytest.raises(config.ConfigError, match=r"p.yaml: grpo.policy_only = true needs a trainable budget policy"):
        checks.load([resolve("params/smoke.yaml"), path])
