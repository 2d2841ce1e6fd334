"""The auxiliary retrieval loss and recall@Z on tiny-random: gradients reach LoRA through the control-token state, the
warm-up lowers the loss and finds the evidence, the teacher is the real sentence embedder, bad params are refused."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from tinydata import CHUNKS, QUESTIONS, tiny_bank, tiny_cfg, tiny_model

from elasticmem_core.core import config
from elasticmem_core.core.embedder import SentenceEmbedder
from elasticmem_core.method import retrieval_loss
from elasticmem_core.method.index import MemoryIndex
from elasticmem_core.training import grpo, retrieval_warmup

NO_DROPOUT = ("lora.dropout=0", "projector.dropout=0", "budget.dropout=0")


@pytest.fixture(scope="module")
def bank(tmp_path_factory):
    return tiny_bank(tmp_path_factory.mktemp("bank"))


def test_contrastive_loss_reaches_lora_through_the_control_token_state(bank):
    model = tiny_model(bank, *NO_DROPOUT, "retrieval.aux_loss=contrastive")
    loss, stats = retrieval_loss.aux_loss(model, QUESTIONS)
    assert loss.requires_grad and loss.item() > 0 and 0 <= stats["recall@4"] <= 1
    loss.backward()
    lora = [p for n, p in model.reasoner.named_parameters() if "lora_B" in n]
    lora_a = [p for n, p in model.reasoner.named_parameters() if "lora_A" in n]
    # lora_B starts at zero, so only it gets a gradient at the first step (dL/dA = B^T ... = 0)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in lora)
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in lora_a)
    assert all(p.grad is None for p in model.projector.parameters())  # memory is not read: only retrieval learns
    # the trainable state is the one retrieval ranks with: the same cosine order as the retriever's greedy pass
    with torch.no_grad():
        q = retrieval_loss.query_state(model, QUESTIONS[:1])
    got = model.retriever(model.reasoner, QUESTIONS[:1], False)
    assert torch.allclose(q, got.query, atol=1e-4)


def test_retrieval_warmup_lowers_the_loss_and_finds_the_evidence(bank, tmp_path):
    model = tiny_model(bank, *NO_DROPOUT, "retrieval.aux_loss=contrastive", "retrieval.top_z=1",
                       "grpo.retrieval_warmup_steps=25", "grpo.retrieval_warmup_lr=0.01", "grpo.sft_batch_size=3")
    before = retrieval_loss.recall_at(model, QUESTIONS, "control_token", zs=(1,))[1]
    trainer = grpo.Trainer(model, QUESTIONS, [], tmp_path)
    history = trainer.retrieval_warmup(25)
    assert len(history) == 25 and history[-1]["loss"] < 0.5 * history[0]["loss"]
    after = retrieval_loss.recall_at(model, QUESTIONS, "control_token", zs=(1,))[1]
    assert sum(after) == len(QUESTIONS) and sum(after) > sum(before)
    log = [json.loads(x) for x in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in log] == ["retrieval_warmup"] * 25 and "recall@1" in log[0]


def test_kl_teacher_is_the_sentence_embedders_scores(bank):
    model = tiny_model(bank, *NO_DROPOUT, "retrieval.aux_loss=kl", "retrieval.aux_temperature=0.1")
    with pytest.raises(ValueError, match="needs the sentence embedder"):
        retrieval_loss.aux_loss(model, QUESTIONS)
    emb = SentenceEmbedder()
    model.retriever.embedder = emb
    model.retriever.semantic_index = MemoryIndex(emb.encode([c.text for c in CHUNKS]), [c.memory_id for c in CHUNKS])
    loss, _ = retrieval_loss.aux_loss(model, QUESTIONS[:1])
    # by hand: KL(softmax(t / tau) || softmax(cos(q, k) / tau)) over the question's memory
    rows = model.retriever.index.memory_rows(QUESTIONS[0].memory_id)
    with torch.no_grad():
        q = torch.nn.functional.normalize(retrieval_loss.query_state(model, QUESTIONS[:1])[0], dim=-1)
    student = torch.log_softmax(torch.from_numpy(model.retriever.index.keys[rows]) @ q / 0.1, -1)
    t = torch.from_numpy(model.retriever.semantic_index.keys[rows]) @ emb.encode([QUESTIONS[0].question])[0]
    p = torch.softmax(t / 0.1, -1)
    assert loss.item() == pytest.approx(float((p * (p.log() - student)).sum()), rel=1e-3)
    # the teacher's recall: semantic ranking through the same recall function
    sem = retrieval_loss.recall_at(model, QUESTIONS, "semantic", zs=(1, 4))
    assert set(sem) == {1, 4} and all(0 <= x <= 1 for x in sem[4])


def test_recall_of_oracle_and_random(bank):
    model = tiny_model(bank, *NO_DROPOUT)
    assert retrieval_loss.recall_at(model, QUESTIONS, "oracle", zs=(1, 2))[1] == [1.0] * 3
    rnd = retrieval_loss.recall_at(model, QUESTIONS, "random", zs=(1, 8))
    assert rnd[1] == [1 / 6, 1 / 7, 1 / 6] and rnd[8] == [1.0] * 3
    assert model.retriever.cfg.mode == tiny_cfg().retrieval.mode  # the mode is restored


def test_aux_loss_in_grpo_steps_is_logged(bank, tmp_path):
    model = tiny_model(bank, *NO_DROPOUT, "retrieval.aux_loss=contrastive", "retrieval.aux_weight=0.5")
    trainer = grpo.Trainer(model, QUESTIONS, [], tmp_path)
    record = trainer.train_step()
    assert record["aux_retrieval_loss"] > 0 and "recall@4" in record


@pytest.mark.parametrize("overrides, message", [
    (["retrieval.aux_loss=cosine"], "retrieval.aux_loss = 'cosine'; choose none or one of kl, contrastive"),
    (["retrieval.aux_loss=kl", "retrieval.mode=semantic"], "does not rank with a trainable state"),
    (["retrieval.aux_weight=0.1"], "need a retrieval.aux_loss"),
    (["grpo.retrieval_warmup_steps=4"], "need a retrieval.aux_loss"),
    (["retrieval.aux_loss=kl", "retrieval.aux_temperature=0"], "aux_temperature > 0"),
])
def test_bad_aux_params_are_refused_naming_the_key(overrides, message):
    with pytest.raises(config.ConfigError, match=message):
        tiny_cfg(*overrides)


class _Data:
    """A dataset of the tiny questions: every split is QUESTIONS."""
    setting = "tiny"

    def split(self, name):
        return list(QUESTIONS)


def test_retrieval_study_trains_each_variant_per_seed_and_writes_the_schema(bank, tmp_path, monkeypatch):
    """Both warm-ups per seed from one reader, then GRPO; recall, reading, accuracy per mode, paired against the
    embedder (Holm per variant), the quality bar; every piece reused on a rerun, a folder made otherwise retrained."""
    import dataclasses

    from elasticmem_core.core import stats
    from elasticmem_core.core.backbone import load_backbone
    from elasticmem_core.core.experiment import train_dir
    from elasticmem_core.harness.variants import checkpoint_id
    from elasticmem_core.method.model import ElasticMem
    from elasticmem_core.studies import retrieval_study

    common = (*NO_DROPOUT, "retrieval.aux_loss=contrastive", "grpo.retrieval_warmup_steps=2", "grpo.max_steps=1",
              "grpo.sft_batch_size=2", "eval.retrieval_seeds=[1, 2]", "eval.bootstrap=50")
    variants = {"reading": tiny_cfg(*common, "grpo.retrieval_warmup_reading_weight=1.0",
                                    "grpo.retrieval_warmup_guard=0.03", "grpo.retrieval_warmup_check_every=1"),
                "head": tiny_cfg(*common, "retrieval.mode=control_token_head", "retrieval.head_rank=4")}
    built = []

    def build(v):
        model = ElasticMem(load_backbone("tiny-random"), bank, v, {c.chunk_id: c.text for c in CHUNKS})
        emb = SentenceEmbedder()
        model.retriever.embedder = emb
        model.retriever.semantic_index = MemoryIndex(emb.encode([c.text for c in CHUNKS]),
                                                     [c.memory_id for c in CHUNKS])
        built.append(model)
        return model

    cfg = tiny_cfg(*common)   # the run's params: not any variant's
    reader = build(cfg).save(train_dir(tmp_path, "tiny", cfg.runtime.seed) / "reader")
    # seed 1's first reading check fails: its warm-up rolls back to the reader (the same checkpoint, other params)
    checks = iter([0.5, 0.0])
    monkeypatch.setattr(retrieval_warmup, "reading_accuracy", lambda model, val: next(checks, 0.5))
    logs = []
    got = retrieval_study.run_retrieval_study(cfg, tmp_path, "tiny", variants, build, _Data(), log=logs.append)
    data = json.loads((tmp_path / "metrics" / "retrieval.json").read_text())
    assert got["data"] == data and data["n"] == 3 and data["seeds"] == [1, 2]
    modes = list(dict.fromkeys(r["mode"] for r in data["recall"]))
    assert modes == ["random", "semantic", "frozen_state", "query_state", retrieval_study.UNTRAINED,
                     "reading, after warm-up", "reading, after GRPO", "head, after warm-up", "head, after GRPO"]
    assert {r["z"] for r in data["recall"]} == set(retrieval_loss.RECALL_ZS)
    assert all(r["ci"][0] <= r["recall"] <= r["ci"][1] for r in data["recall"])
    assert all([s["seed"] for s in r["seeds"]] == [1, 2] for r in data["recall"] if "variant" in r)
    # accuracy: every mode on each variant's own checkpoints, each seed's figure beside the mean
    assert [(a["variant"], a["mode"]) for a in data["accuracy"]] == \
        [("reading", m) for m in ("control_token", *retrieval_study.OTHER_MODES)] + \
        [("head", m) for m in ("control_token_head", *retrieval_study.OTHER_MODES)]
    for a in data["accuracy"]:
        assert a["accuracy"] == pytest.approx(np.mean([s["accuracy"] for s in a["seeds"]]))
    # reading, per variant and seed: the reader's figure before; the head's warm-up cannot change it
    assert [(r["warmup"], r["seed"]) for r in data["reading"]] == [("reading", 1), ("reading", 2), ("head", 1),
                                                                    ("head", 2)]
    assert all(r["after"] == r["before"] for r in data["reading"] if r["warmup"] == "head")
    assert [(r["rolled_back_at"], r["steps_run"]) for r in data["reading"] if r["warmup"] == "reading"] == \
        [(1, 1), (None, 2)]
    rolled = tmp_path / "retrieval" / "tiny" / "reading" / "seed1" / "retrieval_warmup"
    assert checkpoint_id(rolled) == checkpoint_id(reader)   # measured again under the variant's params, no clash
    # paired: each variant's own retrieval against the embedder, frozen and query states; Holm within a variant
    for name, mine in (("reading", "control_token"), ("head", "control_token_head")):
        rows = [x for x in data["paired"] if x["variant"] == name]
        assert [(x["a"], x["b"]) for x in rows] == [(mine, b) for b in retrieval_study.AGAINST]
        assert [x["p_holm"] for x in rows] == pytest.approx(stats.holm([x["p"] for x in rows]))
        assert all(x["difference"] == pytest.approx(np.mean([s["difference"] for s in x["seeds"]])) for x in rows)
    assert set(data["paired_control_token_minus"]) == set(retrieval_study.AGAINST)   # the first variant's: C6
    bar = {b["variant"]: b for b in data["quality_bar"]}
    assert bar["head"]["reading_holds"] and bar["head"]["worst_reading_drop"] == 0
    assert bar["reading"]["accuracy_holds"] == (bar["reading"]["ci"][1] >= 0)
    # each seed trained its own checkpoints from the one reader
    ids = {checkpoint_id(Path(p)) for c in data["checkpoints"].values() for p in c.values()}
    assert len(ids) == 4 and checkpoint_id(reader) not in ids
    assert len(retrieval_study.recall_table(data)) == 9
    # a second call reuses every piece: nothing retrains (the training logs keep their length)
    log = tmp_path / "retrieval" / "tiny" / "reading" / "seed1" / "train_log.jsonl"
    n = len(log.read_text().splitlines())
    again = retrieval_study.run_retrieval_study(cfg, tmp_path, "tiny", variants, build, _Data(), log=logs.append)
    assert again["data"] == data and len(log.read_text().splitlines()) == n
    # a variant trained with other params is never reused, not even under --fresh: it is retrained
    monkeypatch.setenv("ELASTICMEM_FRESH", "1")
    was = variants["reading"]
    variants["reading"] = dataclasses.replace(was, grpo=dataclasses.replace(was.grpo, retrieval_warmup_steps=3))
    retrieval_study.run_retrieval_study(cfg, tmp_path, "tiny", variants, build, _Data(), log=logs.append)
    assert any("retraining" in x and "reading/seed1" in x for x in logs)
    assert sum(r.get("stage") == "retrieval_warmup" for r in map(json.loads, log.read_text().splitlines())) <= 3
    with pytest.raises(ValueError, match="eval.retrieval_variants is empty"):
        retrieval_study.run_retrieval_study(cfg, tmp_path, "tiny", {}, build, _Data())
    for model in built:
        model.reasoner.unload() if hasattr(model.reasoner, "unload") else None


def test_control_token_states_are_the_retrievers_query(bank):
    """01's untrained control-token query is the state the retriever ranks with (greedy control token)."""
    from elasticmem_core.method.retrieval import control_token_states

    model = tiny_model(bank, *NO_DROPOUT)
    got = control_token_states(model.reasoner, model.tokenizer, [q.question for q in QUESTIONS], batch_size=2)
    want = model.retriever(model.reasoner, QUESTIONS, False).query
    assert got.shape == want.shape and torch.allclose(got, want, atol=1e-4)


def test_contrastive_skips_questions_without_evidence_and_refuses_a_batch_of_them(bank):
    import dataclasses

    model = tiny_model(bank, *NO_DROPOUT, "retrieval.aux_loss=contrastive")
    bare = dataclasses.replace(QUESTIONS[0], evidence=[])
    loss, stats = retrieval_loss.aux_loss(model, [bare, QUESTIONS[1]])
    assert stats["aux_questions"] == 1
    assert loss.item() == pytest.approx(retrieval_loss.aux_loss(model, [QUESTIONS[1]])[0].item(), rel=1e-5)
    with pytest.raises(ValueError, match="none of the 1 questions has its gold evidence"):
        retrieval_loss.aux_loss(model, [bare])


def _lora(model):
    return {n: p.detach().clone() for n, p in model.reasoner.named_parameters() if "lora_" in n}


def test_the_retrieval_head_starts_at_the_control_token_and_trains_without_touching_reading(bank, tmp_path):
    """control_token_head: the head (zero-initialised) first ranks exactly as the control token does; its warm-up
    lowers the retrieval loss while every LoRA, projector and policy weight stays bit-identical; it is saved and
    loaded as its own checkpoint part, and refused by a model without a head or of another rank."""
    from elasticmem_core.method.model import CheckpointError
    from elasticmem_core.training import retrieval_warmup

    model = tiny_model(bank, *NO_DROPOUT, "retrieval.mode=control_token_head", "retrieval.aux_loss=contrastive",
                       "retrieval.head_rank=8", "grpo.retrieval_warmup_lr=0.05", "grpo.sft_batch_size=3")
    assert model.retrieval_head is not None and model.retriever.head is model.retrieval_head
    head = model.retriever(model.reasoner, QUESTIONS, False)
    with model.using(retrieval={"mode": "control_token"}):
        plain = model.retriever(model.reasoner, QUESTIONS, False)
    assert torch.equal(head.rows, plain.rows) and torch.allclose(head.query, plain.query, atol=1e-6)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not n.startswith("retrieval_head.")}
    assert retrieval_warmup.trained_parameters(model) == list(model.retrieval_head.parameters())
    history = grpo.Trainer(model, QUESTIONS, [], tmp_path / "t").retrieval_warmup(15)
    assert history[-1]["loss"] < history[0]["loss"]
    after = dict(model.named_parameters())
    assert all(torch.equal(after[n], p) for n, p in frozen.items())            # reading: bit-identical
    assert model.retrieval_head.up.weight.abs().sum() > 0                       # the head moved
    saved = model.save(tmp_path / "ckpt")
    assert (saved / "retrieval_head.pt").is_file()
    again = tiny_model(bank, *NO_DROPOUT, "retrieval.mode=control_token_head", "retrieval.head_rank=8").load(saved)
    assert all(torch.equal(a, b) for a, b in zip(again.retrieval_head.parameters(), model.retrieval_head.parameters()))
    torch.save({"down.weight": torch.zeros(8, 7), "up.weight": torch.zeros(7, 8)}, tmp_path / "ckpt-h7.pt")
    bad = tmp_path / "bad"
    import shutil
    shutil.copytree(saved, bad)
    shutil.copy(tmp_path / "ckpt-h7.pt", bad / "retrieval_head.pt")
    with pytest.raises(CheckpointError, match="bad/retrieval_head.pt: retrieval head of shapes"):
        again.load(bad)
    with pytest.raises(CheckpointError, match="retrieval.head_rank = 8"):
        tiny_model(bank, *NO_DROPOUT, "retrieval.mode=control_token_head", "retrieval.head_rank=4").load(saved)
    with pytest.raises(CheckpointError, match="checkpoint has retrieval.mode = .control_token_head."):
        tiny_model(bank, *NO_DROPOUT).load(saved, parts=("retrieval_head",))
    with model.using(retrieval={"mode": "control_token_head"}):
        model.retriever.head = None
        with pytest.raises(ValueError, match="needs a retrieval head"):
            model.retriever(model.reasoner, QUESTIONS[:1], False)
    model.retriever.head = model.retrieval_head


def test_the_lora_warmup_adds_the_reading_loss_and_rolls_back_when_reading_drops(bank, tmp_path, monkeypatch):
    """grpo.retrieval_warmup_reading_weight adds the stage-0 loss to each step; grpo.retrieval_warmup_guard checks
    reading (memory as text, oracle retrieval) and, when it falls more than the guard below where it started, puts
    LoRA back to its last checked state and stops, saying so in the log."""
    from elasticmem_core.training import retrieval_warmup

    model = tiny_model(bank, *NO_DROPOUT, "retrieval.aux_loss=contrastive", "grpo.retrieval_warmup_lr=0.01",
                       "grpo.sft_batch_size=3", "grpo.retrieval_warmup_reading_weight=1.0",
                       "grpo.retrieval_warmup_guard=0.03", "grpo.retrieval_warmup_check_every=1")
    seen, calls = [], []

    def fake_reading(m, qs):  # before: 0.5; after step 1: 0.49 (kept); after step 2: 0.4 (a drop of 0.1: roll back)
        assert m.memory == "latent" and len(qs) == len(QUESTIONS)
        calls.append(len(calls))
        seen.append(_lora(m))
        return [0.5, 0.49, 0.4][len(calls) - 1]

    monkeypatch.setattr(retrieval_warmup, "reading_accuracy", fake_reading)
    history = grpo.Trainer(model, QUESTIONS, QUESTIONS, tmp_path).retrieval_warmup(5)
    assert len(history) == 2 and all(r["reading_loss"] > 0 for r in history)
    now = _lora(model)
    assert all(torch.equal(now[n], seen[1][n]) for n in now)                  # back to the state checked after step 1
    assert any(not torch.equal(seen[2][n], seen[1][n]) for n in now)           # step 2 had moved it
    log = [json.loads(x) for x in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    final = log[-1]
    assert final["stage"] == "retrieval_warmup_reading" and final["rolled_back_at"] == 2
    assert (final["before"], final["after"], final["steps_run"]) == (0.5, 0.49, 2)
    # the real check reads with text memory and oracle retrieval, and leaves the model as it was
    acc = retrieval_warmup.__dict__["reading_accuracy"]
    assert acc is fake_reading
    monkeypatch.undo()
    assert 0 <= retrieval_warmup.reading_accuracy(model, QUESTIONS) <= 1
    assert model.memory == "latent" and model.retriever.cfg.mode == "control_token"


@pytest.mark.parametrize("reads, mode", [("", "control_token"), ("oracle", "oracle")])
def test_the_warmups_reading_loss_reads_the_chunks_its_setting_retrieves(bank, tmp_path, monkeypatch, reads, mode):
    """grpo.retrieval_warmup_reading_retrieval: the reading loss reads text retrieved by that mode ("" = the control
    token being trained), while the retrieval loss still trains the control token."""
    from elasticmem_core.training import retrieval_warmup

    model = tiny_model(bank, *NO_DROPOUT, "retrieval.aux_loss=contrastive", "grpo.sft_batch_size=2",
                       "grpo.retrieval_warmup_reading_weight=1.0",
                       f"grpo.retrieval_warmup_reading_retrieval={reads or chr(34) * 2}")
    seen, loss = [], retrieval_warmup.supervised_loss
    monkeypatch.setattr(retrieval_warmup, "supervised_loss",
                        lambda m, qs: seen.append((m.memory, m.retriever.cfg.mode)) or loss(m, qs))
    grpo.Trainer(model, QUESTIONS, QUESTIONS, tmp_path).retrieval_warmup(2)
    assert seen == [("text", mode)] * 2 and model.retriever.cfg.mode == "control_token"
    with pytest.raises(config.ConfigError, match="retrieval_warmup_reading_retrieval = 'gold'"):
        tiny_cfg("grpo.retrieval_warmup_reading_retrieval=gold")


def test_a_warmup_that_cannot_run_is_refused_naming_the_key(bank, tmp_path):
    import dataclasses

    with pytest.raises(config.ConfigError, match="retrieval.mode = 'semantic' has no control token"):
        tiny_cfg("retrieval.aux_loss=contrastive", "retrieval.mode=semantic", "grpo.retrieval_warmup_steps=4")
    with pytest.raises(config.ConfigError, match="retrieval.head_rank must be >= 1"):
        tiny_cfg("retrieval.head_rank=0")
    model = tiny_model(bank, *NO_DROPOUT, "retrieval.aux_loss=contrastive", "grpo.retrieval_warmup_guard=0.03")
    no_evidence = [dataclasses.replace(q, evidence=[]) for q in QUESTIONS]
    with pytest.raises(ValueError, match="grpo.retrieval_warmup_guard = 0.03: the reading check needs validation "
                                         "questions with gold evidence"):
        grpo.Trainer(model, QUESTIONS, no_evidence, tmp_path).retrieval_warmup(2)
