"""The MemGen-style baseline on tiny-random: where its latents go, what trains, what a checkpoint restores."""
from __future__ import annotations

import pytest
import torch
from test_baselines import cfg, dataset
from tinydata import CHUNKS, QUESTIONS, tiny_bank, tiny_cfg

from elasticmem_core.baselines import memgen
from elasticmem_core.core.backbone import load_backbone
from elasticmem_core.core.config import ConfigError
from elasticmem_core.harness import variants
from elasticmem_core.method import rollout as rollouts
from elasticmem_core.training import grpo


@pytest.fixture(scope="module")
def bank(tmp_path_factory):
    return tiny_bank(tmp_path_factory.mktemp("bank"))


def make(bank, *overrides):
    c = tiny_cfg("eval.method=memgen", *overrides)
    return memgen.MemGen(load_backbone("tiny-random"), bank, c, {c_.chunk_id: c_.text for c_ in CHUNKS})


def base_weights(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.lm.get_base_model().named_parameters() if "lora_" not in n}


def test_latents_reach_the_reasoner_at_the_prompt_end(bank):
    model = make(bank, "memgen.latents=3")
    qs = QUESTIONS[:2]
    with torch.no_grad():
        plan = model.plan(qs)
        batch = model.build(qs, plan)
        woven = model.weave(batch.weaver_context)
    embed = model.lm.get_input_embeddings()
    for i, q in enumerate(qs):
        span = batch.spans[i]
        assert span["end_memory"][1] == batch.prompt_len and span["end_memory"][1] - span["end_memory"][0] == 3
        assert span["memory"][0] == span["memory"][1] and span["control"][0] == span["control"][1]  # neither here
        torch.testing.assert_close(batch.inputs_embeds[i, slice(*span["end_memory"])], woven[i])
        tail = torch.tensor(model.tail_ids(q))
        torch.testing.assert_close(batch.inputs_embeds[i, slice(*span["tail"])], embed(tail))
        assert batch.counts[i] == {"task_text": span["tail"][1] - span["question"][0], "memory": 3}
        # the weaver read the question, each retrieved chunk's text and the options, then its 3 query latents
        rows = [r for r in plan.retrieved.rows[i].tolist() if r >= 0]
        assert len(rows) == 4 and batch.extras[i]["weaver_tokens"] == len(batch.weaver_context[i]) + 3
        for r in rows:
            ids = model._chunk_ids(r)
            assert any(batch.weaver_context[i][s:s + len(ids)] == ids for s in range(len(batch.weaver_context[i])))
    # the latents depend on what the weaver read: another memory, other latents
    with torch.no_grad():
        other = model.weave([batch.weaver_context[0][:5]])
    assert not torch.allclose(other[0], woven[0])


def test_k_latents_are_respected_in_every_record(bank):
    for k in (1, 5):
        model = make(bank, f"memgen.latents={k}")
        out = model.answer(QUESTIONS[:2])
        assert all(o["tokens"]["memory"] == k and o["weaver_tokens"] > k for o in out)


def test_delimiter_insertion_points_in_teacher_forcing_and_generation(bank):
    model = make(bank, "memgen.insert_delimiters=true", "memgen.max_insertions=2", "memgen.latents=2")
    comma = model.tokenizer(",", add_special_tokens=False)["input_ids"]
    assert len(comma) == 1 and model.is_delimiter(comma[0])
    word = model.tokenizer(" blue", add_special_tokens=False)["input_ids"][:1]
    assert not model.is_delimiter(word[0])
    eos = model.tokenizer.eos_token_id
    answer = word + comma + word + comma + word + comma + word + [eos]   # three delimiters, cap 2
    assert model.insertion_points(answer) == [1, 3]
    qs = QUESTIONS[:2]
    with torch.no_grad():
        plan = model.plan(qs)
        batch = model.build(qs, plan, [answer, word + [eos]])
    p = batch.prompt_len
    # row 0: two latents after answer[1] and after answer[3]; the third comma is past the cap
    assert batch.answer_columns[0].tolist() == [p, p + 1, p + 4, p + 5, p + 8, p + 9, p + 10, p + 11]
    assert batch.answer_columns[1, :2].tolist() == [p, p + 1]
    assert batch.counts[0]["memory"] == 2 + 2 * 2 and batch.counts[1]["memory"] == 2
    # generation inserts where teacher forcing does: with every token a delimiter, the greedy answer's own
    # log-probabilities come back from the teacher-forced pass over the same inserted layout
    model._delimiter = {t: t != eos for t in range(model.tokenizer.vocab_size + 200)}
    with torch.no_grad():
        plan = model.plan(qs)
        batch = model.build(qs, plan)
        gen = model.generate(batch, 5, sample=False)
        logp, mask = rollouts.token_logprobs(model, qs, plan, gen.tokens, with_grad=False)
    for i, toks in enumerate(gen.tokens):
        inserted = min(2, sum(1 for t in toks[:-1] if t != eos))
        assert batch.counts[i]["memory"] == 2 + 2 * inserted
        torch.testing.assert_close(logp[i, 1:1 + len(toks)], torch.tensor(gen.logprob[i]), atol=2e-4, rtol=1e-4)


def test_training_moves_the_weaver_and_never_the_reasoner(tmp_path, bank):
    model = make(bank, "grpo.max_steps=2", "grpo.group_size=2", "grpo.sft_batch_size=2", "grpo.sft_lr=1e-2",
                 "grpo.lr=1e-2", "eval.max_questions=0")
    before = base_weights(model)
    weaver = {n: p.detach().clone() for n, p in model.weaver.named_parameters()}
    probe = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        ref = model.reasoner(input_ids=probe).logits
    ds = dataset()["tiny"]
    ckpt = memgen.train(model, ds, tmp_path / "run", progress=False)
    assert (ckpt / "weaver.pt").is_file()
    assert all(torch.equal(p, before[n]) for n, p in base_weights(model).items())
    with torch.no_grad():
        torch.testing.assert_close(model.reasoner(input_ids=probe).logits, ref)
    assert any(not torch.equal(p, weaver[n]) for n, p in model.weaver.named_parameters())
    lora = [p for n, p in model.lm.named_parameters() if "lora_B" in n]
    assert any(p.abs().sum() > 0 for p in lora)  # the weaver's LoRA moved off its zero start
    log = (tmp_path / "run" / "train_log.jsonl").read_text()
    assert '"stage": "memgen_sft"' in log and '"stage": "grpo"' in log


def test_a_saved_weaver_reloads_to_the_same_answers(tmp_path, bank):
    model = make(bank, "grpo.sft_batch_size=2", "grpo.sft_lr=5e-2", "eval.max_questions=0")
    trainer = grpo.Trainer(model, QUESTIONS, QUESTIONS, tmp_path / "t")
    trainer.supervised(2, "weaver", "memgen_sft")
    first = model.answer(QUESTIONS)
    model.eval()  # no LoRA dropout in the latents compared below
    with torch.no_grad():
        latents = model.build(QUESTIONS, model.plan(QUESTIONS)).latents
    model.save(tmp_path / "ckpt")
    again = make(bank, "grpo.sft_batch_size=2", "eval.max_questions=0").load(tmp_path / "ckpt").eval()
    assert again.answer(QUESTIONS) == first
    with torch.no_grad():
        for a, b in zip(again.build(QUESTIONS, again.plan(QUESTIONS)).latents, latents):
            torch.testing.assert_close(a, b)
    fresh = make(bank, "eval.max_questions=0").eval()
    with torch.no_grad():
        assert not torch.allclose(fresh.build(QUESTIONS, fresh.plan(QUESTIONS)).latents[0], latents[0])
    with pytest.raises(Exception, match="memgen.latents"):
        make(bank, "memgen.latents=3").load(tmp_path / "ckpt")


def test_an_interrupted_run_resumes_to_the_same_weights(tmp_path, bank, monkeypatch):
    overrides = ("grpo.max_steps=2", "grpo.group_size=2", "grpo.sft_batch_size=2", "grpo.reader_warmup_steps=2",
                 "grpo.sft_lr=1e-2", "grpo.lr=1e-2", "eval.max_questions=0", "lora.dropout=0.2")
    ds = dataset()["tiny"]
    torch.manual_seed(0)
    whole = memgen.train(make(bank, *overrides), ds, tmp_path / "a", progress=False)
    real_train = grpo.Trainer.train

    def stop(self, *a, **k):  # interrupted right after the supervised stage
        raise KeyboardInterrupt

    monkeypatch.setattr(grpo.Trainer, "train", stop)
    torch.manual_seed(0)
    with pytest.raises(KeyboardInterrupt):
        memgen.train(make(bank, *overrides), ds, tmp_path / "b", progress=False)
    assert (tmp_path / "b" / "sft" / "weaver.pt").is_file()
    monkeypatch.setattr(grpo.Trainer, "train", real_train)
    torch.manual_seed(123)  # whatever the new process's RNG: the run goes on from what sft/ recorded
    resumed = memgen.train(make(bank, *overrides), ds, tmp_path / "b", progress=False)
    a, b = torch.load(whole / "weaver.pt"), torch.load(resumed / "weaver.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    from safetensors.torch import load_file
    la, lb = (load_file(p / "lora" / "adapter_model.safetensors") for p in (whole, resumed))
    assert all(torch.equal(la[k], lb[k]) for k in la)


def test_the_learned_trigger_trains_alone_on_its_recorded_decisions(bank):
    model = make(bank, "memgen.insert_delimiters=true", "memgen.trigger=learned", "memgen.trigger_steps=1",
                 "memgen.latents=2", "grpo.group_size=4")
    eos = model.tokenizer.eos_token_id
    model._delimiter = {t: t != eos for t in range(model.tokenizer.vocab_size + 200)}
    # before its stage the untrained trigger decides nothing: every insertion point inserts, up to the cap
    assert not model.trigger_head.weight.requires_grad
    group = rollouts.rollout(model, QUESTIONS[0], 4, grpo.WeightedReward({"task": 1.0}), torch.Generator().manual_seed(0))
    assert group.plan.triggers is None
    assert [c["memory"] for c in group.counts] == [2 + 2 * min(3, len(a) - 1) for a in group.answers]
    for n, p in model.named_parameters():  # the trigger stage (memgen.train): only the trigger trains, and decides
        p.requires_grad_(f".{memgen.TRIGGER_ADAPTER}." in n or n.startswith("trigger_head."))
    model.trigger_trains = model.trigger_active = True
    group = rollouts.rollout(model, QUESTIONS[0], 4, grpo.WeightedReward({"task": 1.0}), torch.Generator().manual_seed(0))
    decisions = [len(t) for t in group.plan.triggers]
    inserted = [sum(t.values()) for t in group.plan.triggers]
    assert sum(decisions) > 0 and all(n <= 3 for n in inserted)  # asked at each delimiter, at most 3 insertions
    assert 0 < sum(inserted) < sum(decisions)  # a sampled trigger both fires and declines
    assert [c["memory"] for c in group.counts] == [2 + 2 * n for n in inserted]
    # teacher forcing rebuilds the layout the sampled decisions made: the same memory tokens per rollout
    with torch.no_grad():
        again = model.build(group.questions, group.plan, group.answers)
    assert [c["memory"] for c in again.counts] == [c["memory"] for c in group.counts]
    group.advantages = torch.tensor([1.0, -1.0, 0.5, -0.5])
    loss, stats = grpo.group_loss(model, group)
    loss.backward()
    assert stats["extra_actions"] == sum(decisions)
    moved = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert moved and all(f".{memgen.TRIGGER_ADAPTER}." in n or n.startswith("trigger_head.") for n in moved)


def test_memgen_runs_as_a_baseline_row_and_counts_both_token_totals(tmp_path, tiny_backbone):
    c = cfg("eval.variant_steps=1")
    (res,) = variants.run_variant("baselines", "memgen", c, tmp_path, tiny_backbone, dataset(), progress=False)
    s = res["summary"]
    assert s["memory"] == 8 and s["tok_with_weaver"] > s["tok"]
    assert all(r["tok"] == sum(r["tokens"].values()) and r["weaver_tokens"] > 0 for r in res["records"])
    assert (tmp_path / "baselines" / "memgen" / "tiny" / "seed42" / "sft").is_dir()
    assert res["reader"] is None  # never 03's warmed-up reader: MemGen's reasoner is the frozen base
    assert not any("lora" in n for n, _ in tiny_backbone.model.named_parameters())  # released after


def test_memgen_params_are_checked():
    with pytest.raises(ConfigError, match="memgen.trigger"):
        tiny_cfg("memgen.trigger=sometimes")
    with pytest.raises(ConfigError, match="insert_delimiters"):
        tiny_cfg("memgen.trigger=learned")
    with pytest.raises(ConfigError, match="trigger_steps"):
        tiny_cfg("memgen.trigger=learned", "memgen.insert_delimiters=true")
    with pytest.raises(ConfigError, match="gradient_checkpointing"):
        tiny_cfg("eval.method=memgen", "grpo.gradient_checkpointing=true")
    with pytest.raises(ConfigError, match="memgen.latents"):
        tiny_cfg("memgen.latents=0")
    assert memgen.sft_steps(tiny_cfg("grpo.reader_warmup_steps=7", "grpo.sft_steps=2"), 10) == 9
    assert memgen.sft_steps(tiny_cfg("memgen.sft_steps=3"), 10) == 3
    # no supervised stage in the method's recipe (the paper's): one epoch of batches of grpo.sft_batch_size
    assert memgen.sft_steps(tiny_cfg("grpo.reader_warmup_steps=0", "grpo.sft_steps=0", "grpo.sft_batch_size=4"), 10) == 3


def test_the_weaver_s_own_weights_may_learn_at_their_own_rate(bank, tmp_path):
    model = make(bank, "memgen.weaver_lr=1e-4", "grpo.lr=3e-5")
    lora, weaver = model.optimizer_groups(2e-3)
    assert (lora["lr"], weaver["lr"]) == (2e-3, 1e-4)
    assert {id(p) for p in weaver["params"]} == {id(p) for p in model.weaver.parameters()}
    names = {id(p): n for n, p in model.named_parameters()}
    assert lora["params"] and all("lora_" in names[id(p)] for p in lora["params"])
    trainer = grpo.Trainer(model, QUESTIONS, [], tmp_path)
    assert [g["lr"] for g in trainer.optimizer.param_groups] == [3e-5, 1e-4]
    assert [g["lr"] for g in make(bank).optimizer_groups(2e-3)] == [2e-3, 2e-3]  # 0 = the stage's rate
