"""The offline latent bank: one key and one content cache per memory chunk, encoded once by the frozen base model.

For chunk i (raw text, no chat template, truncated at `bank.max_length` tokens), with h = last-layer hidden states:
- key k_i = h[last real token], shape [H]
- content cache C_i = h[last N_c real tokens], shape [N_c, H]

Short chunks (fewer than N_c tokens) are LEFT-padded with zeros inside C_i, so the last real state always sits at
C_i[-1] and "the last b states" is always C_i[-b:]. `cache_len[i] = min(tokens, N_c)` is stored per chunk and
`Bank.cache(i, last=b)` returns only real states (min(b, cache_len[i]) of them): padding is never read as memory.

Encoding is batched with length bucketing (each shard's chunks are sorted by length before batching) and calls the
decoder stack only (no lm_head: the authors' full forward also computes [T, vocab] logits that are thrown away).
Position ids come from the attention mask, so left and right padding give the states of a batch-1 pass.

Storage, in one folder:
    build.json                 the plan (content hash, rows, shard size), written first; lets a build resume
    shard-00000.safetensors    rows [start, stop): keys [n, H], caches [n, N_c, H] (storage dtype),
                               cache_len [n] int32, n_tokens [n] int32, truncated [n] uint8
    manifest.json              written last, atomically: its presence means the bank is complete
The manifest records chunk ids, memory ids, storage dtype, backbone identity and hidden size, N_c, max_length, the
content hash over chunks + settings, and each shard's rows, size and sha256. Shards are written under a temporary
name and renamed, so a file with a shard's name is always complete. Loading is lazy (safetensors memory maps).
Each shard is hashed once, when its build writes the manifest; a load checks every shard's presence and size, and
the sha256 only when asked (`bank.verify: true`, `verify(path)`, `elasticmem verify-bank <folder>`).

Several processes (accelerate) build disjoint shards of one bank: shard s is built by process s % num_processes.
"""
from __future__ import annotations

import bisect
import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from ..core.backbone import Backbone, sha256_file
from ..core.config import BankConfig
from ..core.experiment import write_json
from ..memorysuite.records import Chunk

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
PLAN = "build.json"
STORAGE_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


class BankError(RuntimeError):
    """Bad input, a mismatching or damaged bank; the message names the folder, chunk or shard and what to do."""


# ----------------------------------------------------------------------------------------------------------------
# Encoding
def check_frozen(model: Any) -> None:
    """Refuse anything but the frozen base model: the bank must never be encoded with LoRA active (authors' bug)."""
    if type(model).__module__.startswith("peft") or getattr(model, "_hf_peft_config_loaded", False):
        raise BankError("the bank must be encoded by the frozen base model, but a peft/LoRA model was given; "
                        "encode before adding LoRA (or with the adapter unloaded)")
    lora = [n for n, _ in model.named_modules() if "lora" in n.lower()]
    if lora:
        raise BankError(f"the bank must be encoded by the frozen base model, but the model has LoRA modules "
                        f"({lora[0]}, ...)")
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    if trainable:
        raise BankError(f"the bank must be encoded by the frozen base model, but {len(trainable)} parameters require "
                        f"grad ({trainable[0]}, ...); use the backbone as loaded (frozen, eval mode)")


def tokenize(backbone: Backbone, texts: Sequence[str], max_length: int) -> tuple[list[list[int]], list[bool]]:
    """Raw-text token ids (no chat template), truncated at max_length; also whether each text was truncated."""
    ids = backbone.tokenizer(list(texts), add_special_tokens=True)["input_ids"]
    return [x[:max_length] for x in ids], [len(x) > max_length for x in ids]


@torch.no_grad()
def encode(backbone: Backbone, token_ids: Sequence[Sequence[int]], n_c: int, batch_size: int,
           padding_side: str = "right", cache_layer: int = -1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Keys [N, H], content caches [N, n_c, H] (short ones left-padded with zeros) and cache_len [N], in input order.

    Keys are always last-layer states (they meet the reasoner's last-layer query); the cache comes from `cache_layer`
    (-1 = the last layer, as the paper; 0 = the input embeddings; k = the output of layer k).

    Length bucketing: sequences are sorted by length (longest first, so an out-of-memory shows at once) and batched.
    """
    check_frozen(backbone.model)
    if any(len(x) == 0 for x in token_ids):
        raise BankError("a sequence of zero tokens cannot be encoded (it has no last token)")
    decoder = backbone.model.base_model  # the Transformer stack without lm_head; last_hidden_state is after the norm
    n, hidden = len(token_ids), backbone.hidden_size
    keys = torch.empty(n, hidden, dtype=backbone.dtype)
    caches = torch.empty(n, n_c, hidden, dtype=backbone.dtype)
    lengths = torch.tensor([len(x) for x in token_ids])
    order = sorted(range(n), key=lambda i: -len(token_ids[i]))
    pad_id = backbone.tokenizer.pad_token_id
    for b in range(0, n, batch_size):
        batch = order[b:b + batch_size]
        lens = lengths[batch]
        width = int(lens.max())
        start = torch.zeros_like(lens) if padding_side == "right" else width - lens  # first real position [B]
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        mask = torch.zeros(len(batch), width, dtype=torch.long)
        for r, i in enumerate(batch):
            s = int(start[r])
            ids[r, s:s + len(token_ids[i])] = torch.tensor(token_ids[i])
            mask[r, s:s + len(token_ids[i])] = 1
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)  # real tokens get 0..L-1 whatever the padding side
        out = decoder(input_ids=ids.to(backbone.device), attention_mask=mask.to(backbone.device),
                      position_ids=position_ids.to(backbone.device), use_cache=False,
                      output_hidden_states=cache_layer >= 0)
        h = out.last_hidden_state.cpu()
        c = out.hidden_states[cache_layer].cpu() if cache_layer >= 0 else h
        last = start + lens - 1                                           # [B]
        pos = last[:, None] + torch.arange(-n_c + 1, 1)[None, :]           # [B, n_c]: the last n_c positions
        real = pos >= start[:, None]                                       # False = before the chunk: padding
        cache = c.gather(1, pos.clamp(min=0)[..., None].expand(-1, -1, hidden)) * real[..., None]
        keys[batch] = h[torch.arange(len(batch)), last]
        caches[batch] = cache
    return keys, caches, lengths.clamp(max=n_c)


def last_token_states(backbone: Backbone, texts: Sequence[str], cfg: BankConfig) -> torch.Tensor:
    """The frozen model's last-layer state at each text's last token [N, H] (a key, for queries such as questions)."""
    ids, _ = tokenize(backbone, texts, cfg.max_length)
    return encode(backbone, ids, n_c=1, batch_size=cfg.batch_size, padding_side=cfg.padding_side)[0]


# ----------------------------------------------------------------------------------------------------------------
# Build
def settings(backbone: Backbone, cfg: BankConfig) -> dict[str, Any]:
    """What the stored values depend on (besides the chunks); checked on load."""
    return {"format_version": FORMAT_VERSION, "backbone": backbone.identity, "hidden_size": backbone.hidden_size,
            "n_c": cfg.n_c, "max_length": cfg.max_length, "storage_dtype": cfg.storage_dtype,
            "cache_layer": cfg.cache_layer}


def content_hash(chunks: Sequence[Chunk], setting: dict[str, Any]) -> str:
    h = hashlib.sha256(json.dumps(setting, sort_keys=True).encode())
    for c in chunks:
        h.update(json.dumps([c.chunk_id, c.memory_id, c.text]).encode() + b"\n")
    return h.hexdigest()


def _validate_chunks(chunks: Sequence[Chunk]) -> None:
    if not chunks:
        raise BankError("cannot build a bank from an empty chunk list")
    seen = set()
    for c in chunks:
        if c.chunk_id in seen:
            raise BankError(f"chunk {c.chunk_id!r} (memory {c.memory_id!r}) appears twice: chunk ids must be unique")
        seen.add(c.chunk_id)
        if not isinstance(c.text, str) or not c.text:
            raise BankError(f"chunk {c.chunk_id!r} (memory {c.memory_id!r}) has empty text: zero tokens to encode")


def _shard_name(s: int) -> str:
    return f"shard-{s:05d}.safetensors"


def _shard_ranges(n: int, shard_size: int) -> list[tuple[int, int]]:
    return [(a, min(a + shard_size, n)) for a in range(0, n, shard_size)]


def _shard_complete(path: Path, rows: tuple[int, int]) -> bool:
    """A shard file under its final name is complete by construction (rename); check it opens with its rows."""
    from safetensors import safe_open

    if not path.is_file():
        return False
    try:
        with safe_open(path, framework="pt") as f:
            return f.metadata().get("rows") == f"{rows[0]}:{rows[1]}"
    except Exception:  # unreadable header: damaged from outside; rebuilt
        return False


def _save_shard(path: Path, tensors: dict[str, torch.Tensor], rows: tuple[int, int]) -> None:
    """Write under a temporary name, flush to disk, then rename: a crash or full disk never leaves a partial shard."""
    from safetensors.torch import save_file

    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        save_file(tensors, tmp, metadata={"rows": f"{rows[0]}:{rows[1]}"})
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise BankError(f"writing {path} failed ({e}); nothing partial was kept. Free disk space and run the build "
                        f"again: it resumes from the last complete shard") from e


@dataclass
class BuildStats:
    chunks: int           # chunks encoded in this call (this process), resumed shards excluded
    tokens: int           # real tokens encoded in this call
    seconds: float
    shards_built: int
    shards_resumed: int   # complete shards found from an interrupted build and kept

    @property
    def chunks_per_s(self) -> float:
        return self.chunks / self.seconds if self.seconds else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


def build(chunks: Sequence[Chunk], backbone: Backbone, cfg: BankConfig, path: str | Path, *,
          accelerator: Any = None, overwrite: bool = False, progress: bool = True) -> Bank:
    """Encode `chunks` into a bank at `path` and return it loaded.

    A complete bank already at `path` for the same chunks and settings is loaded instead (a cache hit); an
    interrupted build of the same bank resumes from its complete shards. A folder holding another bank is an error
    unless `overwrite`. With an `accelerate.Accelerator`, every process must call this with the same chunks.
    """
    from ..core.experiment import progress as tqdm

    _validate_chunks(chunks)
    check_frozen(backbone.model)
    path = Path(path)
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator else (0, 1)
    setting = settings(backbone, cfg)
    plan = {**setting, "content_hash": content_hash(chunks, setting), "num_chunks": len(chunks),
            "shard_size": cfg.shard_size}

    if rank == 0:
        _prepare_folder(path, plan, overwrite)
    _barrier(accelerator)
    if (path / MANIFEST).is_file():  # a complete bank for exactly these chunks and settings
        bank = load(path, backbone, cfg, chunks)
        bank.build_stats = BuildStats(0, 0, 0.0, 0, len(bank.manifest["shards"]))
        return bank

    ranges = _shard_ranges(len(chunks), cfg.shard_size)
    mine = [s for s in range(len(ranges)) if s % world == rank]
    todo = [s for s in mine if not _shard_complete(path / _shard_name(s), ranges[s])]
    stats = BuildStats(0, 0, 0.0, 0, len(mine) - len(todo))
    bar = tqdm(total=sum(ranges[s][1] - ranges[s][0] for s in todo), desc=f"bank {path.name}", unit="chunk",
               disable=not progress or rank != 0)
    t0 = time.perf_counter()
    for s in todo:
        a, b = ranges[s]
        ids, truncated = tokenize(backbone, [c.text for c in chunks[a:b]], cfg.max_length)
        empty = [chunks[a + j].chunk_id for j, x in enumerate(ids) if not x]
        if empty:
            raise BankError(f"chunk {empty[0]!r} has zero tokens after tokenization; it cannot be encoded")
        keys, caches, cache_len = encode(backbone, ids, cfg.n_c, cfg.batch_size, cfg.padding_side, cfg.cache_layer)
        dtype = STORAGE_DTYPES[cfg.storage_dtype]
        _save_shard(path / _shard_name(s), {
            "keys": keys.to(dtype), "caches": caches.to(dtype), "cache_len": cache_len.to(torch.int32),
            "n_tokens": torch.tensor([len(x) for x in ids], dtype=torch.int32),
            "truncated": torch.tensor(truncated, dtype=torch.uint8)}, (a, b))
        stats.chunks += b - a
        stats.tokens += sum(len(x) for x in ids)
        stats.shards_built += 1
        bar.update(b - a)
    stats.seconds = time.perf_counter() - t0
    bar.close()

    _barrier(accelerator)
    if rank == 0:
        _write_manifest(path, plan, chunks, ranges)
    _barrier(accelerator)
    bank = load(path, backbone, cfg, chunks)
    bank.build_stats = stats
    return bank


def _barrier(accelerator: Any) -> None:
    if accelerator is not None:
        accelerator.wait_for_everyone()


def _prepare_folder(path: Path, plan: dict[str, Any], overwrite: bool) -> None:
    """Start, resume or reuse the build in `path`; refuse a folder that holds another bank (unless overwrite)."""
    path.mkdir(parents=True, exist_ok=True)
    previous = path / PLAN
    if previous.is_file():
        old = json.loads(previous.read_text())
        if old == plan:  # same bank: resume (or reuse if complete); drop a crashed write's temporary files
            for f in path.glob(".shard-*"):
                f.unlink()
            return
        if not overwrite:
            diff = ", ".join(f"{k}: {old.get(k)!r} -> {v!r}" for k, v in plan.items() if old.get(k) != v)
            raise BankError(f"{path} holds a bank for other chunks or settings ({diff}); use another folder or "
                            f"build(..., overwrite=True)")
    for f in path.iterdir():  # a fresh build: drop another bank's files (or stray temporaries)
        if f.name in (MANIFEST, PLAN) or f.name.startswith(("shard-", ".shard-")):
            f.unlink()
    write_json(previous, plan)


def _write_manifest(path: Path, plan: dict[str, Any], chunks: Sequence[Chunk], ranges: list[tuple[int, int]]):
    from safetensors import safe_open

    shards, tokens, truncated = [], 0, 0
    for s, (a, b) in enumerate(ranges):
        f = path / _shard_name(s)
        if not _shard_complete(f, (a, b)):
            raise BankError(f"{f} is missing or incomplete after the build (did a process fail?); run the build again")
        with safe_open(f, framework="pt") as st:
            tokens += int(st.get_tensor("n_tokens").sum())
            truncated += int(st.get_tensor("truncated").sum())
        shards.append({"file": f.name, "rows": [a, b], "bytes": f.stat().st_size, "sha256": sha256_file(f)})
    write_json(path / MANIFEST, {
        **plan,
        "cache_padding": "left, zeros; cache_len[i] = min(tokens, n_c) real states end at caches[i, -1]",
        "tokens": tokens, "truncated_chunks": truncated,
        "chunk_ids": [c.chunk_id for c in chunks], "memory_ids": [c.memory_id for c in chunks],
        "shards": shards,
    })


# ----------------------------------------------------------------------------------------------------------------
# Load
def load(path: str | Path, backbone: Backbone, cfg: BankConfig, chunks: Sequence[Chunk] | None = None) -> Bank:
    """Open a complete bank lazily, refusing one built by another backbone or settings (or other chunks, if given)."""
    path = Path(path)
    if not (path / MANIFEST).is_file():
        hint = " (an interrupted build: run build() again to resume)" if (path / PLAN).is_file() else ""
        raise BankError(f"{path}: no complete bank here, {MANIFEST} is missing{hint}")
    manifest = json.loads((path / MANIFEST).read_text())
    expected = settings(backbone, cfg)
    for key, want in expected.items():
        if manifest.get(key) != want:
            raise BankError(f"{path}: the bank was built with {key} = {manifest.get(key)!r} but the current "
                            f"backbone/settings have {want!r}; rebuild it (another folder or overwrite=True)")
    if chunks is not None and manifest["content_hash"] != content_hash(chunks, expected):
        raise BankError(f"{path}: the bank was built from other chunks (content hash differs); rebuild it")
    bank = Bank(path, manifest)
    bank.check(sha256=cfg.verify)  # sizes always; the full sha256 (reads every shard) only when bank.verify asks
    return bank


def verify(path: str | Path) -> dict[str, Any]:
    """The full check of a complete bank, on demand: every shard's size and sha256 against the manifest (the hashes
    its build recorded). Raises BankError naming a missing or corrupt shard; returns {"shards", "bytes"} checked."""
    path = Path(path)
    if not (path / MANIFEST).is_file():
        raise BankError(f"{path}: no complete bank here, {MANIFEST} is missing")
    bank = Bank(path, json.loads((path / MANIFEST).read_text()))
    bank.check(sha256=True)
    return {"shards": len(bank.manifest["shards"]), "bytes": bank.disk_bytes()}


class Bank:
    """A loaded bank: row i is chunk `chunk_ids[i]` of memory `memory_ids[i]`. Shards are opened lazily (mmap)."""

    def __init__(self, path: Path, manifest: dict[str, Any]):
        self.path = path
        self.manifest = manifest
        self.chunk_ids: list[str] = manifest["chunk_ids"]
        self.memory_ids: list[str] = manifest["memory_ids"]
        self.n_c: int = manifest["n_c"]
        self.hidden_size: int = manifest["hidden_size"]
        self.build_stats: BuildStats | None = None
        self._starts = [s["rows"][0] for s in manifest["shards"]]
        self._open: dict[int, Any] = {}
        self._row = {c: i for i, c in enumerate(self.chunk_ids)}
        self._cache_len: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.chunk_ids)

    def check(self, sha256: bool = True) -> None:
        """Every shard present with its recorded size (and, with `sha256`, its recorded hash: reads every shard):
        a missing or damaged shard is a clear error."""
        for s in self.manifest["shards"]:
            f = self.path / s["file"]
            if not f.is_file():
                raise BankError(f"{f} is missing; the bank is incomplete: rebuild it")
            if f.stat().st_size != s["bytes"] or (sha256 and sha256_file(f) != s["sha256"]):
                raise BankError(f"{f} is corrupt (size or sha256 differs from {MANIFEST}); rebuild the bank")

    def disk_bytes(self) -> int:
        return sum(s["bytes"] for s in self.manifest["shards"])

    def row(self, chunk_id: str) -> int:
        return self._row[chunk_id]

    def rows(self, memory_id: str) -> list[int]:
        """The rows of one memory (a question's conversation / haystack / context)."""
        return [i for i, m in enumerate(self.memory_ids) if m == memory_id]

    def _shard(self, s: int):
        from safetensors import safe_open

        if s not in self._open:
            self._open[s] = safe_open(self.path / self.manifest["shards"][s]["file"], framework="pt")
        return self._open[s]

    def _locate(self, row: int) -> tuple[int, int]:
        if not 0 <= row < len(self):
            raise IndexError(f"row {row} out of range for a bank of {len(self)} chunks")
        s = bisect.bisect_right(self._starts, row) - 1
        return s, row - self._starts[s]

    def _concat(self, name: str) -> torch.Tensor:
        return torch.cat([self._shard(s).get_tensor(name) for s in range(len(self._starts))])

    def keys(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """All keys [N, H] (small: the caches stay on disk)."""
        return self._concat("keys").to(dtype)

    @property
    def cache_len(self) -> torch.Tensor:
        """Real states per content cache [N] (min(tokens, N_c))."""
        if self._cache_len is None:
            self._cache_len = self._concat("cache_len").long()
        return self._cache_len

    def key(self, row: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        s, j = self._locate(row)
        return self._shard(s).get_slice("keys")[j].to(dtype)

    def cache(self, row: int, last: int | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The last `last` (default N_c) REAL states of chunk `row`'s content cache [min(last, cache_len), H]."""
        s, j = self._locate(row)
        n = int(self.cache_len[row]) if last is None else min(last, int(self.cache_len[row]))
        if n <= 0:
            return torch.empty(0, self.hidden_size, dtype=dtype)
        return self._shard(s).get_slice("caches")[j, self.n_c - n:].to(dtype)


def describe(bank: Bank) -> dict[str, Any]:
    """A one-row summary for notebooks."""
    m = bank.manifest
    return {"chunks": len(bank), "memories": len(set(bank.memory_ids)), "tokens": m["tokens"],
            "truncated": m["truncated_chunks"], "shards": len(m["shards"]), "n_c": m["n_c"], "H": m["hidden_size"],
            "storage": m["storage_dtype"], "disk_MB": round(bank.disk_bytes() / 2**20, 2)}


def stats_row(stats: BuildStats) -> dict[str, Any]:
    return {**asdict(stats), "chunks_per_s": round(stats.chunks_per_s, 2), "tokens_per_s": round(stats.tokens_per_s, 1)}

