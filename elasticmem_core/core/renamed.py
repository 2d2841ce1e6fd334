"""Params keys that have moved: a params file or override still naming one is refused with its new name, a config
saved by older code is read with them in their new places.

`RENAMED` maps each old dotted key to its new one. config.py refuses an old key (`ConfigError` naming the file, the
old and the new key); `upgrade` moves the old keys of saved sections (a checkpoint's config, a result's fingerprint,
an alignment recipe) so that they compare as today's code would have written them.

- data.alfworld_X -> alfworld.X: the ALFWorld setting's settings got their own section (config.AlfworldConfig).
"""
from __future__ import annotations

from typing import Any

RENAMED: dict[str, str] = {f"data.alfworld_{k}": f"alfworld.{k}" for k in (
    "data", "games_dir", "seed", "n_train", "n_seen", "n_unseen", "cards", "bank_ratio", "max_steps", "timeout_s",
    "history", "group_size", "max_new_tokens", "epochs", "max_train_steps", "sft_steps")}


def upgrade(sections: dict[str, Any]) -> dict[str, Any]:
    """Sections written by older code with each RENAMED key moved to its new place (where that is not set already);
    a copy, the rest unchanged. Params files are not upgraded: an old key there is refused with its new name."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in sections.items()}
    for old, new in RENAMED.items():
        (old_section, old_key), (new_section, new_key) = old.split(".", 1), new.split(".", 1)
        if isinstance(out.get(old_section), dict) and old_key in out[old_section]:
            value = out[old_section].pop(old_key)
            out.setdefault(new_section, {}).setdefault(new_key, value)
    return out
