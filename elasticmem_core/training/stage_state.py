"""A supervised stage's resumable state (grpo.sft_save_every): what `Trainer._supervised` saves every N steps into
`<train dir>/<stage>.partial/` and continues from after a stop, so that the stage ends as an uninterrupted one would.

- `recipe`: what a saved state must match to be continued (tag, steps, memory mode, processes, grpo settings).
- `save` / `load`: the model, the loop's state and every process's random generators (`rng_state` / `set_rng`).
- `keep_log_until`: the shared training log keeps a resumed stage's records up to the saved step.
"""
from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

import numpy as np
import torch

from ..core.experiment import write_folder, write_text

STATE = "stage_state.pt"


class RunMismatchError(RuntimeError):
    """A training folder holds another run's checkpoints; the message names both."""


def rng_state() -> dict:
    """This process's random generators (torch CPU and CUDA, Python, NumPy), for an exact resume."""
    return {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"].cpu())
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([t.cpu() for t in state["cuda"]])


def recipe(cfg, memory: str, processes: int, tag: str, steps: int) -> dict:
    """What a saved stage must match to be continued: its length, memory mode, process count and the settings that
    shape its steps (grpo less its save interval)."""
    g = dataclasses.asdict(cfg.grpo)
    g.pop("sft_save_every")
    return {"tag": tag, "steps": steps, "memory": memory, "processes": processes, "grpo": g}


def save(model, partial: Path, state: dict, rank: int, accelerator=None) -> None:
    """Process 0 writes the model and `state` aside and swaps them in (a crash leaves the previous save); then each
    process its own generators (dropout on a GPU draws from each process's)."""
    if rank == 0:
        def write(tmp: Path) -> None:
            model.save(tmp)
            torch.save(state, tmp / STATE)
            torch.save(rng_state(), tmp / "rng_rank0.pt")
        write_folder(partial, write)
    if accelerator is not None:
        accelerator.wait_for_everyone()
        if rank != 0:
            torch.save(rng_state(), partial / f"rng_rank{rank}.pt")
        accelerator.wait_for_everyone()


def load(model, partial: Path, want: dict, rank: int) -> dict | None:
    """The saved state of `partial` after loading its model and this process's generators; None when there is none.
    A state saved under another recipe is refused, naming what differs."""
    if not (partial / STATE).is_file():
        return None
    state = torch.load(partial / STATE, weights_only=False, map_location=model.device)
    if state["recipe"] != want:
        diff = ", ".join(f"{k}: saved {state['recipe'].get(k)!r}, now {v!r}" for k, v in want.items()
                         if state["recipe"].get(k) != v)
        raise RunMismatchError(f"{partial} holds a {want['tag']} stage made otherwise ({diff}): delete it to start "
                               f"the stage over")
    model.load(partial)
    set_rng(torch.load(partial / f"rng_rank{rank}.pt", weights_only=False))
    return state


def keep_log_until(log_path: Path, stage: str, check: str, step: int) -> None:
    """Keep a resumed stage's records up to the saved step (later ones were lost with the weights); rewritten
    atomically."""
    if not log_path.is_file():
        return
    keep = [line for line in log_path.read_text().splitlines()
            if not ((r := json.loads(line))["stage"] == stage and r["step"] >= step
                    or r["stage"] == check and r["step"] > step)]
    write_text(log_path, "".join(line + "\n" for line in keep))
