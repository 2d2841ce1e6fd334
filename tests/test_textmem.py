"""The text-space memory baselines on tiny-random: the fact store, Mem0-style stores, AgeMem-style tools and training."""
from __future__ import annotations

import json

import pytest
import torch
from test_baselines import cfg, dataset
from tinydata import CHUNKS, QUESTIONS, tiny_bank, tiny_cfg

from elasticmem_core.baselines import agemem, agemem_tools, mem0
from elasticmem_core.baselines.fact_store import FactStore, StoreError, mentions
from elasticmem_core.core.backbone import load_backbone
from elasticmem_core.core.config import ConfigError
from elasticmem_core.harness import variants
from elasticmem_core.memorysuite import mini


class Embedder:
    """The sentence embedder's interface over bag-of-words counts: the store's ranking, without the 90 MB model
    (the real embedder ranks facts in the baseline rows below)."""

    def encode(self, texts):
        vocab = "lisbon oslo madrid user lives live in now parrot pet blue red colour".split()
        out = torch.tensor([[float(w in t.lower().replace(".", " ").split()) for w in vocab] for t in texts]) + 1e-3
        return torch.nn.functional.normalize(out, dim=-1)


@pytest.fixture(scope="module")
def bank(tmp_path_factory):
    return tiny_bank(tmp_path_factory.mktemp("bank"))


def changed_fact():
    """A fact mini states and later changes ("Quick update: ... now"): (old turn, update turn, old value, new value)."""
    c = tiny_cfg().data.mini
    memories = [mini._memory(__import__("random").Random(s), [("q", "latest")], c, 4) for s in range(3)]
    sessions, (item,) = memories[0]
    turns = [t for s in sessions for t in s]
    old, new = item.confusers[0], item.gold
    first = next(t for t in turns if any(mentions(u, old) for u in t.user))
    update = next(t for t in turns if t.user[0].startswith("Quick update"))
    return first.user[-1], update.user[0], old, new


# ---- the fact store -----------------------------------------------------------------------------------------------
def test_store_operations_do_what_they_say():
    s, e = FactStore(), Embedder()
    a = s.add("The user lives in Oslo.", turn=0)
    b = s.add("The user has a pet parrot.", turn=1)
    assert s.search("where the user lives in", 1, e)[0][:2] == (a, "The user lives in Oslo.")
    s.update(a, "The user lives in Lisbon now.", turn=5)
    assert s.facts[a] == "The user lives in Lisbon now." and s.holds("Lisbon") and not s.holds("Oslo")
    assert s.search("where the user lives in", 1, e)[0][1] == "The user lives in Lisbon now."  # re-embedded
    s.delete(b, turn=6)
    assert b not in s.facts and [f for f, _, _ in s.search("pet", 5, e)] == [a]
    c = s.add("The user likes blue.")
    assert c == 2  # ids are never reused
    with pytest.raises(StoreError, match="no fact with id 1"):
        s.update(b, "x")
    assert s.counts() == {"ADD": 3, "UPDATE": 1, "DELETE": 1, "NOOP": 0}
    assert FactStore.from_dict(json.loads(json.dumps(s.to_dict()))).to_dict() == s.to_dict()
    assert mentions("I play the cello.", "cello") and not mentions("I play the violoncellos", "cello")


def test_mem0_update_and_delete_of_a_fact_mini_changes_later():
    first, update, old, new = changed_fact()
    s, e = FactStore(), Embedder()
    mem0.apply(s, "ADD", first, turn=3)
    (fid, _, _), = s.search(update, 1, e)
    mem0.apply(s, f"UPDATE {fid}", update, turn=9)  # the later turn replaces the earlier fact
    assert s.holds(new) and not s.holds(old) and len(s) == 1
    mem0.apply(s, f"DELETE {fid}", update, turn=10)
    assert len(s) == 0 and not s.holds(new)
    assert [o["op"] for o in s.ops] == ["ADD", "UPDATE", "DELETE"] and s.ops[1]["was"] == first
    for bad in ("MERGE 1", "UPDATE", "ADD 3"):
        with pytest.raises(ValueError, match="not an operation"):
            mem0.apply(s, bad, "x")


def test_mem0_decisions_are_always_valid_operations():
    bb = load_backbone("tiny-random")
    similar = [(3, "The user lives in Oslo.", 0.9), (7, "The user has a parrot.", 0.2)]
    prompts = [mem0.decision_prompt(bb.tokenizer, "The user lives in Lisbon now.", similar)] * 2
    choices = [mem0.operations(similar), ["ADD", "NOOP"]]
    out = mem0.generate(bb.model, bb.tokenizer, prompts, 0, choices)
    assert out[0] in choices[0] and out[1] in choices[1]
    assert mem0.parse_facts("- The user lives in Oslo.\n- none\n* The user lives in Oslo.\nThe user is 30.", 5) == \
        ["The user lives in Oslo.", "The user is 30."]


def test_mem0_store_survives_interruption_and_resumes(tmp_path, monkeypatch):
    bb = load_backbone("tiny-random")
    c = tiny_cfg("mem0.extract_max_new_tokens=6", "mem0.batch_size=4")
    memories = {m: [ch.text for ch in CHUNKS if ch.memory_id == m] for m in ("m0", "m1")}
    whole = mem0.build_stores(bb.model, bb.tokenizer, Embedder(), c, memories, "tiny", tmp_path / "a", False)
    calls, real = [], mem0.generate

    def dies_on_third(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **k)
    monkeypatch.setattr(mem0, "generate", dies_on_third)
    with pytest.raises(KeyboardInterrupt):
        mem0.build_stores(bb.model, bb.tokenizer, Embedder(), c, memories, "tiny", tmp_path / "b", False)
    saved = {p.name: json.loads(p.read_text()) for p in (tmp_path / "b").glob("*.json")}
    assert saved and all(s["extracted"][0] is not None for s in saved.values())  # the first batch was kept
    calls.clear()
    monkeypatch.setattr(mem0, "generate", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    resumed = mem0.build_stores(bb.model, bb.tokenizer, Embedder(), c, memories, "tiny", tmp_path / "b", False)
    assert {m: s.to_dict() for m, s in resumed.items()} == {m: s.to_dict() for m, s in whole.items()}
    # reused as saved: nothing generated again; other settings rebuild it
    calls.clear()
    mem0.build_stores(bb.model, bb.tokenizer, Embedder(), c, memories, "tiny", tmp_path / "b", False)
    assert calls == []
    c2 = tiny_cfg("mem0.extract_max_new_tokens=5", "mem0.batch_size=4")
    mem0.build_stores(bb.model, bb.tokenizer, Embedder(), c2, memories, "tiny", tmp_path / "b", False)
    assert calls and all(json.loads(p.read_text())["recipe"]["mem0"]["extract_max_new_tokens"] == 5
                         for p in (tmp_path / "b").glob("*.json"))


def test_mem0_runs_as_a_baseline_row_with_its_store_report(tmp_path, tiny_backbone):
    c = cfg("mem0.extract_max_new_tokens=6", "retrieval.mode=semantic")
    (res,) = variants.run_variant("baselines", "mem0", c, tmp_path, tiny_backbone, dataset(), progress=False)
    report = json.loads((tmp_path / "baselines" / "mem0" / "tiny" / "seed42" / "stores" / "report.json").read_text())
    assert report["memories"] >= 1 and set(report["operations"]) == {"ADD", "UPDATE", "DELETE", "NOOP"}
    for r in res["records"]:
        assert r["tok"] == sum(r["tokens"].values()) and r["rows"] == [-1] * len(r["rows"])
        assert len(r["memory_texts"]) <= c.retrieval.top_z and "store_facts" in r
    assert not any("lora" in n for n, _ in tiny_backbone.model.named_parameters())  # released after


# ---- AgeMem-style tools ---------------------------------------------------------------------------------------------
def test_each_agemem_tool_does_what_it_says_and_bad_calls_are_observations():
    first, update, old, new = changed_fact()
    s, e = agemem_tools.State(), Embedder()
    s.context = [(0, "User: hi"), (1, first), (2, "User: filler")]
    agemem_tools.execute(s, f"ADD: {first}\nNONE", e, 2, position=1)
    assert s.ltm.holds(old) and s.calls == {"ADD": 1, "NONE": 1}
    agemem_tools.execute(s, f"UPDATE 0: {update}", e, 2, position=7)   # the later change replaces the stored fact
    assert s.ltm.holds(new) and not s.ltm.holds(old)
    agemem_tools.execute(s, "RETRIEVE: user", e, 2, qid="q")
    assert s.retrieved["q"] == [update] and s.observations[-1] == f"Retrieved: {update}"
    agemem_tools.execute(s, "FILTER 0, 2", e, 2)
    assert s.context == [(1, first)]
    agemem_tools.execute(s, "SUMMARY: the user moved", e, 2)
    assert s.context == [(-1, "the user moved")]
    agemem_tools.execute(s, "DELETE 0", e, 2)
    assert len(s.ltm) == 0 and s.invalid == 0
    s.observations.clear()
    agemem_tools.execute(s, "I think the user is nice\nDELETE 5\nFILTER 9\nADD:\nUPDATE x: y\nNONE please", e, 2)
    assert s.invalid == 6 and len(s.observations) == 6 and "not a tool call" in s.observations[0] and "no fact with id 5" in s.observations[1]
    assert s.calls["DELETE"] == 1 and s.calls["FILTER"] == 1  # only the valid ones


def test_agemem_episode_answers_and_counts_tools(bank):
    model = agemem.AgeMem(load_backbone("tiny-random"), bank, tiny_cfg("eval.method=agemem", "agemem.max_tool_tokens=6"),
                          {c.chunk_id: c.text for c in CHUNKS}, Embedder())
    out = model.answer(QUESTIONS[:3])
    assert [o["qid"] for o in out] == ["q0", "q1", "q2"]
    for o in out:
        assert o["tool_tokens"] > o["tokens"]["task_text"] and o["valid_calls"] + o["invalid_calls"] >= 0
        assert o["tokens"]["memory"] > 0  # the kept context is read as text
    assert model.episodes == {}  # played for this call only: nothing stale kept
    model.prepare(QUESTIONS[:3])
    assert set(model.episodes) == {"m0", "m1"}
    assert model.answer(QUESTIONS[:3]) == out  # the same greedy episode, from the cache
    # stage 2 injects other memories' turns at known places
    item = model.item("m0", [], __import__("random").Random(0))
    assert len(item.turns) == 6 + model.cfg.agemem.distractors
    assert all(item.turns[d] == "User: hi" or item.turns[d].split()[2] == "1th" for d in item.distractors)
    own = [t for i, t in enumerate(item.turns) if i not in item.distractors]
    assert own == [c.text for c in CHUNKS if c.memory_id == "m0"]  # in order, none lost


def test_stepwise_grpo_broadcasts_the_trajectory_reward_to_every_step(bank, monkeypatch):
    c = tiny_cfg("eval.method=agemem", "agemem.max_tool_tokens=4", "grpo.group_size=3",
                 "agemem.loss_steps=2", "grpo.lr=1e-2")
    model = agemem.AgeMem(load_backbone("tiny-random"), bank, c, {x.chunk_id: x.text for x in CHUNKS}, Embedder())
    monkeypatch.setitem(agemem.EPISODE_REWARDS, "length", lambda item, s, a: float(s.tool_tokens))
    reward = agemem.EpisodeReward({"length": 1.0})
    model.stage = "answer"
    gen = torch.Generator().manual_seed(3)
    item = model.item("m0", QUESTIONS[:1])
    g = model.rollout(item, 3, reward, gen)
    assert len(g.questions) == 3 * 2 and g.rewards.shape == (3,)     # loss_steps = 2 of each trajectory
    from elasticmem_core.method.rollout import group_advantages
    adv = group_advantages(g.rewards, c.grpo.adv_clip)
    assert torch.equal(g.advantages, adv.repeat_interleave(2)) and g.advantages.abs().sum() > 0
    before = [p.detach().clone() for p in model.trainable_parameters()]
    loss, _ = __import__("elasticmem_core.training.grpo", fromlist=["group_loss"]).group_loss(model, g)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.trainable_parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, model.trainable_parameters()))


def test_agemem_curriculum_trains_each_stage_and_runs_as_a_baseline(tmp_path, tiny_backbone):
    c = cfg("eval.variant_steps=1", "agemem.max_tool_tokens=4", "agemem.loss_steps=2", "retrieval.mode=semantic",
            "agemem.format_steps=2", "agemem.val_memories=1")
    (res,) = variants.run_variant("baselines", "agemem", c, tmp_path, tiny_backbone, dataset(), progress=False)
    folder = tmp_path / "baselines" / "agemem" / "tiny" / "seed42"
    fmt = [json.loads(x) for x in (folder / "format_log.jsonl").read_text().splitlines()]
    assert len(fmt) == 2 and all(r["loss"] > 0 for r in fmt) and (folder / "format" / "elasticmem.json").is_file()
    for stage in agemem.STAGES:   # variant_steps = 1 caps each stage at one step
        log = [json.loads(x) for x in (folder / stage / "train_log.jsonl").read_text().splitlines()]
        (step,) = [r for r in log if r["stage"] == "grpo"]
        assert {"valid_calls", "invalid_calls", "ltm_facts", "calls_add"} <= set(step)
        assert set(c.agemem.store.rewards) <= {k[7:] for k in step if k.startswith("reward_")} or stage != "store"
    assert res["summary"]["tool_tokens"] > 0
    assert all({"tool_tokens", "valid_calls", "invalid_calls", "calls"} <= set(r) for r in res["records"])


def test_the_teacher_demonstrations_are_valid_calls(bank):
    model = agemem.AgeMem(load_backbone("tiny-random"), bank, tiny_cfg("eval.method=agemem", "agemem.max_tool_tokens=40"),
                          {c.chunk_id: c.text for c in CHUNKS}, Embedder())
    item = model.item("m0", QUESTIONS[:1])
    demos = agemem.demonstrations(model, [item])
    assert len(demos) == 6 + 1
    s = agemem_tools.State()
    for step, ids in demos:
        agemem_tools.execute(s, model.tokenizer.decode(ids, skip_special_tokens=True), Embedder(), 2, qid="q0")
    assert s.invalid == 0 and s.calls == {"ADD": 6, "RETRIEVE": 1} and s.ltm.holds("blue")
    assert agemem.teacher_action("User: I live in Oslo.\nBy the way x\nAssistant: ok") == "ADD: I live in Oslo. By the way x"


def test_format_warmup_learns_the_teacher(bank, tmp_path):
    c = tiny_cfg("eval.method=agemem", "agemem.max_tool_tokens=12", "grpo.sft_batch_size=64", "grpo.sft_lr=1e-2")
    model = agemem.AgeMem(load_backbone("tiny-random"), bank, c, {x.chunk_id: x.text for x in CHUNKS}, Embedder())
    items = [model.item(m, [q for q in QUESTIONS if q.memory_id == m]) for m in ("m0", "m1")]
    agemem.format_warmup(model, items, tmp_path, 4)   # one batch holds every demonstration: the same loss each step
    losses = [json.loads(x)["loss"] for x in (tmp_path / "format_log.jsonl").read_text().splitlines()]
    assert all(b < a for a, b in zip(losses, losses[1:])) and losses[-1] < losses[0] - 0.2
    before = [p.detach().clone() for p in model.trainable_parameters()]
    agemem.format_warmup(model, items, tmp_path, 4)   # reused: loaded, not trained again
    assert all(torch.equal(a, b) for a, b in zip(before, model.trainable_parameters()))


def test_text_memory_params_are_checked():
    with pytest.raises(ConfigError, match="agemem.filter.rewards.bogus"):
        tiny_cfg("agemem.filter.rewards={bogus: 1}")
    with pytest.raises(ConfigError, match="agemem.answer.steps"):
        tiny_cfg("agemem.answer.steps=-2")
    with pytest.raises(ConfigError, match="mem0.max_facts_per_turn"):
        tiny_cfg("mem0.max_facts_per_turn=0")
    # a partly given stage keeps that stage's own default rewards
    assert tiny_cfg("agemem.filter.steps=3").agemem.filter.rewards["filtered_distractors"] == 1.0
    assert agemem.stage_steps(tiny_cfg("grpo.questions_per_step=2"), "store", 5) == 3
    assert agemem.stage_steps(tiny_cfg("eval.variant_steps=1"), "store", 5) == 1


def test_text_memory_sections_shape_only_their_own_results():
    from elasticmem_core.core.evaluate import fingerprint

    for method in ("text_rag", "mem0", "agemem"):
        params = fingerprint(tiny_cfg(f"eval.method={method}"), {})["params"]
        assert ("mem0" in params) == (method == "mem0") and ("agemem" in params) == (method == "agemem")


def test_mem0_reports_count_what_the_stores_hold():
    s = FactStore()
    s.add("The user lives in Oslo.")
    s.add("The user has a parrot.")
    qs = [QUESTIONS[0], QUESTIONS[1]]   # gold (a) = "blue", memories m0 and m1
    rep = mem0.report({"m0": s}, qs)
    assert rep["memories"] == 1 and rep["facts"] == 2 and rep["questions"] == 1 and rep["gold_in_store"] == 0
    s.add("The user likes blue.")
    assert mem0.report({"m0": s}, qs)["gold_in_store"] == 1 and rep["operations"]["ADD"] == 2
    records = [{"gold_value": "blue", "memory_texts": ["The user likes blue."]},
               {"gold_value": "blue", "memory_texts": ["The user has a parrot."]}]
    assert mem0.read_gold(records) == 0.5
