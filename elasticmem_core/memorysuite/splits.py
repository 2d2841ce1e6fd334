"""Frozen splits: one JSON file per setting in `splits/`, read by every load and checked against the data.

A split file says what is split (`unit`: context, conversation, question, game), the expected number of units per
split, the expected number of records of the published release, and the units of each split. Loading checks that
no unit is in two splits, that the counts match, and that every unit of the data has a split.

Where the authors published their ids (LoCoMo-MC10, PersonaMem-32K/128K) the file holds them. Where the ids
depend on the data (LongMemEval-MC10 question ids, ALFWorld game files) the file names a documented seed-42
`procedure` and `splits` is null: the first load of the real data derives the split, writes it into the file (to be
committed) and every later load uses and verifies the frozen lists. MemorySuite-mini writes its own split file
next to its data, in the same schema.
"""
from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Callable

from .reading import DataError, Records, read_json

SPLITS_DIR = Path(__file__).parent / "splits"
SPLIT_NAMES = ("bank", "train", "val", "test")


def package_split_file(setting: str) -> Path:
    return SPLITS_DIR / f"{setting}.json"


def _seed42_test20_val10(units: list[str], fixed: dict[str, str]) -> dict[str, list[str]]:
    """LongMemEval-MC10, by question. Test: the authors' freeze_split.sh (sorted ids, random.Random(42).shuffle,
    the first int(0.2 n) are test; 500 -> 400/100). Validation (the authors have none): the remaining ids sorted,
    shuffled again by random.Random(42), the first int(0.1 n) (500 -> 350/50/100)."""
    order = sorted(units)
    random.Random(42).shuffle(order)
    n_test = int(0.2 * len(order))
    test, rest = order[:n_test], sorted(order[n_test:])
    random.Random(42).shuffle(rest)
    n_val = int(0.1 * len(order))
    return {"train": sorted(rest[n_val:]), "val": sorted(rest[:n_val]), "test": sorted(test)}


def _alfworld_bank_seed42_val10(units: list[str], fixed: dict[str, str]) -> dict[str, list[str]]:
    """ALFWorld, by game. Bank: the games that have a skill card (the authors' M pool, 2,832). GRPO: the other
    successful replays (their T pool, 709), sorted, shuffled by random.Random(42); the first int(0.1 n) are
    validation (70), the rest train (639). Evaluation games (valid_seen/valid_unseen) come from ALFWorld itself."""
    bank = sorted(u for u in units if fixed.get(u) == "bank")
    pool = sorted(u for u in units if u not in fixed)
    random.Random(42).shuffle(pool)
    n_val = int(0.1 * len(pool))
    return {"bank": bank, "train": sorted(pool[n_val:]), "val": sorted(pool[:n_val])}


PROCEDURES: dict[str, Callable[[list[str], dict[str, str]], dict[str, list[str]]]] = {
    "seed42_test20_val10": _seed42_test20_val10,
    "alfworld_bank_seed42_val10": _alfworld_bank_seed42_val10,
}


def read_split_file(path: Path) -> dict:
    if not path.is_file():
        raise DataError(f"{path}: split file not found")
    sf = read_json(path)
    for key in ("setting", "unit", "expected", "splits"):
        if not isinstance(sf, dict) or key not in sf:
            raise DataError(f"{path} field {key!r}: missing")
    if sf["splits"] is None and sf.get("procedure") not in PROCEDURES:
        raise DataError(f"{path} field 'procedure': {sf.get('procedure')!r} is not one of {', '.join(PROCEDURES)}")
    return sf


def check_record_count(split_path: Path, data_path: Path, n_read: int) -> None:
    """The release's record count, where the split file records it (a different release would not match)."""
    expected = read_split_file(split_path).get("expected_records")
    if expected is not None and n_read != expected:
        raise DataError(f"{data_path}: {n_read} records, but the release the split {split_path} was made for "
                        f"has {expected}")


def assign(path: Path, units: set[str], records: Records, fixed: dict[str, str] | None = None,
           run_dir: str | Path | None = None) -> dict[str, str]:
    """unit -> split name for the units present in the data, from the split file at `path` (frozen on first use)."""
    sf = read_split_file(path)
    unit = sf["unit"]
    if sf["splits"] is None:
        sf["splits"] = PROCEDURES[sf["procedure"]](sorted(units), fixed or {})
        _check_counts(sf, path)  # a wrong release must not get frozen
        records.summary.notes.append(_freeze(sf, path, run_dir))

    split_of: dict[str, str] = {}
    for name, members in sf["splits"].items():
        if name not in SPLIT_NAMES:
            raise DataError(f"{path} field 'splits': unknown split {name!r} (splits are {', '.join(SPLIT_NAMES)})")
        for u in members:
            if u in split_of:
                raise DataError(f"{path}: {unit} {u!r} is in both {split_of[u]!r} and {name!r}")
            split_of[u] = name
    _check_counts(sf, path)

    outside = sorted(units - split_of.keys())
    if outside:
        raise DataError(f"{path}: {len(outside)} {unit}(s) of the data have no split, e.g. {outside[0]!r}")
    for u, name in (fixed or {}).items():
        if split_of.get(u) != name:
            raise DataError(f"{path}: {unit} {u!r} must be in {name!r}, the frozen split has {split_of.get(u)!r}")
    missing = sorted(split_of.keys() - units)
    if missing:
        message = f"{path}: {len(missing)} {unit}(s) of the split are absent from the data, e.g. {missing[0]!r}"
        if not records.skip_bad:
            raise DataError(message)
        records.summary.notes.append(message + " (their records were skipped)")
    records.summary.files["split"] = str(path)
    return {u: s for u, s in split_of.items() if u in units}


def _check_counts(sf: dict, path: Path) -> None:
    for name, n in sf["expected"].items():
        got = len(sf["splits"].get(name, []))
        if got != n:
            raise DataError(f"{path}: split {name!r} has {got} {sf['unit']}(s), expected {n}")


def _freeze(sf: dict, path: Path, run_dir: str | Path | None) -> str:
    """Write the derived split into the package file (to be committed), else into the run folder."""
    target = path if os.access(path, os.W_OK) else (Path(run_dir) / "splits" / path.name if run_dir else None)
    if target is None:
        return f"derived the {sf['setting']} split by {sf['procedure']} (not written: package read-only, no run folder)"
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(sf, indent=1) + "\n")
    os.replace(tmp, target)
    return f"froze the {sf['setting']} split (derived by {sf['procedure']}) into {target}: commit this file"
