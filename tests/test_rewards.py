"""Rewards are pure functions: letter match for multiple choice, snapped expert action for ALFWorld."""
from elasticmem_core.rewards import choice_reward, expert_action_reward, parse_answer, snap_to_admissible

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
