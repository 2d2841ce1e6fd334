"""Loaders of the published MemorySuite formats (docs/method.md §3), each returning a typed `Dataset`.

- PersonaMem: `questions_*.csv` + `shared_contexts_*.jsonl`; memory = one shared context.
- LoCoMo-MC10 / LongMemEval-MC10: JSON lines with the question, 10 choices and the haystack; memory = the
  conversation (question_id before "_q", as the authors) / the question's own haystack.
- ALFWorld: expert replays + skill cards; memory = the skill bank, episodes = the replayed games.

Every record is checked; a bad one raises `DataError` naming file, line and field (or is skipped and listed, with
`skip_bad`). The optional `evidence_chunks` field/column (chunk indices of the record's memory, written by
MemorySuite-mini) becomes `Question.evidence`. Splits come from the frozen split file (see splits.py).
"""
from __future__ import annotations

import ast
import csv
import json
import re
from pathlib import Path

from . import splits
from .chunking import chunk_turns, make_chunks
from .reading import (
    DataError,
    Records,
    dialogue,
    evidence_indices,
    get,
    get_str_list,
    json_lines,
    read_json,
    require_file,
)
from .records import Dataset, Episode, Memory, Question, Step

PERSONAMEM_COLUMNS = ("question_id", "user_question_or_message", "correct_answer", "all_options",
                      "shared_context_id", "question_type")
EVIDENCE = "evidence_chunks"
_LABEL = re.compile(r"^\(([a-z])\)\s?")
_GOLD = re.compile(r"^\s*\(?([a-z])\)?(?:\s|$)")


def label(i: int) -> str:
    return f"({chr(ord('a') + i)})"


# ----------------------------------------------------------------------------------------------------------------
def load_personamem(questions_csv: Path, contexts_jsonl: Path, split_file: Path, setting: str,
                    skip_bad: bool = False, run_dir: str | Path | None = None) -> Dataset:
    records = Records(setting, skip_bad)
    records.summary.files.update(questions=str(questions_csv), contexts=str(contexts_jsonl))
    require_file(questions_csv, "PersonaMem questions")
    require_file(contexts_jsonl, "PersonaMem shared contexts")

    contexts: dict[str, list[str]] = {}  # context id -> chunk texts
    for where, obj in json_lines(contexts_jsonl, records):
        try:
            if not isinstance(obj, dict) or len(obj) != 1:
                raise DataError(f"{where}: expected one {{context_id: [turns]}} object per line")
            (cid, turns), = obj.items()
            if cid in contexts:
                raise DataError(f"{where}: context id {cid!r} appears twice")
            contexts[cid] = chunk_turns(dialogue(turns, f"{where} context {cid!r}"), records.counts)
        except DataError as e:
            records.bad(e)
    records.counts["contexts_read"] = records.counts.pop("records_read", 0)

    questions: list[Question] = []
    evidence: dict[str, list[int]] = {}
    n_rows = 0
    with open(questions_csv, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in PERSONAMEM_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(f"{questions_csv}:1 field {missing[0]!r}: column missing from the header")
        start = reader.line_num + 1
        for row in reader:  # a quoted field may span lines: name the line the row starts on
            n_rows += 1
            where, start = f"{questions_csv}:{start}", reader.line_num + 1
            try:
                if None in row or None in row.values():
                    raise DataError(f"{where}: malformed row, {len(reader.fieldnames)} columns expected")
                cid = row["shared_context_id"]
                if cid not in contexts:
                    raise DataError(f"{where} field 'shared_context_id': {cid!r} has no context in "
                                    f"{contexts_jsonl.name}")
                options = parse_options(row["all_options"], f"{where} field 'all_options'")
                gold = parse_gold(row["correct_answer"], len(options), f"{where} field 'correct_answer'")
                ev = []
                if row.get(EVIDENCE):
                    try:
                        ev = evidence_indices({EVIDENCE: json.loads(row[EVIDENCE])}, EVIDENCE, len(contexts[cid]),
                                              where)
                    except json.JSONDecodeError:
                        raise DataError(f"{where} field {EVIDENCE!r}: not a JSON list of chunk indices") from None
                questions.append(Question(qid=row["question_id"], question=row["user_question_or_message"],
                                          options=options, gold=gold, question_type=row["question_type"],
                                          memory_id=cid, split=""))
                evidence[row["question_id"]] = ev
            except DataError as e:
                records.bad(e)
    records.counts["records_read"] = n_rows
    splits.check_record_count(split_file, questions_csv, n_rows)
    return _dataset(records, questions, contexts, evidence, split_file, run_dir)


def parse_options(text: str, where: str) -> list[str]:
    """Option texts from "(a) ...\\n(b) ..." (a line without a label continues the option above), or from a
    Python-list literal of labelled strings, as some PersonaMem releases store them."""
    text = text.strip()
    if text.startswith("["):
        try:
            items = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            raise DataError(f"{where}: not a list of options") from None
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            raise DataError(f"{where}: not a list of option strings")
    else:
        items = []
        for line in text.splitlines():
            if _LABEL.match(line.strip()) or not items:
                items.append(line.strip())
            else:
                items[-1] += "\n" + line
    options = []
    for i, item in enumerate(items):
        m = _LABEL.match(item.strip())
        if not m or m.group(1) != chr(ord("a") + i):
            raise DataError(f"{where}: option {i + 1} should start with {label(i)}, got {item.strip()[:30]!r}")
        options.append(item.strip()[m.end():].strip())
    if len(options) < 2:
        raise DataError(f"{where}: fewer than two options")
    return options


def parse_gold(text: str, n_options: int, where: str) -> str:
    m = _GOLD.match(text)
    if not m:
        raise DataError(f"{where}: {text!r} is not an option label like (c)")
    index = ord(m.group(1)) - ord("a")
    if index >= n_options:
        raise DataError(f"{where}: gold label {label(index)} is outside the {n_options} options")
    return label(index)


# ----------------------------------------------------------------------------------------------------------------
def load_mc10(path: Path, split_file: Path, setting: str, memory: str, skip_bad: bool = False,
              run_dir: str | Path | None = None) -> Dataset:
    """LoCoMo-MC10 (memory="conversation": adversarial questions dropped, counted) or LongMemEval-MC10
    (memory="haystack": one haystack per question)."""
    records = Records(setting, skip_bad)
    records.summary.files["questions"] = str(path)
    require_file(path, f"{setting} JSON lines")
    questions: list[Question] = []
    evidence: dict[str, list[int]] = {}
    chunks: dict[str, list[str]] = {}
    first_seen: dict[str, tuple[str, list]] = {}  # conversation -> (where, haystack) of its first question
    for where, rec in json_lines(path, records):
        try:
            qid = get(rec, "question_id", str, where)
            choices = get_str_list(rec, "choices", where)
            if len(choices) < 2:
                raise DataError(f"{where} field 'choices': fewer than two choices")
            gold = get(rec, "correct_choice_index", int, where)
            if not 0 <= gold < len(choices):
                raise DataError(f"{where} field 'correct_choice_index': gold {gold} is outside the "
                                f"{len(choices)} choices")
            qtype = get(rec, "question_type", str, where)
            question = get(rec, "question", str, where)
            sessions = [dialogue(s, f"{where} field 'haystack_sessions'[{i}]")
                        for i, s in enumerate(get(rec, "haystack_sessions", list, where))]
            if memory == "conversation":
                if "_q" not in qid:
                    raise DataError(f"{where} field 'question_id': {qid!r} has no conversation prefix (conv-N_qM)")
                mid = qid.rsplit("_q", 1)[0]
                if mid in first_seen and first_seen[mid][1] != sessions:
                    raise DataError(f"{where} field 'haystack_sessions': differs from the {mid} haystack read "
                                    f"at {first_seen[mid][0]}")
                if qtype == "adversarial":  # unanswerable by design ("Not answerable"); dropped as the authors do
                    records.counts["questions_dropped_adversarial"] += 1
                    continue
                first_seen.setdefault(mid, (where, sessions))
            else:
                mid = qid
                if mid in chunks:
                    raise DataError(f"{where} field 'question_id': {qid!r} appears twice")
            if mid not in chunks:
                chunks[mid] = [t for s in sessions for t in chunk_turns(s, records.counts)]
            evidence[qid] = evidence_indices(rec, EVIDENCE, len(chunks[mid]), where)
            questions.append(Question(qid=qid, question=question, options=choices, gold=label(gold),
                                      question_type=qtype, memory_id=mid, split=""))
        except DataError as e:
            records.bad(e)
    splits.check_record_count(split_file, path, records.counts["records_read"])
    return _dataset(records, questions, chunks, evidence, split_file, run_dir)


# ----------------------------------------------------------------------------------------------------------------
SKILL_BANK = "alfworld-skills"


def game_id(gamefile: str) -> str:
    """A game file relative to json_2.1.1/ ("train/<task>/<trial>/game.tw-pddl"), whatever the machine's prefix."""
    return gamefile.split("json_2.1.1/", 1)[-1]


def load_alfworld(replays_json: Path, cards_json: Path, split_file: Path, setting: str = "alfworld",
                  skip_bad: bool = False, run_dir: str | Path | None = None) -> Dataset:
    """Skill cards -> the bank's chunks "[task_type] summary"; successful expert replays -> episodes."""
    records = Records(setting, skip_bad)
    records.summary.files.update(replays=str(replays_json), skill_cards=str(cards_json))
    require_file(replays_json, "ALFWorld expert replays")
    require_file(cards_json, "ALFWorld skill cards")

    cards = read_json(cards_json)
    if not isinstance(cards, list):
        raise DataError(f"{cards_json}: expected a JSON list of skill cards")
    texts, bank_games = [], {}
    for i, card in enumerate(cards):
        where = f"{cards_json} [{i}]"
        records.counts["skill_cards_read"] += 1
        try:
            task_type, summary = get(card, "task_type", str, where), get(card, "summary", str, where).strip()
            game = game_id(get(card, "gamefile", str, where))
            get(card, "objective", str, where)
            if not summary:
                raise DataError(f"{where} field 'summary': empty")
            if game in bank_games:
                raise DataError(f"{where} field 'gamefile': {game!r} already has a skill card")
            bank_games[game] = "bank"
            texts.append((where, f"[{task_type}] {summary}"))
        except DataError as e:
            records.bad(e)

    replays = read_json(replays_json)
    if not isinstance(replays, dict):
        raise DataError(f"{replays_json}: expected {{task_type: {{gamefile: replay}}}}")
    episodes = []
    for task_type, games in replays.items():
        if not isinstance(games, dict):
            raise DataError(f"{replays_json} [{task_type!r}]: expected {{gamefile: replay}}")
        for gamefile, rec in games.items():
            where = f"{replays_json} [{task_type!r}][{gamefile!r}]"
            records.counts["replays_read"] += 1
            try:
                episode = _episode(rec, task_type, game_id(gamefile), where)
            except DataError as e:
                records.bad(e)
                continue
            if episode.total_reward < 1 or rec.get("error"):  # the expert failed: no demonstration to learn from
                records.counts["replays_unsuccessful"] += 1
            elif len(episode.steps) < 2:
                records.counts["replays_too_short"] += 1
            else:
                episodes.append(episode)

    texts = _cards_in_engine_syntax(texts, episodes, records, replays_json)
    units = {e.episode_id for e in episodes} | set(bank_games)
    split_of = splits.assign(split_file, units, records, fixed=bank_games, run_dir=run_dir)
    for e in episodes:
        e.split = split_of[e.episode_id]
        records.counts[f"episodes_{e.split}"] += 1
    records.counts.update(episodes=len(episodes), chunks=len(texts))
    memories = {SKILL_BANK: Memory(SKILL_BANK, make_chunks(SKILL_BANK, texts))}
    return Dataset(setting=setting, questions=[], memories=memories, summary=records.finish(), episodes=episodes)


# a command whose syntax changed between ALFWorld versions -> the one that replaced it (0.4: "move X to Y")
RENAMED_COMMANDS = {"put": "move", "move": "put"}
# "put pen 1 in/on desk 1", "move pen 1 to desk 1": a command with numbered objects, as the engine prints them
_COMMAND = re.compile(r"\b(put|move) ([a-z]+ \d+) (in/on|to) ([a-z]+ \d+)", re.IGNORECASE)


def foreign_commands(summary: str, verbs: set[str]) -> list[str]:
    """The commands `summary` names whose verb the engine (`verbs`: the first words of its replays' commands) lacks
    while it has the verb that replaced it: a skill card written for another ALFWorld version's syntax."""
    return [m.group(0) for m in _COMMAND.finditer(summary)
            if m.group(1).lower() not in verbs and RENAMED_COMMANDS[m.group(1).lower()] in verbs]


def _cards_in_engine_syntax(cards: list[tuple[str, str]], episodes: list[Episode], records: Records,
                            replays_json: Path) -> list[str]:
    """The cards' texts, each checked against the syntax of the engine that recorded the replays: a card naming
    `put X in/on Y` where the replays' engine writes `move X to Y` (ALFWorld 0.4), or the reverse, would teach
    an agent commands its engine refuses (a bad record: an error, or counted and skipped with skip_bad_records)."""
    verbs = {c.split(" ", 1)[0] for e in episodes for s in e.steps for c in [s.action, *s.admissible_commands] if c}
    kept = []
    for where, text in cards:
        foreign = foreign_commands(text, verbs)
        if foreign:
            records.bad(DataError(
                f"{where} field 'summary': names {foreign[0]!r}, a command the engine that recorded {replays_json} "
                f"does not accept (its verbs: {', '.join(sorted(verbs))}): a card written for another ALFWorld "
                f"version's syntax; rewrite it in the replays' syntax, or let the package record its own cards "
                f"(no authors' files in data.data_dir/alfworld/)"))
            continue
        kept.append(text)
    return kept


def _episode(rec: dict, task_type: str, game: str, where: str) -> Episode:
    steps = []
    for i, s in enumerate(get(rec, "steps", list, where)):
        w = f"{where} steps[{i}]"
        # the authors' replays start with the reset: action null, the first observation and its commands
        action = "" if i == 0 and isinstance(s, dict) and s.get("action", "") is None else get(s, "action", str, w)
        steps.append(Step(action=action, observation=get(s, "observation", str, w),
                          admissible_commands=get_str_list(s, "admissible_commands", w),
                          expert_plan=get_str_list(s, "expert_plan", w)))
    return Episode(episode_id=game, task_type=task_type, objective=get(rec, "objective", str, where),
                   first_observation=get(rec, "first_observation", str, where),
                   total_reward=float(get(rec, "total_reward", (int, float), where)), steps=steps, split="")


# ----------------------------------------------------------------------------------------------------------------
def _dataset(records: Records, questions: list[Question], chunk_texts: dict[str, list[str]],
             evidence: dict[str, list[int]], split_file: Path, run_dir: str | Path | None) -> Dataset:
    """Attach splits (by memory: a context, conversation or a question's own haystack) and evidence chunk ids."""
    seen: set[str] = set()
    for q in questions:
        if q.qid in seen:
            raise DataError(f"{records.summary.files['questions']}: question_id {q.qid!r} appears twice")
        seen.add(q.qid)
    used = {q.memory_id for q in questions}
    split_of = splits.assign(split_file, used, records, run_dir=run_dir)
    memories = {mid: Memory(mid, make_chunks(mid, chunk_texts[mid])) for mid in chunk_texts if mid in used}
    records.counts["memories_without_questions"] = len(chunk_texts) - len(memories)
    for q in questions:
        q.split = split_of[q.memory_id]
        q.evidence = [f"{q.memory_id}#{i}" for i in evidence.get(q.qid, [])]
        records.counts[f"questions_{q.split}"] += 1
    for mid in memories:
        records.counts[f"memories_{split_of[mid]}"] += 1
    records.counts.update(questions=len(questions), memories=len(memories),
                          chunks=sum(len(m.chunks) for m in memories.values()))
    return Dataset(setting=records.summary.setting, questions=questions, memories=memories,
                   summary=records.finish())
