"""MemorySuite: the paper's datasets as typed records, with frozen splits and full accounting.

    from elasticmem_core import memorysuite
    ds = memorysuite.load("mini-locomo", cfg, tokenizer=tok, run_dir=run.dir)
    ds.split("train"), ds.memories[q.memory_id].chunks, ds.summary

Real settings read the published files under `data.data_dir` (layout in README.md next to this file); mini
settings generate MemorySuite-mini (deterministic, skipped when the same files exist) and read it back through the
same loaders. With a tokenizer, chunks longer than `data.chunk_max_tokens` tokens are truncated and counted.
"""
from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

from ..core.experiment import resolve
from . import mini, splits
from .chunking import chunk_turns, make_chunks
from .loaders import load_alfworld, load_mc10, load_personamem
from .reading import DataError
from .records import Chunk, Dataset, Episode, LoadSummary, Memory, Question, Step

__all__ = ["load", "files", "checksums", "token_counts", "chunk_turns", "make_chunks", "DataError", "SETTINGS",
           "Chunk", "Dataset", "Episode", "LoadSummary", "Memory", "Question", "Step"]

# setting -> its files under data.data_dir (real) or under the mini folder (generated)
REAL_FILES = {
    "personamem-32k": ("personamem/questions_32k.csv", "personamem/shared_contexts_32k.jsonl"),
    "personamem-128k": ("personamem/questions_128k.csv", "personamem/shared_contexts_128k.jsonl"),
    "locomo-mc10": ("locomo-mc10/locomo_mc10.json",),
    "longmemeval-mc10": ("longmemeval-mc10/lme_s_mc10.json",),
    "alfworld": ("alfworld/expert_replays.json", "alfworld/skill_cards.json"),
}
MINI_FILES = {name: tuple(f"{name}/{f}" for f in fs) for name, fs in mini.FILES.items()}
SETTINGS = tuple(REAL_FILES) + tuple(MINI_FILES)
# setting -> published format (an MC10 set's memory is a conversation or a question's own haystack)
FORMAT = {"personamem-32k": "personamem", "personamem-128k": "personamem", "mini-personamem": "personamem",
          "locomo-mc10": "conversation", "mini-locomo": "conversation", "longmemeval-mc10": "haystack",
          "mini-longmemeval": "haystack", "alfworld": "alfworld"}
# published format -> its loader, called as loader(the setting's files, split file, setting, skip_bad, run_dir)
LOADERS = {
    "personamem": lambda f, *rest: load_personamem(f[0], f[1], *rest),
    "conversation": lambda f, split, setting, *rest: load_mc10(f[0], split, setting, "conversation", *rest),
    "haystack": lambda f, split, setting, *rest: load_mc10(f[0], split, setting, "haystack", *rest),
    "alfworld": lambda f, *rest: load_alfworld(f[0], f[1], *rest),
}


def mini_root(cfg, run_dir: str | Path | None = None) -> Path:
    """data.mini_dir, else <run folder>/data."""
    if cfg.data.mini_dir:
        return resolve(cfg.data.mini_dir)
    run = Path(run_dir) if run_dir else resolve(cfg.runtime.output_dir) / cfg.runtime.run_name
    return run / "data"


def files(setting: str, cfg, run_dir: str | Path | None = None) -> tuple[list[Path], Path]:
    """The data files of a setting and its split file."""
    if setting in REAL_FILES:
        root = resolve(cfg.data.data_dir)
        return [root / f for f in REAL_FILES[setting]], splits.package_split_file(setting)
    if setting in MINI_FILES:
        root = mini_root(cfg, run_dir)
        return [root / f for f in MINI_FILES[setting]], root / setting / mini.SPLIT_FILE
    raise DataError(f"unknown MemorySuite setting {setting!r}; use one of {', '.join(SETTINGS)}")


def load(setting: str, cfg, tokenizer=None, run_dir: str | Path | None = None) -> Dataset:
    """The Dataset of `setting` (see SETTINGS), split by its frozen split file, every record accounted for."""
    paths, split_file = files(setting, cfg, run_dir)
    skip = cfg.data.skip_bad_records
    if setting in MINI_FILES:
        mini.generate(setting, cfg.data.mini, mini_root(cfg, run_dir))
    ds = LOADERS[FORMAT[setting]](paths, split_file, setting, skip, run_dir)
    if tokenizer is None:
        ds.summary.notes.append("chunk lengths not checked against data.chunk_max_tokens (no tokenizer given)")
    else:
        _truncate(ds, tokenizer, cfg.data.chunk_max_tokens)
    return ds


CORPUS_SEED_OFFSET = 7_919   # the alignment corpus's generator seed: data.mini.seed + this (its own personas)


def alignment_corpus(dataset: Dataset, cfg, n: int, tokenizer=None, run_dir: str | Path | None = None) -> Dataset:
    """`n` MemorySuite-mini memories written for the alignment stage alone (align.corpus_memories): `dataset`'s
    generator run with its own seed (data.mini.seed + CORPUS_SEED_OFFSET) into <mini folder>/align-corpus/, every
    split of it corpus, its memory and chunk ids prefixed "align-corpus/". Refused (DataError naming the key) when a
    memory of it is one of `dataset`'s validation or test memories; a chunk whose text is in those memories and in
    none of the training ones (small talk every memory shares is not evidence of anything) is left out, and counted
    (summary.counts["chunks_dropped_as_validation_or_test_text"])."""
    from ..core.config import derive

    setting = dataset.setting
    if setting not in MINI_FILES:
        raise DataError(f"align.corpus_memories = {n}: an alignment corpus is generated for the MemorySuite-mini "
                        f"settings ({', '.join(MINI_FILES)}), not {setting!r}; set it to 0 (the training memories)")
    m = cfg.data.mini
    folder = mini_root(cfg, run_dir) / "align-corpus" / f"seed{m.seed + CORPUS_SEED_OFFSET}-n{n}"
    corpus_cfg = derive(cfg, "alignment corpus", data={"mini_dir": str(folder), "mini": {
        **cfg.to_dict()["data"]["mini"], "seed": m.seed + CORPUS_SEED_OFFSET, "n_memories": n,
        "extra_test_memories": 0}})
    ds = load(setting, corpus_cfg, tokenizer, run_dir)
    held_out = {q.memory_id for q in dataset.questions if q.split in ("val", "test")}
    trained = {c.text for mid, mem in dataset.memories.items() if mid not in held_out for c in mem.chunks}
    judged = {mid: [c.text for c in dataset.memories[mid].chunks] for mid in held_out}
    unique = {t: f"{mid}#{i}" for mid, texts in judged.items() for i, t in enumerate(texts) if t not in trained}
    for mid, mem in ds.memories.items():
        same = next((h for h, texts in judged.items() if texts == [c.text for c in mem.chunks]), None)
        if same is not None:
            raise DataError(f"align.corpus_memories: the alignment corpus ({folder}) has memory {mid!r}, which is the "
                            f"validation/test memory {same!r}: a corpus must be disjoint from the memories the stage "
                            f"is judged on")
    # a single turn may recur by chance (few values per fact): such chunks are left out of the corpus, and counted
    prefix, dropped = "align-corpus/", 0
    memories = {}
    for mid, mem in ds.memories.items():
        chunks = [replace(c, chunk_id=prefix + c.chunk_id, memory_id=prefix + mid) for c in mem.chunks
                  if c.text not in unique]
        dropped += len(mem.chunks) - len(chunks)
        memories[prefix + mid] = Memory(prefix + mid, chunks)
    ds.summary.counts["chunks_dropped_as_validation_or_test_text"] = dropped
    return replace(ds, setting=f"{setting}-align-corpus-n{n}", questions=[], memories=memories)


def token_counts(texts: list[str], tokenizer) -> list[int]:
    """Tokens per text (no special tokens: the bank encodes the raw chunk text)."""
    if not texts:
        return []
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def _truncate(ds: Dataset, tokenizer, max_tokens: int) -> None:
    """Cut chunks to their first `max_tokens` tokens (at a character offset, so the text stays verbatim)."""
    n = 0
    for memory in ds.memories.values():
        texts = [c.text for c in memory.chunks]
        if not texts:
            continue
        enc = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
        for i, offsets in enumerate(enc["offset_mapping"]):
            if len(offsets) > max_tokens:
                memory.chunks[i] = replace(memory.chunks[i], text=texts[i][:offsets[max_tokens - 1][1]])
                n += 1
    ds.summary.counts["chunks_truncated"] = n
    ds.summary.counts = dict(sorted(ds.summary.counts.items()))


def checksums(setting: str, cfg, run_dir: str | Path | None = None) -> list[dict]:
    """sha256 of each file of a setting against the value its split file records (None: not recorded yet)."""
    paths, split_file = files(setting, cfg, run_dir)
    expected = splits.read_split_file(split_file).get("sha256", {}) if split_file.is_file() else {}
    rows = []
    for path in paths:
        want = expected.get(path.name)
        got = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
        status = ("absent" if got is None else "unrecorded" if want is None else "ok" if got == want else "MISMATCH")
        rows.append({"setting": setting, "file": str(path), "sha256": got, "expected": want, "status": status})
    return rows
