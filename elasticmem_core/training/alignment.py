"""Alignment (beyond the paper): make the content cache readable before any task reward.

The paper trains the projector from scratch with GRPO alone. At 135M a last-layer cache trained that way stays at
chance, and the only latent memory that reads is the input-embedding cache behind a projector that starts as the
identity: truncated text. The compression literature aligns the bridge first, with a dense objective (ICAE and
500xCompressor regenerate the text from its compressed tokens; xRAG pretrains its projector alone at a high learning
rate, then distils from the pass that reads the same evidence as text). This stage does both, between the reader
warm-up and GRPO (params `align.*`; `align.steps: 0`, off, in the paper files):

    reconstruction  from the last b cached states of a training chunk (b drawn from align.b_min..align.b_max),
                    through the projector, the reader regenerates the chunk's text after a cue:
                    [b soft tokens]["\\n"][cue][chunk text][EOS], teacher-forced cross-entropy on the text
    self_distill    the answer distribution with a question's retrieved chunks as latent memory (b soft tokens each)
                    matches the one with the same chunks as text, the teacher (no gradient):
                    tau^2 KL(text || latent) over the vocabulary at each gold-answer token
    answer          cross-entropy on the gold answer with the chunks as latent memory

loss = sum of align.objectives[name] x objective (OBJECTIVES is the one place a new objective plugs in). Only the
training questions and the chunks of their memories are used. The projector learns (LoRA too with
align.train_lora). Every process of a multi-GPU run draws the same batch (seeded by seed and step), so their weights
stay equal without a gradient reduce.

Resumable: `<train dir>/align.partial/` holds the state every align.save_every steps; the finished stage is
`<train dir>/align/` (a checkpoint) with `align.json`, the recipe that made it. A finished stage is reused only
under the same recipe (params, cache layer, backbone, training questions, seed and the reader it started from).

    history = alignment.run(model, train_questions, train_dir, log=print)
"""
from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from ..core import sampling
from ..core.renamed import upgrade
from ..method.budget import BudgetDecision
from ..method.injection import Batch, Row, build_batch

FOLDER, PARTIAL, RECIPE = "align", "align.partial", "align.json"
STATE = "align_state.pt"


@dataclass
class AlignBatch:
    """One alignment step's data: chunks (bank rows) with their b, and questions with one b for every chunk."""
    rows: list[int]
    chunk_budgets: list[int]
    questions: list
    budget: int
    passes: dict = field(default_factory=dict)  # the question passes, computed once for the objectives that share them


# ---- the objectives ---------------------------------------------------------------------------------------------
def answer_logits(model, batch: Batch) -> torch.Tensor:
    """Logits [N, A, V] (float32) at the columns that predict the batch's teacher-forced answer tokens."""
    cols = batch.answer_logit_columns()
    out = model.reasoner(inputs_embeds=batch.inputs_embeds, attention_mask=batch.attention_mask,
                         position_ids=batch.position_ids, logits_to_keep=cols)
    return out.logits.float()


def _masked_nll(logits: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    nll = -torch.log_softmax(logits, dim=-1).gather(-1, ids[..., None]).squeeze(-1)
    return (nll * mask).sum() / mask.sum().clamp(min=1)


def reconstruction_batch(model, rows: list[int], budgets: list[int]) -> Batch:
    """[b soft tokens]["\\n"][cue][chunk text][EOS] per chunk, the text teacher-forced as the 'answer'."""
    cfg = model.cfg.align
    states = [model.bank.cache(r, last=b) for r, b in zip(rows, budgets)]
    sizes = [s.shape[0] for s in states]
    soft = model.projector(torch.cat(states).to(model.device, model.backbone.dtype)).to(model.backbone.dtype)
    cue = model.tokenizer(cfg.cue, add_special_tokens=False)["input_ids"]
    eos = model.tokenizer.eos_token_id
    items = [Row(question_ids=[], control_id=None, memory=[piece], tail_ids=cue,
                 answer_ids=model._chunk_ids(r)[:cfg.max_text_tokens] + [eos])
             for r, piece in zip(rows, torch.split(soft, sizes))]
    return build_batch(items, model.reasoner.get_input_embeddings(), model.newline_id, model.tokenizer.pad_token_id)


def reconstruction(model, batch: AlignBatch) -> torch.Tensor:
    """Cross-entropy per text token of regenerating each chunk from its last b soft tokens."""
    if not batch.rows:
        raise ValueError("align.objectives has reconstruction but the step has no training chunks")
    b = reconstruction_batch(model, batch.rows, batch.chunk_budgets)
    return _masked_nll(answer_logits(model, b), b.answer_ids, b.answer_mask)


def question_passes(model, batch: AlignBatch):
    """(student logits with latent memory, teacher logits with the same chunks as text (no gradient), gold answer
    ids, mask), each [N, A(, V)]: greedy retrieval as at evaluation, every retrieved chunk given b soft tokens."""
    if "questions" in batch.passes:
        return batch.passes["questions"]
    from ..method.model import Plan  # the model module imports this one's users, not this one

    qs = batch.questions
    if not qs:
        raise ValueError("align.objectives has self_distill or answer but the step has no training questions")
    with model.using(memory="latent"):
        plan = model.plan(qs, sample=False)
        r = plan.retrieved
        budgets = torch.where(r.rows >= 0, batch.budget, 0).to(model.device)
        zeros = torch.zeros(budgets.shape, device=model.device)
        plan = Plan(r, BudgetDecision(budgets, zeros, zeros))
        answers = [model.answer_ids(q.gold) for q in qs]
        student = model.build(qs, plan, answers)
        s_logits = answer_logits(model, student)
    # the teacher: the same retrieved chunks, whole, as text, without dropout noise
    was_training = model.training
    model.eval()
    try:
        with model.using(memory="text"), torch.no_grad():
            t_logits = answer_logits(model, model.build(qs, plan, answers))
    finally:
        model.train(was_training)
    batch.passes["questions"] = (s_logits, t_logits, student.answer_ids, student.answer_mask)
    return batch.passes["questions"]


def self_distill(model, batch: AlignBatch) -> torch.Tensor:
    """tau^2 KL(softmax(text / tau) || softmax(latent / tau)) per gold-answer token (Hinton's tau^2 keeps the
    gradient's scale independent of tau)."""
    s, t, _, mask = question_passes(model, batch)
    tau = model.cfg.align.kl_temperature
    logp_t, logp_s = torch.log_softmax(t / tau, dim=-1), torch.log_softmax(s / tau, dim=-1)
    kl = (logp_t.exp() * (logp_t - logp_s)).sum(-1)
    return tau * tau * (kl * mask).sum() / mask.sum().clamp(min=1)


def answer(model, batch: AlignBatch) -> torch.Tensor:
    """Cross-entropy on the gold answer with the chunks as latent memory."""
    s, _, ids, mask = question_passes(model, batch)
    return _masked_nll(s, ids, mask)


# name -> (model, AlignBatch) -> scalar loss; align.objectives weights them
OBJECTIVES: dict[str, Callable] = {"reconstruction": reconstruction, "self_distill": self_distill, "answer": answer}


def parse_cache(spec: str, n_layers: int) -> tuple[int, bool]:
    """"0" -> (0, False), "15+align" -> (15, True), "mid+align" -> (n_layers // 2, True); anything else is refused
    naming the key."""
    layer, plus, tag = str(spec).partition("+")
    try:
        n = n_layers // 2 if layer == "mid" else int(layer)
    except ValueError:
        n = None
    if n is None or (plus and tag != "align"):
        raise ValueError(f"eval.compression_caches entry {spec!r}: write a layer number or mid, optionally with "
                         f"'+align' (e.g. 0, mid+align, -1+align)")
    return n, bool(plus)


def check_objectives(objectives: dict[str, float]) -> None:
    """Raise ValueError naming the key for an unknown objective, a negative weight, or weights summing to nothing."""
    for name, w in objectives.items():
        if name not in OBJECTIVES:
            raise ValueError(f"align.objectives: unknown objective {name!r}; choose from {', '.join(OBJECTIVES)}")
        if w < 0:
            raise ValueError(f"align.objectives.{name} = {w}: weights must be >= 0")
    if not sum(objectives.values()) > 0:
        raise ValueError(f"align.objectives = {objectives}: the weights sum to nothing")


# ---- the stage --------------------------------------------------------------------------------------------------
def b_range(cfg) -> tuple[int, int]:
    hi = cfg.align.b_max or cfg.budget.b_max
    return cfg.align.b_min, hi


def check(model) -> None:
    """Refuse an alignment stage that cannot run on this model and bank, naming the file and key."""
    cfg, bank = model.cfg, model.bank
    check_objectives(cfg.align.objectives)
    built = bank.manifest.get("cache_layer")
    if built != cfg.bank.cache_layer:
        raise ValueError(f"{bank.path}: the bank was built with cache_layer = {built!r}, the alignment stage asks for "
                         f"bank.cache_layer = {cfg.bank.cache_layer}; build a bank with that layer")
    lo, hi = b_range(cfg)
    if not 1 <= lo <= hi <= bank.n_c:
        raise ValueError(f"align.b_min..align.b_max = {lo}..{hi} (align.b_max 0 = budget.b_max) must lie within "
                         f"1..N_c = {bank.n_c} of {bank.path}")
    if cfg.projector.kind == "identity" and not cfg.align.train_lora:
        raise ValueError("align.steps > 0 with projector.kind = identity and align.train_lora = false: nothing "
                         "would learn")


def training_rows(model, questions) -> list[int]:
    """The bank rows of the training questions' memories (the only chunks alignment sees)."""
    return sorted({r for m in sorted({q.memory_id for q in questions}) for r in model.bank.rows(m)})


def step_batch(cfg, rows: list[int], questions: list, step: int) -> AlignBatch:
    """The chunks, questions and b of one step: epochs of seeded permutations, b uniform in b_min..b_max."""
    n = cfg.align.batch_size
    lo, hi = b_range(cfg)
    g = torch.Generator().manual_seed(cfg.runtime.seed * 1_000_003 + 30_011 * step)

    def take(items: list, salt: int) -> list:
        if not items:
            return []
        per_epoch = math.ceil(len(items) / n)
        epoch, i = divmod(step, per_epoch)
        order = torch.randperm(len(items), generator=torch.Generator().manual_seed(
            cfg.runtime.seed * 1_000_003 + salt + epoch)).tolist()
        return [items[j] for j in order[i * n:(i + 1) * n]]

    chunks = take(rows, 30_000)
    budgets = sampling.integers(lo, hi + 1, (len(chunks) + 1,), "cpu", g, "alignment budget").tolist()
    return AlignBatch(rows=chunks, chunk_budgets=budgets[:-1], questions=take(questions, 40_000), budget=budgets[-1])


def trainable(model) -> list[torch.nn.Parameter]:
    params = [p for p in model.projector.parameters() if p.requires_grad]
    if model.cfg.align.train_lora:
        params += [p for n, p in model.reasoner.named_parameters() if "lora_" in n and p.requires_grad]
    return params


def _weights_id(params: list[torch.nn.Parameter]) -> str:
    h = hashlib.sha256()
    for p in params:
        h.update(p.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def recipe(model, questions) -> dict:
    """What an alignment result depends on: reused only when all of it agrees. Every result-shaping param (the
    results' fingerprint: align, bank, retrieval, projector, data, seed, ...; not align.save_every), the bank's
    chunks, the training questions and the weights it started from (the reader)."""
    from ..core.evaluate import fingerprint

    params = json.loads(json.dumps(fingerprint(model.cfg, {})["params"], default=str))
    params["align"].pop("save_every", None)
    qids = ",".join(sorted(q.qid for q in questions))
    return {"params": params, "bank": model.bank.manifest.get("content_hash"), "backbone": model.backbone.identity,
            "train_questions": hashlib.sha256(qids.encode()).hexdigest()[:16],
            "start": _weights_id([p for n, p in model.reasoner.named_parameters() if "lora_" in n] +
                                 list(model.projector.parameters()))}


def _upgraded(saved: dict | None) -> dict | None:
    """A recipe saved by older code with its params' moved keys in their new places (renamed.upgrade), so that a
    renamed key alone does not throw a finished stage away."""
    if not isinstance(saved, dict) or not isinstance(saved.get("params"), dict):
        return saved
    return {**saved, "params": upgrade(saved["params"])}


def run(model, questions, train_dir: str | Path, log: Callable[[dict], None] | None = None,
        progress: bool = True, save: bool = True) -> list[dict]:
    """Run (or resume, or reuse) align.steps steps; returns this call's step records (empty when reused)."""
    cfg = model.cfg
    steps = cfg.align.steps
    if steps <= 0:
        return []
    check(model)
    train_dir = Path(train_dir)
    done, partial = train_dir / FOLDER, train_dir / PARTIAL
    want = recipe(model, questions)
    parts = ("lora", "projector") if cfg.align.train_lora else ("projector",)
    if (done / RECIPE).is_file():
        if _upgraded(json.loads((done / RECIPE).read_text()).get("recipe")) == want:
            model.load(done, parts=parts)
            return []
        if save:
            shutil.rmtree(done)  # made by other params, chunks or another reader: never reused
    params = trainable(model)
    opt = torch.optim.AdamW(params, lr=cfg.align.lr, weight_decay=cfg.grpo.weight_decay)
    start = 0
    if (partial / STATE).is_file():
        state = torch.load(partial / STATE, weights_only=False)
        if _upgraded(state.get("recipe")) == want:
            model.load(partial, parts=parts)
            opt.load_state_dict(state["optimizer"])
            torch.set_rng_state(state["rng"])
            if state.get("cuda_rng") is not None and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(state["cuda_rng"])
            start = state["step"]
        elif save:
            shutil.rmtree(partial)
    rows = training_rows(model, questions)
    history = []
    was_training = model.training
    # only the stage's own parameters take gradients: none may leak into the next stage's optimizer
    keep = {id(p) for p in params}
    frozen = [p for p in model.parameters() if p.requires_grad and id(p) not in keep]
    for p in frozen:
        p.requires_grad_(False)
    model.train()
    try:
        history = _steps(model, cfg, rows, list(questions), params, opt, start, steps, train_dir, want, log,
                         progress, save)
    finally:
        for p in frozen:
            p.requires_grad_(True)
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    if save:
        model.save(done)
        (done / RECIPE).write_text(json.dumps({"recipe": want, "steps": steps}, indent=2) + "\n")
        if partial.exists():
            shutil.rmtree(partial)
    return history


def _steps(model, cfg, rows, questions, params, opt, start: int, steps: int, train_dir: Path, want: dict, log,
           progress: bool, save: bool) -> list[dict]:
    from ..core.experiment import progress as tqdm

    partial = train_dir / PARTIAL
    history = []
    bar = tqdm(total=steps, initial=start, desc="alignment", disable=not progress)
    for step in range(start, steps):
        t0 = time.perf_counter()
        batch = step_batch(cfg, rows, questions, step)
        losses = {name: OBJECTIVES[name](model, batch) for name, w in cfg.align.objectives.items() if w > 0}
        loss = sum(cfg.align.objectives[name] * v for name, v in losses.items())
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(params, cfg.grpo.grad_clip)
        if torch.isfinite(norm):
            opt.step()
        opt.zero_grad(set_to_none=True)
        rec = {"stage": "align", "step": step, "loss": loss.item(), **{k: v.item() for k, v in losses.items()},
               "b_chunks": sum(batch.chunk_budgets) / max(1, len(batch.chunk_budgets)), "b_questions": batch.budget,
               "grad_norm": float(norm), "seconds": round(time.perf_counter() - t0, 3)}
        history.append(rec)
        if log is not None:
            log(rec)
        bar.update(1)
        bar.set_postfix(loss=f"{rec['loss']:.3f}")
        if save and ((step + 1) % cfg.align.save_every == 0) and step + 1 < steps:
            tmp = train_dir / (PARTIAL + ".tmp")
            model.save(tmp)
            torch.save({"step": step + 1, "optimizer": opt.state_dict(), "rng": torch.get_rng_state(),
                        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                        "recipe": want}, tmp / STATE)
            if partial.exists():
                shutil.rmtree(partial)
            tmp.rename(partial)
    bar.close()
    return history
