"""Typed records every MemorySuite loader yields, whatever the published format.

A `Dataset` is one setting (e.g. LoCoMo-MC10): its questions, the memories they ask about, and a `LoadSummary`
that accounts for every record read, kept or filtered. Chunks live once per memory; a question refers to its
memory by id (a PersonaMem context, a LoCoMo conversation, a LongMemEval haystack, the ALFWorld skill bank).
ALFWorld has no questions: its `episodes` are the expert replays (GRPO training games), its memory the skill cards.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .prompts import option_labels, tail_text


@dataclass(frozen=True)
class Chunk:
    chunk_id: str    # "<memory_id>#<index>", unique within a setting; the bank's row name
    memory_id: str
    index: int       # position within its memory (chronological)
    text: str        # "User: ...\nAssistant: ..." (QA) or "[task_type] summary" (ALFWorld skill card)


@dataclass
class Memory:
    memory_id: str
    chunks: list[Chunk]


@dataclass
class Question:
    qid: str
    question: str
    options: list[str]           # option texts, without labels, in label order
    gold: str                    # gold label, "(a)".."(j)"
    question_type: str
    memory_id: str
    split: str                   # "train" | "val" | "test" (from the frozen split files)
    evidence: list[str] = field(default_factory=list)  # chunk ids holding the answer, where the data says

    @property
    def labels(self) -> list[str]:
        return option_labels(len(self.options))

    @property
    def gold_index(self) -> int:
        return self.labels.index(self.gold)

    def options_text(self) -> str:
        return "\n".join(f"{label} {text}" for label, text in zip(self.labels, self.options))

    def tail_text(self, prompt: str = "generic") -> str:
        """What follows the memory in the reasoner's input: instruction and options, as data.prompt says."""
        return tail_text(self.options_text(), len(self.options), prompt)


@dataclass
class LoadSummary:
    setting: str
    files: dict[str, str] = field(default_factory=dict)          # role -> path read
    counts: dict[str, int] = field(default_factory=dict)         # what was read, kept and filtered, by reason
    skipped: list[str] = field(default_factory=list)             # "<file>:<line> <field>: <why>" per skipped record
    notes: list[str] = field(default_factory=list)               # what a reader of the numbers should know


@dataclass
class Step:
    """One expert step of an ALFWorld replay: the expert's action and what the game answered."""
    action: str
    observation: str
    admissible_commands: list[str]
    expert_plan: list[str]


@dataclass
class Episode:
    """One ALFWorld training game replayed by the expert."""
    episode_id: str              # the game file, relative to json_2.1.1/ (e.g. "train/pick_.../game.tw-pddl")
    task_type: str
    objective: str
    first_observation: str
    total_reward: float
    steps: list[Step]
    split: str                   # "bank" (summarised into a skill card) | "train" | "val" (GRPO games)


@dataclass
class Dataset:
    setting: str
    questions: list[Question]
    memories: dict[str, Memory]
    summary: LoadSummary
    episodes: list[Episode] = field(default_factory=list)

    def split(self, name: str) -> list[Question]:
        known = {"bank", "train", "val", "test"}  # splits.SPLIT_NAMES ("bank": ALFWorld's skill-card games)
        if name not in known:  # a typo ("validation") would otherwise read as an empty split
            raise ValueError(f"unknown split {name!r} of {self.setting}: use one of {', '.join(sorted(known))}")
        return [q for q in self.questions if q.split == name]

    def chunks(self) -> list[Chunk]:
        return [c for m in self.memories.values() for c in m.chunks]
