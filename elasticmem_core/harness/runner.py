"""Notebook harness: run numbered notebooks headless through papermill with a params file, from any directory.

    elasticmem run notebooks/00_setup.ipynb -p params/mini.yaml [--set grpo.epochs=2] [--run-dir outputs/x] [--fresh]
    elasticmem reproduce -p params/mini.yaml        # every numbered notebook, in order
    elasticmem check-params                         # validate every params file under params/
    elasticmem verify-bank outputs/<run>/banks/<setting>   # every shard's sha256 against the bank's manifest

Inside a notebook, `run = runner.start(params, overrides, run_dir)` (the names of its parameters cell) gives the
validated config and the run folder.

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
import ast
import dataclasses
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

from ..core.config import Config, ConfigError, from_sections
from ..core.experiment import (
    FRESH_ENV,
    HEADLESS_ENV,
    code_version,
    environment,
    fresh,
    repo_root,
    resolve,
    seed_everything,
    write_json,
    write_yaml,
)
from .checks import apply_overrides, load, validate

NOTEBOOK_RE = re.compile(r"^\d\d_[\w-]+\.ipynb$")
OVERLAYS = ("baselines", "ablations", "grids")  # params/<these>/ hold overlays: only the keys they change


# ---- inside a notebook: its run ---------------------------------------------------------------------------------
@dataclasses.dataclass
class Run:
    """A notebook's view of its run: the validated config and the folder its outputs go to."""
    cfg: Config
    dir: Path

    def path(self, *parts: str) -> Path:
        p = self.dir.joinpath(*parts)
        p.parent.mkdir(parents=True, exist_ok=True)
        return p


# A notebook's parameters cell (tagged `parameters`): which params to run, nothing else. papermill `-p` replaces
# these; `papermill -f params/<file>.yaml` injects the file's sections instead, read as that file would be.
# (no "=" in the comments: papermill's own parameter inspection cannot parse such lines)
PARAMETERS_CELL = ("params = \"params/smoke.yaml\"  # a params file, or a list: a base, then overlays\n"
                   "overrides = []  # section.key overrides, as the CLI's --set takes them\n"
                   "run_dir = None  # the run folder (None: outputs/<runtime.run_name>)\n")
PARAMETER_NAMES = ("params", "overrides", "run_dir")


def start(params: str | list | None = None, overrides: list[str] | None = None, run_dir: str | None = None) -> Run:
    """A notebook's run: its validated config (the params file(s) plus overrides, or the sections papermill
    injected with `-f`), seeded, with thread settings applied and the run folder prepared.

    Called in the cell after the parameters cell. Under plain papermill a misspelled section (`gpro:` in the `-f`
    file) is refused here, with the CLI's message."""
    import torch

    source = "<notebook parameters>"
    injected = _injected()
    if injected:  # papermill -f params/x.yaml: the file's sections (a misspelled one is refused by from_sections)
        cfg = from_sections(source, **apply_overrides(injected, overrides))
    else:
        paths = [] if not params else [params] if isinstance(params, (str, Path)) else list(params)
        cfg = load([resolve(p) for p in paths] or None, overrides)
    validate(cfg, source)
    seed_everything(cfg.runtime.seed)
    if cfg.runtime.num_threads > 0:
        torch.set_num_threads(cfg.runtime.num_threads)
    folder = resolve(run_dir) if run_dir else resolve(cfg.runtime.output_dir) / cfg.runtime.run_name
    folder.mkdir(parents=True, exist_ok=True)
    params_file = folder / "params.yaml"
    if not params_file.exists():  # the runner writes it first; a bare papermill/JupyterLab run writes it here
        write_yaml(params_file, cfg.to_dict())
    return Run(cfg=cfg, dir=folder)


# the first line of the cell papermill injects
PAPERMILL_HEADER = "# Parameters"


def _assigned(source: str) -> set[str]:
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return set()
    return {t.id for node in tree.body if isinstance(node, (ast.Assign, ast.AnnAssign))
            for t in (node.targets if isinstance(node, ast.Assign) else [node.target]) if isinstance(t, ast.Name)}


def _injected() -> dict[str, Any]:
    """The names papermill injected (`-f params.yaml` or `-p`) other than the parameters cell's own, with their
    values: a params file's sections (or misspelled ones, which from_sections refuses as the CLI does: plain
    papermill only warns "Passed unknown parameter"). Outside an IPython kernel, or with nothing injected: {}."""
    ip = sys.modules.get("IPython")
    ip = ip.get_ipython() if ip is not None else None
    if ip is None:
        return {}
    history = list(getattr(getattr(ip, "history_manager", None), "input_hist_raw", None) or ip.user_ns.get("In", []))
    first = [(cell.lstrip().splitlines() or [""])[0].rstrip() for cell in history]
    injected = [i for i, line in enumerate(first) if line == PAPERMILL_HEADER]
    if not injected:
        return {}
    names = _assigned(history[injected[-1]]) - set(PARAMETER_NAMES)
    return {name: ip.user_ns.get(name) for name in sorted(names) if not name.startswith("PAPERMILL_")}


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
    return load([resolve(p) for p in _paths(params)] or None, overrides)


def _paths(params) -> list:
    return [] if not params else [params] if isinstance(params, (str, Path)) else list(params)


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

    from ..core.backbone import compute_dtype  # torch: imported only once notebooks run

    os.environ[HEADLESS_ENV] = "1"  # the kernels papermill starts draw one progress line per loop (experiment.progress)

    cfg = resolve_params(params, overrides)
    folder = resolve(run_dir) if run_dir else resolve(cfg.runtime.output_dir) / cfg.runtime.run_name
    folder.mkdir(parents=True, exist_ok=True)
    write_yaml(folder / "params.yaml", cfg.to_dict())
    record: dict[str, Any] = {
        "params_files": [str(p) for p in _paths(params)],
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
        resolve_params(params, pass_overrides)  # a bad pass is refused before its kernel starts
        parameters = {"params": [str(resolve(p)) for p in _paths(params)], "overrides": pass_overrides,
                      "run_dir": str(folder)}
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
                                      "--readme also rewrites the generated blocks of README and docs/results.md")
    p.add_argument("--run-dir", default="outputs/mini", help="the run folder (default outputs/mini)")
    p.add_argument("--reference-dir", default="outputs/reference",
                   help="where overlays' reference folders are found (default outputs/reference)")
    p.add_argument("--readme", action="store_true", help="rewrite README.md's blocks between the CLAIMS markers (the "
                   "ledger) and the COST markers (the two commands' measured cost), and docs/results.md's between the "
                   "RESULTS markers (the main table, from the run folder)")
    p = sub.add_parser("alfworld-pair", help="gather the ALFWorld results of runs that played the same games (e.g. one "
                                             "agent a session: alfworld.elasticmem false) into OUT, checked, with "
                                             "06's summary and paired comparisons (metrics/06_alfworld_*.json)")
    p.add_argument("out", help="the folder to write (results/, metrics/, sources.json), e.g. a reference folder")
    p.add_argument("folders", nargs="+", metavar="FOLDER", help="run or reference folders holding results/")
    sub.add_parser("check-params", help="validate every params/**/*.yaml")
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
            from ..core.evaluate import ResultsError
            from . import claims

            try:
                ledger = claims.build(args.run_dir, args.reference_dir)
            except (ResultsError, ValueError) as e:  # a results file that cannot enter the ledger: named in e
                print(f"elasticmem: error: {e}", file=sys.stderr)
                return 1
            print(claims.markdown(ledger))
            rewrote = ""
            if args.readme:  # the two generated blocks: README's ledger and docs/results.md's main table
                from .report import update_readme_cost, update_results_doc
                claims.update_readme(ledger)
                rewrote = f"; rewrote {update_readme_cost(args.run_dir)} and {update_results_doc(args.run_dir)}"
            print(f"elasticmem: wrote {resolve(args.run_dir) / 'metrics' / 'claims.json'}{rewrote}")
        elif args.cmd == "alfworld-pair":
            from ..alfworld import pairing
            from ..core.evaluate import ResultsError

            try:
                results, summary, paired = pairing.write(resolve(args.out), [resolve(f) for f in args.folders])
            except ResultsError as e:   # not the same games, or a result twice: named in e
                print(f"elasticmem: error: {e}", file=sys.stderr)
                return 1
            print("\n".join(pairing.lines(summary, paired)))
            from .figures import alfworld_success

            fig = resolve(args.out) / "figures" / "06_alfworld.png"   # 06's figure, of every agent gathered
            fig.parent.mkdir(parents=True, exist_ok=True)
            alfworld_success(results, 2000, 42).savefig(fig, dpi=120)
            print(f"elasticmem: wrote {resolve(args.out) / 'metrics'}, {fig} and sources.json")
        elif args.cmd == "check-params":
            files = sorted(resolve("params").rglob("*.yaml"))
            for f in files:
                # overlays (baselines, ablations) are checked on top of the embedded default
                resolve_params([resolve("params/mini.yaml"), f] if f.parent.name in OVERLAYS else f)
            print(f"elasticmem: {len(files)} params files valid")
        elif args.cmd == "verify-bank":
            from ..method.bank import BankError, verify

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
