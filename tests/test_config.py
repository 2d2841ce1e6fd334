"""Typed configuration: good files load, bad keys and types fail naming the key and the file."""
from __future__ import annotations

import json

import papermill
import pytest

from elasticmem_core.core import config, renamed
from elasticmem_core.core.config import SECTIONS, ConfigError
from elasticmem_core.core.experiment import resolve
from elasticmem_core.harness import checks, runner
from elasticmem_core.harness.runner import PARAMETERS_CELL, numbered_notebooks

ALL_PARAMS = sorted(resolve("params").rglob("*.yaml"))
OVERLAYS = [p for p in ALL_PARAMS if p.parent.name in runner.OVERLAYS]
PARAMS = [p for p in ALL_PARAMS if p not in OVERLAYS]


def test_defaults_are_the_papers():
    cfg = config.Config()
    assert (cfg.bank.n_c, cfg.bank.max_length) == (20, 2048)
    assert (cfg.budget.hidden, cfg.budget.heads, cfg.budget.layers, cfg.budget.b_max) == (256, 4, 2, 20)
    assert (cfg.budget.min_budget, cfg.budget.entropy_coef) == (0, 0.001)
    assert (cfg.projector.kind, cfg.projector.hidden) == ("mlp", 2560)
    assert (cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout) == (32, 64, 0.1)
    assert cfg.lora.target_modules == ["q_proj", "k_proj", "v_proj", "o_proj"]
    g = cfg.grpo
    assert (g.group_size, g.clip_eps, g.inner_passes, g.kl_beta, g.adv_clip, g.lr, g.weight_decay) == \
        (4, 0.05, 2, 0.0, 5.0, 2e-5, 0.01)
    assert cfg.runtime.seed == 42


@pytest.mark.parametrize("path", PARAMS, ids=lambda p: str(p.relative_to(resolve("params"))))
def test_every_params_file_validates_and_names_every_section(path):
    raw = checks.read_params(path)
    # a standalone file is a whole recipe: every section named ({} = the paper's defaults), so none is read by accident
    assert set(raw) == set(SECTIONS), f"{path}: sections {sorted(raw)} != {sorted(SECTIONS)}"
    checks.load(path)


@pytest.mark.parametrize("path", OVERLAYS, ids=lambda p: str(p.relative_to(resolve("params"))))
def test_every_overlay_validates_on_each_base(path):
    # only the reference row of the ablation grid is the unchanged method
    assert checks.read_params(path) or path.stem == "elasticmem_reference", f"{path}: an empty overlay"
    for base in ("params/smoke.yaml", "params/mini.yaml", "params/paper/qwen2.5-3b-locomo-mc10.yaml"):
        checks.load([resolve(base), path])


def test_layered_params_merge_section_by_section(tmp_path):
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text("budget:\n  policy: uniform\n")
    cfg = checks.load([resolve("params/mini.yaml"), overlay])
    mini = checks.load(resolve("params/mini.yaml"))
    assert cfg.budget.policy == "uniform" and cfg.budget.b_max == mini.budget.b_max and cfg.lora == mini.lora
    overlay.write_text("budget:\n  polcy: uniform\n")
    with pytest.raises(ConfigError, match=r"mini.yaml \+ .*overlay.yaml: budget.polcy: unknown key"):
        checks.load([resolve("params/mini.yaml"), overlay])


@pytest.mark.parametrize("base", ["params/smoke.yaml", "params/mini.yaml"])
def test_derive_round_trips_and_replaces_only_what_it_names(base):
    cfg = checks.load(resolve(base))
    # the studies derive their configs: an unchanged derive must change nothing, down to the saved params' text
    assert config.derive(cfg) == cfg and json.dumps(config.derive(cfg).to_dict()) == json.dumps(cfg.to_dict())
    new = config.derive(cfg, "study", grpo={"lr": 1e-5}, runtime={"seed": 7})
    assert (new.grpo.lr, new.runtime.seed) == (1e-5, 7) and (cfg.grpo.lr, cfg.runtime.seed) != (1e-5, 7)
    assert new.grpo.group_size == cfg.grpo.group_size and new.budget == cfg.budget
    with pytest.raises(ConfigError, match=r"study: grpo.lrr: unknown key"):
        config.derive(cfg, "study", grpo={"lrr": 1e-5})
    with pytest.raises(ConfigError, match=r"study: unknown section 'gpro'"):
        config.derive(cfg, "study", gpro={"lr": 1e-5})


def test_paper_files_set_each_settings_top_z():
    expected = {"personamem-32k": 9, "personamem-128k": 21, "locomo-mc10": 20, "longmemeval-mc10": 20, "alfworld": 10}
    for size in ("3b", "7b"):
        for setting, z in expected.items():
            cfg = checks.load(resolve(f"params/paper/qwen2.5-{size}-{setting}.yaml"))
            assert cfg.retrieval.top_z == z and cfg.data.settings == [setting]
            assert cfg.runtime.backbone == f"Qwen/Qwen2.5-{size.upper()}-Instruct"
            assert cfg.grpo.group_size == (8 if setting == "alfworld" else 4)


def test_unknown_key_names_key_and_file(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("grpo:\n  clip_epsilon: 0.2\n")
    with pytest.raises(ConfigError) as e:
        checks.load(p)
    msg = str(e.value)
    assert str(p) in msg and "grpo.clip_epsilon" in msg and "clip_eps" in msg  # suggests the right key


def test_an_old_alfworld_key_is_refused_with_its_new_name(tmp_path):
    p = tmp_path / "old.yaml"
    p.write_text("data:\n  alfworld_n_train: 48\n")
    with pytest.raises(ConfigError) as e:
        checks.load(p)
    msg = str(e.value)
    assert str(p) in msg and "data.alfworld_n_train" in msg and "alfworld.n_train" in msg
    with pytest.raises(ConfigError, match=r"smoke.yaml: data.alfworld_max_steps: .*alfworld.max_steps"):
        checks.load(resolve("params/smoke.yaml"), ["data.alfworld_max_steps=3"])
    assert checks.load(resolve("params/smoke.yaml"), ["alfworld.max_steps=3"]).alfworld.max_steps == 3
    # a config saved by older code (a checkpoint's, a result's) reads with the keys moved
    old = config.Config().to_dict()
    old["data"].update({"alfworld_n_train": 7, "alfworld_cards": "backbone"})
    del old["alfworld"]
    cfg = config.from_sections("saved", **renamed.upgrade(old))
    assert (cfg.alfworld.n_train, cfg.alfworld.cards, cfg.alfworld.max_steps) == (7, "backbone", 30)
    # every key the section had when it moved came from a data.alfworld_* key (later ones are its own)
    later = {"bc_epochs", "bc_patience", "action_selection", "agents", "elasticmem"}
    assert set(renamed.RENAMED.values()) == {f"alfworld.{k}" for k in config.Config().to_dict()["alfworld"]
                                             if k not in later}


def test_unknown_section_names_section(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("trainer:\n  lr: 1\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown section 'trainer'"):
        checks.load(p)


@pytest.mark.parametrize("text,key", [
    ("bank:\n  n_c: twenty\n", "bank.n_c"),
    ("bank:\n  n_c: 2.5\n", "bank.n_c"),
    ("grpo:\n  lr: fast\n", "grpo.lr"),
    ("retrieval:\n  chat_template: 1\n", "retrieval.chat_template"),
    ("lora:\n  target_modules: q_proj\n", "lora.target_modules"),
    ("data:\n  mini:\n    seed: x\n", "data.mini.seed"),
    ("budget: 3\n", "budget"),
])
def test_wrong_type_names_key_and_file(tmp_path, text, key):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        checks.load(p)
    assert str(p) in str(e.value) and key in str(e.value)


def test_int_is_accepted_for_float_and_bad_choice_is_rejected(tmp_path):
    p = tmp_path / "ok.yaml"
    p.write_text("grpo:\n  lr: 1\n")
    assert checks.load(p).grpo.lr == 1.0
    p.write_text("budget:\n  policy: lstm\n")
    with pytest.raises(ConfigError, match="budget.policy"):
        checks.load(p)
    p.write_text("budget:\n  b_max: 30\n")  # B_max cannot exceed the content cache N_c
    with pytest.raises(ConfigError, match="b_max"):
        checks.load(p)
    p.write_text("budget:\n  b_max: 8\n")  # the uniform ablation's budget (10 by default) must be a level
    with pytest.raises(ConfigError, match=r"ok.yaml: budget.uniform_budget \(10\) is outside"):
        checks.load(p)
    p.write_text("grpo:\n  dynamic_sampling: -1\n")
    with pytest.raises(ConfigError, match=r"ok.yaml: .*grpo.dynamic_sampling.* must be >= 0"):
        checks.load(p)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        checks.load(tmp_path / "nope.yaml")
    p = tmp_path / "broken.yaml"
    p.write_text("bank: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        checks.load(p)


def test_overrides():
    cfg = checks.load(resolve("params/smoke.yaml"), ["grpo.epochs=3", "data.mini.seed=7", "retrieval.mode=oracle"])
    assert (cfg.grpo.epochs, cfg.data.mini.seed, cfg.retrieval.mode) == (3, 7, "oracle")
    with pytest.raises(ConfigError, match="grpo.epoch"):
        checks.load(None, ["grpo.epoch=3"])


def test_every_field_has_help():
    import dataclasses

    for section in SECTIONS:
        for f in dataclasses.fields(type(getattr(config.Config(), section))):
            assert f.metadata.get("help"), f"{section}.{f.name} has no help text"


def test_notebook_parameters_cells_name_a_params_file_only():
    notebooks = numbered_notebooks()
    assert notebooks, "no numbered notebooks found"
    assert len(PARAMETERS_CELL.splitlines()) <= 5
    for nb in notebooks:
        data = json.loads(nb.read_text())
        cells = [c for c in data["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
        assert len(cells) == 1, f"{nb.name}: needs exactly one cell tagged 'parameters'"
        assert "".join(cells[0]["source"]) == PARAMETERS_CELL.rstrip("\n"), nb.name
        after = "".join(data["cells"][data["cells"].index(cells[0]) + 1]["source"])
        assert "runner.start(params, overrides, run_dir)" in after, nb.name
        # papermill reads the same three names (it warns "Passed unknown parameter" for any it cannot parse)
        assert list(papermill.inspect_notebook(str(nb))) == list(runner.PARAMETER_NAMES), nb.name


def test_notebooks_are_committed_clean():
    for nb in numbered_notebooks():
        data = json.loads(nb.read_text())
        assert data["metadata"]["kernelspec"]["name"] == "python3", nb.name
        for cell in data["cells"]:
            if cell["cell_type"] == "code":
                assert cell.get("outputs") == [] and cell.get("execution_count") is None, f"{nb.name}: clear outputs"


def test_exponent_without_dot_is_a_number(tmp_path):
    p = tmp_path / "lr.yaml"
    p.write_text("grpo:\n  lr: 2e-5\n")  # PyYAML (YAML 1.1) reads this as the string '2e-5'
    assert checks.load(p).grpo.lr == 2e-5
    p.write_text("grpo:\n  lr: 2e-5x\n")
    with pytest.raises(ConfigError, match="grpo.lr"):
        checks.load(p)


@pytest.mark.parametrize("method,override,message", [
    ("memgen", "grpo.kl_beta=0.1", "MemGen-style baseline switches LoRA adapters"),
    ("agemem", "grpo.kl_beta=0.1", "AgeMem-style baseline trains its tool steps' tokens only"),
    ("lora_text_grpo", "eval.method=lora_txt_grpo", "eval.method = 'lora_txt_grpo'; choose one of"),
])
def test_a_method_refuses_the_params_its_registry_entry_names(method, override, message):
    checks.load(resolve("params/smoke.yaml"), [f"eval.method={method}"])  # its own params pass
    with pytest.raises(ConfigError, match=message):
        checks.load(resolve("params/smoke.yaml"), [f"eval.method={method}", override])
