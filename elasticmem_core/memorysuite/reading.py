"""Reading published files record by record, with errors that name the file, the record and the field.

Every loader routes a bad record through `Records.bad`: it raises `DataError` (the default), or, with
`data.skip_bad_records`, skips the record and lists it in the load summary. A missing file is always an error.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

from .records import LoadSummary

ROLES = ("system", "user", "assistant")


class DataError(ValueError):
    """A published data file is missing or malformed; the message names the file, the line/record and the field."""


def require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise DataError(f"{path}: file not found ({what}); see elasticmem_core/memorysuite/README.md for the layout")
    return path


class Records:
    """The bookkeeping of one load: counts by reason, and the bad-record policy (raise, or skip and list)."""

    def __init__(self, setting: str, skip_bad: bool):
        self.summary = LoadSummary(setting=setting)
        self.counts: Counter[str] = Counter()
        self.skip_bad = skip_bad

    def bad(self, error: DataError) -> None:
        if not self.skip_bad:
            raise error
        self.summary.skipped.append(str(error))
        self.counts["records_skipped"] += 1

    def finish(self) -> LoadSummary:
        self.summary.counts = dict(sorted(self.counts.items()))
        return self.summary


def json_lines(path: Path, records: Records) -> Iterator[tuple[str, Any]]:
    """(where, object) per non-empty line of a JSON-lines file; a malformed line goes to `records.bad`."""
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            records.counts["records_read"] += 1
            where = f"{path}:{lineno}"
            try:
                yield where, json.loads(line)
            except json.JSONDecodeError as e:
                records.bad(DataError(f"{where}: malformed JSON line ({e.msg} at column {e.colno})"))


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: malformed JSON ({e.msg} at column {e.colno})") from None


def get(record: Any, key: str, typ: type | tuple[type, ...], where: str) -> Any:
    """record[key], checked to be of type `typ` (bool is never an int here)."""
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if key not in record:
        raise DataError(f"{where} field {key!r}: missing")
    value = record[key]
    types = typ if isinstance(typ, tuple) else (typ,)
    if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
        names = " or ".join(t.__name__ for t in types)
        raise DataError(f"{where} field {key!r}: expected {names}, got {type(value).__name__} {_short(value)}")
    return value


def get_str_list(record: Any, key: str, where: str) -> list[str]:
    values = get(record, key, list, where)
    for i, v in enumerate(values):
        if not isinstance(v, str):
            raise DataError(f"{where} field {key!r}[{i}]: expected str, got {type(v).__name__} {_short(v)}")
    return values


def dialogue(turns: Any, where: str) -> list[dict[str, str]]:
    """A list of {role, content} turns, checked (role one of system/user/assistant, content a string)."""
    if not isinstance(turns, list):
        raise DataError(f"{where}: expected a list of turns, got {type(turns).__name__}")
    out = []
    for i, turn in enumerate(turns):
        role = get(turn, "role", str, f"{where} turn {i}").strip().lower()
        if role not in ROLES:
            raise DataError(f"{where} turn {i} field 'role': {turn['role']!r} is not one of {', '.join(ROLES)}")
        out.append({"role": role, "content": get(turn, "content", str, f"{where} turn {i}")})
    return out


def evidence_indices(record: dict, key: str, n_chunks: int, where: str) -> list[int]:
    """The optional evidence field (chunk indices into the record's memory); [] when absent."""
    if key not in record or record[key] is None:
        return []
    values = get(record, key, list, where)
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < n_chunks:
            raise DataError(f"{where} field {key!r}: {v!r} is not a chunk index of its memory (0..{n_chunks - 1})")
    return values


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."
