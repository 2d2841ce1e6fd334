"""The AgeMem-style baseline (eval.method = agemem): memory management as tool calls in the agent's own output.

The conversation streams in one turn pair at a time. At each step the agent (the reasoner with its LoRA) sees its
short-term context (the turns it holds, numbered) and the new turn, and writes tool calls, one per line:

    ADD: <fact>            long-term memory: store a fact (fact_store.py; ids are never reused)
    UPDATE <id>: <fact>    replace stored fact <id>
    DELETE <id>            delete stored fact <id>
    RETRIEVE: <query>      the agent.retrieve_k facts most similar to <query> come back as an observation
    SUMMARY: <text>        short-term context: replace every item held with <text>
    FILTER <i>[, <j>...]   short-term context: drop items i, j
    NONE                   nothing to do

The package parses and executes them (agemem_tools.execute). A line that is not a call, or a call that fails (an unknown id),
is counted as invalid and shown to the agent at its next step as an error observation; it never stops the episode.
Above agemem.context_tokens the oldest context items are evicted (counted): Summary and Filter are how the agent
keeps what matters. After the stream, for each of the memory's questions the agent makes one more tool step that
sees the question (where it can RETRIEVE), then answers in ElasticMem's layout with its memory = the context items it
kept plus what it retrieved, as text; #Tok counts that answer's input and output, and `tool_tokens` every step's.

A backbone that writes no valid call (SmolLM2-135M: 0 of 56 lines on a test memory) first clones a rule teacher
(`format_warmup`, agemem.format_steps; 0 at paper scale, where the instruct backbone follows the tool list).
Training follows AgeMem: step-wise GRPO (each trajectory's final reward broadcast as the advantage of every one of
its steps' tokens) through grpo.Trainer, over three stages, each a params section (agemem.store, .filter, .answer):
1. store: the plain stream; reward mostly `stored_evidence` (gold values found in long-term memory);
2. filter: agemem.distractors turns of other memories injected; reward `filtered_distractors` (gone from the
   context at the end) and `stored_evidence`;
3. answer: the memory's questions answered; reward `answer` (their mean correctness).
`stored_evidence` reads MemorySuite-mini's gold values (a memory's questions' gold options); AgeMem scores memory
quality with an LLM judge, which a data set without known facts would need (set the stage's rewards to `answer`).
"""
from __future__ import annotations

import copy
import math
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from ..core.config import derive
from ..method.injection import Row, build_batch
from ..method.model import ElasticMem
from .agemem_tools import SYSTEM, TOOLS, State, execute
from .fact_store import TextMemoryModel
from .mem0 import chat_ids


@dataclass
class EpisodeItem:
    """One training or evaluation unit: a memory's turn stream and its questions (grpo.Trainer's 'question')."""
    qid: str                       # the memory id (the trainer names its items by qid)
    memory_id: str
    turns: list[str]
    questions: list
    distractors: set[int] = field(default_factory=set)   # positions of injected turns in `turns`


@dataclass
class Step:
    """One agent step as the loss sees it (`AgeMem.build` lays it out; its tokens are the step's action)."""
    prompt_ids: list[int]
    qid: str = ""


# ---- episode rewards: functions of a finished trajectory (a weighted list per stage) ---------------------------
def stored_evidence(item: EpisodeItem, s: State, answers: list[float]) -> float:
    """Share of the memory's gold values (its questions' gold options) that some long-term fact states."""
    gold = {q.options[q.gold_index] for q in item.questions}
    return sum(s.ltm.holds(v) for v in gold) / max(1, len(gold))


def filtered_distractors(item: EpisodeItem, s: State, answers: list[float]) -> float:
    """Share of the injected distractor turns no longer in the short-term context (dropped, summarised, evicted)."""
    held = {pos for pos, _ in s.context}
    return sum(d not in held for d in item.distractors) / max(1, len(item.distractors))


def answer_reward(item: EpisodeItem, s: State, answers: list[float]) -> float:
    """Mean correctness of the memory's questions answered after the stream."""
    return sum(answers) / max(1, len(answers))


def valid_calls(item: EpisodeItem, s: State, answers: list[float]) -> float:
    """Share of the trajectory's tool lines that were valid calls."""
    n = sum(s.calls.values())
    return n / max(1, n + s.invalid)


EPISODE_REWARDS: dict[str, Callable] = {"answer": answer_reward, "stored_evidence": stored_evidence,
                                        "filtered_distractors": filtered_distractors, "valid_calls": valid_calls}


class EpisodeReward:
    """r = sum_k w_k x term_k(episode): the stage's weighted list (same interface as rewards.WeightedReward)."""

    def __init__(self, terms: dict[str, float], where: str = "agemem.<stage>.rewards"):
        check_rewards(terms, where)
        self.terms = dict(terms)

    def parts(self, item, state, answers) -> dict[str, float]:
        return {n: EPISODE_REWARDS[n](item, state, answers) for n in self.terms}

    def total(self, parts: dict[str, float]) -> float:
        return float(sum(self.terms[n] * v for n, v in parts.items()))


def check_rewards(terms: dict[str, float], where: str) -> None:
    for name in terms:
        if name not in EPISODE_REWARDS:
            raise ValueError(f"{where}.{name}: unknown episode reward; known: {', '.join(EPISODE_REWARDS)}")
    if not any(w != 0 for w in terms.values()):
        raise ValueError(f"{where} = {terms}: no term with a non-zero weight")


STAGES = ("store", "filter", "answer")


# ---- the model --------------------------------------------------------------------------------------------------
class AgeMem(TextMemoryModel):
    """The reasoner as a tool-calling memory agent (module docstring); answers in ElasticMem's text layout."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.stage = "answer"        # which curriculum stage rollouts serve (distractors, answering)
        self.episodes: dict[str, State] = {}   # memory id -> its greedy episode's final state (evaluation)

    @property
    def k(self) -> int:
        return self.cfg.agemem.retrieve_k or self.cfg.retrieval.top_z

    # ---- episodes -------------------------------------------------------------------------------------------
    def item(self, memory_id: str, questions, rng: random.Random | None = None) -> EpisodeItem:
        """A memory's episode; with `rng` (the filter stage) agemem.distractors turns of other memories injected."""
        turns = [self.chunk_texts[self.bank.chunk_ids[r]] for r in self.bank.rows(memory_id)]
        distractors: set[int] = set()
        if rng is not None and self.cfg.agemem.distractors > 0:
            others = [c for c, t in self.chunk_texts.items() if not c.startswith(f"{memory_id}#")]
            for c in rng.sample(sorted(others), min(self.cfg.agemem.distractors, len(others))):
                pos = rng.randrange(len(turns) + 1)
                distractors = {d + (d >= pos) for d in distractors} | {pos}
                turns.insert(pos, self.chunk_texts[c])
        return EpisodeItem(memory_id, memory_id, turns, list(questions), distractors)

    def step_prompt(self, state: State, new: str | None, question=None) -> list[int]:
        """The agent's input at one step: its context items, pending observations, then the new turn (or question)."""
        lines = ["Context:"] + [f"[{i}] {t}" for i, (_, t) in enumerate(state.context)] if state.context else \
            ["Context: (empty)"]
        if state.observations:
            lines += ["Observations:"] + state.observations
            state.observations = []
        if question is not None:
            lines += [f"Question: {question.question}", "Your tool calls (RETRIEVE what you need):"]
        else:
            lines += [f"New turn [{len(state.context) - 1}]:" if new else "", "Your tool calls:"]
        return chat_ids(self.tokenizer, [{"role": "system", "content": SYSTEM},
                                         {"role": "user", "content": "\n".join(x for x in lines if x)}])

    def _evict(self, state: State) -> None:
        count = lambda: sum(len(self.tokenizer(t, add_special_tokens=False)["input_ids"]) for _, t in state.context)  # noqa: E731
        while len(state.context) > 1 and count() > self.cfg.agemem.context_tokens:
            state.context.pop(0)
            state.evicted += 1

    def _act(self, prompts: list[list[int]], sample: bool, generator) -> tuple[list[list[int]], list[str]]:
        batch = self.build([Step(p) for p in prompts], None)
        gen = self.generate(batch, self.cfg.agemem.max_tool_tokens, sample=sample, temperature=self.cfg.grpo.temperature,
                            generator=generator)
        return gen.tokens, gen.texts

    def play(self, items: list[EpisodeItem], sample: bool, generator=None,
             ) -> tuple[list[State], list[list[Step]], list[list[list[int]]]]:
        """Stream each item's turns (one trajectory per item, every trajectory's step in one batch). Returns per
        trajectory: its final state, its steps and each step's action tokens."""
        states = [State() for _ in items]
        steps: list[list[Step]] = [[] for _ in items]
        actions: list[list[list[int]]] = [[] for _ in items]
        for t in range(max((len(it.turns) for it in items), default=0)):
            live = [i for i, it in enumerate(items) if t < len(it.turns)]
            prompts = []
            for i in live:
                states[i].context.append((t, items[i].turns[t]))
                self._evict(states[i])
                prompts.append(self.step_prompt(states[i], items[i].turns[t]))
            tokens, texts = self._act(prompts, sample, generator)
            for i, p, tok, text in zip(live, prompts, tokens, texts):
                steps[i].append(Step(p, items[i].qid))
                actions[i].append(tok)
                states[i].tool_tokens += len(p) + len(tok)
                execute(states[i], text, self.embedder, self.k, position=t)
        return states, steps, actions

    def ask(self, pairs: list[tuple[int, object]], states: list[State], sample: bool, generator=None,
            steps: list[list[Step]] | None = None, actions: list[list[list[int]]] | None = None) -> list[dict]:
        """For each (trajectory, question): one tool step that sees the question (where the agent can RETRIEVE),
        then the answer in the reader's layout with the kept context and the retrieved facts as text."""
        prompts = [self.step_prompt(states[i], None, q) for i, q in pairs]
        tokens, texts = self._act(prompts, sample, generator) if pairs else ([], [])
        for (i, q), p, tok, text in zip(pairs, prompts, tokens, texts):
            if steps is not None:
                steps[i].append(Step(p, q.qid))
                actions[i].append(tok)
            states[i].tool_tokens += len(p) + len(tok)
            execute(states[i], text, self.embedder, self.k, qid=q.qid)
        step_tokens = [len(p) + len(tok) for p, tok in zip(prompts, tokens)]
        records = []
        bs = max(1, self.cfg.eval.batch_size)
        for j in range(0, len(pairs), bs):
            part = pairs[j:j + bs]
            texts_ = [[t for _, t in states[i].context] + states[i].retrieved.get(q.qid, []) for i, q in part]
            records += self._answer_with([q for _, q in part], texts_, sample, generator)
        for r, n, text in zip(records, step_tokens, texts):
            r.update(question_step_tokens=n, question_step=text)
        return records

    def _answer_with(self, questions, texts: list[list[str]], sample: bool, generator) -> list[dict]:
        from ..method.rewards import parse_answer

        plan = self.text_plan(len(questions), texts)
        batch = ElasticMem.build(self, questions, plan)
        gen = self.generate(batch, self.cfg.grpo.max_new_tokens, sample=sample, temperature=self.cfg.grpo.temperature,
                            generator=generator)
        out = []
        for i, q in enumerate(questions):
            pred = parse_answer(gen.texts[i], len(q.options))
            out.append({"qid": q.qid, "prediction": pred, "gold": q.gold, "correct": pred == q.gold,
                        "output": gen.texts[i], "tokens": dict(batch.counts[i]), "rows": [], "budgets": [],
                        "memory_texts": texts[i]})
        return out

    # ---- the GRPO hooks: a trajectory's steps as rows ---------------------------------------------------------
    def build(self, questions, plan, answers: list[list[int]] | None = None):
        """Step rows (`Step`: a tool step's prompt, its action as the answer) or, for questions, ElasticMem's."""
        if not questions or not isinstance(questions[0], Step):
            return super().build(questions, plan, answers)
        rows = [Row(question_ids=s.prompt_ids, control_id=None, memory=[], tail_ids=[],
                    answer_ids=answers[i] if answers else []) for i, s in enumerate(questions)]
        return build_batch(rows, self.reasoner.get_input_embeddings(), self.newline_id, self.tokenizer.pad_token_id)

    def rollout(self, item: EpisodeItem, group_size: int, reward_fn, generator):
        """G trajectories of one episode in lockstep; every step of trajectory g gets g's advantage (step-wise GRPO)."""
        from ..method.rollout import Group, group_advantages, passes_mode

        cfg = self.cfg.grpo
        rng = random.Random(generator.initial_seed())  # distractors and loss steps: the same for every trajectory
        ep = self.item(item.memory_id, item.questions, rng if self.stage == "filter" else None)
        answered: list[list[float]] = [[] for _ in range(group_size)]
        with passes_mode(self, cfg.train_mode_passes), torch.no_grad():
            states, steps, actions = self.play([ep] * group_size, True, generator)
            if self.stage == "answer":
                pairs = [(g, q) for g in range(group_size) for q in ep.questions]
                for (g, _), r in zip(pairs, self.ask(pairs, states, True, generator, steps, actions)):
                    answered[g].append(float(r["correct"]))
        parts = [reward_fn.parts(ep, s, a) for s, a in zip(states, answered)]
        rewards = torch.tensor([reward_fn.total(p) for p in parts])
        adv = group_advantages(rewards, cfg.adv_clip, norm=cfg.advantage_norm)
        keep = self.cfg.agemem.loss_steps
        rows = []
        for g in range(group_size):  # agemem.loss_steps: a random subset of each trajectory's steps enters the loss
            idx = sorted(rng.sample(range(len(steps[g])), keep)) if 0 < keep < len(steps[g]) else range(len(steps[g]))
            rows += [(g, steps[g][j], actions[g][j]) for j in idx]
        plan = self.text_plan(len(rows))
        counts = [{"task_text": len(s.prompt_ids), "memory": 0, "output": len(a)} for _, s, a in rows]
        group = Group([s for _, s, _ in rows], plan, [a for _, _, a in rows],
                      [self.tokenizer.decode(a, skip_special_tokens=True) for _, _, a in rows], rewards,
                      adv[torch.tensor([g for g, _, _ in rows], dtype=torch.long)], counts, parts,
                      skip_zero_advantage=True)
        group.stats = {"valid_calls": sum(sum(s.calls.values()) for s in states) / group_size,
                                  "invalid_calls": sum(s.invalid for s in states) / group_size,
                                  "ltm_facts": sum(len(s.ltm) for s in states) / group_size,
                                  **{f"calls_{t.lower()}": sum(s.calls[t] for s in states) / group_size for t in TOOLS}}
        return group

    # ---- evaluation -------------------------------------------------------------------------------------------
    def prepare(self, questions, folder=None, progress: bool = True) -> None:
        """Play every asked memory's stream once, greedily, in one batch (kept until the weights change)."""
        by_memory = _by_memory(questions)
        items = [self.item(m, qs) for m, qs in by_memory.items() if m not in self.episodes]
        if items:
            was = self.training
            self.eval()
            with torch.no_grad():
                states, _, _ = self.play(items, sample=False)
            self.train(was)
            self.episodes.update({it.memory_id: s for it, s in zip(items, states)})

    def load(self, path, parts=None):
        self.episodes = {}  # played with the old weights
        return super().load(path, parts)

    def answer(self, questions, max_new_tokens: int | None = None) -> list[dict]:
        """Greedy: each memory's stream played once (`prepare`), then its questions' tool steps and answers."""
        by_memory = _by_memory(questions)
        cached = all(m in self.episodes for m in by_memory)
        self.prepare(questions)
        was = self.training
        self.eval()
        states = {m: copy.deepcopy(self.episodes[m]) for m in by_memory}  # question steps must not change the cache
        stream = {m: s.tool_tokens for m, s in states.items()}
        if not cached:  # played for this call only (validation during training): the weights will change
            for m in by_memory:
                self.episodes.pop(m)
        order = list(states)
        pairs = [(order.index(q.memory_id), q) for q in questions]
        with torch.no_grad():
            records = self.ask(pairs, [states[m] for m in order], sample=False)
        self.train(was)
        out = []
        for (i, q), o in zip(pairs, records):
            s = states[order[i]]
            # the tokens the agent read and wrote in tool steps: the stream's, shared by the memory's questions here,
            # plus this question's own step
            tools = stream[q.memory_id] / len(by_memory[q.memory_id]) + o["question_step_tokens"]
            out.append({**o, "tool_tokens": round(tools),
                        "ltm_facts": len(s.ltm), "valid_calls": sum(s.calls.values()), "invalid_calls": s.invalid,
                        "calls": dict(s.calls), "evicted": s.evicted})
        return out


def _by_memory(questions) -> dict[str, list]:
    out: dict[str, list] = {}
    for q in questions:
        out.setdefault(q.memory_id, []).append(q)
    return out


# ---- the format warm-up: behaviour cloning of a rule teacher, for backbones that write no valid call --------------
def teacher_action(turn: str | None = None, question=None) -> str:
    """The rule teacher's call: ADD the turn's user message verbatim; RETRIEVE with the question's own words. It
    stores everything and never filters: it teaches the tools' syntax, the curriculum what to store and drop."""
    if question is not None:
        return f"RETRIEVE: {question.question}"
    user = turn.split("\nAssistant:")[0].removeprefix("User:").strip()
    return "ADD: " + " ".join(user.split())


def demonstrations(model: AgeMem, items: list[EpisodeItem]) -> list[tuple[Step, list[int]]]:
    """(step, action tokens) of the teacher playing each item's stream and questions, its calls executed, so every
    prompt is the one the agent would see when acting as the teacher."""
    tok, cap = model.tokenizer, model.cfg.agemem.max_tool_tokens
    out = []

    def act(state: State, prompt: list[int], text: str, **where) -> None:
        ids = tok(text, add_special_tokens=False)["input_ids"][:cap - 1]
        execute(state, tok.decode(ids), model.embedder, model.k, **where)
        out.append((Step(prompt), ids + [tok.eos_token_id]))

    for it in items:
        state = State()
        for t, turn in enumerate(it.turns):
            state.context.append((t, turn))
            model._evict(state)
            act(state, model.step_prompt(state, turn), teacher_action(turn), position=t)
        for q in it.questions:
            act(state, model.step_prompt(state, None, q), teacher_action(question=q), qid=q.qid)
    return out


def format_warmup(model: AgeMem, items: list[EpisodeItem], folder: Path, steps: int) -> Path:
    """agemem.format_steps supervised steps (batches of grpo.sft_batch_size steps, lr grpo.sft_lr) on the teacher's
    demonstrations; saved as <folder>/format/ (reused when it exists), its log in <folder>/format_log.jsonl."""
    import json
    import time

    from ..method.model import CHECKPOINT_META
    from ..method.rollout import token_logprobs

    done = folder / "format"
    if (done / CHECKPOINT_META).is_file():
        model.load(done)
        return done
    g = model.cfg.grpo
    demos = demonstrations(model, items)
    order = list(range(len(demos)))
    random.Random(model.cfg.runtime.seed).shuffle(order)
    opt = torch.optim.AdamW(model.optimizer_groups(g.sft_lr), lr=g.sft_lr, weight_decay=g.weight_decay)
    params = model.trainable_parameters()
    folder.mkdir(parents=True, exist_ok=True)
    model.train()
    with open(folder / "format_log.jsonl", "w") as log:
        for step in range(steps):
            t0 = time.perf_counter()
            start = (step * g.sft_batch_size) % len(order)
            batch = [demos[i] for i in (order + order)[start:start + g.sft_batch_size]]
            logp, mask = token_logprobs(model, [s for s, _ in batch], model.text_plan(len(batch)),
                                        [a for _, a in batch], with_grad=True)
            loss = -(logp[:, 1:] * mask[:, 1:]).sum() / mask[:, 1:].sum()
            loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(params, g.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
            log.write(json.dumps({"stage": "format", "step": step, "loss": loss.item(), "grad_norm": float(norm),
                                  "demonstrations": len(demos), "seconds": round(time.perf_counter() - t0, 3)}) + "\n")
            log.flush()
    model.save(done)
    return done


# ---- training: the three-stage curriculum -------------------------------------------------------------------------
def train(model: AgeMem, dataset, folder: Path, progress: bool = True) -> Path | None:
    """Stages store -> filter -> answer, each grpo.Trainer run in <folder>/<stage>/ (resumable; best/ chosen on
    validation accuracy) starting from the previous stage's best/. Returns the last trained stage's checkpoint."""
    from ..training.grpo import Trainer, validation_accuracy

    seen: dict[str, float] = {}

    def validate(questions) -> float:
        """Validation accuracy with every val memory played in one batch; the same weights are not scored twice
        (a stage's first validation is the previous stage's last)."""
        key = weights_key(model)
        if key not in seen:
            cap, keep = model.cfg.eval.max_questions, model.cfg.agemem.val_memories
            qs = questions[:cap] if cap > 0 else questions
            if keep > 0:  # the first agemem.val_memories validation memories (episodes are the cost)
                kept = sorted({q.memory_id for q in qs})[:keep]
                qs = [q for q in qs if q.memory_id in kept]
            model.episodes = {}
            model.prepare(qs)
            seen[key] = validation_accuracy(model, qs)
            model.episodes = {}
        return seen[key]

    last = None
    train_items = _items(model, dataset.split("train"))
    if model.cfg.agemem.format_steps > 0:
        last = format_warmup(model, train_items, folder, model.cfg.agemem.format_steps)
    for stage in STAGES:
        sc = getattr(model.cfg.agemem, stage)
        steps = stage_steps(model.cfg, stage, len(train_items))
        if steps <= 0:
            continue
        if last is not None:
            model.load(last)
        cfg = stage_config(model.cfg, stage, steps)
        previous, model.cfg, model.stage = model.cfg, cfg, stage
        try:
            trainer = Trainer(model, train_items, dataset.split("val"), folder / stage, evaluate_fn=validate,
                              reward_fn=EpisodeReward(sc.rewards, f"agemem.{stage}.rewards"), setting=dataset.setting)
            trainer.train(progress, reader_warmup=False)
        finally:
            model.cfg, model.stage = previous, "answer"
        best = folder / stage / "best"
        last = best if (best / "elasticmem.json").is_file() else folder / stage / "last"  # no validation split
    return last


def weights_key(model) -> str:
    import hashlib

    h = hashlib.sha256()
    for p in model.trainable_parameters():
        h.update(p.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()


def stage_steps(cfg, stage: str, n_items: int) -> int:
    """GRPO steps of a stage: its `steps` (-1 = one epoch over the training memories), capped by
    eval.variant_steps when that is > 0."""
    steps = getattr(cfg.agemem, stage).steps
    if steps < 0:
        steps = math.ceil(n_items / max(1, cfg.grpo.questions_per_step))
    return min(steps, cfg.eval.variant_steps) if cfg.eval.variant_steps > 0 else steps


def stage_config(cfg, stage: str, steps: int):
    """The run's config for one stage: grpo.max_steps = its steps, validated at its start and end only, one backward
    per step row (the same gradient as one over the group; an episode has tens of steps)."""
    return derive(cfg, f"agemem.{stage}", grpo={
        "max_steps": steps, "backward": "rollout", "eval_every": steps, "reader_warmup_steps": 0, "sft_steps": 0,
        "retrieval_warmup_steps": 0,
        "epochs": max(cfg.grpo.epochs, math.ceil(steps / max(1, cfg.grpo.questions_per_step)))})


def _items(model: AgeMem, questions) -> list[EpisodeItem]:
    return [model.item(m, qs) for m, qs in sorted(_by_memory(questions).items())]


# ---- reports ----------------------------------------------------------------------------------------------------
def tool_rows(results: list[dict]) -> list[dict]:
    """One row per AgeMem-style result: tool calls per memory by tool, their validity, what memory it kept."""
    rows = []
    for r in results:
        if r["params"]["eval"]["method"] != "agemem":
            continue
        per_memory = {x["memory_id"]: x for x in r["records"]}  # the stream's counts are the memory's
        n = max(1, len(per_memory))
        calls = Counter()
        for x in per_memory.values():
            calls.update(x["calls"])
        valid = sum(x["valid_calls"] for x in per_memory.values())
        invalid = sum(x["invalid_calls"] for x in per_memory.values())
        rows.append({"method": r["method"], "setting": r["setting"], "split": r["split"],
                     "accuracy": r["summary"]["accuracy"], "tok": r["summary"]["tok"],
                     "tool tokens per question": r["summary"].get("tool_tokens"),
                     "valid calls per memory": valid / n, "invalid per memory": invalid / n,
                     "valid share": valid / max(1, valid + invalid),
                     **{f"{t} per memory": calls[t] / n for t in TOOLS},
                     "facts kept": sum(x["ltm_facts"] for x in per_memory.values()) / n,
                     "evicted per memory": sum(x["evicted"] for x in per_memory.values()) / n,
                     "share of questions with a RETRIEVE": sum("RETRIEVE" in x.get("question_step", "").upper()
                                                               for x in r["records"]) / max(1, len(r["records"]))})
    return rows


def training_rows(folder: str | Path) -> list[dict]:
    """What each stage of one AgeMem-style training folder learned: the format warm-up's loss, then per stage the
    first and last step's reward and valid-call counts and the validation accuracies."""
    import json

    folder, rows = Path(folder), []
    fmt = folder / "format_log.jsonl"
    if fmt.is_file():
        log = [json.loads(x) for x in fmt.read_text().splitlines() if x.strip()]
        if log:
            rows.append({"stage": "format", "steps": len(log), "first": log[0]["loss"], "last": log[-1]["loss"],
                         "measure": "cross-entropy on the teacher's calls"})
    for stage in STAGES:
        path = folder / stage / "train_log.jsonl"
        if not path.is_file():
            continue
        log = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
        steps = [x for x in log if x["stage"] == "grpo"]
        val = [x["val_accuracy"] for x in log if x["stage"] == "val"]
        if steps:
            rows.append({"stage": stage, "steps": len(steps), "first": steps[0]["reward_mean"],
                         "last": steps[-1]["reward_mean"], "measure": "episode reward",
                         "valid calls (first, last)": (steps[0].get("valid_calls"), steps[-1].get("valid_calls")),
                         "invalid calls (first, last)": (steps[0].get("invalid_calls"), steps[-1].get("invalid_calls")),
                         "zero-advantage groups": sum(x["zero_advantage_groups"] for x in steps),
                         "val accuracy": val})
    return rows
