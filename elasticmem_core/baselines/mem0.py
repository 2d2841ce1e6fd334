"""The Mem0-style text-memory baseline (eval.method = mem0): facts the backbone extracts and manages, read as text.

Mem0's two phases, on the configured local backbone (its adapters off: the base model, as for the bank):

1. Extraction. For each turn pair of a memory (a chunk, "User: ...\nAssistant: ..."), the backbone writes the
   salient facts about the user, one per line (`EXTRACT`, a few-shot prompt as Mem0's fact-extraction prompt).
2. Update. In conversation order, for each new fact the `mem0.similar` most similar stored facts are retrieved (the
   sentence embedder through a faiss index: fact_store.py) and the backbone picks ADD, UPDATE <id>, DELETE <id> or
   NOOP against them (`DECIDE`). The choice is decoded greedily under a constraint to the valid operations: Mem0
   asks for JSON and drops what does not parse, which a 135M model would make drop nearly everything. UPDATE
   replaces the stored text with the new fact (Mem0 lets the LLM merge the two texts).

A store is built once per memory, only for the memories asked about, and saved per memory under
`<folder>/stores/` after every step; a later build resumes there, and a store made by another backbone, other
mem0 settings or other turns is rebuilt, never reused. At question time the `mem0.top_k` facts most similar to the
question go into ElasticMem's layout as text (one memory item per fact), so #Tok counts the same parts as for every
other method. Memories are built in lockstep: the k-th fact of every memory is decided in one batch.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from pathlib import Path

import torch

from ..method.model import Plan
from ..method.retrieval import _left_pad
from .fact_store import FactStore, TextMemoryModel

STORE_VERSION = 1  # bump when the prompts or the build change: stores of another version are rebuilt

EXTRACT = [
    {"role": "system", "content": "You extract facts about the user from one exchange of a conversation. Write each "
                                  "fact as a short sentence on its own line starting with '- '. Write '- none' when "
                                  "the exchange tells nothing about the user."},
    {"role": "user", "content": "User: I adopted a cat called Tom last week. How often should I feed him?\n"
                                "Assistant: Twice a day is enough for an adult cat."},
    {"role": "assistant", "content": "- The user has a cat called Tom."},
    {"role": "user", "content": "User: What is a good way to relax after work?\nAssistant: A short walk helps."},
    {"role": "assistant", "content": "- none"},
    {"role": "user", "content": "User: Small change: I drive a bus now instead of a taxi.\n"
                                "Assistant: Good luck with the new route!"},
    {"role": "assistant", "content": "- The user drives a bus now."},
]
DECIDE = ("You keep a memory of facts about the user. Compare the new fact with the stored facts and choose one "
          "operation: ADD if it is new information; UPDATE <id> if it changes stored fact <id>; DELETE <id> if it "
          "says stored fact <id> is no longer true; NOOP if it is already stored.")


def chat_ids(tokenizer, messages: list[dict]) -> list[int]:
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)["input_ids"]


def parse_facts(text: str, limit: int) -> list[str]:
    """The facts of one extraction output: its lines without the '- ' bullet, 'none' and duplicates dropped."""
    facts = []
    for line in text.splitlines():
        fact = line.strip().lstrip("-*• ").strip()
        if len(fact) >= 3 and fact.lower().rstrip(".") not in ("none", "no facts") and fact not in facts:
            facts.append(fact)
    return facts[:limit]


def decision_prompt(tokenizer, fact: str, similar: list[tuple[int, str, float]]) -> list[int]:
    stored = "\n".join(f"[{i}] {t}" for i, t, _ in similar) or "(none)"
    return chat_ids(tokenizer, [{"role": "system", "content": DECIDE},
                                {"role": "user", "content": f"Stored facts:\n{stored}\nNew fact: {fact}\nOperation:"}])


def operations(similar: list[tuple[int, str, float]]) -> list[str]:
    """The valid operations against the stored facts shown."""
    return ["ADD", "NOOP"] + [f"{op} {i}" for i, _, _ in similar for op in ("UPDATE", "DELETE")]


@torch.no_grad()
def generate(model, tokenizer, prompts: list[list[int]], max_new_tokens: int, choices: list[list[str]] | None = None,
             ) -> list[str]:
    """Greedy continuations of left-padded prompts; with `choices`, each row's output is constrained to one of its
    strings (a token trie: at every step only tokens that continue some choice, then EOS)."""
    device = next(model.parameters()).device
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    ids, mask = _left_pad(prompts, pad, device)
    width = ids.shape[1]
    kwargs = {}
    if choices is not None:
        seqs = [[tokenizer(c, add_special_tokens=False)["input_ids"] + [eos] for c in row] for row in choices]
        max_new_tokens = max(len(s) for row in seqs for s in row)

        def allowed(b: int, sofar: torch.Tensor) -> list[int]:
            done = sofar[width:].tolist()
            nxt = {s[len(done)] for s in seqs[b] if len(s) > len(done) and s[:len(done)] == done}
            return sorted(nxt) or [eos]
        kwargs["prefix_allowed_tokens_fn"] = allowed
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                         pad_token_id=pad, eos_token_id=eos, **kwargs)
    return [tokenizer.decode(o[width:], skip_special_tokens=True).strip() for o in out]


# ---- building stores ------------------------------------------------------------------------------------------
def recipe(cfg, backbone_identity: str, turns: list[str]) -> dict:
    """What a store depends on: a saved store is reused only under the same recipe."""
    return {"version": STORE_VERSION, "backbone": backbone_identity, "mem0": dataclasses.asdict(cfg.mem0),
            "turns": hashlib.sha256(json.dumps(turns).encode()).hexdigest()[:16]}


def _write(path: Path, state: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(state) + "\n")
    os.replace(tmp, path)  # atomic: an interruption leaves the previous step's file


def build_stores(model, tokenizer, embedder, cfg, memories: dict[str, list[str]], backbone_identity: str,
                 folder: Path | None = None, progress: bool = True) -> dict[str, FactStore]:
    """Mem0's extraction and update phases over each memory's turns (chronological chunk texts); resumable.

    `model` generates (the caller turns its adapters off). Returns memory_id -> store; with `folder`, each memory's
    state is `<folder>/<memory hash>.json` (recipe, extracted facts per turn, how many facts are decided, store)."""
    from ..core.experiment import progress as tqdm

    m0 = cfg.mem0
    states, paths = {}, {}
    for mid, turns in memories.items():
        want = recipe(cfg, backbone_identity, turns)
        path = folder / f"{hashlib.sha256(mid.encode()).hexdigest()[:16]}.json" if folder else None
        state = json.loads(path.read_text()) if path and path.is_file() else None
        if state is None or state.get("recipe") != want or state.get("memory_id") != mid:
            state = {"recipe": want, "memory_id": mid, "extracted": [None] * len(turns), "decided": 0,
                     "store": FactStore().to_dict()}
        states[mid], paths[mid] = state, path
    if folder:
        folder.mkdir(parents=True, exist_ok=True)

    def save(mid: str) -> None:
        if paths[mid]:
            _write(paths[mid], states[mid])

    # 1. extraction: every turn not yet extracted, in batches across memories
    todo = [(mid, t) for mid, s in states.items() for t, e in enumerate(s["extracted"]) if e is None]
    for i in tqdm(range(0, len(todo), m0.batch_size), desc="mem0 extract", disable=not progress, leave=False):
        part = todo[i:i + m0.batch_size]
        prompts = [chat_ids(tokenizer, EXTRACT + [{"role": "user", "content": memories[mid][t]}]) for mid, t in part]
        for (mid, t), text in zip(part, generate(model, tokenizer, prompts, m0.extract_max_new_tokens)):
            states[mid]["extracted"][t] = {"output": text, "facts": parse_facts(text, m0.max_facts_per_turn)}
        for mid in {mid for mid, _ in part}:
            save(mid)

    # 2. update: the facts of each memory in conversation order; the k-th fact of every memory in one batch
    stores = {mid: FactStore.from_dict(s["store"]) for mid, s in states.items()}
    queues = {mid: [(t, f) for t, e in enumerate(s["extracted"]) for f in e["facts"]] for mid, s in states.items()}
    rounds = max((len(q) - states[mid]["decided"] for mid, q in queues.items()), default=0)
    for _ in tqdm(range(rounds), desc="mem0 update", disable=not progress, leave=False):
        live = [mid for mid, q in queues.items() if states[mid]["decided"] < len(q)]
        for j in range(0, len(live), m0.batch_size):
            part = live[j:j + m0.batch_size]
            items = [queues[mid][states[mid]["decided"]] for mid in part]
            similar = [stores[mid].search(fact, m0.similar, embedder) for mid, (_, fact) in zip(part, items)]
            prompts = [decision_prompt(tokenizer, fact, s) for (_, fact), s in zip(items, similar)]
            choices = [operations(s) for s in similar]
            for mid, (turn, fact), op in zip(part, items, generate(model, tokenizer, prompts, 0, choices)):
                apply(stores[mid], op, fact, turn)
                states[mid]["decided"] += 1
                states[mid]["store"] = stores[mid].to_dict()
                save(mid)
    return stores


def apply(store: FactStore, op: str, fact: str, turn: int | None = None) -> None:
    """Carry out one decided operation ("ADD", "NOOP", "UPDATE <id>", "DELETE <id>") for the new `fact`."""
    m = re.fullmatch(r"(ADD|NOOP|UPDATE|DELETE)(?: (\d+))?", op.strip())
    if m is None or (m.group(1) in ("UPDATE", "DELETE")) != (m.group(2) is not None):
        raise ValueError(f"not an operation: {op!r} (ADD | NOOP | UPDATE <id> | DELETE <id>)")
    kind, fid = m.group(1), m.group(2)
    if kind == "ADD":
        store.add(fact, turn)
    elif kind == "NOOP":
        store.noop(fact, turn)
    elif kind == "UPDATE":
        store.update(int(fid), fact, turn)
    else:
        store.delete(int(fid), turn)


# ---- reports ----------------------------------------------------------------------------------------------------
def report(stores: dict[str, FactStore], questions, states: dict[str, dict] | None = None) -> dict:
    """Store sizes, operation counts and how many gold answers survive in the stores (MemorySuite-mini knows them:
    the evidence turn states the gold option verbatim), overall and by question type."""
    ops = {op: sum(s.counts()[op] for s in stores.values()) for op in ("ADD", "UPDATE", "DELETE", "NOOP")}
    rows = [q for q in questions if q.memory_id in stores]
    by_type: dict[str, list[int]] = {}
    for q in rows:
        gold = q.options[q.gold_index]
        by_type.setdefault(q.question_type, []).append(int(stores[q.memory_id].holds(gold)))
    found = [x for xs in by_type.values() for x in xs]
    return {"memories": len(stores), "facts": sum(len(s) for s in stores.values()),
            "facts_per_memory": sum(len(s) for s in stores.values()) / max(1, len(stores)), "operations": ops,
            "gold_in_store": sum(found) / max(1, len(found)), "questions": len(found),
            "gold_in_store_by_type": {k: sum(v) / len(v) for k, v in sorted(by_type.items())}}


# ---- the model --------------------------------------------------------------------------------------------------
class Mem0(TextMemoryModel):
    """ElasticMem's reader with Mem0-style facts as its text memory (no retrieval of chunks, no budgets)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.stores: dict[str, FactStore] = {}
        self.last_report: dict | None = None

    @property
    def top_k(self) -> int:
        return self.cfg.mem0.top_k or self.cfg.retrieval.top_z

    def turns(self, memory_id: str) -> list[str]:
        return [self.chunk_texts[self.bank.chunk_ids[r]] for r in self.bank.rows(memory_id)]

    def prepare(self, questions, folder: str | Path | None = None, progress: bool = True) -> None:
        """Build (or resume, or reuse) the stores of the questions' memories; report them into `folder`."""
        wanted = {q.memory_id: self.turns(q.memory_id) for q in questions if q.memory_id not in self.stores}
        if wanted:
            store_dir = Path(folder) / "stores" if folder else None
            with self.reasoner.disable_adapter():  # the base backbone extracts and decides, whatever LoRA is loaded
                self.stores.update(build_stores(self.reasoner, self.tokenizer, self.embedder, self.cfg, wanted,
                                                self.backbone.identity, store_dir, progress))
        self.last_report = report(self.stores, questions)
        if folder:
            from ..core.experiment import write_json
            write_json(Path(folder) / "stores" / "report.json", self.last_report)

    def plan(self, questions, sample: bool = False, generator=None) -> Plan:
        self.prepare([q for q in questions if q.memory_id not in self.stores], progress=False)
        found = [self.stores[q.memory_id].search(q.question, self.top_k, self.embedder) for q in questions]
        scores = torch.zeros(len(questions), max(1, max(len(f) for f in found)))
        for i, f in enumerate(found):
            scores[i, :len(f)] = torch.tensor([s for _, _, s in f])
        # facts are not bank rows: the plan's rows stay -1 (records keep the facts read as "memory_texts")
        return self.text_plan(len(questions), [[t for _, t, _ in f] for f in found], scores)

    def answer(self, questions, max_new_tokens: int | None = None) -> list[dict]:
        out = super().answer(questions, max_new_tokens)
        for q, o in zip(questions, out):
            store = self.stores[q.memory_id]
            gold = q.options[q.gold_index]
            o.update(store_facts=len(store), gold_value=gold, gold_in_store=store.holds(gold))
        return out


def read_gold(records: list[dict]) -> float:
    """Share of answered questions whose facts read (top-k of the store) state the gold option's value."""
    from .fact_store import mentions

    hits = [any(mentions(t, x["gold_value"]) for t in x["memory_texts"]) for x in records if "gold_value" in x]
    return sum(hits) / len(hits) if hits else float("nan")


def store_rows(run_dir: str | Path, results: list[dict]) -> list[dict]:
    """One row per Mem0-style result: its store report (built by `prepare` into the variant's folder) beside its
    accuracy, for 02 and 07."""
    rows = []
    for r in results:
        if r["params"]["eval"]["method"] != "mem0":
            continue
        name = r["method"].removesuffix("+reader")
        path = Path(run_dir) / r["kind"] / name / r["setting"] / f"seed{r['seed']}" / "stores" / "report.json"
        rep = json.loads(path.read_text()) if path.is_file() else {}
        ops = rep.get("operations", {})
        rows.append({"method": r["method"], "setting": r["setting"], "split": r["split"],
                     "accuracy": r["summary"]["accuracy"], "tok": r["summary"]["tok"],
                     "memories": rep.get("memories"), "facts per memory": rep.get("facts_per_memory"),
                     **{op: ops.get(op) for op in ("ADD", "UPDATE", "DELETE", "NOOP")},
                     "gold value in store": rep.get("gold_in_store"),
                     "gold value in the facts read": read_gold(r["records"])})
    return rows
