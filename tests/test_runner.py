"""The notebook harness: success writes a complete run folder; failure names the cell and leaves nothing finished."""
from __future__ import annotations

import json
import os

import nbformat
import pytest
import yaml
from nbformat.v4 import new_code_cell, new_notebook

from elasticmem_core.core.config import ConfigError
from elasticmem_core.core.experiment import resolve
from elasticmem_core.harness import runner
from elasticmem_core.harness.checks import read_params


def _notebook(path, *cells):
    params = new_code_cell(runner.PARAMETERS_CELL, metadata={"tags": ["parameters"]})
    nb = new_notebook(cells=[params, *[new_code_cell(c) for c in cells]],
                      metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
    nbformat.write(nb, path)
    return path


GOOD = ("from elasticmem_core.core import experiment\n"
        "from elasticmem_core.harness import runner\n"
        "run = runner.start(params, overrides, run_dir)\n"
        "import os\n"
        "experiment.write_json(run.path('seen.json'), {'seed': run.cfg.runtime.seed, 'epochs': run.cfg.grpo.epochs,\n"
        "                      'cwd': os.getcwd(), 'fresh': os.environ.get('ELASTICMEM_FRESH')})")


def test_run_writes_a_complete_run_folder(tmp_path, monkeypatch):
    nb = _notebook(tmp_path / "01_ok.ipynb", GOOD)
    monkeypatch.chdir(tmp_path)  # the launch directory must not matter
    monkeypatch.delenv("ELASTICMEM_FRESH", raising=False)
    folder = runner.run_notebooks([nb], resolve("params/smoke.yaml"), ["grpo.epochs=3"], tmp_path / "run",
                                  fresh_results=True)
    seen = json.loads((folder / "seen.json").read_text())
    assert seen["epochs"] == 3 and seen["seed"] == 42
    assert seen["fresh"] == "1" and "ELASTICMEM_FRESH" not in os.environ  # the kernels saw --fresh; restored after
    assert seen["cwd"] == str(resolve("."))  # kernels start in the repository root
    record = json.loads((folder / "run.json").read_text())
    assert record["status"] == "ok" and record["overrides"] == ["grpo.epochs=3"]
    assert record["notebooks"][0]["status"] == "ok" and record["notebooks"][0]["seconds"] > 0
    assert {"versions", "git_commit", "process_count"} <= set(record["environment"])
    assert set(record["code_version"]) == {"commit", "dirty"} and record["fresh"] is True
    assert record["environment"]["versions"]["torch"].startswith("2.13.0")
    assert yaml.safe_load((folder / "params.yaml").read_text())["grpo"]["epochs"] == 3
    assert (folder / "notebooks" / "01_ok.ipynb").is_file()
    assert not list(folder.rglob("*.partial.ipynb"))


def test_failing_cell_is_named_and_nothing_looks_finished(tmp_path, capsys):
    nb = _notebook(tmp_path / "02_bad.ipynb", "x = 1", "raise ValueError('boom in the third cell')")
    code = runner.main(["run", str(nb), "-p", "params/smoke.yaml", "--run-dir", str(tmp_path / "run")])
    assert code == 1
    err = capsys.readouterr().err
    assert "02_bad.ipynb failed in cell 2 (`raise ValueError('boom" in err and "ValueError: boom in the third cell" in err
    out = tmp_path / "run" / "notebooks"
    assert (out / "02_bad.FAILED.ipynb").is_file() and not (out / "02_bad.ipynb").exists()
    assert json.loads((tmp_path / "run" / "run.json").read_text())["status"] == "failed"


def test_bad_params_fail_before_any_kernel_starts(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("grpo:\n  lr: fast\n")
    nb = _notebook(tmp_path / "03_never.ipynb", GOOD)
    assert runner.main(["run", str(nb), "-p", str(bad), "--run-dir", str(tmp_path / "run"), "--fresh"]) == 1
    assert f"{bad}: grpo.lr: expected a number" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
    with pytest.raises(ConfigError):
        runner.resolve_params(bad)


def test_plain_papermill_refuses_a_misspelled_section_in_the_first_cell(tmp_path):
    # `papermill notebooks/00_setup.ipynb out.ipynb -f misspelled.yaml`: papermill itself only warns "Passed unknown
    # parameter: gpro"; runner.start (the first cell after the parameters) refuses it with the CLI's message
    import papermill as pm

    sections = read_params(resolve("params/smoke.yaml"))
    sections["gpro"] = sections.pop("grpo")
    bad = tmp_path / "misspelled.yaml"
    bad.write_text(yaml.safe_dump(sections, sort_keys=False))
    out = tmp_path / "out.ipynb"
    with pytest.raises(pm.PapermillExecutionError) as e:
        pm.execute_notebook(str(resolve("notebooks/00_setup.ipynb")), str(out), parameters=read_params(bad),
                            kernel_name="python3", cwd=str(resolve(".")), progress_bar=False)
    assert e.value.ename == "ConfigError"
    assert e.value.evalue.startswith("<notebook parameters>: unknown section 'gpro'; sections are: runtime, data")
    assert runner._describe(e.value, out).startswith("cell 2 (`from elasticmem_core.core import experiment`)")


def test_plain_papermill_reads_a_params_file_given_with_f_or_p(tmp_path):
    # `papermill nb.ipynb out.ipynb -f params/x.yaml` injects the file's sections: the run reads them as that file,
    # not layered on the notebook's own params file; `-p params ... -p overrides [...]` names the file instead
    import papermill as pm

    nb = _notebook(tmp_path / "05_seen.ipynb", GOOD)
    sections = read_params(resolve("params/smoke.yaml"))
    sections["runtime"]["seed"] = 7
    f = tmp_path / "seven.yaml"
    f.write_text(yaml.safe_dump(sections, sort_keys=False))
    for parameters, seed, epochs in ((read_params(f), 7, 1), ({"params": str(f), "overrides": ["grpo.epochs=2"]}, 7, 2),
                                     ({"overrides": ["runtime.seed=9"]}, 9, 1)):
        run_dir = tmp_path / f"run{seed}{epochs}"
        pm.execute_notebook(str(nb), str(tmp_path / "out.ipynb"), parameters={**parameters, "run_dir": str(run_dir)},
                            kernel_name="python3", cwd=str(resolve(".")), progress_bar=False)
        seen = json.loads((run_dir / "seen.json").read_text())
        assert (seen["seed"], seen["epochs"]) == (seed, epochs), parameters


def test_numbered_notebooks_are_in_order():
    names = [p.name for p in runner.numbered_notebooks()]
    assert names == sorted(names) and "00_setup.ipynb" in names


def test_seeds_run_every_notebook_per_seed_into_one_folder_then_07_once(tmp_path):
    """runtime.seeds: each seed runs the per-seed notebooks (runtime.seed and eval.seeds set to it, executed copies
    under notebooks/seed<s>/), then 07 once with every seed."""
    first = _notebook(tmp_path / "01_ok.ipynb", GOOD.replace("'seen.json'", "f'seen-{run.cfg.runtime.seed}.json'"))
    pooled = _notebook(tmp_path / "07_figures.ipynb", GOOD.replace(
        "'seen.json'", "'pooled.json'").replace("'epochs': run.cfg.grpo.epochs", "'seeds': run.cfg.eval.seeds"))
    folder = runner.run_notebooks([first, pooled], resolve("params/smoke.yaml"), ["runtime.seeds=[5, 6]"],
                                  tmp_path / "run")
    assert [json.loads((folder / f"seen-{s}.json").read_text())["seed"] for s in (5, 6)] == [5, 6]
    assert json.loads((folder / "pooled.json").read_text())["seeds"] == [5, 6]
    record = json.loads((folder / "run.json").read_text())
    assert record["seeds"] == [5, 6] and record["compute_dtype"] in ("float32", "bfloat16")
    assert [(n["notebook"], n.get("pass")) for n in record["notebooks"]] == \
        [("01_ok.ipynb", "seed5"), ("01_ok.ipynb", "seed6"), ("07_figures.ipynb", None)]
    assert (folder / "notebooks" / "seed6" / "01_ok.ipynb").is_file()


def test_reproduce_leaves_out_skipped_notebooks_and_refuses_unknown_names(tmp_path):
    names = [nb.stem for nb in runner.reproduce_notebooks(resolve("params/mini.yaml"))]
    assert "06_alfworld" not in names and "07_figures" in names   # the main job's ALFWorld smoke is out
    assert "06_alfworld" in [nb.stem for nb in runner.reproduce_notebooks(resolve("params/smoke.yaml"))]
    with pytest.raises(ConfigError, match="names no numbered notebook: 06_alfwrld"):
        runner.reproduce_notebooks(resolve("params/smoke.yaml"), ["runtime.skip_notebooks=[06_alfwrld]"])


def test_write_folder_swaps_in_whole_folders_and_a_crash_keeps_the_previous_one(tmp_path):
    """Checkpoints (last/, a stage's .partial/, an alignment's partial) are written aside and swapped in."""
    from elasticmem_core.core.experiment import write_folder

    def write(text):
        return lambda d: (d.mkdir(), (d / "state.txt").write_text(text))

    final = tmp_path / "last"
    write_folder(final, write("one"))
    for stale in ("last.tmp", "last.old"):  # a crashed earlier write leaves its folders: cleared, not mixed in
        (tmp_path / stale).mkdir()
        (tmp_path / stale / "stale.txt").write_text("x")
    write_folder(final, write("two"))
    assert (final / "state.txt").read_text() == "two" and not (final / "stale.txt").exists()

    def crash(d):
        d.mkdir()
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_folder(final, crash)
    assert (final / "state.txt").read_text() == "two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last", "last.tmp"]
