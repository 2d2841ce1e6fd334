"""Every random draw of a rollout (control token, budgets, answer tokens) goes through this module.

A `torch.Generator` belongs to one device, and torch refuses to sample CUDA tensors with a CPU generator. The
trainer makes each rollout's generator with `generator_for(model.device, seed)`, and every sampling site calls one
of the draws below, which checks that the generator and the tensors it samples live on the same device. The check
runs on CPU too, so a generator made on the wrong device fails in the CPU test suite, not at the first GPU rollout.
On CPU, `generator_for(cpu, seed)` is exactly `torch.Generator().manual_seed(seed)`: the same numbers as before.
"""
from __future__ import annotations

import torch


class SamplingDeviceError(RuntimeError):
    """A generator was handed tensors of another device."""


def generator_for(device, seed: int) -> torch.Generator:
    """A generator on `device` (the device of the tensors it will sample), seeded with `seed`."""
    return torch.Generator(device=torch.device(device)).manual_seed(int(seed))


def _same_device(a: torch.device, b: torch.device) -> bool:
    if a.type != b.type:
        return False
    # cuda vs cuda:0: an unindexed device means the current one
    index = (lambda d: d.index if d.index is not None else (torch.cuda.current_device() if d.type == "cuda" else 0))
    return index(a) == index(b)


def check(generator: torch.Generator | None, device, site: str) -> None:
    """Raise if `generator` cannot sample tensors on `device`; `site` names the sampling site in the message."""
    if generator is not None and not _same_device(generator.device, torch.device(device)):
        raise SamplingDeviceError(f"{site}: generator on {generator.device} cannot sample tensors on {device}; "
                                  f"make it with sampling.generator_for(<the model's device>, seed)")


def categorical(probs: torch.Tensor, generator: torch.Generator | None, site: str) -> torch.Tensor:
    """One draw per row of `probs` [..., K] (rows need not be normalised): indices [...] (long)."""
    check(generator, probs.device, site)
    flat = probs.reshape(-1, probs.shape[-1])
    return torch.multinomial(flat, 1, generator=generator).view(probs.shape[:-1])


def uniform(shape, device, generator: torch.Generator | None, site: str) -> torch.Tensor:
    """U[0, 1) of `shape` on `device`."""
    check(generator, device, site)
    return torch.rand(shape, device=device, generator=generator)


def integers(low: int, high: int, shape, device, generator: torch.Generator | None, site: str) -> torch.Tensor:
    """Integers in [low, high) of `shape` on `device`."""
    check(generator, device, site)
    return torch.randint(low, high, shape, device=device, generator=generator)
