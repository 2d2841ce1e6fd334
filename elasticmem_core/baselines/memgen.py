"""MemGen-style generative latent memory: the latent-space baseline that the paper's headline is measured against.

MemGen (Zhang et al., "Weaving Generative Latent Memory for Self-Evolving Agents", ICLR 2026) keeps the reasoner
frozen and trains a *weaver*, a LoRA-adapted copy of the base LLM, to write K latent tokens into the reasoner's
input. Here, with one backbone as weaver base and reasoner (as the package's comparison needs), one set of weights
serves both: the weaver is the base LLM with the LoRA adapter on, the reasoner the same LLM with it off, so the
reasoner's weights cannot change in training.

One answer:
    1. retrieval : the question's top-Z chunks, by the run's retrieval mode (the chunks ElasticMem gets; the frozen
                   reasoner's state where the mode needs one; no control token in the reasoner's input)
    2. weaver    : bridge_in(embed([question] ([chunk text]["\\n"]) x Z [instruction + options]))
                   followed by K query latents (random-normal, LayerNorm, a learned scalar scale)
                   -> the weaver's last-layer states at the K latent positions -> bridge_out      [K, H]
    3. reasoner  : [question][instruction + options][K latents][answer]   (the latents at the prompt's end)
    4. optional (memgen.insert_delimiters): after each generated token ending in a delimiter (",", ".", newline),
       up to memgen.max_insertions, the weaver reads the context so far with its K *inference* query latents and
       K more latents enter the reasoner's stream; a learned trigger (memgen.trigger) may decline an insertion.

#Tok is counted twice: what the reasoner reads (question + options + K latents per insertion + output, the same
parts as every method's #Tok) and, in each record's `weaver_tokens`, what the weaver read on top of that.

Training (baselines.train): supervised weaver steps on the gold answer (the latent positions carry no loss), then
GRPO through grpo.Trainer, with the rewards, validation-based selection and checkpoints every method has; with
memgen.trigger = learned, then a GRPO stage for the trigger alone (the weaver frozen).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
from pathlib import Path

import torch
from torch import nn

from ..core import sampling
from ..core.config import Config, derive
from ..method.budget import BudgetDecision, BudgetPolicy
from ..method.injection import Batch, Row, build_batch
from ..method.model import ElasticMem, Generation, Plan
from ..method.projector import embedding_rms
from ..method.retrieval import last_states, question_ids

TRIGGER_ADAPTER = "trigger"


class Weaver(nn.Module):
    """The weaver's own weights (its LoRA lives in the shared LLM): the two bridges and the query latents."""

    def __init__(self, hidden_size: int, k: int, bridge_init: str, embedding_rms: float):
        super().__init__()
        self.bridge_in = nn.Linear(hidden_size, hidden_size)    # reasoner embeddings -> weaver inputs
        self.bridge_out = nn.Linear(hidden_size, hidden_size)   # weaver last-layer states -> reasoner embeddings
        if bridge_init == "identity":  # one backbone: the weaver starts reading the text exactly as its base LLM
            for lin in (self.bridge_in, self.bridge_out):
                nn.init.eye_(lin.weight)
                nn.init.zeros_(lin.bias)
        # random-normal starts (weights, not rollout draws: the global seed decides them, like every module's init)
        self.prompt_latents = nn.Parameter(nn.init.normal_(torch.empty(k, hidden_size)))
        self.inference_latents = nn.Parameter(nn.init.normal_(torch.empty(k, hidden_size)))
        self.norm = nn.LayerNorm(hidden_size)
        # the query latents enter at the scale of the text embeddings around them, not at LayerNorm's unit scale
        self.scale = nn.Parameter(torch.tensor(float(embedding_rms)))

    def queries(self, kind: str) -> torch.Tensor:
        latents = self.prompt_latents if kind == "prompt" else self.inference_latents
        return self.norm(latents) * self.scale


@contextlib.contextmanager
def keep_trainable(lm):
    """peft's adapter switches (set_adapter, and disable_adapter on exit) mark the active adapter trainable and the
    others frozen: keep each parameter's requires_grad as the caller set it (the trigger stage freezes the weaver)."""
    flags = [(p, p.requires_grad) for p in lm.parameters()]
    try:
        yield
    finally:
        for p, f in flags:
            p.requires_grad_(f)


class FrozenReasoner:
    """The reasoner: the shared LLM called with every adapter off. Not a module of its own (its weights are the
    LLM's), it answers the calls the trainer and the generator make on a reasoner."""

    def __init__(self, lm):
        self.lm = lm

    def __call__(self, *args, **kwargs):
        with keep_trainable(self.lm), self.lm.disable_adapter():
            return self.lm(*args, **kwargs)

    @property
    def config(self):   # the LLM's (its attention implementation decides how candidates are masked when ranked)
        return self.lm.config

    def get_input_embeddings(self):
        return self.lm.get_input_embeddings()

    def get_base_model(self):
        return self.lm.get_base_model()

    def disable_adapter(self):  # already off: a "reference" pass is the same pass
        return contextlib.nullcontext()

    def parameters(self):  # the LLM's (the adapter's among them, unused by the reasoner's passes)
        return self.lm.parameters()

    def unload(self):
        return self.lm.unload()


@dataclasses.dataclass
class WovenBatch(Batch):
    weaver_context: list = dataclasses.field(default_factory=list)  # per row: the ids the weaver read
    latents: list = dataclasses.field(default_factory=list)         # per row: [K, H] prompt-end latents
    plan: Plan | None = None   # the plan built from: generation records the trigger's decisions in plan.triggers


class MemGen(ElasticMem):
    """MemGen-style baseline: ElasticMem's retrieval, a weaver that writes K latents, a frozen reasoner."""

    SHAPING = {"lora": ElasticMem.SHAPING["lora"], "weaver": [("memgen", "latents")],
               "trigger": [("lora", k) for k in ("r", "alpha", "target_modules")]}
    PARTS = ("lora", "weaver")
    MEMORY_MODES = ("weaver",) + ElasticMem.MEMORY_MODES  # the weaver's latents; the others as ElasticMem's

    def __init__(self, backbone, bank, cfg: Config, chunk_texts: dict[str, str] | None = None, memory: str = "text",
                 embedder=None, semantic_index=None):
        super().__init__(backbone, bank, cfg, chunk_texts, memory="text", embedder=embedder,
                         semantic_index=semantic_index)
        self.memory = "weaver"
        m = cfg.memgen
        lm = self.reasoner                      # the LLM with the LoRA adapter: the weaver when it is on
        del self._modules["reasoner"]
        self.lm = lm
        self.reasoner = FrozenReasoner(lm)
        self.projector = nn.Identity()          # no projector and no budget policy: every chunk is read as text
        self.policy = BudgetPolicy(backbone.hidden_size, dataclasses.replace(cfg.budget, policy="uniform",
                                                                             uniform_budget=cfg.budget.min_budget))
        self.policy.requires_grad_(False)       # a rule: its unused layers are not weights of this model
        self.weaver = Weaver(backbone.hidden_size, m.latents, m.bridge_init,
                             embedding_rms(backbone.model)).to(backbone.device)
        self.k, self.cap = m.latents, m.max_insertions if m.insert_delimiters else 0
        self._delimiter: dict[int, bool] = {}
        self.trigger_head = None
        if m.trigger == "learned":  # MemGen's trigger: its own LoRA on the LLM and a Linear(H, 2) head
            from peft import LoraConfig
            lm.add_adapter(TRIGGER_ADAPTER, LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha,
                                                       lora_dropout=cfg.lora.dropout,
                                                       target_modules=list(cfg.lora.target_modules),
                                                       task_type="CAUSAL_LM"))
            lm.set_adapter("default")
            self.trigger_head = nn.Linear(backbone.hidden_size, 2).to(backbone.device)
            self.trigger_head.requires_grad_(False)  # trains in its own stage only (memgen.train)
            self.PARTS = ("lora", "weaver", "trigger")
        # an untrained trigger decides nothing: every insertion point inserts (as with trigger off) until the trigger's
        # stage starts or a trained trigger is loaded
        self.trigger_active = False
        self.trigger_trains = False  # the trigger's GRPO stage sets it (its actions then enter the loss)

    # ---- 1: retrieval, without a control token in the reasoner's input -----------------------------------------
    def plan(self, questions, sample: bool = False, generator: torch.Generator | None = None) -> Plan:
        """The run's retrieval (argmax: MemGen does not learn to retrieve); no budgets, every chunk whole as text."""
        r = self.retriever(self.reasoner, questions, False, None, need_query=False)
        r = dataclasses.replace(r, control_ids=[None] * len(questions), control_logprob=torch.zeros(len(questions)))
        zeros = torch.zeros(r.rows.shape)
        return Plan(r, BudgetDecision(torch.zeros_like(r.rows), zeros, zeros))

    # ---- 2: the weaver ------------------------------------------------------------------------------------------
    def weaver_context(self, question, rows: list[int]) -> list[int]:
        """What the weaver reads: [question] ([chunk text]["\\n"]) x Z [instruction + options]."""
        ids = list(question_ids(self.tokenizer, question.question, self.cfg.retrieval.chat_template))
        for r in rows:
            if r >= 0:
                ids += self._chunk_ids(r) + [self.newline_id]
        return ids + self.tail_ids(question)

    def weave(self, contexts: list[list[int]], kind: str = "prompt") -> torch.Tensor:
        """[B, K, H] latents in the reasoner's embedding space, one set per context (prompt or inference queries)."""
        embed = self.lm.get_input_embeddings()
        dtype = embed.weight.dtype
        queries = self.weaver.queries(kind)                                               # [K, H] float32
        seqs = [torch.cat([self.weaver.bridge_in(embed(torch.tensor(c, device=self.device)).float()), queries])
                for c in contexts]
        t = max(s.shape[0] for s in seqs)
        h = queries.shape[1]
        x = torch.zeros(len(seqs), t, h, device=self.device)
        mask = torch.zeros(len(seqs), t, dtype=torch.long, device=self.device)
        pad = embed(torch.tensor([self.tokenizer.pad_token_id], device=self.device)).float()[0]
        for i, s in enumerate(seqs):  # left padding: the K query latents take the last K columns of every row
            x[i] = pad
            x[i, t - s.shape[0]:] = s
            mask[i, t - s.shape[0]:] = 1
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        out = self.lm(inputs_embeds=x.to(dtype), attention_mask=mask, position_ids=pos, output_hidden_states=True,
                      logits_to_keep=1)
        states = out.hidden_states[-1][:, -self.k:]                                      # [B, K, H]
        return self.weaver.bridge_out(states.float()).to(dtype)

    # ---- 3: the reasoner's input --------------------------------------------------------------------------------
    def build(self, questions, plan: Plan, answers: list[list[int]] | None = None) -> WovenBatch:
        contexts = [self.weaver_context(q, rs) for q, rs in zip(questions, plan.retrieved.rows.tolist())]
        latents = self.weave(contexts)
        rows = [Row(question_ids=question_ids(self.tokenizer, q.question, self.cfg.retrieval.chat_template),
                    control_id=None, memory=[], tail_ids=self.tail_ids(q),
                    answer_ids=answers[i] if answers else [], end_memory=latents[i]) for i, q in enumerate(questions)]
        batch = build_batch(rows, self.lm.get_input_embeddings(), self.newline_id, self.tokenizer.pad_token_id)
        for e, c in zip(batch.extras, contexts):
            e["weaver_tokens"] = len(c) + self.k
        batch = WovenBatch(**{f.name: getattr(batch, f.name) for f in dataclasses.fields(Batch)},
                           weaver_context=contexts, latents=list(latents), plan=plan)
        if answers and self.cap:
            batch = self._insert_in_answers(batch, answers)
        return batch

    def is_delimiter(self, token: int) -> bool:
        if token not in self._delimiter:
            text = self.tokenizer.decode([token]).rstrip(" ")
            self._delimiter[token] = any(text.endswith(d) for d in self.cfg.memgen.delimiters)
        return self._delimiter[token]

    def insertion_points(self, answer: list[int], fires=lambda j: True) -> list[int]:
        """Indices j of the answer tokens after which latents go in: delimiters (not the last token) where the
        trigger `fires`, in order, until `cap` insertions: the same walk generation makes."""
        eos, points = self.tokenizer.eos_token_id, []
        for j, t in enumerate(answer[:-1]):
            if len(points) == self.cap:
                break
            if t != eos and self.is_delimiter(t) and fires(j):
                points.append(j)
        return points

    def _insert_in_answers(self, batch: WovenBatch, answers: list[list[int]]) -> WovenBatch:
        """Teacher forcing with latents after the answer's delimiters: answers move to per-row columns."""
        if self.trigger_head is None or not self.trigger_active:
            points = [self.insertion_points(a) for a in answers]
        else:
            asked = [(i, j) for i, a in enumerate(answers) for j, t in enumerate(a[:-1]) if self.is_delimiter(t)]
            fire = dict(zip(asked, self.trigger_decisions(batch, answers, asked))) if asked else {}
            points = [self.insertion_points(a, lambda j, i=i: fire[(i, j)]) for i, a in enumerate(answers)]
        jobs = [(i, j) for i, ps in enumerate(points) for j in ps]
        if not jobs:
            return batch
        woven = self.weave([batch.weaver_context[i] + answers[i][:j + 1] for i, j in jobs], "inference")
        by_row = {job: woven[n] for n, job in enumerate(jobs)}
        embed = self.lm.get_input_embeddings()
        p, (b, _, h) = batch.prompt_len, batch.inputs_embeds.shape
        regions, columns = [], []
        for i, a in enumerate(answers):
            pieces, cols, at = [], [], p
            for j, tok in enumerate(a):
                pieces.append(embed(torch.tensor([tok], device=self.device)))
                cols.append(at)
                at += 1
                if (i, j) in by_row:
                    pieces.append(by_row[(i, j)])
                    at += self.k
                    batch.counts[i]["memory"] += self.k
                    batch.extras[i]["weaver_tokens"] += len(batch.weaver_context[i]) + j + 1 + self.k
            regions.append(torch.cat(pieces) if pieces else batch.inputs_embeds.new_zeros(0, h))
            columns.append(cols)
        width = max(r.shape[0] for r in regions)
        inputs = batch.inputs_embeds.new_zeros(b, p + width, h)
        inputs[:, :p] = batch.inputs_embeds[:, :p]
        mask = torch.zeros(b, p + width, dtype=torch.long, device=self.device)
        mask[:, :p] = batch.attention_mask[:, :p]
        a_cols = torch.full(batch.answer_ids.shape, p, dtype=torch.long, device=self.device)
        for i, (r, cols) in enumerate(zip(regions, columns)):
            inputs[i, p:p + r.shape[0]] = r
            mask[i, p:p + r.shape[0]] = 1
            inputs[i, p + r.shape[0]:] = batch.inputs_embeds[i, 0]  # masked: a copy of a real embedding, not zero
            if cols:
                a_cols[i, :len(cols)] = torch.tensor(cols, device=self.device)
        batch.inputs_embeds, batch.attention_mask = inputs, mask
        batch.position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        batch.answer_columns = a_cols
        return batch

    # ---- the optional learned trigger ----------------------------------------------------------------------------
    def trigger_logits(self, contexts: list[list[int]]) -> torch.Tensor:
        """[N, 2] (skip, insert) logits of the trigger (its own LoRA) at the end of each context."""
        with keep_trainable(self.lm):
            return self._trigger_logits(contexts)

    def _trigger_logits(self, contexts: list[list[int]]) -> torch.Tensor:
        self.lm.set_adapter(TRIGGER_ADAPTER)
        try:
            state, _, _ = last_states(self.lm, contexts, self.tokenizer.pad_token_id, self.device)
            return self.trigger_head(state.float())
        finally:
            self.lm.set_adapter("default")

    def trigger_decisions(self, batch: WovenBatch, answers, jobs) -> list[bool]:
        """Teacher forcing: the decisions recorded while sampling (plan.triggers), else the trigger's greedy ones."""
        recorded = batch.plan.triggers if batch.plan is not None and batch.plan.triggers else [{}] * len(answers)
        out = []
        for i, j in jobs:
            out.append(bool(recorded[i][j]) if j in recorded[i] else None)
        missing = [n for n, f in enumerate(out) if f is None]
        if missing:
            with torch.no_grad():
                logits = self.trigger_logits([batch.weaver_context[jobs[n][0]] + answers[jobs[n][0]][:jobs[n][1] + 1]
                                              for n in missing])
            for n, f in zip(missing, logits.argmax(-1).tolist()):
                out[n] = bool(f)
        return out

    def extra_action_logprobs(self, questions, plan: Plan, answers: list[list[int]]):
        """In the trigger's GRPO stage: log-probabilities [N, T] of the trigger's recorded decisions, and their mask."""
        if not self.trigger_trains:
            return None
        recs = plan.triggers or [{} for _ in questions]
        width = max([len(r) for r in recs] + [1])
        logp = torch.zeros(len(questions), width, device=self.device)
        mask = torch.zeros(len(questions), width, dtype=torch.bool, device=self.device)
        jobs = [(i, k, j, fire) for i, r in enumerate(recs) for k, (j, fire) in enumerate(sorted(r.items()))]
        if jobs:
            contexts = [self.weaver_context(questions[i], plan.retrieved.rows[i].tolist()) + answers[i][:j + 1]
                        for i, _, j, _ in jobs]
            lp = torch.log_softmax(self.trigger_logits(contexts), -1)
            for n, (i, k, _, fire) in enumerate(jobs):
                logp[i, k] = lp[n, int(fire)]
                mask[i, k] = True
        return logp, mask

    # ---- 5: answers ---------------------------------------------------------------------------------------------
    def generate(self, batch: Batch, max_new_tokens: int, sample: bool, temperature: float = 1.0,
                 generator: torch.Generator | None = None, prefix=None) -> Generation:
        """ElasticMem's batched decoding; with delimiter insertion, one row at a time, weaving at each insertion."""
        if not self.cap:
            return super().generate(batch, max_new_tokens, sample, temperature, generator, prefix)
        embed = self.lm.get_input_embeddings()
        eos = self.tokenizer.eos_token_id
        tokens, logprobs = [], []
        for i in range(batch.inputs_embeds.shape[0]):
            real = batch.attention_mask[i].bool()
            n = int(real.sum())
            out = self.reasoner(inputs_embeds=batch.inputs_embeds[i:i + 1, real], use_cache=True,
                                position_ids=torch.arange(n, device=self.device)[None], logits_to_keep=1)
            toks, lps, context, inserted = [], [], list(batch.weaver_context[i]), 0
            decisions = {}
            for step in range(max_new_tokens):
                logp = torch.log_softmax(out.logits[:, -1].float() / (temperature if sample else 1.0), dim=-1)
                nxt = int(sampling.categorical(logp.exp(), generator, "answer token")[0] if sample else logp.argmax(-1))
                toks.append(nxt)
                lps.append(float(logp[0, nxt]))
                if nxt == eos or step == max_new_tokens - 1:
                    break
                context.append(nxt)
                feed = embed(torch.tensor([nxt], device=self.device))
                if self.is_delimiter(nxt) and inserted < self.cap and self._trigger_fires(context, step, sample,
                                                                                         generator, decisions):
                    feed = torch.cat([feed, self.weave([context], "inference")[0]])
                    inserted += 1
                    batch.counts[i]["memory"] += self.k
                    batch.extras[i]["weaver_tokens"] += len(context) + self.k
                pos = torch.arange(n, n + feed.shape[0], device=self.device)[None]
                out = self.reasoner(inputs_embeds=feed[None], position_ids=pos, cache=out.cache, use_cache=True,
                                    logits_to_keep=1)
                n += feed.shape[0]
            tokens.append(toks)
            logprobs.append(lps)
            batch.counts[i]["output"] = len(toks)
            if batch.plan is not None and self.trigger_head is not None and self.trigger_active:
                if batch.plan.triggers is None:
                    batch.plan.triggers = [{} for _ in range(batch.inputs_embeds.shape[0])]
                batch.plan.triggers[i] = decisions
        texts = [self.tokenizer.decode(t, skip_special_tokens=True) for t in tokens]
        return Generation(tokens, texts, logprobs)

    def _trigger_fires(self, context, step, sample, generator, decisions: dict) -> bool:
        """Always, without a learned trigger (MemGen's released setting) or before it trained; else the trigger's
        decision, recorded."""
        if self.trigger_head is None or not self.trigger_active:
            return True
        with torch.no_grad():
            probs = torch.softmax(self.trigger_logits([context]), -1)
        fire = bool(sampling.categorical(probs, generator, "trigger")[0] if sample and self.trigger_trains
                    else probs.argmax(-1)[0])
        decisions[step] = fire
        return fire

    def optimizer_groups(self, lr: float) -> list[dict]:
        """LoRA (and the trigger's head) at the stage's `lr`; the weaver's bridges and query latents, full matrices
        that a LoRA-sized rate would rewrite within a few steps, at memgen.weaver_lr when it is set."""
        own = {id(p) for p in self.weaver.parameters()}
        rest = [p for p in self.trainable_parameters() if id(p) not in own]
        weaver = [p for p in self.weaver.parameters() if p.requires_grad]
        w_lr = self.cfg.memgen.weaver_lr or lr
        return [g for g in ({"params": rest, "lr": lr}, {"params": weaver, "lr": w_lr}) if g["params"]]

    # ---- checkpoints --------------------------------------------------------------------------------------------
    @property
    def lora_model(self):
        return self.lm

    def save_parts(self, path: Path) -> None:
        """The weaver's LoRA adapter (and the trigger's), bridges and query latents (and the trigger head)."""
        self.lm.save_pretrained(path / "lora")
        torch.save(self.weaver.state_dict(), path / "weaver.pt")
        if self.trigger_head is not None:
            torch.save(self.trigger_head.state_dict(), path / "trigger_head.pt")
            (path / "trigger.json").write_text(json.dumps({"trained": self.trigger_active}) + "\n")

    def load_part(self, path: Path, part: str, saved: Config) -> None:
        if part == "weaver":
            self.weaver.load_state_dict(torch.load(path / "weaver.pt", map_location=self.device))
        elif part == "trigger":
            from peft import set_peft_model_state_dict
            from safetensors.torch import load_file

            if self.trigger_head is None:
                raise ValueError(f"{path}: this model has no trigger (memgen.trigger = off)")
            set_peft_model_state_dict(self.lm, load_file(path / "lora" / TRIGGER_ADAPTER /
                                                         "adapter_model.safetensors", device=str(self.device)),
                                      adapter_name=TRIGGER_ADAPTER)
            self.trigger_head.load_state_dict(torch.load(path / "trigger_head.pt", map_location=self.device))
            self.trigger_active = json.loads((path / "trigger.json").read_text())["trained"]
        else:
            super().load_part(path, part, saved)


def sft_steps(cfg: Config, n_train: int) -> int:
    """Supervised weaver steps: memgen.sft_steps, or (-1) as many as the method's supervised stages, or, in a run
    whose method has none (the paper recipe), one epoch over the `n_train` training questions."""
    m = cfg.memgen.sft_steps
    if m >= 0:
        return m
    return cfg.grpo.reader_warmup_steps + cfg.grpo.sft_steps or math.ceil(n_train / cfg.grpo.sft_batch_size)


def train(model: MemGen, dataset, folder: Path, progress: bool = True) -> Path:
    """Train the weaver (supervised, then GRPO; then the trigger when memgen.trigger = learned); resumable.

    The supervised stage's result is `<folder>/sft/` (with the RNG state it ended in, so a rerun that finds it goes
    on exactly as an uninterrupted run); GRPO resumes from `<folder>/last/` and selects `<folder>/best/` on
    validation; the trigger stage does the same in `<folder>/trigger/`. Returns the checkpoint to evaluate."""
    from ..method.model import CHECKPOINT_META
    from ..training.grpo import Trainer

    cfg, m = model.cfg, model.cfg.memgen
    n_sft = sft_steps(cfg, len(dataset.split("train")))
    # the trainer's own warm-ups and auxiliary losses are the method's; the weaver's supervised stage replaces them
    own = {"grpo": {"reader_warmup_steps": 0, "retrieval_warmup_steps": 0, "sft_steps": 0}, "align": {"steps": 0},
           "retrieval": {"aux_weight": 0.0}}
    train_q, val_q = dataset.split("train"), dataset.split("val")
    sft = folder / "sft"
    with model.using(cfg=derive(cfg, "memgen weaver", **own)):
        trainer = Trainer(model, train_q, val_q, folder, setting=dataset.setting)
        if (sft / CHECKPOINT_META).is_file() and (sft / "rng.pt").is_file():
            model.load(sft)
            torch.set_rng_state(torch.load(sft / "rng.pt"))
        elif not (folder / "last" / "trainer_state.pt").is_file():
            trainer.supervised(n_sft, "weaver", "memgen_sft")
            sft.mkdir(parents=True, exist_ok=True)
            torch.save(torch.get_rng_state(), sft / "rng.pt")  # before the checkpoint's meta: a folder with a meta
            model.save(sft)                                    # file is complete
        trainer.train(progress, reader_warmup=False)
    best = folder / "best"
    if m.trigger != "learned":
        return best
    # the trigger's stage: the weaver (its LoRA, bridges and latents) frozen, the trigger's LoRA and head train
    model.load(best)
    for name, p in model.named_parameters():
        p.requires_grad_(f".{TRIGGER_ADAPTER}." in name or name.startswith("trigger_head."))
    trigger_cfg = derive(cfg, "memgen trigger", grpo={**own["grpo"], "lr": m.trigger_lr, "max_steps": m.trigger_steps,
                                                      "epochs": max(1, cfg.grpo.epochs)}, align=own["align"],
                         retrieval=own["retrieval"])
    model.trigger_trains = model.trigger_active = True
    try:
        with model.using(cfg=trigger_cfg):
            Trainer(model, train_q, val_q, folder / "trigger", setting=dataset.setting).train(progress,
                                                                                              reader_warmup=False)
    finally:
        model.trigger_trains = False
    return folder / "trigger" / "best"
