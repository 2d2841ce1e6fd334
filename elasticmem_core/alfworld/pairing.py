"""ALFWorld agents played by different runs, paired on the same games (`elasticmem alfworld-pair`).

An agent of the overlay can take a session of its own on 2 cores (the cards-as-text agent ~2 h, imitation and
80 games): 06 with `alfworld.elasticmem: false` trains and plays only `alfworld.agents`. `combine` gathers the saved
results of several run (or reference) folders into one folder, after checking that they played the same games:
the same game ids per split with the same goal sentence and task type, the same `alfworld` params (the games, step
limit, history, action selection and imitation), backbone, setting and seed, and the same games manifest (each
folder must hold one). `summarize` then computes success per method and split (and both pooled) with its 95%
interval over games, success per task type, #Tok by part, and 06's pairs (`play.paired_success` over `play.PAIRS`),
with 2000 resamples drawn by seed 42 (06 uses eval.bootstrap); the claims ledger reads the folder as it reads one
run's.
"""
from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

from ..core import evaluate, stats
from ..core.evaluate import ResultsError
from ..core.experiment import write_json
from .play import PAIRS, paired_success, task_type_table

RECORD_FIELDS = ("qid", "objective", "task_type", "success", "reason", "steps", "tokens", "tok", "invalid_actions",
                 "seconds")   # what a game record must hold to be checked and summarised


def _games_params(result: dict) -> dict:
    """The `alfworld` params of a result's fingerprint that shape games and agents (less which agents ran)."""
    return evaluate.upgraded(result.get("fingerprint") or {}).get("params", {}).get("alfworld", {})


def _manifest(folder: Path, setting: str) -> tuple[Path, dict]:
    """The folder's games manifest: a reference folder's games_manifest.json or a run folder's data/<setting>/."""
    for path in (folder / "games_manifest.json", folder / "data" / setting / "manifest.json"):
        if path.is_file():
            m = json.loads(path.read_text())
            return path, {k: m.get(k) for k in ("params", "source", "games", "rejected")}
    raise ResultsError(f"{folder}: no games manifest (games_manifest.json, or data/{setting}/manifest.json as the run "
                       f"wrote it): without it another game set with the same ids and goal sentences cannot be told "
                       f"apart; copy the run's manifest there")


def combine(folders: list[str | Path]) -> list[dict]:
    """The ALFWorld results of `folders` (each `results/<method>/<setting>/<split>-seed<seed>.json`), one per
    (method, split), refused unless every one played the same games with the same seed; each result's `file` says
    where it is."""
    results, seen, manifests = [], {}, []
    for folder in map(Path, folders):
        if not (folder / "results").is_dir():
            raise ResultsError(f"{folder}: no results/ folder (a run folder or a reference folder)")
        mine = [r for r in evaluate.load_results(folder) if r.get("kind") == "alfworld"]
        if not mine:
            raise ResultsError(f"{folder}: no ALFWorld results under results/")
        for r in mine:
            key = (r["method"], r["split"])
            if key in seen:
                raise ResultsError(f"{r['file']}: {r['method']} {r['split']} is also in {seen[key]}: pass only one "
                                   f"folder that holds it")
            seen[key] = r["file"]
            if not r["records"]:
                raise ResultsError(f"{r['file']}: no game records")
            for i, x in enumerate(r["records"]):
                if missing := [k for k in RECORD_FIELDS if k not in x]:
                    raise ResultsError(f"{r['file']}: record {i} ({x.get('qid')}) lacks field(s) {', '.join(missing)}")
        results += mine
        manifests.append(_manifest(folder, mine[0]["setting"]))
    first = results[0]
    for r in results[1:]:   # one backbone, setting, seed and alfworld params
        for field in ("backbone", "setting", "seed"):
            if r[field] != first[field]:
                raise ResultsError(f"{r['file']}: field {field!r} is {r[field]!r}, {first['file']} has {first[field]!r}")
        a, b = _games_params(first), _games_params(r)
        if a != b:
            diff = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
            raise ResultsError(f"{r['file']}: fingerprint params alfworld." + ", alfworld.".join(diff)
                               + f" differ from {first['file']} ({', '.join(f'{b.get(k)!r} vs {a.get(k)!r}' for k in diff)})"
                               ": not the same games or agents")
    (path0, m0), *rest = manifests
    for path, m in rest:
        if diff := [k for k in m0 if m[k] != m0[k]]:
            raise ResultsError(f"{path}: the games manifest's {', '.join(diff)} differ from {path0} ("
                               + "; ".join(f"{k}: {m[k]} vs {m0[k]}" for k in diff) + "): another game set")
    games: dict = {}   # split -> {qid: (objective, task type, file)}
    for r in results:
        ref = games.setdefault(r["split"], {})
        mine = {x["qid"]: (x["objective"], x["task_type"]) for x in r["records"]}
        if ref and set(mine) != set(ref):
            other = next(iter(ref.values()))[2]
            only = sorted(set(mine) - set(ref))[:3], sorted(set(ref) - set(mine))[:3]
            raise ResultsError(f"{r['file']}: played {len(mine)} {r['split']} games, {other} {len(ref)}; "
                               f"{len(set(mine) ^ set(ref))} game ids differ (only here e.g. {only[0]}, only there "
                               f"e.g. {only[1]}): not the same games")
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
        reasons = dict(Counter(t["reason"].split(":")[0] for t in recs))   # as play.summarize counts them
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


def write(out: str | Path, folders: list[str | Path], n_boot: int = 2000,
          seed: int = 42) -> tuple[list[dict], dict, list[dict]]:
    """`combine(folders)` copied into `out`/results, with metrics/06_alfworld_summary.json,
    metrics/06_alfworld_paired.json and sources.json (each file's origin, sha256 and commit); returns (results as
    copied, summary, paired). Every destination is checked before anything is written: `out`/results may hold only
    the same bytes as the files gathered (a rerun), nothing else (a result no check has seen would enter the ledger)."""
    out = Path(out)
    results = combine(folders)
    copies = {}
    for r in results:
        src = Path(r["file"])
        copies[out / src.relative_to(src.parents[3])] = src
    for dst, src in copies.items():
        if dst.is_file() and dst.resolve() != src.resolve() and dst.read_bytes() != src.read_bytes():
            raise ResultsError(f"{dst}: already holds another result than {src}: write into an empty folder")
    if stale := sorted(set((out / "results").glob("*/*/*.json")) - set(copies)):
        raise ResultsError(f"{out}/results holds {len(stale)} file(s) not among the folders gathered (e.g. {stale[0]}): "
                           f"write into an empty folder")
    sources = []
    for r, (dst, src) in zip(results, copies.items()):
        data = src.read_bytes()
        if dst.resolve() != src.resolve():
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_bytes(data)
        where = src.resolve().relative_to(Path.cwd()) if src.resolve().is_relative_to(Path.cwd()) else src
        sources.append({"file": str(dst.relative_to(out)), "from": str(where), "sha256": hashlib.sha256(data).hexdigest(),
                        "commit": (r.get("code_version") or {}).get("commit")})
        r["file"] = str(dst)
    summary, paired = summarize(results, n_boot, seed)
    write_json(out / "metrics" / "06_alfworld_summary.json", summary)
    write_json(out / "metrics" / "06_alfworld_paired.json", paired)
    write_json(out / "sources.json", sources)
    return results, summary, paired


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
