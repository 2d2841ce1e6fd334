"""Notebook harness: run numbered notebooks headless through papermill with a params file, from any directory.

    elasticmem run notebooks/00_setup.ipynb -p params/mini.yaml [--set grpo.epochs=2] [--run-dir outputs/x] [--fresh]
    elasticmem reproduce -p params/mini.yaml        # every numbered notebook, in order
    elasticmem check-params                         # validate every params file under params/
    elasticmem sync-params                          # rewrite each notebook's parameters cell from params/smoke.yaml
    elasticmem verify-bank outputs/<run>/banks/<setting>   # every shard's sha256 against the bank's manifest

The params are validated through the typed config before any kernel starts (papermill itself only warns on an
unknown parameter). The run folder receives the executed notebooks, `params.yaml` (fully resolved), and
`run.json` (params file, overrides, seed, versions, code version, wall time per notebook, status). Saved results
whose params match are reused (evaluate.existing; one made by another code version with a loud warning); `--fresh`
($ELASTICMEM_FRESH=1) recomputes and overwrites them instead. An executed
notebook is written under a temporary name and renamed when it finished: a failed one is kept as
`<name>.FAILED.ipynb`, never as a finished notebook, and the command exits non-zero naming the cell.
"""
from __future__ import annotations

import argparse
import os
import pprint
import re
import sys
import time
from pathlib import Path
from typing import Any

from .config import SECTIONS, ConfigError, load, read_params
from .experiment import FRESH_ENV, HEADLESS_ENV, code_version, environment, fresh, repo_root, resolve, write_json, write_yaml

NOTEBOOK_RE = re.compile(r"^\d\d_[\w-]+\.ipynb$")
OVERLAYS = ("baselines", "ablations", "grids")  # params/<these>/ hold overlays: only the keys they change


class NotebookFailed(RuntimeError):
    """A cell raised; the message names the notebook, the cell and the error."""


def numbered_notebooks(folder: str | Path = "notebooks") -> list[Path]:
    """Every numbered notebook (NN_name.ipynb) in order."""
    return sorted(p for p in resolve(folder).iterdir() if NOTEBOOK_RE.match(p.name))


def reproduce_notebooks(params, overrides=()) -> list[Path]:
    """The numbered notebooks less the params' runtime.skip_notebooks (each name must be a numbered notebook)."""
    skip = set(resolve_params(params, overrides).runtime.skip_notebooks)
    nbs = numbered_notebooks()
    unknown = skip - {nb.stem for nb in nbs} - {nb.name for nb in nbs}
    if unknown:
        raise ConfigError(f"runtime.skip_notebooks names no numbered notebook: {', '.join(sorted(unknown))} "
                          f"(there are {', '.join(nb.stem for nb in nbs)})")
    return [nb for nb in nbs if nb.stem not in skip and nb.name not in skip]


def resolve_params(params, overrides: list[str] | None = None):
    """The validated Config for a params file (or a list: a base, then overlays) plus overrides.

    ConfigError names the file(s) and the key."""
    paths = [] if not params else [params] if isinstance(params, (str, Path)) else list(params)
    return load([resolve(p) for p in paths] or None, overrides)


def run_notebooks(notebooks: list[str | Path], params: str | Path | None = None, overrides: list[str] | None = None,
                  run_dir: str | Path | None = None, log_output: bool = False, fresh_results: bool = False) -> Path:
    """Execute notebooks in order into one run folder; returns the folder. Raises NotebookFailed on a failing cell.

    `fresh_results`: recompute saved results instead of reusing them ($ELASTICMEM_FRESH=1 for the kernels)."""
    if not fresh_results:
        return _run_notebooks(notebooks, params, overrides, run_dir, log_output)
    before = os.environ.get(FRESH_ENV)
    os.environ[FRESH_ENV] = "1"  # inherited by every kernel papermill starts
    try:
        return _run_notebooks(notebooks, params, overrides, run_dir, log_output)
    finally:
        if before is None:
            os.environ.pop(FRESH_ENV, None)
        else:
            os.environ[FRESH_ENV] = before


# notebooks that read every seed's results and run once, after the per-seed notebooks (`runtime.seeds`)
POOLED = ("07_figures",)


def _passes(notebooks, cfg, overrides) -> list[tuple[Path, list[str], str]]:
    """(notebook, overrides, subfolder of <run>/notebooks/) in execution order. With runtime.seeds, every notebook
    but the POOLED ones runs once per seed (runtime.seed and eval.seeds set to it: each seed trains its own reader
    and method into the same run folder), then the POOLED ones once with eval.seeds = all of them."""
    nbs = [resolve(nb) for nb in notebooks]
    seeds = list(cfg.runtime.seeds)
    if not seeds:
        return [(nb, list(overrides or []), "") for nb in nbs]
    per_seed = [nb for nb in nbs if nb.stem not in POOLED]
    pooled = [nb for nb in nbs if nb.stem in POOLED]
    out = [(nb, [*(overrides or []), f"runtime.seed={s}", f"eval.seeds=[{s}]"], f"seed{s}")
           for s in seeds for nb in per_seed]
    everyone = f"eval.seeds=[{', '.join(map(str, seeds))}]"
    return out + [(nb, [*(overrides or []), f"runtime.seed={seeds[0]}", everyone], "") for nb in pooled]


def _run_notebooks(notebooks, params, overrides, run_dir, log_output) -> Path:
    import papermill as pm

    from .backbone import compute_dtype  # torch: imported only once notebooks run

    os.environ[HEADLESS_ENV] = "1"  # the kernels papermill starts draw one progress line per loop (experiment.progress)

    cfg = resolve_params(params, overrides)
    folder = resolve(run_dir) if run_dir else resolve(cfg.runtime.output_dir) / cfg.runtime.run_name
    folder.mkdir(parents=True, exist_ok=True)
    write_yaml(folder / "params.yaml", cfg.to_dict())
    record: dict[str, Any] = {
        "params_files": [str(p) for p in ([params] if isinstance(params, (str, Path)) else params or [])],
        "overrides": list(overrides or []),
        "seed": cfg.runtime.seed,
        "seeds": list(cfg.runtime.seeds) or [cfg.runtime.seed],
        "compute_dtype": compute_dtype(cfg),  # what runtime.dtype (auto: detected) resolves to on this machine
        "code_version": code_version(),
        "fresh": fresh(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "environment": environment(),
        "notebooks": [],
        "status": "running",
    }
    write_json(folder / "run.json", record)
    total = time.perf_counter()
    for src, pass_overrides, sub in _passes(notebooks, cfg, overrides):
        if not src.is_file():
            raise FileNotFoundError(f"notebook {src} not found")
        parameters = {**resolve_params(params, pass_overrides).to_dict(), "run_dir": str(folder)}
        out = folder / "notebooks" / sub / src.name
        out.parent.mkdir(parents=True, exist_ok=True)
        partial = out.with_name(out.stem + ".partial.ipynb")
        entry = {"notebook": src.name, **({"pass": sub} if sub else {}), "status": "running"}
        record["notebooks"].append(entry)
        start = time.perf_counter()
        try:
            pm.execute_notebook(str(src), str(partial), parameters=parameters, kernel_name="python3",
                                cwd=str(repo_root()), log_output=log_output, progress_bar=False)
        except Exception as e:  # papermill's execution error, or a kernel that died
            failed = out.with_name(out.stem + ".FAILED.ipynb")
            if partial.exists():
                os.replace(partial, failed)
            error = _describe(e, failed)
            entry.update(status="failed", seconds=round(time.perf_counter() - start, 2), error=error)
            record.update(status="failed", seconds=round(time.perf_counter() - total, 2))
            write_json(folder / "run.json", record)
            raise NotebookFailed(f"{src.name} failed in {error}. Executed notebook kept at {failed}") from None
        os.replace(partial, out)
        entry.update(status="ok", seconds=round(time.perf_counter() - start, 2))
        write_json(folder / "run.json", record)
    record.update(status="ok", seconds=round(time.perf_counter() - total, 2),
                  finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    write_json(folder / "run.json", record)
    return folder


def _describe(e: Exception, executed: Path | None = None) -> str:
    """`cell N (first line): Error: message` for a failing cell, N counted in the source notebook; else the text."""
    ename, evalue = getattr(e, "ename", None), getattr(e, "evalue", None)
    if not ename:
        return f"{type(e).__name__}: {e}"
    where = "a cell"
    if executed is not None and executed.exists():
        import nbformat

        # number cells as in the source notebook: papermill adds an injected-parameters cell and an error banner
        added = {"injected-parameters", "papermill-error-cell-tag"}
        cells = [c for c in nbformat.read(executed, as_version=4).cells if not added & set(c.metadata.get("tags", []))]
        for i, c in enumerate(cells):
            if any(o.get("output_type") == "error" for o in c.get("outputs", [])):
                first = (c.source.strip().splitlines() or [""])[0][:60]
                where = f"cell {i} (`{first}`)"
                break
    return f"{where}: {ename}: {evalue}"


# ----------------------------------------------------------------------------------------------------------------
PARAMS_HEADER = ("# Parameters: smoke-sized defaults, identical to params/smoke.yaml (kept in sync by\n"
                 "# `elasticmem sync-params`). `papermill -f params/<file>.yaml` replaces whole sections.\n")


def parameters_source(sections: dict[str, Any]) -> str:
    lines = [PARAMS_HEADER + "# run folder; None = outputs/{runtime.run_name}", "run_dir = None"]
    for name in SECTIONS:
        body = pprint.pformat(sections.get(name, {}), sort_dicts=False, width=110)
        lines.append(f"{name} = {body}")
    return "\n".join(lines) + "\n"


def sync_parameters(notebook: Path, smoke: Path) -> bool:
    """Rewrite the notebook's `parameters` cell from the smoke params; True if it changed."""
    import nbformat

    nb = nbformat.read(notebook, as_version=4)
    source = parameters_source(read_params(smoke))
    for cell in nb.cells:
        if "parameters" in cell.get("metadata", {}).get("tags", []):
            if cell.source == source:
                return False
            cell.source = source
            nbformat.write(nb, notebook)
            return True
    raise ConfigError(f"{notebook}: no cell tagged 'parameters'")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="elasticmem", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    for name, help_ in (("run", "run the given notebooks"), ("reproduce", "run every numbered notebook in order")):
        p = sub.add_parser(name, help=help_)
        if name == "run":
            p.add_argument("notebooks", nargs="+")
        p.add_argument("-p", "--params", action="append", default=None,
                       help="params file (default params/mini.yaml); repeat to layer overlays, e.g. "
                            "-p params/mini.yaml -p params/ablations/budget_uniform.yaml")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
        p.add_argument("--run-dir", default=None, help="run folder (default outputs/<runtime.run_name>)")
        p.add_argument("--log-output", action="store_true", help="stream cell output to this terminal")
        p.add_argument("--fresh", action="store_true",
                       help=f"recompute and overwrite saved results instead of reusing them (sets {FRESH_ENV}=1 for "
                            "the kernels); training still resumes from its checkpoints")
    p = sub.add_parser("claims", help="build a run's claims ledger (metrics/claims.json) from its results files; "
                                      "--readme also rewrites README's generated claims block from it")
    p.add_argument("--run-dir", default="outputs/mini", help="the run folder (default outputs/mini)")
    p.add_argument("--reference-dir", default="outputs/reference",
                   help="where overlays' reference folders are found (default outputs/reference)")
    p.add_argument("--readme", action="store_true", help="rewrite README.md's block between the CLAIMS markers")
    sub.add_parser("check-params", help="validate every params/**/*.yaml")
    sub.add_parser("sync-params", help="rewrite notebook parameters cells from params/smoke.yaml")
    p = sub.add_parser("verify-bank", help="check every shard of bank folder(s) against the sha256 its build recorded "
                                           "(a normal load checks sizes only, unless bank.verify is true)")
    p.add_argument("folders", nargs="+", metavar="BANK_FOLDER", help="e.g. outputs/<run>/banks/<setting>")
    args = parser.parse_args(argv)
    if args.cmd in ("run", "reproduce") and not args.params:
        args.params = ["params/mini.yaml"]

    try:
        if args.cmd in ("run", "reproduce"):
            nbs = args.notebooks if args.cmd == "run" else reproduce_notebooks(args.params, args.overrides)
            print(f"elasticmem: running {len(nbs)} notebook(s) with {' + '.join(args.params)}", flush=True)
            folder = run_notebooks(nbs, args.params, args.overrides, args.run_dir, args.log_output, args.fresh)
            print(f"elasticmem: done; run folder {folder}")
        elif args.cmd == "claims":
            from . import claims
            from .evaluate import ResultsError

            try:
                ledger = claims.build(args.run_dir, args.reference_dir)
            except (ResultsError, ValueError) as e:  # a results file that cannot enter the ledger: named in e
                print(f"elasticmem: error: {e}", file=sys.stderr)
                return 1
            print(claims.markdown(ledger))
            print(f"elasticmem: wrote {resolve(args.run_dir) / 'metrics' / 'claims.json'}"
                  + (f"; rewrote {claims.update_readme(ledger)}" if args.readme else ""))
        elif args.cmd == "check-params":
            files = sorted(resolve("params").rglob("*.yaml"))
            for f in files:
                # overlays (baselines, ablations) are checked on top of the embedded default
                resolve_params([resolve("params/mini.yaml"), f] if f.parent.name in OVERLAYS else f)
            print(f"elasticmem: {len(files)} params files valid")
        elif args.cmd == "sync-params":
            smoke = resolve("params/smoke.yaml")
            for nb in numbered_notebooks():
                if sync_parameters(nb, smoke):
                    print(f"updated {nb.name}")
        elif args.cmd == "verify-bank":
            from .bank import BankError, verify

            for folder in args.folders:
                try:
                    done = verify(resolve(folder))
                except BankError as e:
                    print(f"elasticmem: error: {e}", file=sys.stderr)
                    return 1
                print(f"elasticmem: {folder}: {done['shards']} shard(s), {done['bytes'] / 2**20:.1f} MiB, sizes and "
                      f"sha256 as recorded")
    except (ConfigError, NotebookFailed, FileNotFoundError) as e:
        print(f"elasticmem: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
