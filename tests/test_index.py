"""Cosine top-Z within a question's own memory: faiss equals a plain torch computation."""
from __future__ import annotations

import pytest
import torch
from bank_mp_worker import MP_BANK, sample_chunks

from elasticmem_core.core.config import BankConfig
from elasticmem_core.method import bank as B
from elasticmem_core.method.index import MemoryIndex, recall_at_z


def torch_top_z(keys, memory_ids, query, memory_id, z):
    rows = torch.tensor([i for i, m in enumerate(memory_ids) if m == memory_id])
    scores = torch.nn.functional.cosine_similarity(query[:, None, :], keys[rows][None], dim=-1)  # [B, n]
    top = scores.topk(min(z, len(rows)), dim=-1)
    return top.values, rows[top.indices]


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(0)
    keys = torch.randn(600, 32, generator=g) * torch.rand(600, 1, generator=g) * 5  # unnormalised, varied norms
    memory_ids = [f"m{i % 3}" for i in range(600)]  # memories interleaved: rows are not contiguous
    return keys, memory_ids, torch.randn(5, 32, generator=g)


@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_faiss_top_z_equals_torch(data, kind):
    keys, memory_ids, queries = data
    # ivf probing every list is exhaustive, hence exact too: it checks the per-memory row mapping of the ivf path
    index = MemoryIndex(keys, memory_ids, kind=kind, ivf_nlist=4, ivf_nprobe=4)
    for memory_id in ("m0", "m2"):
        scores, rows = index.search(queries, memory_id, top_z=9)
        ref_scores, ref_rows = torch_top_z(keys, memory_ids, queries, memory_id, 9)
        assert torch.equal(rows, ref_rows)
        torch.testing.assert_close(scores, ref_scores, atol=1e-5, rtol=1e-5)
        assert all(memory_ids[r] == memory_id for r in rows.flatten().tolist())
    s1, r1 = index.search(queries[2], "m1", top_z=4)  # a single query [H] gives [Z]
    assert r1.shape == (4,) and torch.equal(r1, index.search(queries, "m1", top_z=4)[1][2])


def test_approximate_index_finds_most_neighbours(data):
    keys, memory_ids, queries = data
    _, exact = MemoryIndex(keys, memory_ids).search(queries, "m1", 10)
    _, approx = MemoryIndex(keys, memory_ids, kind="ivf", ivf_nlist=4, ivf_nprobe=2).search(queries, "m1", 10)
    overlap = sum(len(set(a.tolist()) & set(e.tolist())) for a, e in zip(approx, exact)) / exact.numel()
    assert overlap >= 0.5


def test_small_memory_and_unknown_memory(data):
    keys, memory_ids, queries = data
    index = MemoryIndex(keys[:5], ["a", "a", "b", "a", "b"])
    scores, rows = index.search(queries, "b", top_z=20)  # Z larger than the memory: all of it, ranked
    assert rows.shape == (5, 2) and set(rows[0].tolist()) == {2, 4}
    with pytest.raises(KeyError, match="'zzz'"):
        index.search(queries, "zzz", 3)


def test_from_bank_and_recall(tiny_backbone, tmp_path):
    chunks = sample_chunks()
    bank = B.build(chunks, tiny_backbone, BankConfig(**MP_BANK), tmp_path, progress=False)
    index = MemoryIndex.from_bank(bank, BankConfig())
    _, rows = index.search(bank.keys()[bank.row("m1#3")], "m1", top_z=3)
    assert rows[0] == bank.row("m1#3")  # a key's nearest key is itself
    assert recall_at_z(rows, [bank.row("m1#3")]) == 1.0
    assert recall_at_z(rows, [bank.row("m1#3"), bank.row("m0#0")]) == 0.5
