"""Puts the parts together for a notebook: a setting's data, its bank, and the ElasticMem model around them.

Every notebook that needs a bank calls `bank_for`, which builds it on first use and otherwise loads it (a cache hit
when the chunks and settings match; an interrupted build resumes), always from the FROZEN base model, before LoRA
is injected. Banks live in `<run folder>/banks/<setting>/`.
"""
from __future__ import annotations

from pathlib import Path

from .. import memorysuite
from ..core.backbone import Backbone
from ..core.config import Config
from . import bank as bank_mod
from .model import ElasticMem


def bank_dir(run_dir: str | Path, setting: str) -> Path:
    return Path(run_dir) / "banks" / setting


def bank_for(cfg: Config, dataset, backbone: Backbone, run_dir: str | Path, progress: bool = True,
             accelerator=None):
    """The bank of a dataset's chunks (built once, then loaded)."""
    return bank_mod.build(dataset.chunks(), backbone, cfg.bank, bank_dir(run_dir, dataset.setting),
                          progress=progress, accelerator=accelerator)


def alignment_corpus(cfg: Config, dataset, backbone: Backbone, run_dir: str | Path, progress: bool = True):
    """The alignment stage's corpus when align.corpus_memories > 0, as (bank, chunk id -> text): the memories of
    memorysuite.alignment_corpus in a bank of their own with the run's bank settings, built by the bare backbone
    (call before model_for); None when the stage aligns on the training memories."""
    n = cfg.align.corpus_memories
    if n <= 0:
        return None
    corpus = memorysuite.alignment_corpus(dataset, cfg, n, backbone.tokenizer, run_dir)
    folder = bank_dir(run_dir, f"{corpus.setting}@cache_layer={cfg.bank.cache_layer}")  # one per cache layer
    bank = bank_mod.build(corpus.chunks(), backbone, cfg.bank, folder, progress=progress)
    return bank, {c.chunk_id: c.text for c in corpus.chunks()}


def model_for(cfg: Config, dataset, backbone: Backbone, bank, memory: str = "latent",
              with_embedder: bool = False, model_class: type = ElasticMem) -> ElasticMem:
    """ElasticMem (or `model_class`, a model built the same way, e.g. memgen.MemGen) around `backbone` (LoRA is
    injected into it in place: build banks first). The sentence embedder and its chunk index come with semantic
    retrieval, the kl retrieval loss (its teacher) or `with_embedder`."""
    embedder = semantic = None
    if cfg.retrieval.mode == "semantic" or cfg.retrieval.aux_loss == "kl" or with_embedder:
        from ..core.embedder import SentenceEmbedder
        from .index import MemoryIndex

        embedder = SentenceEmbedder()
        chunks = dataset.chunks()
        assert [c.chunk_id for c in chunks] == bank.chunk_ids, "semantic index rows must be the bank's rows"
        semantic = MemoryIndex(embedder.encode([c.text for c in chunks]), [c.memory_id for c in chunks])
    texts = {c.chunk_id: c.text for c in dataset.chunks()}
    return model_class(backbone, bank, cfg, texts, memory=memory, embedder=embedder, semantic_index=semantic)


def load_setting(cfg: Config, setting: str, backbone: Backbone, run_dir: str | Path):
    """The setting's Dataset, chunk lengths checked with the backbone's tokenizer."""
    return memorysuite.load(setting, cfg, tokenizer=backbone.tokenizer, run_dir=run_dir)
