"""Evaluation: greedy answers on a split, the paper's metrics, intervals, paired comparisons and results files.

    result = evaluate.evaluate(model.answer, questions, path, meta, cfg, bank=bank)   # or reused if `path` exists
    table = evaluate.summary_table(evaluate.load_results(run_dir))

Metrics (the paper's): accuracy overall, per question type and per memory; #Tok per question = task text
(question, control token, instruction, options) + injected memory (soft tokens, or text tokens, with their "\n"
separators) + generated output tokens, counted by the one injection layout every method goes through, so the unit is
the same for every method. Averages across settings are weighted by test-set size, as the paper's (which equals
the accuracy pooled over all questions). Intervals: percentile bootstrap, 95%, over memories (stats.py: questions of
one memory share its chunks, so whole memories are resampled; each record carries its `memory_id`). Two methods on
the same questions: a paired bootstrap of the accuracy difference over memories with its p-value, and McNemar's exact
test on the discordant pairs (which treats questions as independent). Records without a memory id (results files
older than memory ids) fall back to questions as the unit, with a warning; `ci_unit` in a summary says which.

Cost per question: wall time of its batch divided by the batch size, and peak memory: on CUDA the largest
`torch.cuda.max_memory_allocated` during its batch (tensors only), on CPU the process's peak resident set size so
far (`ru_maxrss`, a high-water mark of the whole process: model, bank and data included; it never goes down).

One results file per method x setting x split x seed: `<run>/results/<method>/<setting>/<split>-seed<seed>.json`,
with the resolved params, the environment (versions, git commit), the code version (`code_version`: commit and
whether the tree was dirty) and every per-question record. A file that exists for the same method, backbone and
params is reused, not recomputed; one made with other params is an error. One made by another code version (or with
none recorded) is reused with a loud warning naming both versions; $ELASTICMEM_FRESH=1 (`elasticmem run --fresh`)
recomputes and overwrites instead.
"""
from __future__ import annotations

import json
import math
import sys
import time
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch

from . import stats
from .backbone import compute_dtype
from .config import Config
from .experiment import FRESH_ENV, code_version, environment, fresh, peak_memory_mb, write_json
from .renamed import upgrade

# keys that do not change a result (where files go, threads, which notebooks run what), left out of the fingerprint
_NOT_RESULT_SHAPING = {"runtime": ("run_name", "output_dir", "cache_dir", "num_threads", "chat_prompt", "max_new_tokens"),
                       "eval": ("splits", "seeds", "bootstrap", "baselines", "ablations",
                                "frontier_uniform", "frontier_thresholds", "frontier", "frontier_prices",
                                "frontier_seeds", "frontier_steps", "frontier_questions_per_step",
                                "frontier_policy_lr", "frontier_clip_eps", "frontier_group_size", "frontier_dense_prices", "frontier_train_split",
                                "frontier_sees_length", "frontier_oracle_prices", "frontier_probe", "retrieval_study", "retrieval_seeds",
                                "retrieval_variants",
                                "compression", "compression_caches", "compression_budgets", "compression_seeds",
                                "compression_align_steps", "compression_projector"),
                       "grpo": ("settings",),
                       # which agents 06 trains: each agent's own results depend on its memory mode only
                       "alfworld": ("agents", "elasticmem")}


def result_shaping(params: dict) -> dict:
    """`params` (a config's dict, or a saved fingerprint's: old keys already upgraded) less _NOT_RESULT_SHAPING, so
    that a key left out since a result was saved does not count as a difference."""
    return {section: ({k: v for k, v in values.items() if k not in _NOT_RESULT_SHAPING.get(section, ())}
                      if isinstance(values, dict) else values) for section, values in params.items()}


# The paper's reported numbers (Table 1: Qwen2.5, the real MemorySuite), for tables that show them beside
# ours, always labelled as the paper's. accuracy / #Tok; "weighted" = the size-weighted QA average.
PAPER_QA = [
    {"backbone": "Qwen2.5-3B", "method": "ElasticMem", "setting": "personamem-32k", "accuracy": 0.74},
    {"backbone": "Qwen2.5-3B", "method": "ElasticMem", "setting": "personamem-128k", "accuracy": 0.77},
    {"backbone": "Qwen2.5-3B", "method": "ElasticMem", "setting": "locomo-mc10", "accuracy": 0.74},
    {"backbone": "Qwen2.5-3B", "method": "ElasticMem", "setting": "longmemeval-mc10", "accuracy": 0.68},
    {"backbone": "Qwen2.5-3B", "method": "ElasticMem", "setting": "weighted", "accuracy": 0.742, "tok": 589},
    {"backbone": "Qwen2.5-3B", "method": "MemGen (best baseline; #Tok as the paper counts it)", "setting": "weighted", "accuracy": 0.588, "tok": 291},
    {"backbone": "Qwen2.5-7B", "method": "ElasticMem", "setting": "personamem-32k", "accuracy": 0.90},
    {"backbone": "Qwen2.5-7B", "method": "ElasticMem", "setting": "personamem-128k", "accuracy": 0.84},
    {"backbone": "Qwen2.5-7B", "method": "ElasticMem", "setting": "locomo-mc10", "accuracy": 0.84},
    {"backbone": "Qwen2.5-7B", "method": "ElasticMem", "setting": "longmemeval-mc10", "accuracy": 0.76},
    {"backbone": "Qwen2.5-7B", "method": "ElasticMem", "setting": "weighted", "accuracy": 0.832, "tok": 443},
    {"backbone": "Qwen2.5-7B", "method": "MemGen (best baseline; #Tok as the paper counts it)", "setting": "weighted", "accuracy": 0.668, "tok": 291},
    {"backbone": "Qwen2.5-7B", "method": "LoRA + text memory, SFT", "setting": "locomo-mc10", "accuracy": 0.599},
    {"backbone": "Qwen2.5-7B", "method": "LoRA + text memory, GRPO", "setting": "locomo-mc10", "accuracy": 0.650},
    {"backbone": "Qwen2.5-7B", "method": "higher-rank LoRA + text memory, GRPO", "setting": "locomo-mc10",
     "accuracy": 0.682},
    {"backbone": "Qwen2.5-7B", "method": "identity projector", "setting": "locomo-mc10", "accuracy": 0.739},
    {"backbone": "Qwen2.5-7B", "method": "ElasticMem (controlled)", "setting": "locomo-mc10", "accuracy": 0.841},
]
# The paper's ALFWorld success rates (seen + unseen) and #Tok per episode, with the best baseline it names.
PAPER_ALFWORLD = [
    {"backbone": "Qwen2.5-3B", "method": "ElasticMem", "success": 0.449, "tok": 11917},
    {"backbone": "Qwen2.5-3B", "method": "MemGen (best baseline)", "success": 0.270},
    {"backbone": "Qwen2.5-7B", "method": "ElasticMem", "success": 0.529, "tok": 9033},
    {"backbone": "Qwen2.5-7B", "method": "Mem0 (best baseline)", "success": 0.416},
]
# which real setting a MemorySuite-mini setting imitates (for placing the paper's number beside ours)
MINI_COUNTERPART = {"mini-personamem": "personamem-32k", "mini-locomo": "locomo-mc10",
                    "mini-longmemeval": "longmemeval-mc10"}


class ResultsError(RuntimeError):
    """Results that cannot be reused or put in one table; the message names the file and what differs."""


# ---- metrics on known inputs ----------------------------------------------------------------------------------
class QuestionLevelWarning(UserWarning):
    """Records without memory ids: an interval resamples questions, which understates it when questions share a
    memory."""


def memory_clusters(memory_ids: list) -> list | None:
    """The resampling units of an interval, one per question: its memory id; None (each question its own unit)
    when one is missing (a results file older than memory ids: warned) or when every question has the same memory
    (ALFWorld's one skill bank, one memory's own accuracy: there is no other memory to resample)."""
    ids = list(memory_ids)
    if any(m is None for m in ids):
        warnings.warn("records without memory_id (a results file older than memory ids): intervals resample "
                      "questions, not memories, and are too narrow where questions share a memory",
                      QuestionLevelWarning, stacklevel=3)
        return None
    return ids if len(set(ids)) > 1 else None


def record_clusters(records: list[dict]) -> list | None:
    """memory_clusters of answered-question records."""
    return memory_clusters([r.get("memory_id") for r in records])


def ci_unit(clusters) -> str:
    return "question" if clusters is None else "memory"


def bootstrap_ci(values, n_boot: int = 1000, seed: int = 0, level: float = 0.95,
                 clusters=None) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `values` (e.g. 0/1 correctness; or one row per seed),
    resampling `clusters` (memory ids, one per question; None: questions) and seeds: stats.bootstrap_mean."""
    if np.size(values) == 0:
        return float("nan"), float("nan")
    lo, hi = stats.bootstrap_mean(values, clusters, n_boot, seed, level)["ci"]
    return lo, hi


def weighted_average(values, weights) -> float:
    """Average of per-setting values weighted by test-set size (the paper's cross-setting average)."""
    v, w = np.asarray(values, dtype=float), np.asarray(weights, dtype=float)
    return float((v * w).sum() / w.sum())


def mcnemar_exact(a_only: int, b_only: int) -> float:
    """Two-sided exact McNemar p-value: a binomial test of the discordant pairs against 1/2."""
    n = a_only + b_only
    if n == 0:
        return 1.0
    k = min(a_only, b_only)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def correctness(runs: list[list[dict]], what: str = "paired comparison") -> tuple[list, np.ndarray, list | None]:
    """Runs on the same questions (one record list each: seeds, or two methods), aligned by qid: the sorted qids,
    the [runs, questions] 0/1 correctness and the memory clusters (`record_clusters`; from whichever run has
    memory ids)."""
    by_qid = [{r["qid"]: r for r in run} for run in runs]
    qids = sorted(by_qid[0])
    for other in by_qid[1:]:
        if set(other) != set(qids):
            raise ResultsError(f"{what} needs the same questions: {len(set(other) ^ set(qids))} qids differ")
    x = np.array([[float(b[q]["correct"]) for q in qids] for b in by_qid])
    ids = [next((b[q]["memory_id"] for b in by_qid if b[q].get("memory_id") is not None), None) for q in qids]
    return qids, x, memory_clusters(ids)


def paired_comparison(a: list[dict], b: list[dict], n_boot: int = 1000, seed: int = 0) -> dict:
    """Method A against method B on the same questions (records matched by qid): the difference with its paired
    bootstrap interval and p over memories (stats.paired_difference), and McNemar's exact p."""
    qids, (x, y), clusters = correctness([a, b])
    d = stats.paired_difference(x, y, clusters, n_boot, seed)
    a_only, b_only = int(((x == 1) & (y == 0)).sum()), int(((x == 0) & (y == 1)).sum())
    return {"n": len(qids), "units": d["clusters"], "ci_unit": ci_unit(clusters), "accuracy_a": float(x.mean()),
            "accuracy_b": float(y.mean()), "difference": d["difference"], "ci_low": d["ci"][0],
            "ci_high": d["ci"][1], "p": d["p"], "a_only": a_only, "b_only": b_only,
            "p_mcnemar": mcnemar_exact(a_only, b_only)}


def total_tokens(tokens: dict) -> int:
    """#Tok of one question: task text + injected memory + output."""
    return int(tokens["task_text"]) + int(tokens["memory"]) + int(tokens["output"])


def summarize(records: list[dict], n_boot: int = 1000, seed: int = 0, clusters=None) -> dict:
    """Accuracy with its interval over memories (`clusters`, default the records' memory ids: record_clusters),
    mean #Tok by part, and cost per question."""
    correct = [float(r["correct"]) for r in records]
    clusters = record_clusters(records) if clusters is None and records else clusters
    lo, hi = bootstrap_ci(correct, n_boot, seed, clusters=clusters)
    part = lambda k: float(np.mean([r["tokens"][k] for r in records])) if records else float("nan")  # noqa: E731
    return {"n": len(records), "accuracy": float(np.mean(correct)) if records else float("nan"),
            "ci_low": lo, "ci_high": hi, "ci_unit": ci_unit(clusters),
            "units": len(set(clusters)) if clusters is not None else len(records),
            "tok": float(np.mean([r["tok"] for r in records])) if records else float("nan"),
            # #Tok plus what a method's own encoder read beside the reasoner (MemGen-style: its weaver)
            "tok_with_weaver": float(np.mean([r["tok"] + r.get("weaver_tokens", 0) for r in records]))
            if records else float("nan"),
            # what a text-memory agent read and wrote in its tool steps, per question (AgeMem-style)
            "tool_tokens": float(np.mean([r.get("tool_tokens", 0) for r in records])) if records else float("nan"),
            "task_text": part("task_text"), "memory": part("memory"), "output": part("output"),
            "seconds_per_question": float(np.mean([r["seconds"] for r in records])) if records else float("nan"),
            "peak_mb": float(max((r["peak_mb"] for r in records), default=float("nan"))),
            "truncated_questions": sum(r.get("truncated_chunks", 0) > 0 for r in records)}


# ---- answering a split ----------------------------------------------------------------------------------------
def answer_questions(answer: Callable[[list], list[dict]], questions, batch_size: int, bank=None,
                     device: torch.device | str = "cpu", progress: bool = True) -> list[dict]:
    """Greedy answers in batches through `answer` (ElasticMem.answer or a baseline's), one record per question."""
    from .experiment import progress as tqdm

    device = torch.device(device)
    records = []
    for i in tqdm(range(0, len(questions), batch_size), desc="answer", disable=not progress, leave=False):
        batch = questions[i:i + batch_size]
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        t0 = time.perf_counter()
        outs = answer(batch)
        seconds = (time.perf_counter() - t0) / len(batch)
        peak = peak_memory_mb(device)
        for q, o in zip(batch, outs):
            evidence = [bank.row(c) for c in q.evidence] if bank is not None else []
            records.append({**o, "question_type": q.question_type, "memory_id": q.memory_id, "split": q.split,
                            "tok": total_tokens(o["tokens"]), "evidence_rows": evidence,
                            "in_evidence": [r in evidence for r in o.get("rows", [])],
                            "seconds": seconds, "peak_mb": peak})
    return records


# ---- results files --------------------------------------------------------------------------------------------
def result_path(run_dir: str | Path, method: str, setting: str, split: str, seed: int) -> Path:
    return Path(run_dir) / "results" / method / setting / f"{split}-seed{seed}.json"


def fingerprint(cfg: Config, meta: dict) -> dict:
    """What must agree for a saved result to be reused: method, setting, split, seed, backbone, params."""
    params = cfg.to_dict()
    params["runtime"]["dtype"] = compute_dtype(cfg)  # auto resolves per machine: a bf16 result is not an fp32 one
    params = result_shaping(params)
    if params["align"]["steps"] == 0:  # no alignment stage: how it would have run shapes nothing
        params["align"] = {"steps": 0}
    for own in ("memgen", "mem0", "agemem"):  # a baseline's own section shapes only its own results
        if params["eval"]["method"] != own:
            del params[own]
    return {**meta, "params": params}


def _without_new_defaults(now: dict, saved: dict) -> dict:
    """`now` less the params a saved fingerprint predates (a section or key it lacks) where they are at their
    defaults: a parameter added later, left at its default, computes what the code before it did."""
    defaults = json.loads(json.dumps(fingerprint(Config(), {})["params"], default=str))
    params, was = dict(now.get("params", {})), saved.get("params", {})
    for section, values in list(params.items()):
        if section not in was:
            if values == defaults.get(section):
                del params[section]
            continue
        if isinstance(values, dict):
            params[section] = {k: v for k, v in values.items()
                               if k in was[section] or v != defaults.get(section, {}).get(k)}
    return {**now, "params": params}


def upgraded(saved: dict) -> dict:
    """A saved fingerprint (or an alignment recipe: anything with `params`) with the params keys that have moved since
    (renamed.RENAMED: data.alfworld_* -> alfworld.*) in their new places and without the keys left out since
    (result_shaping): a result of older code compares as today's code would have fingerprinted it."""
    if not isinstance(saved.get("params"), dict):
        return saved
    return {**saved, "params": result_shaping(upgrade(saved["params"]))}


def _differences(a, b, where: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b)) for d in _differences(a.get(k), b.get(k), f"{where}.{k}".strip("."))]
    return [] if a == b else [f"{where}: {a!r} -> {b!r}"]


class CodeVersionWarning(UserWarning):
    """A reused result was made by another code version (or records none)."""


def _version(v) -> str:
    if not isinstance(v, dict):
        return "an unrecorded code version (a file older than code versions)"
    if not v.get("commit"):
        return "an unknown commit (no git checkout)"
    return f"commit {v['commit']}" + (" with uncommitted changes" if v.get("dirty") else "")


def warn_code_version(path: str | Path, saved: dict) -> None:
    """Say loudly (a warning and stderr) that the result at `path` is reused although another code version made it."""
    was, now = saved.get("code_version"), code_version()
    if isinstance(was, dict) and was.get("commit") and was == now:
        return
    msg = (f"REUSING {path}: it was computed by {_version(was)}, this code is {_version(now)}; its params match, so "
           f"it is reused and a code change since (a reward, a policy) is NOT in its numbers. To recompute, rerun "
           f"with {FRESH_ENV}=1 (or `elasticmem run/reproduce --fresh`).")
    warnings.warn(msg, CodeVersionWarning, stacklevel=3)
    print(f"WARNING: {msg}", file=sys.stderr, flush=True)


def fingerprint_differences(saved: dict, cfg: Config, meta: dict) -> list[str]:
    """Where a saved fingerprint differs from this run's ("section.key: saved -> now"), params renamed since read in
    their new places and params added since ignored where they are at their defaults."""
    was = upgraded(saved)
    return _differences(was, _without_new_defaults(json.loads(json.dumps(fingerprint(cfg, meta), default=str)), was))


def existing(path: str | Path, cfg: Config, meta: dict, even_fresh: bool = False) -> dict | None:
    """The saved result at `path` if it was made by the same method, backbone and params; None if there is none,
    or under $ELASTICMEM_FRESH=1 (recompute) unless `even_fresh` (a training folder's record: training resumes).
    Reusing one made by another code version warns (warn_code_version)."""
    path = Path(path)
    if not path.is_file() or (fresh() and not even_fresh):
        return None
    saved = json.loads(path.read_text())
    diff = fingerprint_differences(saved["fingerprint"], cfg, meta)
    if diff:
        raise ResultsError(f"{path} was made with other settings ({'; '.join(diff[:5])}); delete it to recompute, "
                           f"or use another run folder")
    warn_code_version(path, saved)
    return saved


def save_result(path: str | Path, cfg: Config, meta: dict, body: dict) -> dict:
    """Write a computed result (meta + body) with its fingerprint and code version, as `evaluate` writes one, so that
    `existing` reuses it, refuses it under other params, or recomputes it under --fresh; returns it as saved."""
    write_json(path, {**meta, "fingerprint": fingerprint(cfg, meta), "code_version": code_version(),
                      "environment": environment(), **body})
    return json.loads(Path(path).read_text())


def cached(path: str | Path, cfg: Config, meta: dict, compute: Callable[[], dict]) -> dict:
    """The result saved at `path` (`existing`), or `compute()`'s body saved there (`save_result`)."""
    got = existing(path, cfg, meta)
    return got if got is not None else save_result(path, cfg, meta, compute())


def evaluate(answer: Callable[[list], list[dict]], questions, path: str | Path, meta: dict, cfg: Config,
             bank=None, device="cpu", progress: bool = True) -> dict:
    """Answer `questions` and save the result at `path`, or reuse the result already saved there.

    `meta` names the result: method, setting, split, seed, backbone (identity) and anything else that identifies it
    (e.g. the checkpoint evaluated). Questions are capped by eval.max_questions.
    """
    saved = existing(path, cfg, meta)
    if saved is not None:
        return current_summary(saved)
    cap = cfg.eval.max_questions
    questions = list(questions)[:cap] if cap > 0 else list(questions)
    records = answer_questions(answer, questions, cfg.eval.batch_size, bank, device, progress)
    result = {**meta, "fingerprint": fingerprint(cfg, meta), "params": cfg.to_dict(), "code_version": code_version(),
              "environment": environment(),
              "memory_measure": "cuda_max_allocated" if torch.device(device).type == "cuda" else "process_peak_rss",
              "summary": summarize(records, cfg.eval.bootstrap, cfg.runtime.seed), "records": records}
    write_json(path, result)
    return json.loads(Path(path).read_text())  # exactly what a later reuse returns


def current_summary(result: dict) -> dict:
    """`result` with its summary's interval over memories: a summary saved before intervals resampled memories (no
    `ci_unit`) is recomputed from its records, with the bootstrap size and seed of its own params (its other keys,
    e.g. ALFWorld's, are kept)."""
    summary = result.get("summary")
    if summary is None or "ci_unit" in summary or "records" not in result:
        return result
    params = result.get("params") or {}
    n_boot, seed = params.get("eval", {}).get("bootstrap", 1000), params.get("runtime", {}).get("seed", 0)
    return {**result, "summary": {**summary, **summarize(result["records"], n_boot, seed)}}


def load_results(run_dir: str | Path, methods: list[str] | None = None) -> list[dict]:
    """Every results file of a run (optionally only some methods), summaries as `current_summary`; refuses a mix of
    backbones."""
    results = []
    for f in sorted((Path(run_dir) / "results").glob("*/*/*.json")):
        r = json.loads(f.read_text())
        # a file copied or renamed into another method's, setting's, split's or seed's place would enter the
        # tables under the wrong label: its content must say what its path says
        where = {"method": f.parent.parent.name, "setting": f.parent.name, "split": f.stem.rsplit("-seed", 1)[0],
                 "seed": f.stem.rsplit("-seed", 1)[-1]}
        for key, expected in where.items():
            if str(r.get(key)) != expected:
                raise ResultsError(f"{f}: field {key!r} is {r.get(key)!r}, but the file's place says {expected!r} "
                                   f"(results/<method>/<setting>/<split>-seed<seed>.json); move it back or delete it")
        if methods is None or r["method"] in methods:
            r = current_summary(r)
            r["file"] = str(f)
            results.append(r)
    backbones = {r["backbone"] for r in results}
    if len(backbones) > 1:
        by = {b: next(r["file"] for r in results if r["backbone"] == b) for b in backbones}
        raise ResultsError(f"results from different backbones in {run_dir}: " +
                           "; ".join(f"{b} (e.g. {f})" for b, f in by.items()))
    return results


# ---- tidy tables ----------------------------------------------------------------------------------------------
_KEYS = ("method", "setting", "split", "seed")


def records_table(results: list[dict]) -> pd.DataFrame:
    """One row per question and result: keys, correctness, #Tok by part, cost."""
    rows = [{**{k: r[k] for k in _KEYS}, "qid": x["qid"], "question_type": x["question_type"],
             "memory_id": x.get("memory_id"), "correct": bool(x["correct"]), "tok": x["tok"], **x["tokens"],
             "truncated_chunks": x.get("truncated_chunks", 0), "seconds": x["seconds"], "peak_mb": x["peak_mb"]}
            for r in results for x in r["records"]]
    return pd.DataFrame(rows)


def summary_table(results: list[dict]) -> pd.DataFrame:
    """One row per results file: n, accuracy with its interval, #Tok by part, cost."""
    return pd.DataFrame([{**{k: r[k] for k in _KEYS}, **r["summary"]} for r in results])


def group_table(results: list[dict], by: str, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Accuracy per `by` (question_type or memory_id) within each result; intervals over the group's memories (one
    memory's own row: over its questions)."""
    rows = []
    for r in results:
        groups: dict[str, list] = {}
        for x in r["records"]:
            groups.setdefault(x.get(by), []).append(x)
        for g, recs in sorted(groups.items(), key=lambda kv: str(kv[0])):
            s = summarize(recs, n_boot, seed)
            rows.append({**{k: r[k] for k in _KEYS}, by: g, "n": s["n"], "accuracy": s["accuracy"],
                         "ci_low": s["ci_low"], "ci_high": s["ci_high"], "ci_unit": s["ci_unit"], "tok": s["tok"]})
    return pd.DataFrame(rows)


def overall_table(results: list[dict], n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Per method, split and seed: accuracy and #Tok averaged over settings weighted by test-set size, with the
    pooled bootstrap interval over memories, each (setting, memory) a unit (pooling all questions gives exactly the
    size-weighted average)."""
    rows = []
    keyed: dict[tuple, list] = {}
    for r in results:
        keyed.setdefault((r["method"], r["split"], r["seed"]), []).append(r)
    for (method, split, seed_), rs in sorted(keyed.items()):
        sizes = [r["summary"]["n"] for r in rs]
        pooled = [x for r in rs for x in r["records"]]
        ids = [(r["setting"], x["memory_id"]) if x.get("memory_id") is not None else None
               for r in rs for x in r["records"]]  # memory ids are only unique within a setting
        clusters = memory_clusters(ids)
        lo, hi = bootstrap_ci([float(x["correct"]) for x in pooled], n_boot, seed, clusters=clusters)
        rows.append({"method": method, "split": split, "seed": seed_, "settings": len(rs), "n": sum(sizes),
                     "accuracy": weighted_average([r["summary"]["accuracy"] for r in rs], sizes),
                     "ci_low": lo, "ci_high": hi, "ci_unit": ci_unit(clusters),
                     "tok": weighted_average([r["summary"]["tok"] for r in rs], sizes)})
    return pd.DataFrame(rows)


def save_tables(run_dir: str | Path, results: list[dict], n_boot: int = 1000, seed: int = 0) -> dict[str, Path]:
    """Write the tidy tables as CSV into <run>/tables/; returns their paths."""
    folder = Path(run_dir) / "tables"
    folder.mkdir(parents=True, exist_ok=True)
    tables = {"summary": summary_table(results), "overall": overall_table(results, n_boot, seed),
              "by_question_type": group_table(results, "question_type", n_boot, seed),
              "by_memory": group_table(results, "memory_id", n_boot, seed), "records": records_table(results)}
    paths = {}
    for name, df in tables.items():
        paths[name] = folder / f"{name}.csv"
        df.to_csv(paths[name], index=False)
    return paths
