"""Shared fixtures: backbones are loaded once per test session (tiny-random always; the embedded SmolLM2 too)."""
from __future__ import annotations

import pytest

from elasticmem_core.core.backbone import load_backbone
from elasticmem_core.core.experiment import resolve
from elasticmem_core.harness import checks


@pytest.fixture(scope="session")
def tiny_backbone():
    return load_backbone("tiny-random")


@pytest.fixture(scope="session")
def smol_backbone():
    """The embedded SmolLM2-135M (converted once into outputs/cache, or $ELASTICMEM_CACHE)."""
    import os

    return load_backbone("smollm2-135m", cache_dir=os.environ.get("ELASTICMEM_CACHE") or resolve("outputs/cache"))


@pytest.fixture()
def smoke_cfg():
    return checks.load(resolve("params/smoke.yaml"))
