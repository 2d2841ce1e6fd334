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

loss = sum of align.objectives[name] x objective (OBJECTIVES is the one place a new objective plugs in). The
reconstruction target is what the cached states can carry: a deeper layer's last b states have seen the whole chunk,
so they regenerate its first align.max_text_tokens tokens; the input embeddings (layer 0) only their own b tokens.
Reconstruction reads the `Corpus`: the chunks of the training questions' memories, or align.corpus_memories
MemorySuite-mini memories written for alignment alone (assemble.alignment_corpus, its own bank: `Corpus.whole`);
the other objectives read the training questions. With align.b_start, b's upper bound falls from it to align.b_max
over the steps (a curriculum: many tokens first). The projector learns (LoRA too with align.train_lora). Every
process of a multi-GPU run draws the same batch (seeded by seed and step), so their weights stay equal without a
gradient reduce.

The log: every step (losses, b, grad norm; a non-finite gradient skips the update and is counted, `nonfinite`) and,
at align.curve_steps, the learning curve on validation (stage align_val: reconstruction, KL and the caller's
`evaluate`, e.g. accuracy at align.curve_b tokens per chunk) go to `<train dir>/align.jsonl`.

Resumable: `<train dir>/align.partial/` holds the state every align.save_every steps; the finished stage is
`<train dir>/align/` (a checkpoint) with `align.json`, the recipe that made it. A finished stage is reused only
under the same recipe (params, cache layer, backbone, training questions, seed and the reader it started from).

    history = alignment.run(model, train_questions, train_dir, log=print)
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from ..core import sampling
from ..core.experiment import write_folder
from ..method.budget import BudgetDecision
from ..method.injection import Batch, Row, build_batch

FOLDER, PARTIAL, RECIPE, LOG = "align", "align.partial", "align.json", "align.jsonl"
STATE = "align_state.pt"


@dataclass
class Corpus:
    """The chunks reconstruction reads: bank rows with their text."""
    bank: object                 # bank.Bank
    texts: dict[str, str]        # chunk id -> text
    rows: list[int]
    _ids: dict = field(default_factory=dict)

    def ids(self, row: int, tokenizer, as_encoded: bool = False) -> list[int]:
        """The chunk's text token ids; `as_encoded`: the ids the bank encoded (bank.tokenize: special tokens added,
        cut at bank.max_length), whose last n are the tokens of the last n cached states."""
        key = (row, as_encoded)
        if key not in self._ids:
            text = self.texts[self.bank.chunk_ids[row]]
            ids = tokenizer(text, add_special_tokens=as_encoded)["input_ids"]
            self._ids[key] = ids[:self.bank.manifest["max_length"]] if as_encoded else ids
        return self._ids[key]

    def identity(self) -> str:
        return f"{self.bank.manifest.get('content_hash')}:{len(self.rows)}"

    @classmethod
    def whole(cls, bank, texts: dict[str, str]) -> "Corpus":
        """Every chunk of a corpus bank (assemble.alignment_corpus's)."""
        return cls(bank, texts, list(range(len(bank.chunk_ids))))


def corpus_of(model, questions) -> Corpus:
    """The chunks of `questions`' memories in the model's bank (the default corpus: the training memories)."""
    rows = sorted({r for m in sorted({q.memory_id for q in questions}) for r in model.bank.rows(m)})
    return Corpus(model.bank, model.chunk_texts, rows)


@dataclass
class AlignBatch:
    """One alignment step's data: chunks (corpus rows) with their b, and questions with one b for every chunk."""
    corpus: Corpus
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


def target_ids(corpus: Corpus, row: int, n_states: int, tokenizer, max_text_tokens: int) -> list[int]:
    """What `n_states` cached states of a chunk can be asked to regenerate: a deeper layer's (they have seen the whole
    chunk) its first max_text_tokens tokens; the input embeddings (layer 0) only the n tokens they are."""
    if corpus.bank.manifest.get("cache_layer") != 0:
        return corpus.ids(row, tokenizer)[:max_text_tokens]
    own = corpus.ids(row, tokenizer, as_encoded=True)[-n_states:]
    special = set(tokenizer.all_special_ids)   # a BOS the bank's encoding began with is not text to regenerate
    return [t for t in own if t not in special] or own


def reconstruction_batch(model, corpus: Corpus, rows: list[int], budgets: list[int]) -> Batch:
    """[b soft tokens]["\\n"][cue][target text][EOS] per chunk, the text teacher-forced as the 'answer'."""
    cfg = model.cfg.align
    states = [corpus.bank.cache(r, last=b) for r, b in zip(rows, budgets)]
    sizes = [s.shape[0] for s in states]
    soft = model.projector(torch.cat(states).to(model.device, model.backbone.dtype)).to(model.backbone.dtype)
    cue = model.tokenizer(cfg.cue, add_special_tokens=False)["input_ids"]
    eos = model.tokenizer.eos_token_id
    items = [Row(question_ids=[], control_id=None, memory=[piece], tail_ids=cue,
                 answer_ids=target_ids(corpus, r, n, model.tokenizer, cfg.max_text_tokens) + [eos])
             for r, n, piece in zip(rows, sizes, torch.split(soft, sizes))]
    return build_batch(items, model.reasoner.get_input_embeddings(), model.newline_id, model.tokenizer.pad_token_id)


def reconstruction(model, batch: AlignBatch) -> torch.Tensor:
    """Cross-entropy per text token of regenerating each chunk from its last b soft tokens."""
    if not batch.rows:
        raise ValueError("align.objectives has reconstruction but the step has no training chunks")
    b = reconstruction_batch(model, batch.corpus, batch.rows, batch.chunk_budgets)
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


ALIGN_ARMS = ("align", "align+lora")   # the projector alone; the projector and LoRA (align.train_lora)


def parse_cache(spec: str, n_layers: int) -> tuple[int, str]:
    """"0" -> (0, ""), "15+align" -> (15, "align"), "mid+align+lora" -> (n_layers // 2, "align+lora"); anything else
    is refused naming the key."""
    layer, plus, arm = str(spec).partition("+")
    try:
        n = n_layers // 2 if layer == "mid" else int(layer)
    except ValueError:
        n = None
    if n is None or (plus and arm not in ALIGN_ARMS):
        raise ValueError(f"eval.compression_caches entry {spec!r}: write a layer number or mid, optionally with "
                         f"'+align' (the projector learns) or '+align+lora' (LoRA too), e.g. 0, mid+align, -1+align")
    return n, arm


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
def b_range(cfg, step: int | None = None) -> tuple[int, int]:
    """b's bounds (align.b_max 0 = budget.b_max); at `step` under the curriculum (align.b_start) the upper one
    falls linearly from b_start at step 0 to b_max at the last step."""
    lo, hi = cfg.align.b_min, cfg.align.b_max or cfg.budget.b_max
    start, steps = cfg.align.b_start, cfg.align.steps
    if start and step is not None:
        hi = round(start + (hi - start) * min(1.0, step / max(1, steps - 1)))
    return lo, hi


def check(model) -> None:
    """Refuse an alignment stage that cannot run on this model and bank, naming the file and key."""
    cfg, bank, a = model.cfg, model.bank, model.cfg.align
    check_objectives(a.objectives)
    built = bank.manifest.get("cache_layer")
    if built != cfg.bank.cache_layer:
        raise ValueError(f"{bank.path}: the bank was built with cache_layer = {built!r}, the alignment stage asks for "
                         f"bank.cache_layer = {cfg.bank.cache_layer}; build a bank with that layer")
    lo, hi = b_range(cfg)
    if not 1 <= lo <= hi <= bank.n_c:
        raise ValueError(f"align.b_min..align.b_max = {lo}..{hi} (align.b_max 0 = budget.b_max) must lie within "
                         f"1..N_c = {bank.n_c} of {bank.path}")
    if a.b_start and not hi < a.b_start <= bank.n_c:
        raise ValueError(f"align.b_start = {a.b_start}: a curriculum starts above align.b_max ({hi}) and within "
                         f"N_c = {bank.n_c} of {bank.path} (0 = no curriculum)")
    if a.curve_steps and not 1 <= a.curve_b <= bank.n_c:
        raise ValueError(f"align.curve_b = {a.curve_b} must lie within 1..N_c = {bank.n_c} of {bank.path}")
    if any(not 0 <= s <= a.steps for s in a.curve_steps):
        raise ValueError(f"align.curve_steps = {a.curve_steps}: every point must lie within 0..align.steps "
                         f"({a.steps})")
    if cfg.projector.kind == "identity" and not a.train_lora:
        raise ValueError("align.steps > 0 with projector.kind = identity and align.train_lora = false: nothing "
                         "would learn")


def step_batch(cfg, corpus: Corpus, questions: list, step: int) -> AlignBatch:
    """The chunks, questions and b of one step: epochs of seeded permutations, b uniform in b_range(cfg, step)."""
    n = cfg.align.batch_size
    lo, hi = b_range(cfg, step)
    g = torch.Generator().manual_seed(cfg.runtime.seed * 1_000_003 + 30_011 * step)

    def take(items: list, salt: int) -> list:
        if not items:
            return []
        per_epoch = math.ceil(len(items) / n)
        epoch, i = divmod(step, per_epoch)
        order = torch.randperm(len(items), generator=torch.Generator().manual_seed(
            cfg.runtime.seed * 1_000_003 + salt + epoch)).tolist()
        return [items[j] for j in order[i * n:(i + 1) * n]]

    chunks = take(corpus.rows, 30_000)
    budgets = sampling.integers(lo, hi + 1, (len(chunks) + 1,), "cpu", g, "alignment budget").tolist()
    return AlignBatch(corpus=corpus, rows=chunks, chunk_budgets=budgets[:-1], questions=take(questions, 40_000),
                      budget=budgets[-1])


def validation_point(model, corpus: Corpus, questions: list, step: int, evaluate: Callable | None) -> dict:
    """One point of the learning curve, without gradients: every objective on the validation chunks and questions
    (at most align.batch_size x 4 of each) at b = align.curve_b, and `evaluate()`'s figures (e.g. accuracy)."""
    a = model.cfg.align
    cap = 4 * a.batch_size
    batch = AlignBatch(corpus, corpus.rows[:cap], [a.curve_b] * len(corpus.rows[:cap]), list(questions)[:cap],
                       a.curve_b)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            rec = {"stage": "align_val", "step": step, "b": a.curve_b}
            for name, fn in OBJECTIVES.items():
                if (name == "reconstruction" and batch.rows) or (name != "reconstruction" and batch.questions):
                    rec[f"val_{name}"] = fn(model, batch).item()
            rec.update(evaluate() if evaluate is not None else {})
    finally:
        model.train(was_training)
    return rec


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


def recipe(model, questions, corpus: Corpus) -> dict:
    """What an alignment result depends on: reused only when all of it agrees. Every result-shaping param (the
    results' fingerprint: align, bank, retrieval, projector, data, seed, ...; not align.save_every), the bank's
    chunks, the corpus, the training questions and the weights it started from (the reader)."""
    from ..core.evaluate import fingerprint

    params = json.loads(json.dumps(fingerprint(model.cfg, {})["params"], default=str))
    params["align"].pop("save_every", None)
    qids = ",".join(sorted(q.qid for q in questions))
    return {"params": params, "bank": model.bank.manifest.get("content_hash"), "backbone": model.backbone.identity,
            "corpus": corpus.identity(),
            "train_questions": hashlib.sha256(qids.encode()).hexdigest()[:16],
            "start": _weights_id([p for n, p in model.reasoner.named_parameters() if "lora_" in n] +
                                 list(model.projector.parameters()))}


def _upgraded(saved: dict | None) -> dict | None:
    """A recipe saved by older code as today's code would have written it (evaluate.upgraded: moved keys in their new
    places, keys left out of the fingerprint since dropped), so that a renamed key alone does not throw a finished
    stage away."""
    from ..core.evaluate import upgraded

    return upgraded(saved) if isinstance(saved, dict) else saved


def read_log(train_dir: str | Path) -> list[dict]:
    """The stage's log (`align.jsonl`): step records and learning-curve points, oldest first."""
    path = Path(train_dir) / LOG
    return [json.loads(line) for line in path.read_text().splitlines() if line] if path.is_file() else []


def run(model, questions, train_dir: str | Path, log: Callable[[dict], None] | None = None,
        progress: bool = True, save: bool = True, corpus: Corpus | None = None, val_questions=(),
        evaluate: Callable[[], dict] | None = None) -> list[dict]:
    """Run (or resume, or reuse) align.steps steps; returns this call's records (empty when reused). `corpus`: the
    chunks reconstruction reads (default: the training questions' memories); `val_questions` (and their memories'
    chunks) and `evaluate() -> {name: value}` make the learning curve at align.curve_steps."""
    cfg = model.cfg
    steps = cfg.align.steps
    if steps <= 0:
        return []
    check(model)
    if cfg.align.curve_steps and not val_questions:
        raise ValueError("align.curve_steps asks for a learning curve, but the stage got no validation questions")
    if cfg.align.corpus_memories and corpus is None:
        raise ValueError(f"align.corpus_memories = {cfg.align.corpus_memories}, but the stage got no corpus: its bank "
                         f"is built before LoRA goes in (assemble.alignment_corpus), as 05_compression does")
    corpus = corpus or corpus_of(model, questions)
    if corpus.bank.manifest.get("cache_layer") != cfg.bank.cache_layer:
        raise ValueError(f"{corpus.bank.path}: the alignment corpus's bank has cache_layer = "
                         f"{corpus.bank.manifest.get('cache_layer')!r}, the stage bank.cache_layer = "
                         f"{cfg.bank.cache_layer}")
    train_dir = Path(train_dir)
    done, partial = train_dir / FOLDER, train_dir / PARTIAL
    want = recipe(model, questions, corpus)
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
    val = (corpus_of(model, val_questions), list(val_questions)) if cfg.align.curve_steps else None
    history = []
    was_training = model.training
    # only the stage's own parameters take gradients: none may leak into the next stage's optimizer
    keep = {id(p) for p in params}
    frozen = [p for p in model.parameters() if p.requires_grad and id(p) not in keep]
    for p in frozen:
        p.requires_grad_(False)
    model.train()
    try:
        history = _steps(model, cfg, corpus, list(questions), params, opt, start, steps, train_dir, want, log,
                         progress, save, val, evaluate)
    finally:
        for p in frozen:
            p.requires_grad_(True)
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    if save:
        model.save(done)
        logged = read_log(train_dir)
        (done / RECIPE).write_text(json.dumps({
            "recipe": want, "steps": steps,
            "nonfinite_steps": sum(1 for r in logged if r["stage"] == "align" and r.get("nonfinite")),
            "curve": [r for r in logged if r["stage"] == "align_val"]}, indent=2) + "\n")
        if partial.exists():
            shutil.rmtree(partial)
    return history


def _steps(model, cfg, corpus, questions, params, opt, start: int, steps: int, train_dir: Path, want: dict, log,
           progress: bool, save: bool, val, evaluate) -> list[dict]:
    from ..core.experiment import progress as tqdm

    partial = train_dir / PARTIAL
    history = []
    log_path = train_dir / LOG
    # a resumed stage keeps its log up to the saved step (records after it were lost with the weights)
    kept = [r for r in read_log(train_dir) if r["step"] < start] if start else []
    nonfinite = sum(1 for r in kept if r.get("nonfinite"))
    if save:   # one process writes the log (the others of a multi-GPU run hold the same records)
        train_dir.mkdir(parents=True, exist_ok=True)
        log_path.write_text("".join(json.dumps(r) + "\n" for r in kept))

    def record(rec: dict) -> None:
        history.append(rec)
        if save:
            with log_path.open("a") as f:
                f.write(json.dumps(rec) + "\n")
        if log is not None:
            log(rec)

    curve = set(cfg.align.curve_steps)
    bar = tqdm(total=steps, initial=start, desc="alignment", disable=not progress)
    for step in range(start, steps + 1):
        if val is not None and step in curve:
            record(validation_point(model, *val, step, evaluate))
        if step == steps:
            break
        t0 = time.perf_counter()
        batch = step_batch(cfg, corpus, questions, step)
        losses = {name: OBJECTIVES[name](model, batch) for name, w in cfg.align.objectives.items() if w > 0}
        loss = sum(cfg.align.objectives[name] * v for name, v in losses.items())
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(params, cfg.grpo.grad_clip)
        finite = bool(torch.isfinite(norm))
        if finite:
            opt.step()
        else:  # the update is skipped, and said: counted here and in align.json
            nonfinite += 1
            logging.getLogger(__name__).warning("alignment step %d: non-finite gradient norm (%s), update skipped "
                                                "(%d so far)", step, float(norm), nonfinite)
        opt.zero_grad(set_to_none=True)
        rec = {"stage": "align", "step": step, "loss": loss.item(), **{k: v.item() for k, v in losses.items()},
               "b_chunks": sum(batch.chunk_budgets) / max(1, len(batch.chunk_budgets)), "b_questions": batch.budget,
               "b_max": b_range(cfg, step)[1], "grad_norm": float(norm), "nonfinite": not finite,
               "nonfinite_total": nonfinite, "seconds": round(time.perf_counter() - t0, 3)}
        record(rec)
        bar.update(1)
        bar.set_postfix(loss=f"{rec['loss']:.3f}")
        if save and ((step + 1) % cfg.align.save_every == 0) and step + 1 < steps:
            def write(tmp: Path) -> None:
                model.save(tmp)
                torch.save({"step": step + 1, "optimizer": opt.state_dict(), "rng": torch.get_rng_state(),
                            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                            "recipe": want}, tmp / STATE)
            write_folder(partial, write)
    bar.close()
    return history
