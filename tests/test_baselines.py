"""Every baseline and ablation runs on tiny-random, #Tok is counted the same way for each, results resume."""
from __future__ import annotations

import pytest
import torch
from tinydata import CHUNKS, COLOURS, tiny_cfg

from elasticmem_core.core import evaluate
from elasticmem_core.core.experiment import resolve, train_dir
from elasticmem_core.harness import variants
from elasticmem_core.memorysuite.records import Dataset, LoadSummary, Memory, Question

QUESTIONS = [Question(f"q{i}", "What colour does the user like?", COLOURS[:4], "(a)", "fact", f"m{i % 2}",
                      ("train", "val", "test")[i % 3], [f"m{i % 2}#0"]) for i in range(6)]
MEMORIES = {m: Memory(m, [c for c in CHUNKS if c.memory_id == m]) for m in ("m0", "m1")}


def dataset():
    return {"tiny": Dataset("tiny", QUESTIONS, MEMORIES, LoadSummary("tiny"))}


def cfg(*overrides):
    return tiny_cfg("eval.max_questions=0", "grpo.max_steps=1", "grpo.group_size=2", "grpo.sft_batch_size=2",
                    *overrides)


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_backbone):
    return tmp_path_factory.mktemp("run"), tiny_backbone


def _records(results, method):
    (r,) = [r for r in results if r["method"] == method]
    return r["records"]


def test_every_variant_overlay_names_only_defining_keys():
    allowed = {"eval.method", "retrieval.mode", "projector.kind", "budget.policy", "budget.min_budget",
               "budget.b_max", "budget.uniform_budget", "bank.n_c", "bank.cache_layer", "lora.r", "lora.alpha",
               # the control-token retrieval ablation is defined by how its retrieval is trained
               "retrieval.aux_loss", "retrieval.aux_weight", "grpo.retrieval_warmup_steps",
               "grpo.retrieval_warmup_reading_weight", "grpo.retrieval_warmup_guard", "grpo.retrieval_warmup_lr",
               "grpo.retrieval_warmup_check_every", "grpo.retrieval_warmup_reading_retrieval"}
    for kind in ("baselines", "ablations"):
        for path in sorted(resolve(f"params/{kind}").glob("*.yaml")):
            keys = {o.split("=")[0] for o in variants.variant_overrides(path)}
            assert keys <= allowed, f"{path.name} also changes {keys - allowed}"


def test_a_new_baseline_is_one_model_one_registry_entry_one_overlay(tmp_path, tiny_backbone, monkeypatch):
    """What adding a baseline takes: its model (here a text reader of the top-1 chunk), one entry in
    methods.METHODS and one overlay in params/baselines/; checks, training, evaluation and results take it as is."""
    from elasticmem_core.baselines import methods
    from elasticmem_core.core.config import derive
    from elasticmem_core.harness import checks
    from elasticmem_core.method import assemble

    def top_one(cfg, dataset, backbone, bank):   # 1. the model
        return assemble.model_for(derive(cfg, retrieval={"top_z": 1}), dataset, backbone, bank, memory="text")

    monkeypatch.setitem(methods.METHODS, "top_one_text", methods.Method("text", build=top_one))   # 2. the entry
    overlay = resolve("params/baselines") / "top_one_text_test.yaml"                               # 3. the overlay
    overlay.write_text("eval:\n  method: top_one_text\n")
    try:
        (res,) = variants.run_variant("baselines", "top_one_text_test", cfg(), tmp_path, tiny_backbone, dataset(),
                                       progress=False)
    finally:
        overlay.unlink()
    assert res["method"] == "top_one_text_test" and res["summary"]["n"] == 2
    assert all(sum(row >= 0 for row in r["rows"]) == 1 and r["tokens"]["memory"] > 0 for r in res["records"])
    with pytest.raises(checks.ConfigError, match="eval.method = 'top_two_text'"):
        checks.load(resolve("params/smoke.yaml"), ["eval.method=top_two_text"])


@pytest.mark.parametrize("name", ["no_memory", "full_context", "text_rag_keys", "text_rag_semantic"])
def test_untrained_baselines_run_and_count_tokens(run, name):
    run_dir, backbone = run
    (res,) = variants.run_variant("baselines", name, cfg(), run_dir, backbone, dataset(), progress=False)
    assert res["summary"]["n"] == 2 and not any("lora" in n for n, _ in backbone.model.named_parameters())
    tok = backbone.tokenizer
    for r in res["records"]:
        chunk_tokens = [len(tok(CHUNKS[row].text, add_special_tokens=False)["input_ids"]) + 1 for row in r["rows"]
                        if row >= 0]
        expected = 0 if name == "no_memory" else sum(chunk_tokens)
        assert r["tokens"]["memory"] == expected and r["tok"] == sum(r["tokens"].values())
        if name == "full_context":  # the whole memory, chronological
            assert [x for x in r["rows"] if x >= 0] == [i for i, c in enumerate(CHUNKS) if c.memory_id == r["memory_id"]]
        if name.startswith("text_rag"):
            assert len(r["rows"]) == 4  # Z of the smoke params


def test_full_context_truncates_to_the_window_and_counts_it(run, tmp_path):
    _, backbone = run
    # (under a params file that retrieves with the sentence embedder, as mini does: full context retrieves nothing)
    (res,) = variants.run_variant("baselines", "full_context", cfg("eval.context_window=120", "retrieval.mode=semantic"),
                                   tmp_path, backbone, dataset(), progress=False)
    for r in res["records"]:
        assert r["truncated_chunks"] > 0 and r["tokens"]["memory"] > 0
        assert r["tokens"]["task_text"] + r["tokens"]["memory"] + 5 <= 120
        kept = [x for x in r["rows"] if x >= 0]
        assert kept == [i for i, c in enumerate(CHUNKS) if c.memory_id == r["memory_id"]][-len(kept):]
    assert res["summary"]["truncated_questions"] == 2


@pytest.mark.parametrize("kind,name", [("baselines", "lora_text_sft"), ("baselines", "lora_text_grpo"),
                                       ("baselines", "identity_projector"), ("ablations", "budget_uniform"),
                                       ("ablations", "bmax_10")])
def test_trained_variants_train_then_evaluate_and_resume(run, kind, name):
    run_dir, backbone = run
    c = cfg("eval.variant_steps=1")
    results = variants.run_variant(kind, name, c, run_dir, backbone, dataset(), progress=False)
    (res,) = results
    folder = run_dir / kind / name / "tiny" / "seed42"
    assert (folder / ("sft" if name == "lora_text_sft" else "best")).is_dir()
    records = res["records"]
    if name.startswith("lora_text"):
        assert all(r["tokens"]["memory"] > 0 for r in records)
    else:  # soft tokens: the budget (capped by the chunk's cache) + 1 separator per kept chunk
        v = variants.variant_config(c, variants.variant_file(kind, name))
        cache_len = variants.bank_for(v, c, dataset()["tiny"], backbone, run_dir, progress=False).cache_len
        assert all(r["tokens"]["memory"] == sum(min(b, int(cache_len[x])) + 1 for x, b in zip(r["rows"], r["budgets"])
                                                if b > 0) for r in records)
    if name == "budget_uniform":
        assert all(b == c.budget.uniform_budget for r in records for b in r["budgets"])
    # a second run reuses the saved result: no training, identical numbers
    assert variants.run_variant(kind, name, c, run_dir, backbone, dataset(), progress=False) == results


def test_text_baselines_are_reported_with_the_warmed_up_reader(run):
    run_dir, backbone = run
    c = cfg()
    ds = dataset()
    bank = variants.bank_for(c, c, ds["tiny"], backbone, run_dir, progress=False)
    model = variants.build_model(variants.variant_config(c, variants.variant_file("baselines", "text_rag_keys")),
                                  ds["tiny"], backbone, bank)
    model.save(train_dir(run_dir, "tiny", 42) / "reader")
    variants.release(model)
    results = variants.run_variant("baselines", "text_rag_keys", c, run_dir, backbone, ds, progress=False)
    assert sorted(r["method"] for r in results) == ["text_rag_keys", "text_rag_keys+reader"]
    assert results[1]["reader"] is not None


def test_trained_variants_start_from_the_warmed_up_reader(tmp_path, tiny_backbone):
    import json

    c = cfg("eval.variant_steps=1", "grpo.reader_warmup_steps=1")
    ds = dataset()
    model = variants.build_model(c, ds["tiny"], tiny_backbone, variants.bank_for(c, c, ds["tiny"], tiny_backbone,
                                                                                 tmp_path, progress=False))
    with torch.no_grad():  # a reader that differs from a fresh LoRA
        for n, p in model.named_parameters():
            if "lora_" in n:
                p.add_(0.05)
    model.save(train_dir(tmp_path, "tiny", 42) / "reader")
    variants.release(model)
    (res,) = variants.run_variant("ablations", "budget_uniform", c, tmp_path, tiny_backbone, ds, progress=False)
    assert res["reader"] == variants.checkpoint_id(train_dir(tmp_path, "tiny", 42) / "reader")
    log = tmp_path / "ablations" / "budget_uniform" / "tiny" / "seed42" / "train_log.jsonl"
    stages = {json.loads(line)["stage"] for line in log.read_text().splitlines()}
    assert "reader_warmup" not in stages and "grpo" in stages  # stage 0 reused, not repeated


def test_a_higher_rank_variant_runs_its_own_stage_0(tmp_path, tiny_backbone):
    # 03's reader has the run's LoRA rank: the high-rank row cannot start from it, so it warms up its own reader
    import json

    c = cfg("eval.variant_steps=1", "grpo.reader_warmup_steps=1")
    ds = dataset()
    model = variants.build_model(c, ds["tiny"], tiny_backbone, variants.bank_for(c, c, ds["tiny"], tiny_backbone,
                                                                                 tmp_path, progress=False))
    model.save(train_dir(tmp_path, "tiny", 42) / "reader")
    variants.release(model)
    (res,) = variants.run_variant("baselines", "lora_text_grpo_high_rank", c, tmp_path, tiny_backbone, ds,
                                   progress=False)
    assert res["reader"] is None and res["params"]["lora"]["r"] == 128
    folder = tmp_path / "baselines" / "lora_text_grpo_high_rank" / "tiny" / "seed42"
    stages = {json.loads(line)["stage"] for line in (folder / "train_log.jsonl").read_text().splitlines()}
    assert {"reader_warmup", "grpo"} <= stages
    ranks = {p.shape[0] for n, p in tiny_backbone.model.named_parameters() if "lora_A" in n}
    assert not ranks  # released again: the backbone is bare for the next variant


def test_a_variant_keeps_the_start_it_was_trained_from(tmp_path, tiny_backbone):
    # 02's trained baselines run before 03 writes its reader: they run stage 0 themselves, and stay so on a rerun
    c = cfg("eval.variant_steps=1", "grpo.reader_warmup_steps=1")
    ds = dataset()
    first = variants.run_variant("baselines", "identity_projector", c, tmp_path, tiny_backbone, ds, progress=False)
    assert first[0]["reader"] is None
    model = variants.build_model(c, ds["tiny"], tiny_backbone,
                                  variants.bank_for(c, c, ds["tiny"], tiny_backbone, tmp_path, progress=False))
    model.save(train_dir(tmp_path, "tiny", 42) / "reader")
    variants.release(model)
    assert variants.run_variant("baselines", "identity_projector", c, tmp_path, tiny_backbone, ds,
                                 progress=False) == first
    # a folder that started from a reader refuses another one
    folder = tmp_path / "ablations" / "budget_uniform" / "tiny" / "seed42"
    assert variants.starting_reader(folder, tmp_path, "tiny", 42) is not None
    (train_dir(tmp_path, "tiny", 42) / "reader" / "policy.pt").write_bytes(b"changed")
    with pytest.raises(evaluate.ResultsError, match="delete"):
        variants.starting_reader(folder, tmp_path, "tiny", 42)


def test_checkpoint_evaluation_says_when_it_is_missing(run):
    run_dir, backbone = run
    results, notes = variants.run_checkpoint(cfg(), run_dir, backbone, dataset(), ["val", "test"], progress=False)
    assert [r["method"] for r in results] == ["elasticmem_untrained"] * 2 and "no trained checkpoint" in notes["tiny"]
    assert evaluate.load_results(run_dir, ["elasticmem_untrained"])


def test_the_method_s_training_folder_has_the_seed(tmp_path):
    from types import SimpleNamespace

    from elasticmem_core.method.model import CHECKPOINT_META

    backbone = SimpleNamespace(identity="tiny")
    assert train_dir(tmp_path, "tiny", 7) == tmp_path / "train" / "tiny" / "seed7"
    ckpt, found, meta = variants.checkpoint_meta(cfg("runtime.seed=7"), tmp_path, "tiny", backbone)
    assert ckpt == tmp_path / "train" / "tiny" / "seed7" / "best" and not found and meta["seed"] == 7
    ckpt, _, _ = variants.checkpoint_meta(cfg("eval.checkpoint=/ckpt/{setting}/s{seed}"), tmp_path, "tiny", backbone)
    assert str(ckpt) == "/ckpt/tiny/s42"
    # 03's reader of seed 42 is not the reader of a run with another seed
    (train_dir(tmp_path, "tiny", 42) / "reader").mkdir(parents=True)
    (train_dir(tmp_path, "tiny", 42) / "reader" / CHECKPOINT_META).write_text("{}")
    assert variants.reader_checkpoint(tmp_path, "tiny", 42) == train_dir(tmp_path, "tiny", 42) / "reader"
    assert variants.reader_checkpoint(tmp_path, "tiny", 7) is None


def test_full_context_answers_long_prompts_one_at_a_time(tmp_path):
    """A padded batch of long prompts would build a dense [B, 1, P, P] attention mask (8 GiB at B = 8, P = 32k):
    prompts above eval.full_context_batch_tokens go through the model alone, with no mask at all (all-ones mask:
    SDPA runs causal); the answers are those of the batched path."""
    from tinydata import tiny_bank

    from elasticmem_core.baselines.full_context import FullContext
    from elasticmem_core.core.backbone import load_backbone
    from elasticmem_core.method.model import ElasticMem

    bank = tiny_bank(tmp_path / "bank")
    backbone = load_backbone("tiny-random")  # its own: LoRA goes into it in place
    model = FullContext(backbone, bank, cfg("eval.batch_size=8"), {c.chunk_id: c.text for c in CHUNKS})
    calls = []

    def spy(module, args, kwargs):  # every pass through the first attention layer: rows, query length, its mask
        hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        calls.append((hidden.shape[0], hidden.shape[1], kwargs.get("attention_mask")))

    try:
        model.plan(QUESTIONS)
        lengths = [model.prompt_tokens[q.qid] for q in QUESTIONS]
        short, long_ = min(lengths), max(lengths)
        assert short < long_ and lengths.count(long_) == 3       # m1's memory has one chunk more
        assert max(lengths) <= model.cfg.eval.full_context_batch_tokens
        reference = ElasticMem.answer(model, QUESTIONS)          # one padded batch of six
        handle = backbone.model.model.layers[0].self_attn.register_forward_pre_hook(spy, with_kwargs=True)
        try:
            same = model.answer(QUESTIONS)                       # all short: the batched path, unchanged
            assert [(b, n) for b, n, _ in calls if n > 1] == [(6, long_)]
            assert calls[0][2] is not None and calls[0][2].shape[-2:] == (long_, long_)   # padded: a dense mask
            calls.clear()
            model.cfg.eval.full_context_batch_tokens = short     # the m1 prompts are now "long"
            split = model.answer(QUESTIONS)
        finally:
            handle.remove()
        prefill = [(b, n) for b, n, _ in calls if n > 1]
        assert prefill == [(3, short)] + [(1, long_)] * 3        # the short ones batched, each long one alone
        assert all(b == 1 for b, n, _ in calls if n > short)     # no batch of several rows holds a long prompt
        assert all(mask is None for b, _, mask in calls if b == 1)   # and alone, no attention mask is built
        for out in (same, split):
            assert [(o["qid"], o["output"], o["prediction"], o["tokens"]) for o in out] == \
                [(o["qid"], o["output"], o["prediction"], o["tokens"]) for o in reference]
            assert all(o["truncated_chunks"] == 0 for o in out)
    finally:
        variants.release(model)
