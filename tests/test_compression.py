"""The compression table on tiny-random: truncated text against each cache at equal tokens per chunk, aligned caches
over seeds, the JSON's shape, reuse, and the refusals."""
from __future__ import annotations

import json

import pytest
from tinydata import CHUNKS, QUESTIONS, tiny_cfg, tiny_model

from elasticmem_core.core import config, stats
from elasticmem_core.core.backbone import load_backbone
from elasticmem_core.core.experiment import train_dir
from elasticmem_core.studies import compression, frontier

ARGS = ("lora.dropout=0", "projector.dropout=0", "budget.dropout=0", "bank.n_c=16", "budget.b_max=16",
        "bank.cache_layer=0", "projector.kind=residual", "eval.compression=true",
        "eval.compression_caches=['0', 'mid+align', 'mid+align+lora']", "eval.compression_budgets=[2, 4, 32]",
        "eval.compression_seeds=[1, 2]", "eval.compression_align_steps=2", "eval.bootstrap=50",
        "align.batch_size=4", "align.curve_steps=[0, 2]", "align.curve_b=2", "grpo.settings=[tiny]")


class _Data:
    """The tiny questions (every split) over the tiny chunks."""
    setting = "tiny"

    def split(self, name):
        return list(QUESTIONS)

    def chunks(self):
        return list(CHUNKS)


def test_compression_table_pairs_each_cache_with_truncated_text_and_reuses_everything(tmp_path, monkeypatch):
    from elasticmem_core.method import bank as bank_mod

    cfg = tiny_cfg(*ARGS)
    bank = bank_mod.build(CHUNKS, load_backbone("tiny-random"), cfg.bank, tmp_path / "banks" / "tiny", progress=False)
    tiny_model(bank, *ARGS).save(train_dir(tmp_path, "tiny", cfg.runtime.seed) / "reader")
    out = compression.run_compression(cfg, tmp_path, "tiny", load_backbone("tiny-random"), _Data(), log=print)
    data = json.loads((tmp_path / "metrics" / "compression.json").read_text())
    assert data == json.loads(json.dumps(out))
    assert {"setting", "split", "n", "no_memory", "text_full", "rows", "paired"} <= set(data) and data["n"] == 3
    assert set(data["no_memory"]) == {"accuracy", "ci"} and set(data["text_full"]) == {"accuracy", "ci",
                                                                                        "memory_tokens"}
    kinds = {(r["cache"], r["tokens_per_chunk"]) for r in data["rows"]}
    labels = [compression.TEXT_TAIL, "cache: input embeddings", "cache: layer 1, aligned",  # tiny: 2 layers
              "cache: layer 1, aligned with LoRA"]
    assert kinds == {(c, b) for c in labels for b in (2, 4)}
    for r in data["rows"]:
        assert set(compression.ROW_KEYS) <= set(r) and r["ci"][0] <= r["accuracy"] <= r["ci"][1]
        if r["aligned"]:
            assert len(r["seeds"]) == 2 and r["layer"] == 1
        assert r["align_lora"] == r["cache"].endswith("with LoRA")
    assert {(p["a"], p["tokens_per_chunk"]) for p in data["paired"]} == {(c, b) for c in labels[1:] for b in (2, 4)}
    for p in data["paired"]:
        assert set(compression.PAIRED_KEYS) <= set(p) and p["b"] == compression.TEXT_TAIL and p["n"] == 3
    # every cache row against truncated text: one family, Holm-adjusted
    assert [p["p_holm"] for p in data["paired"]] == pytest.approx(stats.holm([p["p"] for p in data["paired"]]))
    # an input-embedding cache behind a projector that starts as the identity IS truncated text: same answers,
    # same token count
    for b in (2, 4):
        (p,) = [p for p in data["paired"] if p["a"] == "cache: input embeddings" and p["tokens_per_chunk"] == b]
        assert p["difference"] == 0 and p["ci"] == [0.0, 0.0]
        rows = {r["cache"]: r for r in data["rows"] if r["tokens_per_chunk"] == b}
        assert rows["cache: input embeddings"]["memory_tokens"] == rows[compression.TEXT_TAIL]["memory_tokens"] > 0
    # one alignment per seed, each in its own folder, and the deeper layer has its own bank
    for seed in (1, 2):
        assert (tmp_path / "compression" / "tiny" / f"layer1-align-seed{seed}" / "align" / "align.json").is_file()
    assert (tmp_path / "banks" / "tiny@cache_layer=1" / "manifest.json").is_file()
    assert len(compression.compression_table(data)) == 8 and data["meta"]["skipped_budgets"] == [32]
    # each alignment's learning curve on validation: before and after its steps, with accuracy at curve_b
    assert [(c["cache"], c["seed"], [p["step"] for p in c["points"]]) for c in data["curves"]] == [
        (f"cache: layer 1, aligned{arm}", seed, [0, 2]) for arm in ("", " with LoRA") for seed in (1, 2)]
    # the LoRA arm reads with the LoRA its alignment trained; the projector-only arm with the stage-0 reader's
    lora_arm = json.loads((tmp_path / "compression" / "tiny" / "layer1-align-lora-seed1" / "align" /
                           "align.json").read_text())
    assert lora_arm["recipe"]["params"]["align"]["train_lora"] is True
    assert all(0 <= p["val_accuracy"] <= 1 and p["val_reconstruction"] > 0 for c in data["curves"]
               for p in c["points"]) and all(c["nonfinite_steps"] == 0 for c in data["curves"])
    assert [r["step"] for r in compression.alignment.read_log(tmp_path / "compression" / "tiny" /
                                                              "layer1-align-seed1") if r["stage"] == "align"] == [0, 1]
    # a second call recomputes nothing
    monkeypatch.setattr(frontier, "evaluate_point", lambda *a, **k: pytest.fail("a saved point was recomputed"))
    monkeypatch.setitem(compression.alignment.OBJECTIVES, "reconstruction",
                        lambda *a, **k: pytest.fail("a finished alignment retrained"))
    again = compression.run_compression(cfg, tmp_path, "tiny", load_backbone("tiny-random"), _Data(), log=print)
    assert json.loads(json.dumps(again)) == data


@pytest.mark.parametrize("override, message", [
    ("eval.compression_budgets=[17, 32]", r"at least one within bank.n_c = 16"),
    ("eval.compression_budgets=[0, 4]", r"eval.compression_budgets >= 1"),
    ("eval.compression_caches=['x+align']", r"compression_caches entry 'x\+align'"),
    ("eval.compression_caches=['3+aligned']", r"compression_caches entry '3\+aligned'"),
    ("eval.compression_caches=['3+lora']", r"compression_caches entry '3\+lora'"),
    ("eval.compression_projector=linear", r"eval.compression_projector = 'linear'"),
    ("align.save_every=0", r"align.save_every >= 1"),  # the align section is checked when an aligned cache uses it
])
def test_bad_compression_params_are_refused_naming_the_key(override, message):
    with pytest.raises(config.ConfigError, match=message):
        tiny_cfg(*ARGS, override)


def test_a_curriculum_outside_the_tables_range_is_refused():
    # the table reads b = 2 and 4 (32 is above N_c): a curriculum from 8 trains b the table never reads
    with pytest.raises(ValueError, match=r"align.b_start = 8 leaves b outside the table's range 2..4"):
        compression.check(tiny_cfg(*ARGS, "align.b_max=4", "align.b_start=8"), n_layers=2, n_c=16)
    with pytest.raises(ValueError, match=r"align.b_start = 12 needs align.b_max"):   # b_max 0 = the table's largest
        compression.check(tiny_cfg(*ARGS, "budget.b_max=8", "align.b_start=12"), n_layers=2, n_c=16)
    with pytest.raises(ValueError, match=r"align.curve_b = 8 leaves b outside the table's range 2..4"):
        compression.check(tiny_cfg(*ARGS, "align.curve_b=8"), n_layers=2, n_c=16)


def test_a_layer_the_backbone_lacks_is_refused():
    with pytest.raises(ValueError, match=r"layer 5 is outside -1..2"):
        compression.check(tiny_cfg(*ARGS, "eval.compression_caches=['5']"), n_layers=2, n_c=16)
