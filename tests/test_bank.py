"""The latent bank: padding-invariant batched encoding, storage, manifest checks, resume, multi-process build."""
from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from bank_mp_worker import MP_BANK, sample_chunks

from elasticmem_core.core.backbone import load_backbone
from elasticmem_core.core.config import BankConfig
from elasticmem_core.core.experiment import repo_root
from elasticmem_core.memorysuite.records import Chunk
from elasticmem_core.method import bank as B

TEXTS = ["User: I moved to Lisbon last spring and started learning Portuguese.\nAssistant: That sounds exciting!",
         "x", "ab", "User: My favourite colour is blue.\nAssistant: Blue is calm.", "The quick brown fox.",
         "User: hi\nAssistant: hello"]


def cfg(**kw) -> BankConfig:
    return BankConfig(**{**MP_BANK, **kw})


def assert_batched_equals_batch1(backbone, n_c: int, side: str, batch_size: int):
    ids, _ = B.tokenize(backbone, TEXTS, 128)
    assert min(len(x) for x in ids) < n_c < max(len(x) for x in ids)  # short and long chunks both covered
    keys, caches, cache_len = B.encode(backbone, ids, n_c, batch_size, side)
    for i, x in enumerate(ids):
        k1, c1, l1 = B.encode(backbone, [x], n_c, 1)
        scale = float(k1.abs().max())
        torch.testing.assert_close(keys[i], k1[0], atol=2e-5 * scale, rtol=1e-4)
        torch.testing.assert_close(caches[i], c1[0], atol=2e-5 * scale, rtol=1e-4)
        assert int(cache_len[i]) == int(l1[0]) == min(len(x), n_c)
        pad = max(0, n_c - len(x))
        assert torch.equal(caches[i, :pad], torch.zeros(pad, backbone.hidden_size))  # short caches: zeros on the left
        torch.testing.assert_close(caches[i, -1], keys[i])  # the key is the last real state of the cache


@pytest.mark.parametrize("side", ["right", "left"])
def test_batched_equals_batch1_tiny(tiny_backbone, side):
    assert_batched_equals_batch1(tiny_backbone, n_c=8, side=side, batch_size=4)


@pytest.mark.parametrize("side", ["right", "left"])
def test_batched_equals_batch1_smol(smol_backbone, side):
    assert_batched_equals_batch1(smol_backbone, n_c=8, side=side, batch_size=6)


def test_states_are_the_last_layer_at_the_last_tokens(tiny_backbone):
    """Against an independent computation: the full model's hidden_states[-1] of a batch-1 forward."""
    ids = tiny_backbone.tokenizer(TEXTS[0])["input_ids"]
    with torch.no_grad():
        h = tiny_backbone.model(torch.tensor([ids]), output_hidden_states=True).hidden_states[-1][0]
    keys, caches, _ = B.encode(tiny_backbone, [ids], 8, 1)
    torch.testing.assert_close(keys[0], h[-1])
    torch.testing.assert_close(caches[0], h[-8:])


def test_refuses_lora_or_trainable_model():
    from peft import LoraConfig, get_peft_model

    fresh = load_backbone("tiny-random")  # peft changes the model in place: never the shared fixture
    chunks = sample_chunks(1, 2)
    fresh.model.model.norm.weight.requires_grad_(True)
    with pytest.raises(B.BankError, match="require"):
        B.build(chunks, fresh, cfg(), "/nonexistent/never-written")
    fresh.model.requires_grad_(False)
    lora = get_peft_model(fresh.model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    for model in (lora, lora.base_model.model):  # the peft wrapper, and the model it injected LoRA layers into
        with pytest.raises(B.BankError, match="frozen base model"):
            B.build(chunks, dataclasses.replace(fresh, model=model), cfg(), "/nonexistent/never-written")


def test_bad_chunks(tiny_backbone, tmp_path):
    with pytest.raises(B.BankError, match="empty chunk list"):
        B.build([], tiny_backbone, cfg(), tmp_path)
    bad = [Chunk("m#0", "m", 0, "hello"), Chunk("m#1", "m", 1, "")]
    with pytest.raises(B.BankError, match="'m#1'.*zero tokens"):
        B.build(bad, tiny_backbone, cfg(), tmp_path)
    with pytest.raises(B.BankError, match="twice"):
        B.build([bad[0], bad[0]], tiny_backbone, cfg(), tmp_path)
    with pytest.raises(B.BankError, match="zero tokens"):
        B.encode(tiny_backbone, [[1, 2], []], 4, 2)


def test_build_store_and_load(tiny_backbone, tmp_path):
    chunks = sample_chunks()
    bank = B.build(chunks, tiny_backbone, cfg(), tmp_path / "bank", progress=False)
    m = json.loads((tmp_path / "bank" / B.MANIFEST).read_text())
    assert m["chunk_ids"] == [c.chunk_id for c in chunks] and m["memory_ids"] == [c.memory_id for c in chunks]
    assert (m["backbone"], m["hidden_size"], m["n_c"], m["max_length"], m["storage_dtype"]) == (
        tiny_backbone.identity, 64, 4, 64, "bfloat16")
    assert len(m["shards"]) == 5 and all(s["sha256"] and s["bytes"] for s in m["shards"])
    assert bank.build_stats.chunks == len(chunks) and bank.build_stats.shards_built == 5

    ids, _ = B.tokenize(tiny_backbone, [c.text for c in chunks], 64)
    keys, caches, cache_len = B.encode(tiny_backbone, ids, 4, 1)
    assert torch.equal(bank.keys(torch.bfloat16), keys.to(torch.bfloat16))
    assert torch.equal(bank.cache_len, cache_len)
    for i in range(len(chunks)):
        n = int(cache_len[i])
        assert torch.equal(bank.cache(i), caches[i, 4 - n:].to(torch.bfloat16).float())  # real states only
        assert bank.cache(i, last=2).shape[0] == min(2, n)
        assert torch.equal(bank.key(i), bank.keys()[i])
    assert bank.rows("m1") == list(range(7, 14)) and bank.row("m2#3") == 17
    assert bank.disk_bytes() == sum(p.stat().st_size for p in (tmp_path / "bank").glob("shard-*"))

    again = B.build(chunks, tiny_backbone, cfg(), tmp_path / "bank", progress=False)  # complete: loaded, not rebuilt
    assert again.build_stats.shards_built == 0 and torch.equal(again.keys(), bank.keys())


def test_load_refuses_other_backbone_settings_or_chunks(tiny_backbone, tmp_path):
    chunks = sample_chunks(1, 4)
    B.build(chunks, tiny_backbone, cfg(), tmp_path, progress=False)
    other = dataclasses.replace(tiny_backbone, identity="qwen2.5-3b:config:0123")
    with pytest.raises(B.BankError, match="backbone = 'tiny-random.*'qwen2.5-3b"):
        B.load(tmp_path, other, cfg())
    with pytest.raises(B.BankError, match="n_c = 4 .* 20"):
        B.load(tmp_path, tiny_backbone, cfg(n_c=20))
    with pytest.raises(B.BankError, match="storage_dtype"):
        B.load(tmp_path, tiny_backbone, cfg(storage_dtype="float16"))
    with pytest.raises(B.BankError, match="other chunks"):
        B.load(tmp_path, tiny_backbone, cfg(), sample_chunks(1, 5))
    with pytest.raises(B.BankError, match="other chunks or settings.*n_c"):  # building over it needs overwrite
        B.build(chunks, tiny_backbone, cfg(n_c=2), tmp_path, progress=False)
    assert B.build(chunks, tiny_backbone, cfg(n_c=2), tmp_path, overwrite=True, progress=False).n_c == 2


def test_corrupt_or_missing_shard(tiny_backbone, tmp_path):
    B.build(sample_chunks(1, 7), tiny_backbone, cfg(), tmp_path, progress=False)
    shard = tmp_path / "shard-00001.safetensors"
    data = bytearray(shard.read_bytes())
    data[-3] ^= 0xFF  # same size, one byte flipped: only the sha256 check, asked for, sees it
    shard.write_bytes(bytes(data))
    with pytest.raises(B.BankError, match="shard-00001.*corrupt"):
        B.load(tmp_path, tiny_backbone, cfg(verify=True))
    with pytest.raises(B.BankError, match="shard-00001.*corrupt"):
        B.verify(tmp_path)
    from elasticmem_core.harness import runner
    assert runner.main(["verify-bank", str(tmp_path)]) == 1
    shard.write_bytes(bytes(data[:-10]))
    with pytest.raises(B.BankError, match="shard-00001.*corrupt"):
        B.load(tmp_path, tiny_backbone, cfg())  # the default load checks sizes, which needs no hashing
    shard.unlink()
    with pytest.raises(B.BankError, match="shard-00001.*missing"):
        B.load(tmp_path, tiny_backbone, cfg())


def test_shards_are_hashed_once_per_build_and_verified_on_demand(tiny_backbone, tmp_path, monkeypatch, capsys):
    """The build hashes each shard once (the manifest's sha256); a default load, a cache-hit build and a load of
    every later variant read no shard to hash; bank.verify / verify() / `elasticmem verify-bank` check them all."""
    from elasticmem_core.harness import runner

    hashed = []
    sha256_file = B.sha256_file
    monkeypatch.setattr(B, "sha256_file", lambda path, *a: hashed.append(Path(path).name) or sha256_file(path, *a))
    chunks = sample_chunks(1, 7)
    bank = B.build(chunks, tiny_backbone, cfg(), tmp_path, progress=False)
    shards = [s["file"] for s in bank.manifest["shards"]]
    assert len(shards) == 2 and hashed == shards                      # once per shard, when the manifest is written
    hashed.clear()
    assert not B.BankConfig().verify                                  # the package default: sizes only
    B.load(tmp_path, tiny_backbone, cfg(), chunks)
    B.build(chunks, tiny_backbone, cfg(), tmp_path, progress=False)   # a cache hit loads
    assert hashed == []
    B.load(tmp_path, tiny_backbone, cfg(verify=True))
    assert hashed == shards
    assert B.verify(tmp_path) == {"shards": 2, "bytes": bank.disk_bytes()} and hashed == shards * 2
    assert runner.main(["verify-bank", str(tmp_path)]) == 0 and hashed == shards * 3
    assert "2 shard(s)" in capsys.readouterr().out
    with pytest.raises(B.BankError, match="manifest.json is missing"):
        B.verify(tmp_path / "nothing")


def test_resume_after_interruption_equals_uninterrupted(tiny_backbone, tmp_path, monkeypatch):
    chunks = sample_chunks()
    full = B.build(chunks, tiny_backbone, cfg(), tmp_path / "full", progress=False)

    save, calls = B._save_shard, []

    def crash_after_two(path, tensors, rows):
        if len(calls) == 2:
            raise KeyboardInterrupt  # the build dies while encoding shard 2
        calls.append(rows)
        save(path, tensors, rows)

    monkeypatch.setattr(B, "_save_shard", crash_after_two)
    with pytest.raises(KeyboardInterrupt):
        B.build(chunks, tiny_backbone, cfg(), tmp_path / "resumed", progress=False)
    monkeypatch.setattr(B, "_save_shard", save)
    with pytest.raises(B.BankError, match="interrupted build"):
        B.load(tmp_path / "resumed", tiny_backbone, cfg())

    resumed = B.build(chunks, tiny_backbone, cfg(batch_size=7), tmp_path / "resumed", progress=False)
    assert (resumed.build_stats.shards_resumed, resumed.build_stats.shards_built) == (2, 3)
    assert torch.equal(resumed.keys(), full.keys()) and torch.equal(resumed.cache_len, full.cache_len)
    for i in range(len(chunks)):
        assert torch.equal(resumed.cache(i), full.cache(i))
    strip = lambda m: {k: v for k, v in m.items() if k != "shards"}  # noqa: E731
    assert strip(resumed.manifest) == strip(full.manifest)


def test_failed_write_leaves_no_partial_shard(tiny_backbone, tmp_path, monkeypatch):
    import safetensors.torch

    def disk_full(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", disk_full)
    with pytest.raises(B.BankError, match="No space left.*nothing partial"):
        B.build(sample_chunks(1, 3), tiny_backbone, cfg(), tmp_path, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == [B.PLAN]


def test_two_process_build_equals_one_process(tiny_backbone, tmp_path):
    """torchrun starts two real CPU processes (`accelerate launch --cpu --num_processes 2` would start one)."""
    with socket.socket() as s:  # a free port: other test runs may share this machine
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parent)}
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--master_port", str(port), str(Path(__file__).parent / "bank_mp_worker.py"),
                          str(tmp_path / "mp")], cwd=repo_root(), env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "process 0/2: built 3 shards" in out.stdout and "process 1/2: built 2 shards" in out.stdout

    one = B.build(sample_chunks(), tiny_backbone, cfg(), tmp_path / "one", progress=False)
    two = B.load(tmp_path / "mp", tiny_backbone, cfg(), sample_chunks())
    assert two.manifest["content_hash"] == one.manifest["content_hash"] and len(two) == len(one)
    torch.testing.assert_close(two.keys(), one.keys(), atol=1e-2, rtol=1e-2)  # bfloat16 storage; thread counts differ
    assert torch.equal(two.cache_len, one.cache_len)
    for i in range(len(one)):
        torch.testing.assert_close(two.cache(i), one.cache(i), atol=1e-2, rtol=1e-2)
