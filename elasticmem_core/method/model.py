"""ElasticMem: the reasoner with retrieval, budget policy, projector and soft-token injection around it.

One rollout for a question:
    1. retrieval  : control token -> query q -> top-Z rows of the question's own memory   (retrieval.py)
    2. budgets    : the policy gives each retrieved chunk b_j soft tokens                  (budget.py)
    3. soft tokens: the last b_j states of each content cache through the projector        (projector.py)
    4. injection  : [question][control]([soft]["\n"]) x Z [instruction, options][answer]   (injection.py)
    5. answer     : generated with a KV cache over inputs_embeds (greedy at evaluation)

What trains: LoRA on the reasoner (peft), the projector and the budget policy. The backbone and the bank are frozen.
`memory="text"` puts the retrieved chunks in as text instead (the controlled comparison's "LoRA + text memory"),
`memory="none"` leaves memory out (the no-memory baseline). The mode is an attribute: the stage-0 reader warm-up
trains with text memory, then the same LoRA continues with latent memory. `model.using(...)` runs the model
differently for a while (memory mode, budget policy, config, retrieval fields) and restores it on exit.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..core import sampling
from ..core.config import Config, from_sections
from ..core.renamed import upgrade
from . import projector as projector_mod
from . import rollout
from .budget import BudgetDecision, BudgetPolicy
from .index import MemoryIndex
from .injection import Batch, Row, build_batch
from .retrieval import MODES, Retrieved, Retriever, question_ids
from .retrieval_head import RetrievalHead
from .rewards import parse_answer

CHECKPOINT_META = "elasticmem.json"
# latent: soft tokens (the method); text: retrieved chunks as text ("LoRA + text memory"); text_tail: each retrieved
# chunk as its last b_j text tokens, b_j from the budget policy (truncated text: what an input-embedding cache is);
# none: no memory at all
MEMORY_MODES = ("latent", "text", "text_tail", "none")


class CheckpointError(RuntimeError):
    """A checkpoint cannot be loaded onto this model; the message says why."""


def add_lora(model, cfg_lora):
    """Wrap the reasoner with LoRA adapters (peft); only the adapters train."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=cfg_lora.r, lora_alpha=cfg_lora.alpha, lora_dropout=cfg_lora.dropout,
                        target_modules=list(cfg_lora.target_modules), task_type="CAUSAL_LM")
    with warnings.catch_warnings():  # peft 0.21 reads transformers 5's deprecated `is_gradient_checkpointing` alias
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        return get_peft_model(model, config)


@dataclass
class Plan:
    """What a rollout decided before answering: the retrieval and the budgets."""
    retrieved: Retrieved
    budgets: BudgetDecision
    evidence: torch.Tensor | None = None   # [B, Z] gold-evidence flags, only for an oracle-feature budget policy
    triggers: list[dict] | None = None     # per row: answer index -> whether latents went in after it (MemGen-style
    #                                        trigger decisions, recorded while sampling so the loss can score them)
    texts: list[list[str]] | None = None   # per row: the memory as text pieces, where a model retrieves records of
    #                                        its own instead of bank chunks (the Mem0-style facts)


@dataclass
class Generation:
    tokens: list[list[int]]      # generated ids per row (up to and including EOS)
    texts: list[str]
    logprob: list[list[float]]   # sampling-time log-probability of each generated token


class ElasticMem(nn.Module):
    def __init__(self, backbone, bank, cfg: Config, chunk_texts: dict[str, str] | None = None,
                 memory: str = "latent", embedder=None, semantic_index: MemoryIndex | None = None):
        super().__init__()
        if bank.hidden_size != backbone.hidden_size or bank.manifest.get("backbone") != backbone.identity:
            raise CheckpointError(f"bank {bank.path} was built by {bank.manifest.get('backbone')} "
                                  f"(H={bank.hidden_size}), not by {backbone.identity} (H={backbone.hidden_size})")
        if memory not in MEMORY_MODES:
            raise ValueError(f"memory = {memory!r}; choose one of {', '.join(MEMORY_MODES)}")
        if memory in ("text", "text_tail") and chunk_texts is None:
            raise ValueError(f"memory = {memory} needs the chunk texts (chunk_id -> text)")
        if cfg.budget.b_max > bank.n_c:
            raise ValueError(f"budget.b_max ({cfg.budget.b_max}) exceeds the bank's N_c ({bank.n_c})")
        self.cfg, self.backbone, self.bank, self.memory = cfg, backbone, bank, memory
        self.tokenizer = backbone.tokenizer
        self.chunk_texts = chunk_texts or {}
        self._text_ids: dict[int, list[int]] = {}
        self.reasoner = add_lora(backbone.model, cfg.lora)
        self.projector = projector_mod.from_config(cfg.projector, backbone)
        self.policy = BudgetPolicy(backbone.hidden_size, cfg.budget, cfg.retrieval.top_z).to(backbone.device)
        self.retriever = Retriever(cfg.retrieval, self.tokenizer, bank, MemoryIndex.from_bank(bank, cfg.bank),
                                   semantic_index, embedder)
        self.retrieval_head = None  # retrieval.mode control_token_head: a map on the detached control-token state
        if MODES[cfg.retrieval.mode].head:
            self.retrieval_head = RetrievalHead(backbone.hidden_size, cfg.retrieval.head_rank).to(backbone.device)
        self.retriever.head = self.retrieval_head
        self.newline_id = self._single_token("\n")
        self.device = backbone.device

    MEMORY_MODES = MEMORY_MODES  # the modes `using` accepts (a subclass with its own memory adds its own)

    @contextlib.contextmanager
    def using(self, memory: str | None = None, policy: BudgetPolicy | None = None, cfg: Config | None = None,
              retrieval: dict | None = None):
        """Run the model differently for a while; on exit (errors included) the memory mode, budget policy, config
        and retrieval settings are what they were. None keeps the current one; `retrieval` replaces fields of the
        retriever's settings: with model.using(memory="text", retrieval={"mode": "semantic"}): model.answer(qs)."""
        if memory is not None and memory not in self.MEMORY_MODES:
            raise ValueError(f"memory = {memory!r}; choose one of {', '.join(self.MEMORY_MODES)}")
        if memory in ("text", "text_tail") and not self.chunk_texts:
            raise ValueError(f"memory = {memory} needs the chunk texts (chunk_id -> text)")
        unknown = sorted(set(retrieval or ()) - {f.name for f in dataclasses.fields(self.retriever.cfg)})
        if unknown:
            raise ValueError(f"retrieval has no field {unknown[0]!r}")
        saved = self.memory, self.policy, self.cfg, self.retriever.cfg
        try:
            if retrieval is not None:
                self.retriever.cfg = dataclasses.replace(self.retriever.cfg, **retrieval)
            self.memory = saved[0] if memory is None else memory
            self.policy = saved[1] if policy is None else policy
            self.cfg = saved[2] if cfg is None else cfg
            yield self
        finally:
            self.memory, self.policy, self.cfg, self.retriever.cfg = saved

    def _single_token(self, text: str) -> int:
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise ValueError(f"{text!r} is {len(ids)} tokens in this tokenizer; the layout needs one")
        return ids[0]

    # ---- prompt pieces ------------------------------------------------------------------------------------------
    def tail_ids(self, question) -> list[int]:
        """The part after the memory, as the item says: a question's instruction + options (+ answer cue) under
        data.prompt (injection.tail_text), an ALFWorld step's history, observation and admissible commands."""
        return self.tokenizer(question.tail_text(self.cfg.data.prompt), add_special_tokens=False)["input_ids"]

    def answer_ids(self, label: str) -> list[int]:
        """Tokens of a gold answer for teacher forcing: " (c)" then EOS."""
        return self.tokenizer(f" {label}", add_special_tokens=False)["input_ids"] + [self.tokenizer.eos_token_id]

    # ---- 1 + 2: retrieval and budgets ---------------------------------------------------------------------------
    def plan(self, questions, sample: bool, generator: torch.Generator | None = None) -> Plan:
        retrieved = self.retriever(self.reasoner, questions, sample, generator, need_query=self.memory == "latent")
        keys = self._keys(retrieved.rows)
        evidence = self.evidence_flags(questions, retrieved.rows) if self.policy.needs_evidence else None
        with torch.no_grad():
            decision = self.policy.decide(retrieved.query.to(self.device), keys, retrieved.scores.to(self.device),
                                          retrieved.mask.to(self.device), sample, generator, evidence,
                                          self._lengths(retrieved.rows))
        return Plan(retrieved, decision, evidence)

    def evidence_flags(self, questions, rows: torch.Tensor) -> torch.Tensor:
        """[B, Z] long: 1 where the retrieved row is one of the question's gold evidence chunks (q.evidence)."""
        flags = torch.zeros(rows.shape, dtype=torch.long)
        for i, (q, rs) in enumerate(zip(questions, rows.tolist())):
            gold = set(getattr(q, "evidence", None) or ())
            if not gold:
                raise ValueError(f"question {getattr(q, 'qid', i)!r} has no evidence field: the oracle-feature "
                                 f"budget policy (budget.sees_evidence) needs each question's gold evidence chunks")
            for j, r in enumerate(rs):
                flags[i, j] = int(r >= 0 and self.bank.chunk_ids[r] in gold)
        return flags.to(self.device)

    def _lengths(self, rows: torch.Tensor) -> torch.Tensor | None:
        """Cached states L_j of the retrieved rows [B, Z] (0 at missing slots), for a policy with budget.sees_length."""
        if not getattr(self.policy, "sees_length", False):
            return None
        lengths = self.bank.cache_len[rows.clamp(min=0).cpu()] * rows.ge(0).cpu()
        return lengths.to(self.device)

    def _keys(self, rows: torch.Tensor) -> torch.Tensor:
        """Bank keys of retrieved rows [B, Z, H] (zeros at missing slots)."""
        h = self.bank.hidden_size
        out = torch.zeros(*rows.shape, h)
        for idx in rows.ge(0).nonzero().tolist():
            out[idx[0], idx[1]] = self.bank.key(int(rows[idx[0], idx[1]]))
        return out.to(self.device)

    def rollout(self, question, group_size: int, reward_fn, generator):
        """G sampled rollouts of one training item as a rollout.Group (rollout.rollout; the AgeMem-style agent plays
        whole episodes instead)."""
        return rollout.rollout(self, question, group_size, reward_fn, generator)

    def prepare(self, questions, folder=None, progress: bool = True) -> None:
        """Work done once before answering `questions` (nothing here; the text-memory systems build their stores
        or play their episodes), with `folder` for what it saves."""

    def extra_action_logprobs(self, questions, plan: Plan, answers: list[list[int]]):
        """Differentiable log-probabilities [B, T] and mask of actions the GRPO loss trains besides the control token,
        the answer tokens and the budgets; None here (the MemGen-style baseline's learned trigger has some)."""
        return None

    def policy_logprob(self, plan: Plan) -> tuple[torch.Tensor, torch.Tensor]:
        """Differentiable log-probabilities and entropy [B, Z] of the plan's budgets (one teacher-forced pass)."""
        r = plan.retrieved
        return self.policy.evaluate(r.query.to(self.device), self._keys(r.rows), r.scores.to(self.device),
                                    r.mask.to(self.device), plan.budgets.budgets, plan.evidence, self._lengths(r.rows))

    # ---- 3 + 4: soft tokens and injection -----------------------------------------------------------------------
    def memory_items(self, plan: Plan) -> list[list]:
        """Per row, per retrieved chunk: its soft tokens [b_j, H] (through the projector), or its text token ids."""
        rows, budgets = plan.retrieved.rows, plan.budgets.budgets.cpu()
        if plan.texts is not None:  # the model's own text records, one memory item each
            return [[self.tokenizer(t, add_special_tokens=False)["input_ids"] for t in ts] for ts in plan.texts]
        if self.memory == "none":
            return [[] for _ in rows]
        if self.memory == "text":  # every retrieved chunk as text: the text-memory reader has no budget policy
            return [[self._chunk_ids(r) for r in rs if r >= 0] for rs in rows.tolist()]
        if self.memory == "text_tail":  # the last b_j text tokens (b_j = 0 drops the chunk)
            return [[self._chunk_ids(r)[-b:] if b > 0 else [] for r, b in zip(rs, bs) if r >= 0]
                    for rs, bs in zip(rows.tolist(), budgets.tolist())]
        states, sizes = [], []
        for rs, bs in zip(rows.tolist(), budgets.tolist()):
            for r, b in zip(rs, bs):
                s = self.bank.cache(r, last=b) if r >= 0 and b > 0 else torch.empty(0, self.bank.hidden_size)
                states.append(s)
                sizes.append(s.shape[0])
        flat = torch.cat(states).to(self.device, self.backbone.dtype)
        soft = self.projector(flat).to(self.backbone.dtype)   # one projector call for the whole group
        pieces = list(torch.split(soft, sizes))
        z = rows.shape[1]
        return [pieces[i * z:(i + 1) * z] for i in range(rows.shape[0])]

    def _chunk_ids(self, row: int) -> list[int]:
        if row not in self._text_ids:
            text = self.chunk_texts[self.bank.chunk_ids[row]]
            self._text_ids[row] = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return self._text_ids[row]

    def build(self, questions, plan: Plan, answers: list[list[int]] | None = None) -> Batch:
        items = self.memory_items(plan)
        rows = []
        for i, q in enumerate(questions):
            qids = question_ids(self.tokenizer, q.question, self.cfg.retrieval.chat_template)
            rows.append(Row(question_ids=qids, control_id=plan.retrieved.control_ids[i], memory=items[i],
                            tail_ids=self.tail_ids(q), answer_ids=answers[i] if answers else []))
        return build_batch(rows, self.reasoner.get_input_embeddings(), self.newline_id, self.tokenizer.pad_token_id)

    # ---- 5: answers ---------------------------------------------------------------------------------------------
    def prefill(self, batch: Batch, length: int):
        """The KV cache of the first `length` columns of `batch`: a prompt prefix that later `generate(...,
        prefix=)` calls share (an ALFWorld episode's question + control token + memory, the same at every step)."""
        cols = slice(0, length)
        return self.reasoner(inputs_embeds=batch.inputs_embeds[:, cols], attention_mask=batch.attention_mask[:, cols],
                             position_ids=batch.position_ids[:, cols], use_cache=True, logits_to_keep=1).cache

    def generate(self, batch: Batch, max_new_tokens: int, sample: bool, temperature: float = 1.0,
                 generator: torch.Generator | None = None, prefix=None) -> Generation:
        """Decode with a KV cache over inputs_embeds; stops at EOS or max_new_tokens. With `prefix` (`prefill` of
        this batch's first columns, identical in every row: no left padding inside it), only the rest of the prompt
        is run; the prefix cache is copied, never extended, so the next call can reuse it."""
        embed = self.reasoner.get_input_embeddings()
        mask, pos = batch.attention_mask, batch.position_ids
        start = 0 if prefix is None else prefix.get_seq_length()
        out = self.reasoner(inputs_embeds=batch.inputs_embeds[:, start:], attention_mask=mask,
                            position_ids=pos[:, start:], cache=None if prefix is None else copy.deepcopy(prefix),
                            use_cache=True, logits_to_keep=1)  # only the next token's logits: the head is big
        b = mask.shape[0]
        tokens = [[] for _ in range(b)]
        logprobs = [[] for _ in range(b)]
        done = torch.zeros(b, dtype=torch.bool, device=self.device)
        last_pos = pos[:, -1:]
        eos = self.tokenizer.eos_token_id
        for _ in range(max_new_tokens):
            logp = torch.log_softmax(out.logits[:, -1].float() / (temperature if sample else 1.0), dim=-1)
            nxt = sampling.categorical(logp.exp(), generator, "answer token") if sample else logp.argmax(-1)
            for i in range(b):
                if not done[i]:
                    tokens[i].append(int(nxt[i]))
                    logprobs[i].append(float(logp[i, nxt[i]]))
            done |= nxt.eq(eos)
            if bool(done.all()):
                break
            mask = torch.cat([mask, mask.new_ones(b, 1)], dim=1)
            last_pos = last_pos + 1
            out = self.reasoner(inputs_embeds=embed(nxt[:, None]), attention_mask=mask, position_ids=last_pos,
                                cache=out.cache, use_cache=True)
        texts = [self.tokenizer.decode(t, skip_special_tokens=True) for t in tokens]
        for c, t in zip(batch.counts, tokens):
            c["output"] = len(t)
        return Generation(tokens, texts, logprobs)

    @torch.no_grad()
    def continuation_logprobs(self, batch: Batch, candidates: list[list[int]], prefix=None) -> list[float]:
        """log p(candidate | prompt), summed over the candidate's tokens, for each candidate continuation of
        `batch`'s one prompt: the prompt runs once (after `prefix`, as in `generate`), then every candidate is
        teacher-forced in ONE packed row after it, each token seeing the prompt and its own candidate's earlier
        tokens only (a block mask), so the prompt's KV cache is read once rather than copied per candidate (ALFWorld's
        ranking of the admissible commands, each candidate ending in EOS so that a command is not rewarded for being
        a prefix of another)."""
        if batch.attention_mask.shape[0] != 1 or not candidates or not all(candidates):
            raise ValueError(f"continuation_logprobs scores continuations of ONE prompt: got {batch.attention_mask.shape[0]}"
                             f" prompts and {len(candidates)} candidates (every candidate needs a token)")
        impl = self.reasoner.config._attn_implementation
        if impl not in ("sdpa", "eager"):   # flash attention takes no custom mask: the block mask would be lost
            raise ValueError(f"continuation_logprobs packs the candidates under a block mask, which attention "
                             f"{impl!r} cannot take: load the backbone with sdpa or eager attention")
        mask, pos = batch.attention_mask, batch.position_ids
        start = 0 if prefix is None else prefix.get_seq_length()
        out = self.reasoner(inputs_embeds=batch.inputs_embeds[:, start:], attention_mask=mask,
                            position_ids=pos[:, start:], cache=None if prefix is None else copy.deepcopy(prefix),
                            use_cache=True, logits_to_keep=1)
        first = torch.tensor([c[0] for c in candidates], device=self.device)
        scores = torch.log_softmax(out.logits[0, -1].float(), -1)[first]
        fed = [(i, j) for i, c in enumerate(candidates) for j in range(1, len(c))]   # (candidate, position) per column
        if fed:
            which = torch.tensor([i for i, _ in fed], device=self.device)
            at = torch.tensor([j for _, j in fed], device=self.device)
            inputs = torch.tensor([candidates[i][j - 1] for i, j in fed], device=self.device)
            targets = torch.tensor([candidates[i][j] for i, j in fed], device=self.device)
            own = (which[:, None] == which[None, :]) & (at[None, :] <= at[:, None])   # same candidate, not later
            allowed = torch.cat([mask.bool().expand(len(fed), -1), own], 1)[None, None]   # [1, 1, T, prompt + T]
            if impl == "eager":   # eager attention adds its mask: 0 or the most negative number
                dtype = self.reasoner.get_input_embeddings().weight.dtype
                allowed = torch.zeros(allowed.shape, dtype=dtype, device=self.device).masked_fill(
                    ~allowed, torch.finfo(dtype).min)
            rest = self.reasoner(inputs_embeds=self.reasoner.get_input_embeddings()(inputs)[None],
                                 attention_mask=allowed, position_ids=pos[:, -1:] + at[None], cache=out.cache,
                                 use_cache=True)
            logp = torch.log_softmax(rest.logits[0].float(), -1).gather(-1, targets[:, None])[:, 0]
            scores = scores.index_add(0, which, logp)
        return scores.tolist()

    @torch.no_grad()
    def answer(self, questions, max_new_tokens: int | None = None) -> list[dict]:
        """Greedy evaluation: retrieval by argmax, budgets by argmax, greedy answer. Deterministic."""
        was_training = self.training
        self.eval()
        plan = self.plan(questions, sample=False)
        batch = self.build(questions, plan)
        gen = self.generate(batch, max_new_tokens or self.cfg.grpo.max_new_tokens, sample=False)
        self.train(was_training)
        out = []
        for i, q in enumerate(questions):
            pred = parse_answer(gen.texts[i], len(q.options))
            out.append({"qid": q.qid, "prediction": pred, "gold": q.gold, "correct": pred == q.gold,
                        "output": gen.texts[i], "tokens": dict(batch.counts[i]),
                        "rows": plan.retrieved.rows[i].tolist(), "budgets": plan.budgets.budgets[i].tolist(),
                        **({"memory_texts": plan.texts[i]} if plan.texts is not None else {}), **batch.extras[i]})
        return out

    # ---- checkpoints --------------------------------------------------------------------------------------------
    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def optimizer_groups(self, lr: float) -> list[dict]:
        """AdamW parameter groups of a training stage whose learning rate is `lr`: one group here (the MemGen-style
        model gives its weaver's own full matrices memgen.weaver_lr)."""
        return [{"params": self.trainable_parameters(), "lr": lr}]

    def save(self, path: str | Path) -> Path:
        """One folder: the model's parts (`save_parts`), the config used, backbone identity and hidden size."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.save_parts(path)
        meta = {"backbone": self.backbone.identity, "hidden_size": self.backbone.hidden_size,
                "memory": self.memory, "config": self.cfg.to_dict()}
        (path / CHECKPOINT_META).write_text(json.dumps(meta, indent=2) + "\n")
        return path

    def save_parts(self, path: Path) -> None:
        """LoRA adapter, projector and policy."""
        self.reasoner.save_pretrained(path / "lora")
        torch.save(self.projector.state_dict(), path / "projector.pt")
        torch.save(self.policy.state_dict(), path / "policy.pt")
        if self.retrieval_head is not None:
            torch.save(self.retrieval_head.state_dict(), path / "retrieval_head.pt")

    # settings that shape each part's weights: a checkpoint loads a part only where they agree; top_z (unless
    # budget.arch = authors), sampling and loss settings need not. A projector is trained on one cache layer's states.
    SHAPING = {"projector": [("projector", "kind"), ("projector", "hidden"), ("bank", "cache_layer")],
               "lora": [("lora", k) for k in ("r", "alpha", "target_modules")],
               "policy": [("budget", k) for k in ("policy", "arch", "hidden", "heads", "layers", "b_max",
                                                  "min_budget", "sees_evidence", "sees_length")],
               "retrieval_head": [("retrieval", "mode"), ("retrieval", "head_rank")]}
    PARTS = ("lora", "projector", "policy")   # + retrieval_head when the model has one (`parts`)

    @property
    def parts(self) -> tuple[str, ...]:
        return self.PARTS + (("retrieval_head",) if getattr(self, "retrieval_head", None) is not None else ())

    def load(self, path: str | Path, parts: tuple[str, ...] | None = None) -> "ElasticMem":
        """Load a checkpoint saved by `save` (or only some of its `parts`, e.g. a warmed-up reader's LoRA);
        refuses one from another backbone or hidden size, or whose weight-shaping settings differ."""
        path = Path(path)
        parts = self.parts if parts is None else parts
        meta_file = path / CHECKPOINT_META
        if not meta_file.is_file():
            raise CheckpointError(f"{path}: not an ElasticMem checkpoint ({CHECKPOINT_META} missing)")
        meta = json.loads(meta_file.read_text())
        if meta["backbone"] != self.backbone.identity or meta["hidden_size"] != self.backbone.hidden_size:
            raise CheckpointError(f"{path}: checkpoint of backbone {meta['backbone']} (H={meta['hidden_size']}) "
                                  f"cannot load onto {self.backbone.identity} (H={self.backbone.hidden_size})")
        unknown = [p for p in parts if p not in self.SHAPING]
        if unknown:
            raise CheckpointError(f"{path}: {type(self).__name__} has no part {unknown[0]!r} (parts: "
                                  f"{', '.join(self.PARTS)})")
        saved = from_sections(str(meta_file), **upgrade(meta["config"]))  # a checkpoint of older code reads too
        for section, key in (pair for part in parts for pair in self.SHAPING[part]):  # only the parts loaded
            was, now = getattr(getattr(saved, section), key), getattr(getattr(self.cfg, section), key)
            if was != now:
                raise CheckpointError(f"{path}: checkpoint has {section}.{key} = {was!r}, the current params "
                                      f"{now!r}; use the checkpoint's params")
        for part in parts:
            self.load_part(path, part, saved)
        return self

    def load_part(self, path: Path, part: str, saved: Config) -> None:
        """One part's weights from a checkpoint folder (its shaping settings already checked)."""
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        if part == "policy" and self.policy.top_z is not None and saved.retrieval.top_z != self.policy.top_z:
            raise CheckpointError(f"{path}: checkpoint's budget policy (budget.arch = authors) has a position table "
                                  f"for retrieval.top_z = {saved.retrieval.top_z}, the current params "
                                  f"{self.policy.top_z}; use the checkpoint's top_z")
        if part == "lora":
            set_peft_model_state_dict(self.lora_model, load_file(path / "lora" / "adapter_model.safetensors",
                                                                 device=str(self.device)))
        elif part == "projector":
            self.projector.load_state_dict(torch.load(path / "projector.pt", map_location=self.device))
        elif part == "policy":
            self.policy.load_state_dict(torch.load(path / "policy.pt", map_location=self.device))
        elif part == "retrieval_head":
            if self.retrieval_head is None:
                raise CheckpointError(f"{path}: this model has no retrieval head (retrieval.mode = "
                                      f"{self.cfg.retrieval.mode!r}; the head is control_token_head's)")
            if not (path / "retrieval_head.pt").is_file():
                raise CheckpointError(f"{path}: no retrieval_head.pt (a checkpoint made without control_token_head)")
            state = torch.load(path / "retrieval_head.pt", map_location=self.device)
            want = {k: tuple(v.shape) for k, v in self.retrieval_head.state_dict().items()}
            got = {k: tuple(v.shape) for k, v in state.items()}
            if got != want:  # e.g. a head trained on another hidden size, its file copied in by hand
                raise CheckpointError(f"{path / 'retrieval_head.pt'}: retrieval head of shapes {got}, this model's "
                                      f"(hidden size {self.backbone.hidden_size}, retrieval.head_rank "
                                      f"{self.cfg.retrieval.head_rank}) {want}")
            self.retrieval_head.load_state_dict(state)

    @property
    def lora_model(self):
        """The peft model holding the LoRA adapter (ElasticMem: the reasoner itself)."""
        return self.reasoner
