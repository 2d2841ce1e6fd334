"""The alignment stage on tiny-random: the reconstruction layout, the self-distillation teacher, what learns, resume
and reuse, and the refusals (a bank of another cache layer, a projector of another layer, b outside 1..N_c)."""
from __future__ import annotations

import json

import pytest
import torch
from tinydata import CHUNKS, QUESTIONS, tiny_cfg, tiny_model

from elasticmem_core.core import config
from elasticmem_core.core.backbone import load_backbone
from elasticmem_core.method import bank as bank_mod
from elasticmem_core.method.model import CheckpointError
from elasticmem_core.training import alignment

NO_DROPOUT = ("lora.dropout=0", "projector.dropout=0", "budget.dropout=0")
# input-embedding cache long enough for a whole tiny chunk, residual projector: soft tokens start as the text
EMBED = ("bank.n_c=48", "bank.cache_layer=0", "budget.b_max=48", "projector.kind=residual")


@pytest.fixture(scope="module")
def embed_bank(tmp_path_factory):
    return bank_mod.build(CHUNKS, load_backbone("tiny-random"), tiny_cfg(*EMBED).bank,
                          tmp_path_factory.mktemp("bank0"), progress=False)


def lora_state(model):
    return {n: p.detach().clone() for n, p in model.reasoner.named_parameters() if "lora_" in n}


def test_reconstruction_batch_puts_b_soft_tokens_before_the_cue_and_teacher_forces_the_text(embed_bank):
    model = tiny_model(embed_bank, *EMBED, *NO_DROPOUT, "align.steps=1", "align.max_text_tokens=5")
    rows, budgets = [0, 3], [2, 7]
    b = alignment.reconstruction_batch(model, alignment.corpus_of(model, QUESTIONS), rows, budgets)
    cue = model.tokenizer(model.cfg.align.cue, add_special_tokens=False)["input_ids"]
    for i, (r, k) in enumerate(zip(rows, budgets)):
        s, e = b.spans[i]["memory"]
        assert e - s == k + 1  # b soft tokens and their separator
        # residual projector at init + input-embedding cache: the soft tokens are the chunk's last b token embeddings
        want = model.bank.cache(r, last=k)
        assert torch.allclose(b.inputs_embeds[i, s:s + k], want, atol=1e-6)
        t0, t1 = b.spans[i]["tail"]
        assert t1 - t0 == len(cue)
        # an input-embedding cache regenerates the b tokens it is, not text it never saw
        text = model._chunk_ids(r)[-k:] + [model.tokenizer.eos_token_id]
        assert b.answer_ids[i, b.answer_mask[i]].tolist() == text


def test_a_deeper_layers_cache_regenerates_the_chunks_first_tokens(tmp_path):
    deep = ("bank.n_c=48", "bank.cache_layer=1", "budget.b_max=48", "projector.kind=mlp")
    bank = bank_mod.build(CHUNKS, load_backbone("tiny-random"), tiny_cfg(*deep).bank, tmp_path, progress=False)
    model = tiny_model(bank, *deep, *NO_DROPOUT, "align.steps=1", "align.max_text_tokens=5")
    b = alignment.reconstruction_batch(model, alignment.corpus_of(model, QUESTIONS), [0, 3], [2, 7])
    for i, r in enumerate([0, 3]):
        assert b.answer_ids[i, b.answer_mask[i]].tolist() == model._chunk_ids(r)[:5] + [model.tokenizer.eos_token_id]


def test_self_distill_is_zero_when_latent_memory_is_exactly_the_text(embed_bank):
    # one retrieved chunk, b = its text length: the last b input embeddings are the text's own embeddings (the bank
    # tokenizes with special tokens, which only precede the text), so the latent pass is the text pass
    model = tiny_model(embed_bank, *EMBED, *NO_DROPOUT, "retrieval.top_z=1", "align.steps=1")
    model.eval()
    q = QUESTIONS[0]
    row = int(model.plan([q], sample=False).retrieved.rows[0, 0])
    n = len(model._chunk_ids(row))
    corpus = alignment.corpus_of(model, QUESTIONS)
    exact = alignment.AlignBatch(corpus=corpus, rows=[], chunk_budgets=[], questions=[q], budget=n)
    assert alignment.self_distill(model, exact).item() == pytest.approx(0.0, abs=1e-5)
    s, t, _, mask = alignment.question_passes(model, exact)
    assert torch.allclose(s, t, atol=1e-4) and mask.sum() > 1
    short = alignment.AlignBatch(corpus=corpus, rows=[], chunk_budgets=[], questions=[q], budget=2)
    assert alignment.self_distill(model, short).item() > 1e-4  # two tokens of the chunk: another distribution
    assert alignment.answer(model, short).item() > 0


def test_the_stage_trains_the_projector_alone_and_lowers_the_reconstruction_loss(embed_bank, tmp_path):
    # every training chunk each step at a fixed b, no dropout: without a gradient into the projector the loss would
    # not move (a random 2-layer model hardly reads its input: the loss falls only ~0.1 nats from ~5.97)
    model = tiny_model(embed_bank, *EMBED, *NO_DROPOUT, "align.steps=25", "align.lr=0.01", "align.batch_size=16",
                       "align.b_min=8", "align.b_max=8")
    lora, proj = lora_state(model), [p.detach().clone() for p in model.projector.parameters()]
    history = alignment.run(model, QUESTIONS, tmp_path, progress=False)
    assert history[-1]["reconstruction"] < history[0]["reconstruction"] - 0.05
    assert all(torch.equal(v, lora_state(model)[k]) for k, v in lora.items())  # align.train_lora = false
    assert any(not torch.equal(a, b) for a, b in zip(proj, model.projector.parameters()))
    # no gradient is left behind for the next stage's optimizer, and LoRA trains again afterwards
    assert all(p.grad is None for p in model.parameters())
    assert all(p.requires_grad for n, p in model.reasoner.named_parameters() if "lora_" in n)
    recipe = json.loads((tmp_path / "align" / "align.json").read_text())
    assert recipe["recipe"]["params"]["bank"]["cache_layer"] == 0 and recipe["steps"] == 25
    assert recipe["recipe"]["bank"] == model.bank.manifest["content_hash"]
    # only the training questions' memories are reconstructed
    assert set(alignment.corpus_of(model, QUESTIONS[:1]).rows) == set(model.bank.rows(QUESTIONS[0].memory_id))
    # every step is in the stage's own log, and none was skipped
    logged = alignment.read_log(tmp_path)
    assert [r["step"] for r in logged] == list(range(25)) and recipe["nonfinite_steps"] == 0
    assert [r["reconstruction"] for r in logged] == [h["reconstruction"] for h in history]


def test_the_learning_curve_is_measured_on_validation_at_its_steps(embed_bank, tmp_path):
    model = tiny_model(embed_bank, *EMBED, *NO_DROPOUT, "align.steps=4", "align.lr=0.01", "align.b_min=4",
                       "align.b_max=8", "align.curve_steps=[0, 2, 4]", "align.curve_b=6",
                       "align.objectives={reconstruction: 1.0, self_distill: 1.0}")
    seen = []

    def evaluate():   # the caller's figure, e.g. validation accuracy at curve_b tokens per chunk
        seen.append(model.training)
        return {"val_accuracy": 0.25 * len(seen)}

    history = alignment.run(model, QUESTIONS[:2], tmp_path, progress=False, val_questions=QUESTIONS[2:],
                            evaluate=evaluate)
    points = [h for h in history if h["stage"] == "align_val"]
    assert [p["step"] for p in points] == [0, 2, 4] and seen == [False, False, False]
    assert [p["val_accuracy"] for p in points] == [0.25, 0.5, 0.75] and all(p["b"] == 6 for p in points)
    assert all(p["val_reconstruction"] > 0 and p["val_self_distill"] >= 0 for p in points)
    # the curve reads validation memories only, and is the stage's record too
    assert points[0]["val_reconstruction"] != points[2]["val_reconstruction"]
    assert json.loads((tmp_path / "align" / "align.json").read_text())["curve"] == points
    assert [h["stage"] for h in history] == ["align_val", "align", "align", "align_val", "align", "align",
                                             "align_val"]
    with pytest.raises(ValueError, match="no validation questions"):
        alignment.run(tiny_model(embed_bank, *EMBED, "align.steps=4", "align.curve_steps=[2]"), QUESTIONS,
                      tmp_path / "none", progress=False)
    with pytest.raises(ValueError, match=r"align.curve_steps \[9\] reach beyond the stage's 4 steps"):
        alignment.run(tiny_model(embed_bank, *EMBED, "align.steps=4", "align.curve_steps=[9]"), QUESTIONS,
                      tmp_path / "far", progress=False, val_questions=QUESTIONS)


def test_a_non_finite_step_is_skipped_counted_and_logged(embed_bank, tmp_path, monkeypatch):
    model = tiny_model(embed_bank, *EMBED, *NO_DROPOUT, "align.steps=3", "align.lr=0.01")
    real = alignment.OBJECTIVES["reconstruction"]
    calls = {"n": 0}

    def nan_at_step_1(m, b):
        calls["n"] += 1
        loss = real(m, b)
        return loss * float("nan") if calls["n"] == 2 else loss

    monkeypatch.setitem(alignment.OBJECTIVES, "reconstruction", nan_at_step_1)
    before = {}

    def log(rec):  # the projector's weights after each step
        before[rec["step"]] = [p.detach().clone() for p in model.projector.parameters()]

    history = alignment.run(model, QUESTIONS, tmp_path, log, progress=False)
    assert [h["nonfinite"] for h in history] == [False, True, False]
    assert [h["nonfinite_total"] for h in history] == [0, 1, 1]
    assert all(torch.equal(a, b) for a, b in zip(before[0], before[1]))   # the non-finite step changed nothing
    assert json.loads((tmp_path / "align" / "align.json").read_text())["nonfinite_steps"] == 1


def test_a_generated_corpus_has_its_own_bank_and_is_what_reconstruction_reads(embed_bank, tmp_path, monkeypatch):
    from elasticmem_core import memorysuite
    from elasticmem_core.method import assemble

    args = (*EMBED, *NO_DROPOUT, "align.corpus_memories=3")   # the compression table's: it sets align.steps
    cfg = tiny_cfg(*args, f"data.mini_dir={tmp_path / 'mini'}")
    corpus = alignment.Corpus.whole(*assemble.alignment_corpus(cfg, memorysuite.load("mini-personamem", cfg),
                                                              load_backbone("tiny-random"), tmp_path, progress=False))
    assert corpus.bank.path.name == "mini-personamem-align-corpus-n3@cache_layer=0"
    assert corpus.rows == list(range(len(corpus.bank.chunk_ids))) and len(set(corpus.bank.memory_ids)) == 3
    assert all(c.startswith("align-corpus/") for c in corpus.bank.chunk_ids)
    model = tiny_model(embed_bank, *args)
    with model.using(cfg=config.derive(model.cfg, "the table's variant", align={"steps": 2})):
        with pytest.raises(ValueError, match=r"align.corpus_memories = 3, but the stage got no corpus"):
            alignment.run(model, QUESTIONS, tmp_path / "a", progress=False)
        seen, real = [], alignment.reconstruction_batch
        monkeypatch.setattr(alignment, "reconstruction_batch",
                            lambda m, c, rows, b: seen.append((c, rows)) or real(m, c, rows, b))
        alignment.run(model, QUESTIONS, tmp_path / "b", progress=False, corpus=corpus)
    assert len(seen) == 2 and all(c is corpus and set(rows) <= set(corpus.rows) for c, rows in seen)
    made = json.loads((tmp_path / "b" / "align" / "align.json").read_text())
    assert made["recipe"]["corpus"] == corpus.identity() != alignment.corpus_of(model, QUESTIONS).identity()


def test_the_b_curriculum_falls_from_b_start_to_b_max():
    cfg = tiny_cfg(*EMBED, "align.steps=5", "align.b_min=2", "align.b_max=8", "align.b_start=16")
    assert [alignment.b_range(cfg, s)[1] for s in range(5)] == [16, 14, 12, 10, 8]
    corpus = alignment.Corpus(bank=None, texts={}, rows=list(range(40)))
    for s in range(5):
        batch = alignment.step_batch(cfg, corpus, [], s)
        assert max(batch.chunk_budgets) <= alignment.b_range(cfg, s)[1] and min(batch.chunk_budgets) >= 2
    assert alignment.b_range(tiny_cfg(*EMBED, "align.steps=5", "align.b_max=8"), 0) == (2, 8)   # off


def test_every_weighted_objective_is_logged_with_its_b(embed_bank, tmp_path):
    model = tiny_model(embed_bank, *EMBED, *NO_DROPOUT, "align.steps=3", "align.batch_size=4", "align.b_min=2",
                       "align.b_max=8", "align.objectives={reconstruction: 1.0, self_distill: 0.5, answer: 0.5}")
    log = []
    history = alignment.run(model, QUESTIONS, tmp_path, log.append, progress=False)
    assert len(history) == 3 and log == history
    for h in history:
        assert {"loss", "reconstruction", "self_distill", "answer", "b_chunks", "grad_norm"} <= set(h)
        assert h["loss"] == pytest.approx(h["reconstruction"] + 0.5 * h["self_distill"] + 0.5 * h["answer"], rel=1e-5)
        assert 2 <= h["b_questions"] <= 8 and 2 <= h["b_chunks"] <= 8


def test_train_lora_moves_lora(embed_bank, tmp_path):
    model = tiny_model(embed_bank, *EMBED, *NO_DROPOUT, "align.steps=2", "align.lr=0.01", "align.train_lora=true")
    lora = lora_state(model)
    alignment.run(model, QUESTIONS, tmp_path, progress=False)
    assert any(not torch.equal(v, lora_state(model)[k]) for k, v in lora.items() if "lora_B" in k)


def test_an_interrupted_stage_resumes_to_the_weights_of_an_uninterrupted_one(embed_bank, tmp_path, monkeypatch):
    args = (*EMBED, *NO_DROPOUT, "align.steps=6", "align.save_every=2", "align.lr=0.01", "align.batch_size=3")
    torch.manual_seed(0)
    whole = tiny_model(embed_bank, *args)
    alignment.run(whole, QUESTIONS, tmp_path / "whole", progress=False)

    torch.manual_seed(0)
    model = tiny_model(embed_bank, *args)
    calls = {"n": 0}
    real = alignment.OBJECTIVES["reconstruction"]

    def dies_at_step_5(m, b):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real(m, b)

    monkeypatch.setitem(alignment.OBJECTIVES, "reconstruction", dies_at_step_5)
    with pytest.raises(KeyboardInterrupt):
        alignment.run(model, QUESTIONS, tmp_path / "cut", progress=False)
    assert (tmp_path / "cut" / "align.partial" / "align_state.pt").is_file()
    monkeypatch.setitem(alignment.OBJECTIVES, "reconstruction", real)
    torch.manual_seed(0)
    again = tiny_model(embed_bank, *args)  # a fresh process: the same reader, then the saved state
    history = alignment.run(again, QUESTIONS, tmp_path / "cut", progress=False)
    assert [h["step"] for h in history] == [4, 5] and not (tmp_path / "cut" / "align.partial").exists()
    # the log keeps the steps before the saved state once, and the resumed ones after them
    assert [r["step"] for r in alignment.read_log(tmp_path / "cut")] == list(range(6))
    for a, b in zip(whole.projector.parameters(), again.projector.parameters()):
        assert torch.allclose(a, b, atol=1e-6)


def test_a_finished_stage_is_reused_only_under_its_recipe(embed_bank, tmp_path):
    args = (*EMBED, *NO_DROPOUT, "align.steps=2", "align.lr=0.01")
    torch.manual_seed(0)
    first = tiny_model(embed_bank, *args)
    assert len(alignment.run(first, QUESTIONS, tmp_path, progress=False)) == 2
    torch.manual_seed(0)
    same = tiny_model(embed_bank, *args)
    assert alignment.run(same, QUESTIONS, tmp_path, progress=False) == []  # reused, and loaded
    for a, b in zip(first.projector.parameters(), same.projector.parameters()):
        assert torch.equal(a, b)
    torch.manual_seed(0)
    other = tiny_model(embed_bank, *args[:-1], "align.lr=0.02")
    assert len(alignment.run(other, QUESTIONS, tmp_path, progress=False)) == 2  # another recipe: retrained


def test_bad_alignment_input_is_refused_naming_file_and_key(embed_bank, tmp_path):
    # a bank of another cache layer than the params ask for
    model = tiny_model(embed_bank, "bank.n_c=48", "bank.cache_layer=-1", "budget.b_max=48", "projector.kind=residual",
                       "align.steps=1")
    with pytest.raises(ValueError, match=r"cache_layer = 0.*bank.cache_layer = -1"):
        alignment.run(model, QUESTIONS, tmp_path, progress=False)
    # a projector trained on another layer
    aligned = tiny_model(embed_bank, *EMBED)
    aligned.save(tmp_path / "layer0")
    with pytest.raises(CheckpointError, match=r"layer0.*bank.cache_layer = 0"):
        model.load(tmp_path / "layer0", parts=("projector",))
    # b outside 1..N_c, unknown objective, weights summing to nothing
    for override, message in (("align.b_max=49", r"align.b_max.*bank.n_c = 48"),
                              ("align.steps=-1", r"align.steps must be >= 0"),
                              ("align.save_every=0", r"align.save_every >= 1"),
                              ("align.b_min=0", r"align.b_min"),
                              ("align.objectives={rebuild: 1.0}", r"align.objectives: unknown objective 'rebuild'"),
                              ("align.objectives={reconstruction: 0.0}", r"sum to nothing"),
                              ("align.b_start=8", r"align.b_start = 8: a curriculum over b starts above align.b_max"),
                              ("align.b_start=64", r"align.b_start = 64.*within bank.n_c = 48"),
                              ("align.curve_steps=[1]\x00align.curve_b=49", r"align.curve_b = 49"),
                              ("align.corpus_memories=2", r"align.corpus_memories must be 0 .* or >= 3"),
                              ("align.corpus_memories=3", r"align.corpus_memories is the compression table's"),
                              ("align.curve_steps=[0, 5]", r"align.curve_steps \[0, 5\] reach beyond the stage's 1")):
        with pytest.raises(config.ConfigError, match=message):
            tiny_cfg(*EMBED, "align.steps=1", "align.b_max=8", *override.split("\x00"))


def test_the_trainer_runs_alignment_between_the_reader_warmup_and_grpo(embed_bank, tmp_path):
    from elasticmem_core.training import grpo

    model = tiny_model(embed_bank, *EMBED, *NO_DROPOUT, "align.steps=2", "grpo.reader_warmup_steps=1",
                       "grpo.sft_steps=0", "grpo.max_steps=1", "grpo.group_size=2", "grpo.sft_batch_size=2")
    grpo.Trainer(model, QUESTIONS, QUESTIONS[:1], tmp_path).train(progress=False)
    stages = [json.loads(x)["stage"] for x in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert stages[:3] == ["reader_warmup", "align", "align"] and stages.index("val") > 2
    assert (tmp_path / "align" / "align.json").is_file() and (tmp_path / "reader").is_dir()


def test_seeds_draw_different_data_orders():
    def rows(seed, step):
        cfg = tiny_cfg(*EMBED, "align.steps=1", f"runtime.seed={seed}", "align.batch_size=4")
        return alignment.step_batch(cfg, alignment.Corpus(None, {}, list(range(12))), [], step).rows

    # 12 chunks in batches of 4: step 3 starts seed 42's second epoch, which must not be seed 43's first
    assert rows(42, 0) != rows(43, 0) and rows(42, 3) != rows(43, 0)
