"""The ElasticMem model on tiny-random (one end-to-end inference on the embedded SmolLM2)."""
from __future__ import annotations

import pytest
import torch
from tinydata import CHUNKS, COLOURS, QUESTIONS
from tinydata import tiny_bank as make_bank
from tinydata import tiny_cfg as _cfg
from tinydata import tiny_model as _model

from elasticmem_core.core import config
from elasticmem_core.core.backbone import load_backbone
from elasticmem_core.core.experiment import resolve
from elasticmem_core.harness import checks
from elasticmem_core.memorysuite.records import Question
from elasticmem_core.method import bank as bank_mod
from elasticmem_core.method.budget import BudgetPolicy
from elasticmem_core.method.model import CheckpointError, ElasticMem
from elasticmem_core.method.rewards import parse_answer


@pytest.fixture(scope="module")
def tiny_bank(tmp_path_factory):
    return make_bank(tmp_path_factory.mktemp("bank"))

def test_parse_answer():
    assert parse_answer(" (c) because", 4) == "(c)"
    assert parse_answer("b", 4) == "(b)"
    assert parse_answer("(z) then (d)", 4) == "(d)"
    assert parse_answer("(j)", 10) == "(j)" and parse_answer("(j)", 4) is None
    assert parse_answer("no idea", 4) is None

def test_layout_shapes_masks_and_positions_with_mixed_budgets(tiny_bank):
    model = _model(tiny_bank).eval()
    plan = model.plan(QUESTIONS, sample=False)
    plan.budgets.budgets = torch.tensor([[0, 3, 8, 1], [2, 0, 0, 5], [8, 8, 8, 8]])
    answers = [model.answer_ids("(a)"), model.answer_ids("(b)")[:1], []]
    batch = model.build(QUESTIONS, plan, answers)
    cache_len = tiny_bank.cache_len
    for i in range(3):
        expected = sum(min(int(b), int(cache_len[int(r)])) + 1 for r, b in
                       zip(plan.retrieved.rows[i], plan.budgets.budgets[i]) if b > 0)
        assert batch.counts[i]["memory"] == expected
        s, e = batch.spans[i]["memory"]
        assert e - s == expected
        n = batch.spans[i]["tail"][1] - batch.spans[i]["question"][0]
        assert batch.attention_mask[i, :batch.prompt_len].sum() == n  # left padding only before the prompt
        assert batch.attention_mask[i, batch.prompt_len:].sum() == len(answers[i])
        real = batch.attention_mask[i].bool()
        assert torch.equal(batch.position_ids[i, real], torch.arange(int(real.sum())))  # positions of a lone row
    assert batch.answer_mask.sum(1).tolist() == [len(a) for a in answers]

def test_text_positions_decode_back_to_the_prompt(tiny_bank):
    """Soft tokens sit where the layout says: every non-memory column is exactly the expected text token."""
    model = _model(tiny_bank).eval()
    plan = model.plan(QUESTIONS[:2], sample=False)
    batch = model.build(QUESTIONS[:2], plan)
    table = model.reasoner.get_input_embeddings().weight
    tok = model.tokenizer
    for i, q in enumerate(QUESTIONS[:2]):
        sp = batch.spans[i]
        cols = list(range(*sp["question"])) + list(range(*sp["control"])) + list(range(*sp["tail"]))
        emb = batch.inputs_embeds[i, cols]
        ids = torch.cdist(emb.float(), table.float()).argmin(-1).tolist()
        expected = tok(q.question, add_special_tokens=False)["input_ids"] + [plan.retrieved.control_ids[i]] + \
            model.tail_ids(q)
        assert ids == expected
        assert tok.decode(ids[-len(model.tail_ids(q)):]).endswith("Answer:")
        # memory columns are soft tokens (projector outputs, no vocabulary embedding) each followed by a "\n"
        mem = batch.inputs_embeds[i, range(*sp["memory"])]
        dist, nearest = torch.cdist(mem.float(), table.float()).min(-1)
        is_text = dist < 1e-6
        kept = int(plan.budgets.budgets[i].gt(0).sum())
        assert mem.shape[0] > kept and int(is_text.sum()) == kept and is_text[-1]
        assert set(nearest[is_text].tolist()) == {model.newline_id}

def test_gradients_reach_lora_projector_policy_and_nothing_frozen(tiny_bank):
    model = _model(tiny_bank)
    plan = model.plan(QUESTIONS, sample=True, generator=torch.Generator().manual_seed(0))
    batch = model.build(QUESTIONS, plan, [model.answer_ids("(a)")] * 3)
    logits = model.reasoner(inputs_embeds=batch.inputs_embeds, attention_mask=batch.attention_mask,
                            position_ids=batch.position_ids).logits
    cols = batch.answer_logit_columns()
    ce = torch.nn.functional.cross_entropy(logits[:, cols].flatten(0, 1), batch.answer_ids.flatten(),
                                           reduction="none")[batch.answer_mask.flatten()].mean()
    policy_lp, _ = model.policy_logprob(plan)
    (ce - policy_lp.sum()).backward()
    named = dict(model.named_parameters())
    trained = {n for n, p in named.items() if p.grad is not None and p.grad.abs().sum() > 0}
    # LoRA starts with B = 0, so A's first gradient is zero; B's is not
    assert any("lora_B" in n for n in trained)
    assert all(named[n].grad is not None for n in named if "lora_A" in n)
    assert any(n.startswith("projector.") for n in trained) and any(n.startswith("policy.") for n in trained)
    frozen = {n for n, p in named.items() if not p.requires_grad}
    assert frozen and not frozen & trained
    assert all("lora_" in n for n in named if n.startswith("reasoner.") and named[n].requires_grad)

def test_policy_teacher_forced_logprobs_equal_sequential_sampling():
    cfg = _cfg().budget
    policy = BudgetPolicy(64, cfg).eval()
    g = torch.Generator().manual_seed(1)
    q, k, s = torch.randn(3, 64, generator=g), torch.randn(3, 5, 64, generator=g), torch.rand(3, 5, generator=g)
    mask = torch.ones(3, 5, dtype=torch.bool)
    mask[2, 3:] = False  # a memory with only 3 chunks
    # sequential: sample chunk by chunk, collecting the log-probability of each choice as it is made
    budgets = torch.zeros(3, 5, dtype=torch.long)
    seq = torch.zeros(3, 5)
    with torch.no_grad():
        for j in range(5):
            logp = torch.log_softmax(policy.logits(q, k, s, policy._prev(budgets)), -1)[:, j]
            choice = torch.multinomial(logp.exp(), 1, generator=g).squeeze(-1)
            budgets[:, j] = choice + policy.min_budget
            seq[:, j] = logp.gather(-1, choice[:, None]).squeeze(-1)
        budgets = budgets.masked_fill(~mask, 0)
        forced, _ = policy.evaluate(q, k, s, mask, budgets)
    assert torch.allclose(forced, seq * mask, atol=1e-5)
    assert (budgets[2, 3:] == 0).all()

def test_policy_checkpoint_does_not_depend_on_top_z():
    cfg = _cfg().budget
    trained = BudgetPolicy(64, cfg)
    loaded = BudgetPolicy(64, cfg)
    loaded.load_state_dict(trained.state_dict())
    for z in (20, 10, 3):
        d = loaded.eval().decide(torch.randn(2, 64), torch.randn(2, z, 64), torch.rand(2, z),
                                 torch.ones(2, z, dtype=torch.bool), sample=False)
        assert d.budgets.shape == (2, z) and d.budgets.le(cfg.b_max).all() and d.budgets.ge(cfg.min_budget).all()

@pytest.mark.parametrize("variant", ["uniform", "random", "mlp"])
def test_policy_variants(variant):
    cfg = _cfg(f"budget.policy={variant}", "budget.min_budget=1").budget
    d = BudgetPolicy(64, cfg).decide(torch.randn(2, 64), torch.randn(2, 4, 64), torch.rand(2, 4),
                                     torch.ones(2, 4, dtype=torch.bool), sample=True)
    assert d.budgets.ge(1).all() and d.budgets.le(cfg.b_max).all()
    if variant == "uniform":
        assert d.budgets.eq(cfg.uniform_budget).all()

def test_fixed_rules_top_k_whole_and_threshold_give_exact_budgets():
    scores = torch.tensor([[0.9, 0.6, 0.4, 0.2], [0.7, 0.5, 0.1, 0.0]])
    mask = torch.tensor([[True] * 4, [True, True, True, False]])  # the second memory had only 3 chunks
    q, k = torch.randn(2, 64), torch.randn(2, 4, 64)

    def budgets(*overrides):
        policy = BudgetPolicy(64, _cfg(*overrides).budget)  # smoke: B_max 8
        d = policy.decide(q, k, scores, mask, sample=True)
        assert not policy.trainable and d.logprob.eq(0).all() and d.entropy.eq(0).all()
        return d.budgets.tolist()

    assert budgets("budget.policy=top_k_whole") == [[8, 0, 0, 0], [8, 0, 0, 0]]
    assert budgets("budget.policy=top_k_whole", "budget.keep_top=2") == [[8, 8, 0, 0], [8, 8, 0, 0]]
    assert budgets("budget.policy=top_k_whole", "budget.keep_top=2", "budget.min_budget=1") == \
        [[8, 8, 1, 1], [8, 8, 1, 0]]  # min_budget 1: "dropped" chunks keep one soft token; padding stays 0
    assert budgets("budget.policy=threshold") == [[8, 8, 0, 0], [8, 8, 0, 0]]  # s >= 0.5
    assert budgets("budget.policy=threshold", "budget.score_threshold=0.65", "budget.min_budget=1") == \
        [[8, 1, 1, 1], [8, 1, 1, 0]]
    with pytest.raises(config.ConfigError, match="budget.keep_top"):
        _cfg("budget.policy=top_k_whole", "budget.keep_top=0")


def test_evaluation_is_deterministic_and_checkpoint_round_trip_is_exact(tiny_bank, tmp_path):
    model = _model(tiny_bank)
    with torch.no_grad():  # move away from the identity LoRA start so the round trip means something
        for n, p in model.named_parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    first = model.answer(QUESTIONS)
    assert model.answer(QUESTIONS) == first
    model.save(tmp_path / "ckpt")
    other = _model(tiny_bank).load(tmp_path / "ckpt")
    assert other.answer(QUESTIONS) == first
    for (n, p), (_, q) in zip(model.named_parameters(), other.named_parameters()):
        assert torch.equal(p, q), n

def test_checkpoint_from_another_backbone_or_policy_shape_is_refused(tiny_bank, tmp_path):
    model = _model(tiny_bank)
    model.save(tmp_path / "ckpt")
    meta = (tmp_path / "ckpt" / "elasticmem.json")
    meta.write_text(meta.read_text().replace("tiny-random:qwen2-h64-l2-seed0", "Qwen/Qwen2.5-7B-Instruct:config:x"))
    with pytest.raises(CheckpointError, match="cannot load onto"):
        _model(tiny_bank).load(tmp_path / "ckpt")
    model.save(tmp_path / "ckpt2")
    with pytest.raises(CheckpointError, match="budget.hidden"):
        _model(tiny_bank, "budget.hidden=32").load(tmp_path / "ckpt2")
    _model(tiny_bank, "retrieval.top_z=2").load(tmp_path / "ckpt2")  # top_z may differ
    # a reader's LoRA alone loads into a model whose policy has another shape (a trained ablation's start)
    other = _model(tiny_bank, "budget.hidden=32").load(tmp_path / "ckpt2", parts=("lora",))
    lora = {n: p for n, p in model.named_parameters() if "lora_" in n}
    assert lora and all(torch.equal(p, lora[n]) for n, p in other.named_parameters() if "lora_" in n)

def test_using_runs_the_model_differently_and_restores_it_even_on_error(tiny_bank):
    model = _model(tiny_bank)
    latent = model.answer(QUESTIONS)
    policy, cfg, retrieval = model.policy, model.cfg, model.retriever.cfg
    rule = BudgetPolicy(tiny_bank.hidden_size, config.derive(cfg, budget={"policy": "uniform", "uniform_budget": 1}).budget)
    other_cfg = config.derive(cfg, grpo={"lr": 1e-5})
    with model.using(memory="text", policy=rule, cfg=other_cfg, retrieval={"mode": "oracle"}):
        assert (model.memory, model.policy, model.cfg, model.retriever.cfg.mode) == ("text", rule, other_cfg, "oracle")
        text = model.answer(QUESTIONS)
    assert (model.memory, model.policy, model.cfg, model.retriever.cfg) == ("latent", policy, cfg, retrieval)
    assert [o["tokens"]["memory"] for o in text] != [o["tokens"]["memory"] for o in latent]  # it did read otherwise
    with pytest.raises(RuntimeError, match="inside"):
        with model.using(memory="none", retrieval={"top_z": 1}):
            raise RuntimeError("inside")
    assert (model.memory, model.retriever.cfg) == ("latent", retrieval)
    assert model.answer(QUESTIONS) == latent
    with pytest.raises(ValueError, match="memory = 'txt'"):
        with model.using(memory="txt"):
            pass
    with pytest.raises(ValueError, match="retrieval has no field 'mdoe'"):
        with model.using(retrieval={"mdoe": "oracle"}):
            pass
    assert model.memory == "latent"


@pytest.mark.parametrize("mode", ["control_token", "frozen_state", "query_state", "oracle"])
def test_retrieval_modes_run(tiny_bank, mode):
    model = _model(tiny_bank, f"retrieval.mode={mode}")
    out = model.answer(QUESTIONS)
    assert len(out) == 3 and all(o["tokens"]["output"] >= 1 for o in out)
    plan = model.plan(QUESTIONS, sample=True)
    assert (plan.retrieved.control_ids[0] is not None) == (mode == "control_token")
    if mode == "oracle":
        assert plan.retrieved.rows[:, 0].tolist() == [tiny_bank.row(q.evidence[0]) for q in QUESTIONS]
        assert plan.retrieved.mask.sum(1).tolist() == [1, 1, 1]

def test_semantic_retrieval_ranks_chunk_texts(tiny_bank):
    from elasticmem_core.core.embedder import SentenceEmbedder
    from elasticmem_core.method.index import MemoryIndex

    embedder = SentenceEmbedder()
    sem = MemoryIndex(embedder.encode([c.text for c in CHUNKS]), [c.memory_id for c in CHUNKS])
    model = ElasticMem(load_backbone("tiny-random"), tiny_bank, _cfg("retrieval.mode=semantic"),
                       embedder=embedder, semantic_index=sem)
    plan = model.plan(QUESTIONS[:1], sample=False)
    assert plan.retrieved.mask.all() and plan.retrieved.scores[0, 0] >= plan.retrieved.scores[0, -1]
    assert plan.retrieved.query.abs().sum() > 0  # latent memory: the policy reads the question's state
    # text memory has no budget policy to feed: the same chunks, and the reasoner's question pass is skipped
    model.memory = "text"
    calls = []
    hook = model.reasoner.register_forward_pre_hook(lambda *a: calls.append(1))
    text_plan = model.plan(QUESTIONS[:1], sample=False)
    hook.remove()
    assert not calls and torch.equal(text_plan.retrieved.rows, plan.retrieved.rows)
    assert not text_plan.retrieved.query.any()

def test_z_larger_than_memory_takes_what_exists(tiny_bank):
    model = _model(tiny_bank, "retrieval.top_z=8", "budget.b_max=8")
    plan = model.plan(QUESTIONS, sample=False)
    assert plan.retrieved.mask.sum(1).tolist() == [6, 7, 6]
    assert (plan.budgets.budgets[~plan.retrieved.mask] == 0).all()
    assert (plan.retrieved.rows[~plan.retrieved.mask] == -1).all()

def test_text_and_no_memory_modes(tiny_bank):
    model = _model(tiny_bank, memory="text")
    plan = model.plan(QUESTIONS[:1], sample=False)
    batch = model.build(QUESTIONS[:1], plan)
    texts = [model.tokenizer(CHUNKS[int(r)].text, add_special_tokens=False)["input_ids"]
             for r in plan.retrieved.rows[0] if r >= 0]  # every retrieved chunk, whatever the budgets
    assert batch.counts[0]["memory"] == sum(len(t) + 1 for t in texts)
    model.memory = "none"
    assert model.build(QUESTIONS[:1], plan).counts[0]["memory"] == 0

def test_bad_inputs(tiny_bank):
    with pytest.raises(CheckpointError, match="was built by"):
        ElasticMem(load_backbone("smollm2-135m"), tiny_bank, _cfg())
    model = _model(tiny_bank)
    bad = Question("qx", "?", COLOURS[:4], "(a)", "fact", "no-such-memory", "train")
    with pytest.raises(KeyError, match="no-such-memory"):
        model.plan([bad], sample=False)

def test_end_to_end_on_the_embedded_backbone(tmp_path):
    backbone = load_backbone("smollm2-135m", cache_dir=resolve("outputs/cache"))
    cfg = checks.load(resolve("params/smoke.yaml"))
    bank = bank_mod.build(CHUNKS, backbone, cfg.bank, tmp_path / "bank", progress=False)
    torch.manual_seed(0)  # an untrained policy's greedy budgets: unseeded, some inits drop every chunk
    model = ElasticMem(backbone, bank, cfg)
    (out,) = model.answer(QUESTIONS[:1], max_new_tokens=3)
    assert 1 <= out["tokens"]["output"] <= 3 and out["tokens"]["memory"] > 0 and len(out["rows"]) == cfg.retrieval.top_z


def test_input_embedding_caches_with_a_residual_projector_start_as_the_text(tmp_path):
    """bank.cache_layer=0 + projector.kind=residual: at initialisation, a chunk's soft tokens ARE the embeddings of
    its last b tokens (the latent memory starts as truncated text memory)."""
    from elasticmem_core.method.projector import Projector

    proj = Projector(64, 32, 0.0, "residual")
    x = torch.randn(5, 64)
    assert torch.equal(proj(x), x)
    backbone = load_backbone("tiny-random")
    cfg = _cfg("bank.cache_layer=0", "projector.kind=residual")
    bank = bank_mod.build(CHUNKS, backbone, cfg.bank, tmp_path / "bank", progress=False)
    assert bank.manifest["cache_layer"] == 0
    table = backbone.model.get_input_embeddings().weight
    model = ElasticMem(backbone, bank, cfg)
    plan = model.plan(QUESTIONS[:1], sample=False)
    plan.budgets.budgets[:] = 3
    items = model.memory_items(plan)[0]
    for row, soft in zip(plan.retrieved.rows[0].tolist(), items):
        ids = backbone.tokenizer(CHUNKS[row].text)["input_ids"][-3:]
        assert torch.allclose(soft, table[ids], atol=1e-6)
    with pytest.raises(bank_mod.BankError, match="cache_layer"):  # a bank of other caches is refused
        bank_mod.load(bank.path, load_backbone("tiny-random"), _cfg().bank)
