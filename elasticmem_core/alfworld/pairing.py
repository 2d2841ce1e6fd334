"""ALFWorld agents played by different runs, paired on the same games (`elasticmem alfworld-pair`).

An agent of the overlay can take a session of its own on 2 cores (the cards-as-text agent ~2 h, imitation and
80 games): 06 with `alfworld.elasticmem: false` trains and plays only `alfworld.agents`. `combine` gathers the saved
results of several run (or reference) folders into one folder, after checking that they played the same games:
the same game ids per split with the same goal sentence and task type, the same `alfworld` params (the games, step
limit, history, action selection and imitation), backbone, setting and seed, and the same games manifest where a
folder holds one. `summarize` then writes what 06's own cells write (success per method and split with its
interval, per task type, #Tok by part, and `play.paired_success`'s pairs), so the claims ledger reads the folder as
it reads a single run's.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from ..core import evaluate, stats
from ..core.evaluate import ResultsError
from ..core.experiment import write_json
from .play import PAIRS, paired_success, task_type_table

MANIFESTS = ("games_manifest.json", "data/alfworld-offline/manifest.json")   # a reference folder's, a run folder's


def _games_params(result: dict) -> dict:
    """The `alfworld` params of a result's fingerprint that shape games and agents (less which agents ran)."""
    return evaluate.upgraded(result.get("fingerprint") or {}).get("params", {}).get("alfworld", {})


def _manifest(folder: Path) -> tuple[Path, dict] | None:
    for name in MANIFESTS:
        if (folder / name).is_file():
            m = json.loads((folder / name).read_text())
            return folder / name, {"params": m.get("params"), "source": m.get("source"), "games": m.get("games")}
    return None


def combine(folders: list[str | Path]) -> list[dict]:
    """The ALFWorld results of `folders` (each `results/<method>/<setting>/<split>-seed<seed>.json`), one per
    (method, split, seed), refused unless every one played the same games; each result's `file` says where it is."""
    results, seen, manifests = [], {}, []
    for folder in map(Path, folders):
        if not (folder / "results").is_dir():
            raise ResultsError(f"{folder}: no results/ folder (a run folder or a reference folder)")
        mine = [r for r in evaluate.load_results(folder) if r.get("kind") == "alfworld"]
        if not mine:
            raise ResultsError(f"{folder}: no ALFWorld results under results/")
        for r in mine:
            key = (r["method"], r["split"], r["seed"])
            if key in seen:
                raise ResultsError(f"{r['file']}: {r['method']} {r['split']} seed {r['seed']} is also in "
                                   f"{seen[key]}: pass only one folder that holds it")
            seen[key] = r["file"]
        results += mine
        if (m := _manifest(folder)) is not None:
            manifests.append(m)
    first = results[0]
    for r in results[1:]:   # one backbone, setting and alfworld params
        for field in ("backbone", "setting"):
            if r[field] != first[field]:
                raise ResultsError(f"{r['file']}: field {field!r} is {r[field]!r}, {first['file']} has {first[field]!r}")
        a, b = _games_params(first), _games_params(r)
        if a != b:
            diff = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
            raise ResultsError(f"{r['file']}: fingerprint params alfworld." + ", alfworld.".join(diff)
                               + f" differ from {first['file']} ({', '.join(f'{b.get(k)!r} vs {a.get(k)!r}' for k in diff)})"
                               ": not the same games or agents")
    for path, m in manifests[1:]:
        if m != manifests[0][1]:
            raise ResultsError(f"{path}: the games manifest differs from {manifests[0][0]} (params {m['params']} vs "
                               f"{manifests[0][1]['params']}): another game set")
    games: dict = {}   # split -> {qid: (objective, task type, file)}
    for r in results:
        ref = games.setdefault(r["split"], {})
        mine = {x["qid"]: (x.get("objective"), x.get("task_type")) for x in r["records"]}
        if ref and set(mine) != set(ref):
            other = next(iter(ref.values()))[2]
            raise ResultsError(f"{r['file']}: played {len(mine)} {r['split']} games, {other} {len(ref)}; "
                               f"{len(set(mine) ^ set(ref))} game ids differ: not the same games")
        for qid, game in mine.items():
            if qid not in ref:
                ref[qid] = (*game, r["file"])
            for i, field in enumerate(("objective", "task_type")):
                if ref[qid][i] != game[i]:
                    raise ResultsError(f"{r['file']}: game {qid} has {field} {game[i]!r}, {ref[qid][2]} has "
                                       f"{ref[qid][i]!r}: not the same games")
    return results


def summarize(results: list[dict], n_boot: int = 2000, seed: int = 42) -> tuple[dict, list[dict]]:
    """(summary, paired): per method and split (and both splits pooled) success with its 95% interval over games,
    #Tok per episode by part, steps, end reasons, invalid actions and seconds per game; success per task type;
    and `play.paired_success` over PAIRS (a pair not played on both sides is left out)."""
    rows = []
    for r in results:
        recs = r["records"]
        x = [float(bool(t["success"])) for t in recs]
        b = stats.bootstrap_mean(x, None, n_boot, seed)
        reasons: dict = {}
        for t in recs:
            reasons[t["reason"].split(":")[0]] = reasons.get(t["reason"].split(":")[0], 0) + 1
        rows.append({"method": r["method"], "split": r["split"], "n": len(recs), "successes": int(sum(x)),
                     "success": b["mean"], "ci": b["ci"], "tok_per_episode": sum(t["tok"] for t in recs) / len(recs),
                     "tok_parts": {k: sum(t["tokens"][k] for t in recs) / len(recs) for k in recs[0]["tokens"]},
                     "steps_per_episode": sum(t["steps"] for t in recs) / len(recs), "reasons": reasons,
                     "invalid_actions": sum(t["invalid_actions"] for t in recs),
                     "seconds_per_game": sum(t["seconds"] for t in recs) / len(recs),
                     "commit": (r.get("code_version") or {}).get("commit"), "file": r["file"]})
    both = {}
    for m in dict.fromkeys(r["method"] for r in results):
        mine = [r for r in results if r["method"] == m]
        if len({r["split"] for r in mine}) > 1:
            recs = [t for r in mine for t in r["records"]]
            x = [float(bool(t["success"])) for t in recs]
            b = stats.bootstrap_mean(x, None, n_boot, seed)
            both[m] = {"n": len(x), "successes": int(sum(x)), "success": b["mean"], "ci": b["ci"],
                       "tok_per_episode": sum(t["tok"] for t in recs) / len(recs)}
    summary = {"methods": rows, "both_splits": both, "task_type": task_type_table(results)}
    return summary, paired_success(results, PAIRS, n_boot, seed)


def write(out: str | Path, folders: list[str | Path], n_boot: int = 2000, seed: int = 42) -> tuple[dict, list[dict]]:
    """`combine(folders)` copied into `out`/results (a file already there must be the same bytes), with
    metrics/06_alfworld_summary.json, metrics/06_alfworld_paired.json and sources.json (each file's origin and
    sha256); returns (summary, paired)."""
    out = Path(out)
    results = combine(folders)
    sources = []
    for r in results:
        src = Path(r["file"])
        dst = out / src.relative_to(src.parents[3])
        data = src.read_bytes()
        if dst.resolve() != src.resolve():
            if dst.is_file() and dst.read_bytes() != data:
                raise ResultsError(f"{dst}: already holds another {r['method']} {r['split']} result than {src}: "
                                   f"write into an empty folder or delete it")
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
        where = src.resolve().relative_to(Path.cwd()) if src.resolve().is_relative_to(Path.cwd()) else src
        sources.append({"file": str(dst.relative_to(out)), "from": str(where), "sha256": hashlib.sha256(data).hexdigest(),
                        "commit": (r.get("code_version") or {}).get("commit")})
        r["file"] = str(dst)
    summary, paired = summarize(results, n_boot, seed)
    write_json(out / "metrics" / "06_alfworld_summary.json", summary)
    write_json(out / "metrics" / "06_alfworld_paired.json", paired)
    write_json(out / "sources.json", sources)
    return summary, paired


def lines(summary: dict, paired: list[dict]) -> list[str]:
    """The summary and pairs as printed lines."""
    out = [f"{m['method']:22s} {m['split']:13s} {m['successes']:2d}/{m['n']} = {m['success']:.3f} "
           f"[{m['ci'][0]:.2f}, {m['ci'][1]:.2f}]  #Tok {m['tok_per_episode']:.0f} "
           f"({', '.join(f'{k} {v:.0f}' for k, v in m['tok_parts'].items())}), steps {m['steps_per_episode']:.1f}, "
           f"{m['reasons']}, {m['seconds_per_game']:.0f} s/game" for m in summary["methods"]]
    out += [f"{m:22s} both          {b['successes']:2d}/{b['n']} = {b['success']:.3f} [{b['ci'][0]:.2f}, {b['ci'][1]:.2f}]"
            for m, b in summary["both_splits"].items()]
    out += [f"{p['a']} - {p['b']} ({p['split']}, n {p['n']}): {p['difference']:+.3f} [{p['ci_low']:+.2f}, "
            f"{p['ci_high']:+.2f}], McNemar p {p['p_mcnemar']:.3f}; #Tok {p['tok_a']:.0f} vs {p['tok_b']:.0f}"
            for p in paired]
    return out
