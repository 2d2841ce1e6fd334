"""docs/deviations.md against the config and the paper files, and the settings it names that switch to the authors'
code: the prompt, the projector's LayerNorm gain and the budget policy's network."""
from __future__ import annotations

import dataclasses
import re

import pytest
import torch
import yaml
from tinydata import QUESTIONS
from tinydata import tiny_bank as make_bank
from tinydata import tiny_cfg as _cfg
from tinydata import tiny_model as _model

from elasticmem_core.core import config
from elasticmem_core.core.backbone import load_backbone
from elasticmem_core.core.experiment import resolve
from elasticmem_core.harness import checks
from elasticmem_core.memorysuite import prompts
from elasticmem_core.method import projector as projector_mod
from elasticmem_core.method.budget import BudgetPolicy
from elasticmem_core.method.model import CheckpointError

DOC = resolve("docs/deviations.md")
PAPER_FILES = sorted(resolve("params/paper").glob("*.yaml"))
COLUMNS = ["Setting", "Paper text", "Authors' code", "This package's default", "Key that switches it", "Paper files"]
KEY = re.compile(r"^`([a-z_]+(?:\.[a-z_]+)+)`")
VALUE = re.compile(r"^`([^`]*)`")


def table_rows() -> list[dict[str, str]]:
    lines = DOC.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| Setting |"))
    header = [c.strip() for c in lines[start].strip().strip("|").split("|")]
    assert header == COLUMNS, header
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        assert len(cells) == len(COLUMNS), f"a row with {len(cells)} cells (a '|' inside a cell?): {line[:80]}"
        rows.append(dict(zip(COLUMNS, cells)))
    return rows


def field_of(dotted: str) -> dataclasses.Field:
    """The dataclass field of `section.key` (or `section.sub.key`); KeyError if the config has none."""
    node: type = config.Config
    *path, last = dotted.split(".")
    try:
        for name in path:
            node = {f.name: f for f in dataclasses.fields(node)}[name].type
            node = getattr(config, node) if isinstance(node, str) else node
        return {f.name: f for f in dataclasses.fields(node)}[last]
    except (KeyError, TypeError):
        pytest.fail(f"docs/deviations.md names {dotted}, which is not a key of the config")


def value_of(cfg: config.Config, dotted: str):
    obj = cfg
    for name in dotted.split("."):
        obj = getattr(obj, name)
    return obj


def test_the_table_names_existing_keys_and_the_paper_files_set_its_values():
    rows = table_rows()
    switched = {}
    for row in rows:
        key_cell, paper_cell = row["Key that switches it"], row["Paper files"]
        m = KEY.match(key_cell)
        if m is None:
            assert key_cell.startswith("not switchable"), f"{row['Setting']}: no key and not labelled not switchable"
            assert len(key_cell) > len("not switchable: ") + 10, f"{row['Setting']}: say why it is not switchable"
            assert paper_cell == "—", f"{row['Setting']}: a paper-file value for a setting without a key"
        else:
            key = m.group(1)
            assert field_of(key).metadata.get("help"), f"{key} has no help"  # exists, with its one-line help
            v = VALUE.match(paper_cell)
            assert v, f"{row['Setting']}: the paper files' value of {key} must be given as `value`"
            default = VALUE.match(row["This package's default"])
            assert default, f"{row['Setting']}: the package default must start with `value`"
            assert yaml.safe_load(default.group(1)) == value_of(config.Config(), key), \
                f"{key}: the table's package default is not the config's"
            switched[key] = yaml.safe_load(v.group(1))
        # every key named anywhere in the row (e.g. in a reason) exists too
        for dotted in re.findall(r"`((?:data|bank|retrieval|budget|projector|lora|grpo|eval|runtime)\.[a-z_.]+)`",
                                 " ".join(row.values())):
            field_of(dotted)
    # the switchable items are all in the table
    assert {"data.prompt", "projector.ln_gain_init", "budget.arch", "budget.min_budget", "grpo.train_mode_passes",
            "grpo.loss_type"} <= set(switched)
    assert PAPER_FILES
    for path in PAPER_FILES:
        cfg = checks.load(path)
        for key, value in switched.items():
            assert value_of(cfg, key) == value, f"{path.name}: {key} = {value_of(cfg, key)!r}, the table says {value!r}"


def test_the_min_budget_1_row_exists_and_is_in_the_paper_recipe():
    overlay = checks.read_params(resolve("params/ablations/min_budget_1.yaml"))
    assert overlay == {"budget": {"min_budget": 1}}
    recipe = resolve("docs/paper_scale.md").read_text()
    assert "min_budget_1" in recipe and "elasticmem_reference" in recipe
    assert "deviations.md" in recipe


# ---- the prompt ---------------------------------------------------------------------------------------------
def test_generic_prompt_is_unchanged():
    q = QUESTIONS[0]
    text = prompts.tail_text(q.options_text(), len(q.options), "generic")
    assert text == f"\n{prompts.INSTRUCTION}\n{q.options_text()}\n{prompts.ANSWER_CUE}"


@pytest.mark.parametrize("n", [2, 3, 4, 5, 10])
def test_authors_prompt_by_option_count(n):
    options = "\n".join(f"({chr(97 + i)}) option {i}" for i in range(n))
    text = prompts.tail_text(options, n, "authors")
    instruction, rest = text.split("\n", 1)
    assert rest == options                         # the options follow the instruction ...
    assert "Answer:" not in text and not text.startswith("\n")  # ... and nothing follows them: no cue
    last = f"({chr(96 + n)})"
    if n <= 4:  # the PersonaMem kind: exactly one of the listed labels
        assert "exactly one of" in instruction and f"or {last}" in instruction and "(a)" in instruction
        assert "guess" not in instruction
    else:       # the MC10 kind: one of the range, no refusal, a guess when unsure
        assert f"(a) to {last}" in instruction and "guess" in instruction and "refuse" in instruction
    assert prompts.authors_instruction(4).count("(") == 4
    assert "(a) to (j)" in prompts.authors_instruction(10)
    with pytest.raises(ValueError, match="data.prompt"):
        prompts.tail_text(options, n, "chatty")


@pytest.fixture(scope="module")
def tiny_bank(tmp_path_factory):
    return make_bank(tmp_path_factory.mktemp("bank"))


def test_model_uses_the_prompt_setting_and_alfworld_keeps_its_own(tiny_bank):
    model = _model(tiny_bank, "data.prompt=authors")
    q = QUESTIONS[0]
    text = model.tokenizer.decode(model.tail_ids(q))
    assert text == prompts.tail_text(q.options_text(), 4, "authors") and not text.rstrip().endswith("Answer:")
    assert _model(tiny_bank).tokenizer.decode(_model(tiny_bank).tail_ids(q)).endswith("Answer:")

    class Step:  # an ALFWorld step item brings its own tail text, whatever data.prompt says
        def tail_text(self, prompt):
            return "\nYour next action:"

    assert model.tokenizer.decode(model.tail_ids(Step())) == "\nYour next action:"
    batch = model.build(QUESTIONS, model.plan(QUESTIONS, sample=False))
    assert all(c["task_text"] > 0 for c in batch.counts)


# ---- the projector's LayerNorm gain -----------------------------------------------------------------------------
def test_projector_layernorm_gain_starts_at_the_embedding_rms_or_at_one():
    backbone = load_backbone("tiny-random")
    rms = projector_mod.embedding_rms(backbone.model)
    assert 0 < rms < 0.5  # a small-scale embedding table: the two starts differ
    cfg = _cfg().projector
    default = projector_mod.from_config(cfg, backbone)
    one = projector_mod.from_config(dataclasses.replace(cfg, ln_gain_init="one"), backbone)
    assert torch.allclose(default.net[-1].weight, torch.full_like(default.net[-1].weight, rms))
    assert torch.equal(one.net[-1].weight, torch.ones_like(one.net[-1].weight))
    assert torch.equal(one.net[-1].bias, torch.zeros_like(one.net[-1].bias))
    x = torch.randn(6, backbone.hidden_size)
    with torch.no_grad():
        ratio = one.eval()(x).float().pow(2).mean().sqrt() / default.eval()(x).float().pow(2).mean().sqrt()
    assert ratio == pytest.approx(1 / rms, rel=1e-3)  # gain 1 starts ~1/rms larger than the text embeddings
    with pytest.raises(ValueError, match="ln_gain_init"):
        projector_mod.from_config(dataclasses.replace(cfg, ln_gain_init="zero"), backbone)


# ---- the authors' budget-policy network -------------------------------------------------------------------------
def authors_policy(top_z=5, *overrides):
    return BudgetPolicy(64, _cfg("budget.arch=authors", *overrides).budget, top_z)


def test_authors_policy_architecture_and_shapes():
    policy = authors_policy(5)
    assert isinstance(policy.norm_q, torch.nn.Identity) and isinstance(policy.norm_k, torch.nn.Identity)
    assert all(not layer.norm_first for layer in policy.body.layers)           # post-LN
    assert all(layer.norm_first for layer in BudgetPolicy(64, _cfg().budget).body.layers)  # package: pre-LN
    assert policy.positions.weight.shape == (5 + 1, 64)                          # query + top_z chunk positions
    assert not any("norm_q" in n or "norm_k" in n for n in policy.state_dict())
    g = torch.Generator().manual_seed(0)
    for z in (5, 3):  # a memory may give fewer columns than top_z; never more
        q, k, s = torch.randn(2, 64, generator=g), torch.randn(2, z, 64, generator=g), torch.rand(2, z, generator=g)
        logits = policy.logits(q, k, s, policy._prev(torch.zeros(2, z, dtype=torch.long)))
        assert logits.shape == (2, z, policy.levels) and torch.isfinite(logits).all()
        d = policy.eval().decide(q, k, s, torch.ones(2, z, dtype=torch.bool), sample=True, generator=g)
        assert d.budgets.shape == (2, z) and d.budgets.ge(policy.min_budget).all() and d.budgets.le(policy.b_max).all()
    with pytest.raises(ValueError, match="top_z = 5"):
        policy.logits(torch.randn(1, 64), torch.randn(1, 6, 64), torch.rand(1, 6), torch.zeros(1, 6, dtype=torch.long))
    with pytest.raises(ValueError, match="retrieval.top_z"):
        BudgetPolicy(64, _cfg("budget.arch=authors").budget)
    # the mlp ablation has no rank input: it needs no top_z under either network
    assert not hasattr(BudgetPolicy(64, _cfg("budget.arch=authors", "budget.policy=mlp").budget), "positions")


@pytest.mark.parametrize("min_budget", [0, 1])
def test_authors_policy_teacher_forced_logprobs_and_entropy_equal_sequential_sampling(min_budget):
    policy = authors_policy(5, f"budget.min_budget={min_budget}").eval()
    g = torch.Generator().manual_seed(1)
    q, k, s = torch.randn(3, 64, generator=g), torch.randn(3, 5, 64, generator=g), torch.rand(3, 5, generator=g)
    mask = torch.ones(3, 5, dtype=torch.bool)
    mask[2, 3:] = False
    budgets = torch.zeros(3, 5, dtype=torch.long)
    seq_lp, seq_ent = torch.zeros(3, 5), torch.zeros(3, 5)
    with torch.no_grad():
        for j in range(5):
            logp = torch.log_softmax(policy.logits(q, k, s, policy._prev(budgets)), -1)[:, j]
            choice = torch.multinomial(logp.exp(), 1, generator=g).squeeze(-1)
            budgets[:, j] = choice + policy.min_budget
            seq_lp[:, j] = logp.gather(-1, choice[:, None]).squeeze(-1)
            seq_ent[:, j] = torch.distributions.Categorical(logits=logp).entropy()
        budgets = budgets.masked_fill(~mask, 0)
        forced, entropy = policy.evaluate(q, k, s, mask, budgets)
    assert torch.allclose(forced, seq_lp * mask, atol=1e-5)
    assert torch.allclose(entropy, seq_ent * mask, atol=1e-5)
    # decide's own log-probabilities are those of one teacher-forced pass over what it chose
    d = policy.decide(q, k, s, mask, sample=True, generator=torch.Generator().manual_seed(3))
    again, ent = policy.evaluate(q, k, s, mask, d.budgets)
    assert torch.allclose(d.logprob, again) and torch.allclose(d.entropy, ent) and (d.budgets[2, 3:] == 0).all()
    # and they carry gradients to every weight of the network, the position table included
    policy.train()
    lp, ent = policy.evaluate(q, k, s, mask, d.budgets)
    (lp.sum() + ent.sum()).backward()
    assert policy.positions.weight.grad.abs().sum() > 0 and policy.proj_k.weight.grad.abs().sum() > 0


def test_authors_policy_checkpoint_refuses_another_top_z_or_network(tiny_bank, tmp_path):
    model = _model(tiny_bank, "budget.arch=authors")
    assert model.policy.positions.weight.shape[0] == model.cfg.retrieval.top_z + 1
    model.save(tmp_path / "ckpt")
    loaded = _model(tiny_bank, "budget.arch=authors").load(tmp_path / "ckpt")
    assert all(torch.equal(p, q) for p, q in zip(model.policy.parameters(), loaded.policy.parameters()))
    with pytest.raises(CheckpointError, match=r"retrieval.top_z = 4, the current params 2"):
        _model(tiny_bank, "budget.arch=authors", "retrieval.top_z=2").load(tmp_path / "ckpt")
    with pytest.raises(CheckpointError, match="budget.arch"):
        _model(tiny_bank).load(tmp_path / "ckpt")
    # a reader's LoRA alone still loads at another top_z (the policy is not loaded)
    _model(tiny_bank, "budget.arch=authors", "retrieval.top_z=2").load(tmp_path / "ckpt", parts=("lora",))
    out = loaded.answer(QUESTIONS)
    assert len(out) == 3 and all(len(o["budgets"]) == 4 for o in out)
