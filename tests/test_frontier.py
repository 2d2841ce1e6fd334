"""The accuracy-vs-memory-tokens frontier on tiny-random: fixed rules, a learned point, the envelope, the JSON."""
from __future__ import annotations

import dataclasses
import json
import math
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from tinydata import QUESTIONS, tiny_bank, tiny_cfg, tiny_model

from elasticmem_core.core import evaluate, stats
from elasticmem_core.method.budget import BudgetPolicy
from elasticmem_core.studies import frontier, pareto, relevance_probe

NO_DROPOUT = ("lora.dropout=0", "projector.dropout=0", "budget.dropout=0")


@pytest.fixture(scope="module")
def bank(tmp_path_factory):
    return tiny_bank(tmp_path_factory.mktemp("bank"))


@pytest.fixture(scope="module")
def model(bank):  # smoke sizes: Z = 4, B_max = 8, min_budget 0
    return tiny_model(bank, *NO_DROPOUT, "eval.frontier_uniform=[2, 4, 8, 16]", "eval.frontier_top1_rest=[4, 8]",
                      "eval.frontier_thresholds=[0.3, 0.5]", "eval.frontier_softmax_totals=[32, 96]")


@pytest.fixture(scope="module")
def fixed(model):
    return frontier.evaluate_fixed(model, QUESTIONS, n_boot=200, seed=0)


def test_fixed_points_evaluate_and_uniform_memory_grows_with_b(model, fixed):
    assert [p["name"] for p in fixed] == [                   # uniform 16 > B_max and top-1 + uniform 8 = top-1: out
        "no memory", "uniform 2", "uniform 4", "uniform 8", "top-1 whole", "top-2 whole", "top-1 whole + uniform 4",
        "threshold 0.3", "threshold 0.5", "score softmax 32", "score softmax 96", "random", pareto.ORACLE_RULE]
    cache_len = model.bank.cache_len
    for p in fixed:
        assert len(p["records"]) == len(QUESTIONS) and 0 <= p["accuracy"] <= 1
        assert p["ci"][0] <= p["accuracy"] <= p["ci"][1]
    uniform = [p for p in fixed if p["family"] == "uniform"]
    m = [p["memory_tokens"] for p in uniform]
    assert m[0] == 0 and all(a < b for a, b in zip(m, m[1:])), m
    for p in uniform[1:]:  # soft tokens = the real states injected, sum_j min(b, L_j); separators not counted
        for r in p["records"]:
            rows = [row for row in r["rows"] if row >= 0]
            assert r["memory_tokens"] == sum(min(p["budget"], int(cache_len[row])) for row in rows)
            assert r["tokens"]["memory"] == r["memory_tokens"] + len(rows)
    assert model.policy.kind == "transformer" and model.memory == "latent"  # restored after each point


def test_the_denser_rules_give_the_budgets_they_name(model, fixed):
    b_max = model.cfg.budget.b_max
    by_name = {p["name"]: p for p in fixed}
    for r in by_name["top-1 whole + uniform 4"]["records"]:           # rank_profile [B_max, 4]
        real = [b for row, b in zip(r["rows"], r["budgets"]) if row >= 0]
        assert real == [b_max] + [4] * (len(real) - 1)
    for r in by_name[pareto.ORACLE_RULE]["records"]:                   # the gold evidence whole, the rest dropped
        q = next(q for q in QUESTIONS if q.qid == r["qid"])
        gold = {model.bank.row(c) for c in q.evidence}
        assert [b for row, b in zip(r["rows"], r["budgets"]) if row >= 0] == \
            [b_max if row in gold else 0 for row in r["rows"] if row >= 0]
    for name in ("score softmax 32", "score softmax 96"):              # higher score, no smaller budget
        for r in by_name[name]["records"]:
            real = [b for row, b in zip(r["rows"], r["budgets"]) if row >= 0]
            assert all(0 <= b <= b_max for b in real) and real == sorted(real, reverse=True), (name, real)
    assert pareto.ORACLE_RULE not in {p["name"] for p in pareto.envelope_rules(fixed)}


def test_score_softmax_shares_its_total_over_the_real_chunks_only():
    cfg = dataclasses.replace(tiny_cfg().budget, policy="score_softmax", b_max=48,
                              softmax_total=60, softmax_temperature=1e6)  # a flat softmax: 60 / 3 real chunks each
    policy = BudgetPolicy(8, cfg, 4)
    scores, mask = torch.tensor([[0.9, 0.5, 0.1, 0.0]]), torch.tensor([[True, True, True, False]])
    d = policy.decide(torch.zeros(1, 8), torch.zeros(1, 4, 8), scores, mask, sample=False)
    assert d.budgets.tolist() == [[20, 20, 20, 0]]
    sharp = BudgetPolicy(8, dataclasses.replace(cfg, softmax_temperature=0.01), 4)
    assert sharp.decide(torch.zeros(1, 8), torch.zeros(1, 4, 8), scores, mask, sample=False).budgets.tolist() == \
        [[48, 0, 0, 0]]                                                   # one chunk takes it all, clipped to B_max
    with pytest.raises(ValueError, match="rank_budgets"):
        BudgetPolicy(8, dataclasses.replace(cfg, policy="rank_profile", rank_budgets=[]), 4)
    with pytest.raises(ValueError, match="evidence"):
        BudgetPolicy(8, dataclasses.replace(cfg, policy="evidence_whole"), 4).decide(
            torch.zeros(1, 8), torch.zeros(1, 4, 8), scores, mask, sample=False)


def test_candidate_profiles_are_every_non_increasing_profile():
    got = frontier.candidate_profiles([0, 4, 8, 99], top_z=3, b_max=8)       # 99 > B_max: left out
    assert len(got) == 9 and [0, 0, 0] not in got                            # C(3 + 3 - 1, 3) = 10, less all-zero
    assert all(p == sorted(p, reverse=True) for p in got) and [8, 4, 0] in got and [4, 8, 0] not in got


def test_profiles_are_chosen_on_validation_never_on_test(model):
    val = [dataclasses.replace(q, split="val") for q in QUESTIONS]
    out = frontier.search_profiles(model, val, [0, 8], n_boot=50, seed=0)
    assert len(out["points"]) == 1 + 4                                       # no memory + [8,0,0,0] ... [8,8,8,8]
    hull = {h["name"] for h in pareto.upper_hull(out["points"])} - {"no memory"}   # the validation hull's profiles
    assert {f"profile {p}" for p in out["profiles"]} == hull
    assert model.policy.kind == "transformer"                               # restored
    with pytest.raises(ValueError, match="never on test"):
        frontier.search_profiles(model, [dataclasses.replace(q, split="test") for q in QUESTIONS], [0, 8])


def test_top1_whole_injects_soft_tokens_for_exactly_one_chunk(model, fixed):
    b_max = model.cfg.budget.b_max
    (top1,) = [p for p in fixed if p["name"] == "top-1 whole"]
    for r in top1["records"]:
        real = [b for row, b in zip(r["rows"], r["budgets"]) if row >= 0]
        assert real[0] == b_max and not any(real[1:])
        assert r["memory_tokens"] == min(b_max, int(model.bank.cache_len[r["rows"][0]])) > 0
        assert r["tokens"]["memory"] == r["memory_tokens"] + 1  # one chunk, one separator


def test_bad_input_is_refused(model, tmp_path):
    with pytest.raises(ValueError, match="not a fixed rule"):
        frontier.evaluate_point(model, QUESTIONS, {"policy": "top_3"})
    with pytest.raises(ValueError, match="not a fixed rule"):
        frontier.evaluate_point(model, QUESTIONS, {"policy": "transformer"})
    with pytest.raises(ValueError, match="bad budget overrides"):
        frontier.evaluate_point(model, QUESTIONS, {"policy": "threshold", "treshold": 0.2})
    with pytest.raises(ValueError, match="no questions"):
        frontier.evaluate_point(model, [])
    with pytest.raises(ValueError, match="no questions"):
        frontier.diagnostics(model, [])
    with pytest.raises(ValueError, match="price must be >= 0"):
        frontier.train_learned_point(model, QUESTIONS, [], tmp_path, token_price=-0.1, seed=0, steps=1)
    with pytest.raises(ValueError, match="distinct seeds"):
        frontier.learned_point(0.0, [])


def test_learned_point_trains_the_policy_alone_and_reports_diagnostics(bank, tmp_path):
    # a checkpoint's params with an alignment stage: the policy-only phase must not run it (it would find no weights)
    model = tiny_model(bank, *NO_DROPOUT, "align.steps=2")
    before = {n: p.detach().clone() for n, p in model.named_parameters() if not n.startswith("policy.")}
    old_policy = model.policy
    trainer = frontier.train_learned_point(model, QUESTIONS, QUESTIONS[:1], tmp_path / "p", token_price=0.5, seed=1,
                                           steps=2, policy_lr=1e-2)
    assert trainer.step == 2 and trainer.cfg.grpo.policy_only and trainer.cfg.grpo.advantage_norm == "mean"
    assert trainer.cfg.align.steps == 0
    with torch.random.fork_rng(devices=[]):  # the fresh policy train_learned_point started from (its seed, 1)
        torch.manual_seed(1)
        fresh = BudgetPolicy(model.bank.hidden_size, trainer.cfg.budget, model.cfg.retrieval.top_z)
    assert any(not torch.equal(p, q) for p, q in zip(model.policy.parameters(), fresh.parameters()))  # it moved
    assert trainer.cfg.grpo.reward_terms == {"task": 1.0, "token_price": 0.5}
    steps = [json.loads(x) for x in trainer.log_path.read_text().splitlines()]
    steps = [r for r in steps if r["stage"] == "grpo"]
    assert len(steps) == 2 and all(r["phase"] == "policy_only" and "reward_token_price" in r for r in steps)
    # a fresh policy learned; the reasoner and projector did not move and are trainable again
    assert model.policy is not old_policy and not model.cfg.grpo.policy_only
    after = dict(model.named_parameters())
    assert all(torch.equal(after[n], p) for n, p in before.items())
    assert all(after[n].requires_grad for n in before if "lora_" in n)
    d = frontier.diagnostics(model, QUESTIONS)
    assert d["entropy_uniform"] == pytest.approx(math.log(9)) and 0 < d["entropy"] <= d["entropy_uniform"] + 1e-6
    assert d["chunks"] == 3 * 4 and 0 <= d["drop_rate"] <= 1
    assert 0 <= d["evidence_budget"] <= 8 and 0 <= d["other_budget"] <= 8
    # the same point in the same folder is reused (no new step); another point there is refused
    assert frontier.train_learned_point(model, QUESTIONS, QUESTIONS[:1], tmp_path / "p", 0.5, 1, 2,
                                        policy_lr=1e-2).step == 2
    with pytest.raises(ValueError, match="another frontier point"):
        frontier.train_learned_point(model, QUESTIONS, QUESTIONS[:1], tmp_path / "p", 0.0, 1, 2, policy_lr=1e-2)


def test_write_pareto_has_exactly_the_required_keys_and_types(fixed, tmp_path):
    diag = {"entropy": 1.0, "entropy_uniform": 2.2, "evidence_budget": 6.0, "other_budget": 2.0, "drop_rate": 0.25}
    runs = [{"seed": s, "records": fixed[i]["records"], "diagnostics": diag} for s, i in ((0, 2), (1, 4))]
    learned = frontier.learned_point(0.2, runs, fixed, n_boot=200)
    uniform, heuristics = ([p for p in fixed if p["family"] == f] for f in ("uniform", "heuristics"))
    path = pareto.write_pareto(tmp_path / "metrics" / "budget_pareto.json", "tiny", "train", len(QUESTIONS),
                                 uniform, heuristics, [learned])
    data = json.loads(path.read_text())
    assert set(data) == {"setting", "split", "n", "uniform", "heuristics", "learned", "hull"} and data["n"] == 3
    number = (int, float)
    for e in data["uniform"]:
        assert set(e) == {"budget", "accuracy", "ci", "memory_tokens"} and isinstance(e["budget"], int)
    for e in data["heuristics"]:
        assert set(e) == {"name", "accuracy", "ci", "memory_tokens"} and isinstance(e["name"], str)
    for e in data["uniform"] + data["heuristics"]:
        assert isinstance(e["accuracy"], number) and isinstance(e["memory_tokens"], number)
        assert len(e["ci"]) == 2 and all(isinstance(c, number) for c in e["ci"])
    (e,) = data["learned"]
    assert set(e) == set(pareto.LEARNED_KEYS) | {"vs_envelope", "vs_hull"}
    assert e["accuracy"] == pytest.approx((fixed[2]["accuracy"] + fixed[4]["accuracy"]) / 2)
    assert e["memory_tokens"] == pytest.approx((fixed[2]["memory_tokens"] + fixed[4]["memory_tokens"]) / 2)
    assert [set(s) for s in e["seeds"]] == [{"seed", "accuracy", "memory_tokens"}] * 2
    assert [s["seed"] for s in e["seeds"]] == [0, 1] and e["entropy"] == 1.0
    assert {"against", "difference", "ci", "p", "n", "seeds", "per_seed"} <= set(e["vs_envelope"])
    assert len(e["vs_envelope"]["ci"]) == 2 and e["vs_envelope"]["seeds"] == [0, 1]
    assert {"against", "mix", "difference", "ci", "p", "n", "seeds", "per_seed"} <= set(e["vs_hull"])
    with pytest.raises(ValueError, match="lacks"):
        pareto.write_pareto(tmp_path / "x.json", "tiny", "train", 3, [{"budget": 4}], [], [])


def _points(*specs):
    return [{"name": n, "memory_tokens": m, "accuracy": a} for n, m, a in specs]


def test_envelope_and_paired_difference_on_hand_made_points():
    # the shape of the fresh-clone numbers: top-k whole above the uniform curve
    pts = _points(("none", 0, 0.2), ("u4", 20, 0.21), ("u8", 36, 0.26), ("top1", 30, 0.475), ("u16", 68, 0.33),
                  ("top2", 59, 0.59), ("u24", 95, 0.58), ("u32", 114, 0.66), ("u48", 119, 0.66))
    assert [p["name"] for p in pareto.upper_envelope(pts)] == ["none", "u4", "top1", "top2", "u32"]
    assert pareto.envelope_at(pts, 103)["name"] == "top2"
    assert pareto.envelope_at(pts, 30)["name"] == "top1" and pareto.envelope_at(pts, 29.9)["name"] == "u4"
    assert pareto.envelope_at(pts, 1000)["name"] == "u32"  # a tie at 0.66: the cheaper one
    assert pareto.envelope_at(pts[1:], 10) is None
    # paired difference against the envelope's point, on the same questions
    rec = lambda correct: [{"qid": f"q{i}", "correct": bool(c)} for i, c in enumerate(correct)]  # noqa: E731
    fixed = [{"name": "cheap", "memory_tokens": 10, "accuracy": 0.25, "records": rec([1, 0, 0, 0])},
             {"name": "dear", "memory_tokens": 50, "accuracy": 1.0, "records": rec([1, 1, 1, 1])}]
    with pytest.warns(evaluate.QuestionLevelWarning):  # records without memory ids: questions are the unit
        one = frontier.vs_envelope({0: rec([1, 1, 0, 1])}, 20, fixed, n_boot=200)
        ref = evaluate.paired_comparison(rec([1, 1, 0, 1]), fixed[0]["records"], 200, 0)
    assert one["against"] == "cheap" and one["difference"] == pytest.approx(0.5) == ref["difference"]
    assert one["ci"] == pytest.approx([ref["ci_low"], ref["ci_high"]]) and one["p"] == ref["p"]
    with pytest.warns(evaluate.QuestionLevelWarning):
        two = frontier.vs_envelope({0: rec([1, 1, 0, 1]), 1: rec([1, 1, 1, 1])}, 20, fixed, n_boot=200)
    assert two["difference"] == pytest.approx(0.625) and two["seeds"] == [0, 1]
    assert [s["difference"] for s in two["per_seed"]] == [0.5, 0.75]
    assert frontier.vs_envelope({0: rec([1, 1, 0, 1])}, 5, fixed) is None


def test_vs_step0_prices_the_tokens_and_pairs_each_seed_with_its_own_start():
    rec = lambda correct, tokens: [{"qid": f"q{i}", "correct": bool(c), "memory_tokens": m, "memory_id": f"m{i // 2}"}  # noqa: E731
                                   for i, (c, m) in enumerate(zip(correct, tokens))]
    trained = {1: rec([1, 1, 1, 0], [100] * 4), 2: rec([1, 1, 0, 0], [100] * 4)}
    start = {1: rec([1, 0, 0, 0], [20] * 4), 2: rec([1, 1, 0, 0], [20] * 4), 3: rec([0, 0, 0, 0], [0] * 4)}
    v = pareto.vs_step0(trained, start, token_price=0.5, full_memory=200, n_boot=200)
    assert v["seeds"] == [1, 2] and v["n"] == 4 and v["ci_unit"] == "memory"  # seed 3 never trained: left out
    assert v["accuracy"]["per_seed"] == [0.5, 0.0] and v["accuracy"]["difference"] == pytest.approx(0.25)
    # reward = correct - 0.5 x tokens / 200: 80 more tokens cost 0.2 per question
    assert v["reward"]["difference"] == pytest.approx(0.25 - 0.2)
    assert v["memory_tokens_difference"] == pytest.approx(80)
    assert v["reward"]["ci"][0] <= v["reward"]["difference"] <= v["reward"]["ci"][1]
    with pytest.raises(ValueError, match="no seed"):
        pareto.vs_step0({4: trained[1]}, start, 0.5, 200)


def test_envelope_tests_resample_memories_and_are_holm_adjusted_together():
    """Questions of one memory move together in the bootstrap, and the learned points' p-values form one family."""
    rec = lambda correct: [{"qid": f"q{i:02d}", "memory_id": f"m{i // 4}", "correct": bool(c)}  # noqa: E731
                           for i, c in enumerate(correct)]
    fixed = [{"name": "cheap", "memory_tokens": 10, "accuracy": 0.0, "records": rec([0] * 16)}]
    learned = rec([1] * 8 + [0] * 4 + [1, 0, 0, 0])  # two memories all right, one wrong, one 1/4
    by_memory = frontier.vs_envelope({0: learned}, 20, fixed, n_boot=500)
    flat = evaluate.bootstrap_ci([float(x["correct"]) for x in learned], 500, 0)
    assert by_memory["ci_unit"] == "memory" and by_memory["units"] == 4 and by_memory["n"] == 16
    assert by_memory["ci"][1] - by_memory["ci"][0] > flat[1] - flat[0]  # 4 memories, not 16 independent questions
    points = [{"vs_envelope": {"p": 0.01}}, {"vs_envelope": {"p": 0.04}}, {"name": "no cheaper fixed point"}]
    frontier.with_holm(points)
    assert [p["vs_envelope"]["p_holm"] for p in points[:2]] == pytest.approx([0.02, 0.04])
    assert "vs_envelope" not in points[2]
    table = pareto.pareto_table({"setting": "s", "split": "test", "n": 16, "uniform": [], "heuristics": [],
                                   "learned": [{"token_price": 0.1, "memory_tokens": 20, "accuracy": 0.6,
                                                "ci": [0.3, 0.9], "seeds": [{"seed": 0, "accuracy": 0.6}],
                                                "entropy": 1, "entropy_uniform": 1, "evidence_budget": 1,
                                                "other_budget": 1, "drop_rate": 0,
                                                "vs_envelope": {"against": "cheap", "diff": 0.6, "ci": [0.3, 0.9]}}]})
    assert table["diff"].iloc[0] == 0.6 and table["p_holm"].iloc[0] is None  # a file from before stats.py reads


class _Data:
    """A dataset of the tiny questions: every split is QUESTIONS."""
    setting = "tiny"

    def split(self, name):
        return list(QUESTIONS)


def test_run_frontier_writes_the_schema_and_reuses_learned_points(bank, tmp_path, monkeypatch):
    model = tiny_model(bank, *NO_DROPOUT, "eval.frontier_uniform=[4, 8]", "eval.frontier_prices=[0.0, 0.5]",
                       "eval.frontier_dense_prices=[0.5]",
                       "eval.frontier_seeds=[1, 2]", "eval.frontier_steps=4", "eval.frontier_questions_per_step=2",
                       "eval.frontier_policy_lr=0.01", "eval.bootstrap=100")
    checkpoint = model.save(tmp_path / "ckpt")
    own_policy, own_cfg = model.policy, model.cfg
    out = frontier.run_frontier(model.cfg, tmp_path / "run", "tiny", model, _Data(), checkpoint, log=lambda *a: None)
    assert out["path"] == tmp_path / "run" / "metrics" / "budget_pareto.json"
    data = json.loads(out["path"].read_text())
    assert set(data) == {"setting", "split", "n", "uniform", "heuristics", "learned", "hull", "oracle", "probe"}
    assert (data["setting"], data["split"], data["n"]) == ("tiny", "test", 3)
    assert [e["budget"] for e in data["uniform"]] == [0, 4, 8]
    names = [e["name"] for e in data["heuristics"]]
    assert names == [p["name"] for p in frontier.fixed_points(model.cfg) if p["family"] == "heuristics"] + \
        [pareto.TEXT_RAG]
    assert names[:3] == ["top-1 whole", "top-2 whole", "top-1 whole + uniform 4"] and pareto.ORACLE_RULE in names
    for e in data["uniform"]:
        assert set(e) == set(pareto.UNIFORM_KEYS)
    for e in data["heuristics"]:
        assert set(e) == set(pareto.HEURISTIC_KEYS)
    assert [e["token_price"] for e in data["learned"]] == [0.0, 0.5, 0.5]       # the last on the dense reward
    assert [e.get("reward") for e in data["learned"]] == [None, None, "gold_logprob"]
    for e in data["learned"]:
        assert set(e) - {"vs_envelope", "vs_hull", "reward"} == set(pareto.LEARNED_KEYS) | {"per_rank", "training",
                                                                                "distinct_budget_vectors", "step0",
                                                                                "vs_step0"}
        # each seed's policy-only run as a curve of running means (a window of 2 of its 4 steps) and its verdict
        assert [t["seed"] for t in e["training"]] == [1, 2] and all(t["steps"] == 4 for t in e["training"])
        assert all(len(t["reward_mean_curve"]) == 3 and t["reward_mean_moved"]["moved"] in ("rose", "flat", "fell")
                   for t in e["training"])
        assert [s["seed"] for s in e["seeds"]] == [1, 2]
        # the controls: the untrained policy of the same seeds, budgets per rank, distinct budget vectors per seed
        assert [s["seed"] for s in e["step0"]["seeds"]] == [1, 2] and 0 <= e["step0"]["accuracy"] <= 1
        assert [r["rank"] for r in e["per_rank"]] == [1, 2, 3, 4] and len(e["distinct_budget_vectors"]) == 2
        assert all(1 <= n <= 3 for n in e["distinct_budget_vectors"])                  # 3 test questions
        # what training added, paired on the same test questions against each seed's step-0 policy
        v = e["vs_step0"]
        assert v["seeds"] == [1, 2] and v["n"] == 3
        assert v["accuracy"]["difference"] == pytest.approx(
            np.mean([s["accuracy"] for s in e["seeds"]]) - e["step0"]["accuracy"])
        assert v["memory_tokens_difference"] == pytest.approx(e["memory_tokens"] - e["step0"]["memory_tokens"])
    table = pareto.pareto_table(data)
    assert list(table[table.family == "learned"].reward_vs_step0) == [e["vs_step0"]["reward"]["difference"]
                                                                      for e in data["learned"]]
    step0 = json.loads((tmp_path / "run" / "frontier" / "tiny" / "step0-seed1-test.json").read_text())
    assert step0["step0_seed"] == 1 and len(step0["records"]) == 3 and step0["sees_length"] is True
    # the step-0 control is the policy the learned points of seed 1 start from: same inputs (chunk lengths), same init
    from elasticmem_core.core.config import derive
    start = frontier.fresh_policy(model, derive(model.cfg, "test", budget={"policy": "transformer",
                                                                           "sees_length": True}), 1)
    assert hasattr(start, "proj_len")
    with model.using(policy=start):
        assert [r["budgets"] for r in frontier.evaluate_point(model, QUESTIONS)] == \
            [r["budgets"] for r in step0["records"]]
    # text RAG's memory tokens are the retrieved chunks' text tokens; the envelope leaves it and random out
    (text,) = [e for e in data["heuristics"] if e["name"] == pareto.TEXT_RAG]
    assert text["memory_tokens"] == pytest.approx(sum(
        sum(len(model._chunk_ids(r)) for r in x["rows"] if r >= 0) for x in out["text"]["records"]) / 3)
    assert not set(out["envelope"]) & set(pareto.NOT_ON_ENVELOPE)
    tested = [e["vs_envelope"] for e in data["learned"] if "vs_envelope" in e]
    for v in tested:
        assert v["against"] not in pareto.NOT_ON_ENVELOPE
    # the learned points' tests are one family: Holm's adjustment of their p-values (oracle points apart)
    assert [v["p_holm"] for v in tested] == pytest.approx(stats.holm([v["p"] for v in tested]))
    # the oracle-feature policy (eval.frontier_oracle_prices defaults to [0.0]) is a point of the same shape
    assert [e["token_price"] for e in data["oracle"]] == [0.0]
    assert set(data["oracle"][0]) - {"vs_envelope", "vs_hull"} == set(pareto.LEARNED_KEYS) | {"per_rank",
                                                                                      "distinct_budget_vectors",
                                                                                      "training"}
    assert len(pareto.plot_training(data)) == 4                      # one panel per learned and oracle point
    assert [p["features"] for p in data["probe"]["probes"]] == list(relevance_probe.PROBE_FEATURES)
    assert data["probe"]["n_test_chunks"] == 3 * 4
    # every point trained its one step into its own folder; the model has its own policy and cfg back
    for price, kind in ((0.0, "learned"), (0.5, "learned"), (0.5, "dense"), (0.0, "oracle")):
        for seed in (1, 2):
            where = frontier.learned_folder(tmp_path / "run", "tiny", price, seed, kind=kind)
            name = f"{'' if kind == 'learned' else kind + '-'}price{price:g}"
            assert where == tmp_path / "run" / "frontier" / "tiny" / name / f"seed{seed}"
            assert (where / "last" / "trainer_state.pt").is_file() and (where / "test.json").is_file()
    assert json.loads((frontier.learned_folder(tmp_path / "run", "tiny", 0.0, 1, True) / frontier.POINT_FILE)
                      .read_text())["sees_evidence"] is True
    dense = next(r for r in map(json.loads, (frontier.learned_folder(tmp_path / "run", "tiny", 0.5, 1, kind="dense")
                                            / "train_log.jsonl").read_text().splitlines()) if r["stage"] == "grpo")
    # its reward is the gold log-probability; its accuracy the sampled answers' own
    assert dense["reward_gold_logprob"] <= 0 and 0 <= dense["accuracy"] <= 1 and "reward_task" not in dense
    assert [t["steps"] for t in out["training"]] == [4] * 8 and not any(t["reused"] for t in out["training"])
    assert model.policy is own_policy and model.cfg is own_cfg and model.memory == "latent"
    saved_policy = torch.load(checkpoint / "policy.pt")
    assert all(torch.equal(v, saved_policy[k]) for k, v in model.policy.state_dict().items())
    table = pareto.pareto_table(data)
    assert len(table) == 3 + len(names) + 3 + 1 and table.on_envelope.any() and (table.family == "oracle").sum() == 1
    assert len(relevance_probe.probe_table(data)) == len(relevance_probe.PROBE_FEATURES)
    # a second call reuses every point: nothing trains, the file is the same
    logs = {p: p.read_text() for p in (tmp_path / "run" / "frontier").rglob("train_log.jsonl")}
    monkeypatch.setattr(frontier, "train_learned_point", lambda *a, **k: pytest.fail("a finished point retrained"))
    again = frontier.run_frontier(model.cfg, tmp_path / "run", "tiny", model, _Data(), checkpoint,
                                  log=lambda *a: None)
    assert all(t["reused"] for t in again["training"]) and json.loads(again["path"].read_text()) == data
    assert {p: p.read_text() for p in logs} == logs
    # a frontier folder of another checkpoint is refused
    with torch.no_grad():
        next(model.projector.parameters()).add_(1.0)
    other = model.save(tmp_path / "other")
    with pytest.raises(evaluate.ResultsError, match="another reader"):
        frontier.run_frontier(model.cfg, tmp_path / "run", "tiny", model, _Data(), other, log=lambda *a: None)


def test_oracle_feature_policy_sees_the_evidence_flag(bank):
    """budget.sees_evidence: the plan carries the gold-evidence flags of the retrieved rows, the policy's logits
    depend on them (and only such a policy has the extra weights), and a question without evidence is refused."""
    model = tiny_model(bank, *NO_DROPOUT, "budget.sees_evidence=true")
    plan = model.plan(QUESTIONS, sample=False)
    gold = [[int(r >= 0 and model.bank.chunk_ids[r] in q.evidence) for r in rs]
            for q, rs in zip(QUESTIONS, plan.retrieved.rows.tolist())]
    assert plan.evidence.tolist() == gold and any(map(any, gold)) and not all(map(all, gold))
    r = plan.retrieved
    args = (r.query, model._keys(r.rows), r.scores, model.policy._prev(plan.budgets.budgets))
    with torch.no_grad():
        model.policy.evid.weight[1].add_(3.0)
        assert not torch.allclose(model.policy.logits(*args, plan.evidence),
                                  model.policy.logits(*args, torch.zeros_like(plan.evidence)))
    logp, _ = model.policy_logprob(plan)
    assert logp.shape == plan.budgets.budgets.shape
    with pytest.raises(ValueError, match="needs the evidence flags"):
        model.policy.logits(*args)
    no_evidence = [dataclasses.replace(QUESTIONS[0], evidence=[])]
    with pytest.raises(ValueError, match="has no evidence field"):
        model.plan(no_evidence, sample=False)
    assert not hasattr(tiny_model(bank, *NO_DROPOUT).policy, "evid")
    from tinydata import tiny_cfg

    from elasticmem_core.core import config
    with pytest.raises(config.ConfigError, match="budget.sees_evidence = true needs a learned budget policy"):
        tiny_cfg("budget.sees_evidence=true", "budget.policy=uniform")


def test_relevance_probe_finds_a_planted_signal_and_not_a_missing_one():
    """The probe's AUC is near 1 for a feature that carries the label and near 0.5 for one that does not."""
    g = torch.Generator().manual_seed(0)

    def data(n_q):
        n, h, z = n_q * 4, 16, 4
        y = torch.zeros(n)
        y[torch.arange(n_q) * 4 + torch.randint(0, 4, (n_q,), generator=g)] = 1.0
        k = torch.randn(n, h, generator=g)
        k[:, 0] += 3 * y                                           # the key carries relevance
        return {"q": torch.randn(n, h, generator=g), "k": k, "s": torch.randn(n, generator=g),  # the score does not
                "rank": torch.nn.functional.one_hot(torch.arange(n) % z, z).float(), "y": y,
                "question": (torch.arange(n) // 4).numpy()}
    out = relevance_probe.relevance_probe(data(120), data(40), data(60), n_boot=100)
    by = {p["features"]: p for p in out["probes"]}
    assert by["key"]["auc"] > 0.9 and by["key"]["ci"][0] > 0.8 and by["key"]["top1"] > 0.8
    assert abs(by["score"]["auc"] - 0.5) < 0.15 and by["score"]["ci"][0] < 0.5 < by["score"]["ci"][1]
    assert out["n_test_chunks"] == 240 and out["evidence_rate_test"] == pytest.approx(0.25)
    assert relevance_probe.auc(np.array([0.1, 0.9, 0.5]), np.array([0, 1, 0])) == 1.0


def test_run_frontier_without_evidence_has_no_oracle_and_no_probe(bank, tmp_path):
    bare = [dataclasses.replace(q, evidence=[]) for q in QUESTIONS]

    class Bare(_Data):
        def split(self, name):
            return list(bare)
    model = tiny_model(bank, *NO_DROPOUT, "eval.frontier_uniform=[4]", "eval.frontier_prices=[0.0]",
                       "eval.frontier_seeds=[1]", "eval.frontier_steps=1", "eval.frontier_questions_per_step=2",
                       "eval.bootstrap=50")
    logs = []
    out = frontier.run_frontier(model.cfg, tmp_path / "run", "tiny", model, Bare(), model.save(tmp_path / "ckpt"),
                                log=logs.append)
    assert set(out["pareto"]) == {"setting", "split", "n", "uniform", "heuristics", "learned", "hull"}
    assert any("no gold evidence" in x for x in logs) and out["oracle"] == [] and out["probe"] is None


@pytest.mark.parametrize("override, message", [
    ("eval.frontier_prices=[0.0, -0.2]", "eval.frontier_prices .* must be >= 0"),
    ("eval.frontier_oracle_prices=[-1.0]", "eval.frontier_oracle_prices .* must be >= 0"),
    ("eval.frontier_seeds=[]", "needs at least one eval.frontier_prices entry and one eval.frontier_seeds"),
    ("eval.frontier_seeds=[1, 1]", "seeds must be distinct"),
    ("eval.frontier_steps=0", "eval.frontier_steps must be >= 1"),
    ("eval.frontier_policy_lr=0", "eval.frontier_policy_lr must be > 0"),
    ("eval.frontier_dense_prices=[-0.1]", "eval.frontier_dense_prices .* must be >= 0"),
    ("eval.frontier_train_split=test", "eval.frontier_train_split = 'test'; choose one of train, val"),
    ("eval.frontier_clip_eps=-0.1", "eval.frontier_clip_eps and eval.frontier_group_size must be >= 0"),
])
def test_bad_frontier_params_are_refused_naming_the_key(override, message):
    from tinydata import tiny_cfg

    from elasticmem_core.core import config

    with pytest.raises(config.ConfigError, match=message):
        tiny_cfg("eval.frontier=true", override)


def test_the_hull_counts_mixes_of_two_rules_and_a_learned_point_is_tested_against_the_mix_at_its_tokens():
    def rule(name, m, correct):
        records = [{"qid": f"q{i}", "memory_id": f"m{i // 2}", "correct": c, "memory_tokens": m}
                   for i, c in enumerate(correct)]
        return {"name": name, "memory_tokens": float(m), "accuracy": float(np.mean(correct)), "ci": [0.0, 1.0],
                "records": records}

    fixed = [rule("none", 0, [1, 0, 0, 0, 0, 0, 0, 0, 0, 0]), rule("cheap", 10, [1, 1, 0, 0, 0, 0, 0, 0, 0, 0]),
             rule("mid", 20, [1, 1, 1, 1, 1, 1, 0, 0, 0, 0]), rule("dear", 30, [1, 1, 1, 1, 1, 1, 0, 0, 0, 0]),
             rule("all", 40, [1] * 9 + [0]), rule("random", 25, [1] * 10)]   # random: never a comparator
    corners = pareto.upper_hull(pareto.envelope_rules(fixed))
    assert [p["name"] for p in corners] == ["none", "mid", "all"]  # cheap lies under the chord, dear adds no accuracy
    lo, hi, w = pareto.hull_at(pareto.envelope_rules(fixed), 25.0)
    assert (lo["name"], hi["name"], w) == ("mid", "all", 0.75)
    assert pareto.hull_at(pareto.envelope_rules(fixed), 55.0)[2] == 1.0 and pareto.hull_at(fixed[1:], 5.0) is None
    learned = [{**r, "memory_tokens": 25} for r in rule("p", 25, [1, 1, 1, 1, 1, 1, 1, 0, 0, 0])["records"]]
    vs = frontier.vs_hull({0: learned}, 25.0, fixed, n_boot=200, seed=0)
    mix = 0.75 * 0.6 + 0.25 * 0.9  # the mix's exact expected accuracy, not a sampled one
    assert vs["against"] == "0.75 x mid + 0.25 x all" and vs["against_memory_tokens"] == 25.0
    assert vs["against_accuracy"] == pytest.approx(mix) and vs["difference"] == pytest.approx(0.7 - mix)
    # the staircase compares the same point with the cheaper corner alone, which flatters it
    rules = pareto.envelope_rules(fixed)
    assert frontier.vs_envelope({0: learned}, 25.0, rules, n_boot=200, seed=0)["difference"] == pytest.approx(0.1)
    path = pareto.write_pareto(Path(tempfile.mkdtemp()) / "p.json", "s", "test", 10,
                               [{**f, "budget": i} for i, f in enumerate(fixed[:1])],
                               [{**f} for f in fixed[1:]], [])
    assert [c["name"] for c in json.loads(path.read_text())["hull"]] == ["none", "mid", "all"]


def test_the_policy_sees_chunk_lengths_when_asked(bank):
    """budget.sees_length: the policy's chunk tokens carry min(L_j, B_max) / B_max from bank.cache_len (0 at an empty
    slot), its logits depend on them, a policy without the flag has no such weights, and a fixed rule refuses it."""
    model = tiny_model(bank, *NO_DROPOUT, "budget.sees_length=true")
    plan = model.plan(QUESTIONS, sample=False)
    rows = plan.retrieved.rows
    lengths = model._lengths(rows)
    assert lengths.tolist() == [[int(model.bank.cache_len[r]) if r >= 0 else 0 for r in rs] for rs in rows.tolist()]
    r = plan.retrieved
    args = (r.query, model._keys(r.rows), r.scores, model.policy._prev(plan.budgets.budgets), None)
    with torch.no_grad():
        model.policy.proj_len.weight.add_(3.0)
        assert not torch.allclose(model.policy.logits(*args, lengths), model.policy.logits(*args, lengths * 0))
    logp, _ = model.policy_logprob(plan)
    assert logp.shape == plan.budgets.budgets.shape
    with pytest.raises(ValueError, match="needs the retrieved chunks' lengths"):
        model.policy.logits(*args)
    plain = tiny_model(bank, *NO_DROPOUT)
    assert not hasattr(plain.policy, "proj_len") and plain._lengths(rows) is None
    assert ("budget", "sees_length") in type(model).SHAPING["policy"]  # a checkpoint's policy loads only alike
    from tinydata import tiny_cfg

    from elasticmem_core.core import config
    with pytest.raises(config.ConfigError, match="budget.sees_length = true needs a learned budget policy"):
        tiny_cfg("budget.sees_length=true", "budget.policy=uniform")


def test_gold_logprob_is_a_log_probability_of_the_gold_answer_without_sampling_noise(bank):
    """The dense reward: per rollout log p(gold | prompt, chosen memory) at temperature 1. Over the options these
    are the log-probabilities of disjoint answers, so their exponentials sum to at most 1; rollouts with the same
    plan get the same reward whatever they sampled; other budgets give another value."""
    from elasticmem_core.method import rollout as ro
    from elasticmem_core.method.rewards import WeightedReward

    model = tiny_model(bank, *NO_DROPOUT)
    q = QUESTIONS[0]
    g = ro.rollout(model, q, 4, WeightedReward({"gold_logprob": 1.0}), torch.Generator().manual_seed(0))
    assert all(p["gold_logprob"] == r for p, r in zip(g.reward_parts, g.rewards.tolist()))
    assert (g.rewards <= 0).all()
    again = ro.gold_logprobs(model, g.questions, g.plan)
    assert again == pytest.approx(g.rewards.tolist(), abs=1e-5)
    options = [f"({chr(ord('a') + i)})" for i in range(len(q.options))]
    per_option = [ro.gold_logprobs(model, [dataclasses.replace(q, gold=o)] * 4, g.plan) for o in options]
    total = np.exp(np.array(per_option)).sum(0)
    assert (total <= 1 + 1e-4).all() and (total > 0).all()
    same = [i for i in range(4) if g.plan.budgets.budgets[i].tolist() == g.plan.budgets.budgets[0].tolist()
            and g.plan.retrieved.rows[i].tolist() == g.plan.retrieved.rows[0].tolist()]
    assert len({round(again[i], 5) for i in same}) == 1
    dropped = ro.select_rows(g.plan, [0])
    dropped.budgets.budgets = torch.zeros_like(dropped.budgets.budgets)
    assert ro.gold_logprobs(model, [q], dropped)[0] != pytest.approx(again[0], abs=1e-6)
    from tinydata import tiny_cfg

    from elasticmem_core.core import config
    with pytest.raises(config.ConfigError, match="gold_logprob .* needs grpo.policy_only = true"):
        tiny_cfg("grpo.reward_terms={gold_logprob: 1.0}")


def test_fixed_rules_resume_rule_by_rule(model, tmp_path, monkeypatch):
    """With `save`, each rule's records are kept as it finishes: a second pass answers nothing again, and a folder
    saved under other settings is refused."""
    from elasticmem_core.studies import fixed_rules

    points = fixed_rules.fixed_points(model.cfg)[:3]
    calls = []
    real = fixed_rules.evaluate_point
    monkeypatch.setattr(fixed_rules, "evaluate_point", lambda *a, **k: calls.append(a[2]) or real(*a, **k))
    meta = {"kind": "frontier", "split": "test"}
    first = fixed_rules.evaluate_fixed(model, QUESTIONS, points, 50, 0, save=(tmp_path / "rules", model.cfg, meta))
    assert len(calls) == 3 and sorted(p.name for p in (tmp_path / "rules").iterdir()) == \
        sorted(f"{fixed_rules.rule_slug(p['name'])}.json" for p in points)
    again = fixed_rules.evaluate_fixed(model, QUESTIONS, points, 50, 0, save=(tmp_path / "rules", model.cfg, meta))
    assert len(calls) == 3 and [p["records"] for p in again] == [p["records"] for p in first]
    with pytest.raises(evaluate.ResultsError, match="other settings"):
        fixed_rules.evaluate_fixed(model, QUESTIONS, points, 50, 0,
                                   save=(tmp_path / "rules", model.cfg, {**meta, "split": "val"}))
    assert fixed_rules.rule_slug("top-1 whole + uniform 8") == "top-1-whole-uniform-8"


def test_training_summary_reads_the_curve_as_running_means(tmp_path):
    rows = [{"stage": "grpo", "step": t, "reward_mean": 0.1 * (t >= 4) + 0.01 * (t % 2), "accuracy": 0.5,
             "policy_entropy": 3.0, "policy_clip_frac": 0.9 if t == 0 else 0.1, "seconds": 1.0} for t in range(8)]
    (tmp_path / "train_log.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    s = frontier.training_summary(tmp_path)
    assert frontier.curve_window(8) == 2 and len(s["reward_mean_curve"]) == 7
    assert s["reward_mean_moved"]["moved"] == "rose" and s["reward_mean_moved"]["difference"] == pytest.approx(0.1)
    assert s["accuracy_moved"]["moved"] == "flat" and s["policy_clip_frac_after_first_window"] == pytest.approx(0.1)
    assert frontier.curve_window(3) == 0 and "reward_mean_curve" not in frontier.training_summary(tmp_path / "none")


def test_a_learned_point_never_trains_on_test_questions(bank, tmp_path):
    model = tiny_model(bank, *NO_DROPOUT)
    test_q = [dataclasses.replace(q, split="test") for q in QUESTIONS]
    with pytest.raises(ValueError, match="never on test"):
        frontier.train_learned_point(model, test_q, [], tmp_path / "p", 0.2, 1, 1)
