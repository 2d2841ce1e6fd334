"""A tiny hand-made memory (two memories of colour facts) and questions, for model and trainer tests."""
from __future__ import annotations

from elasticmem_core.core.backbone import load_backbone
from elasticmem_core.core.experiment import resolve
from elasticmem_core.harness import checks
from elasticmem_core.memorysuite.records import Chunk, Question
from elasticmem_core.method import bank as bank_mod
from elasticmem_core.method.model import ElasticMem

COLOURS = ["blue", "red", "green", "pink", "grey", "black"]
CHUNKS = [Chunk(f"m{m}#{i}", f"m{m}", i, f"User: my {m}th favourite colour was {COLOURS[i]}.\nAssistant: Noted, "
                f"{COLOURS[i]}.") for m in range(2) for i in range(6)] + [Chunk("m1#6", "m1", 6, "User: hi")]
QUESTIONS = [Question(f"q{i}", "What colour does the user like?", COLOURS[:4], "(a)", "fact", f"m{i % 2}", "train",
                      [f"m{i % 2}#0"]) for i in range(3)]


def tiny_cfg(*overrides):
    return checks.load(resolve("params/smoke.yaml"), ["bank.storage_dtype=float32", *overrides])


def tiny_bank(path):
    return bank_mod.build(CHUNKS, load_backbone("tiny-random"), tiny_cfg().bank, path, progress=False)


def tiny_model(bank, *overrides, memory="latent"):
    # a fresh backbone per model: LoRA is injected into the backbone in place
    return ElasticMem(load_backbone("tiny-random"), bank, tiny_cfg(*overrides), {c.chunk_id: c.text for c in CHUNKS},
                      memory=memory)
