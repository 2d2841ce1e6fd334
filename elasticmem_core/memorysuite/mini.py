"""MemorySuite-mini: a deterministic generator of small memory-QA sets in exactly the published schemas.

`generate(setting, cfg, folder)` writes a PersonaMem-like 4-choice set (mini-personamem), a LoCoMo-MC10-like and a
LongMemEval-MC10-like 10-choice set (mini-locomo, mini-longmemeval) plus their split files; the real loaders read
them back. Design, and what it does not capture of the real sets: README.md next to this file.

Each memory is a persona's multi-session user/assistant dialogue. Every question is built from a *recipe* that
writes its evidence turns (a fact stated early or late in a user turn, or only echoed by the assistant; a fact
that changes over time; a preference with a rejected alternative; an assistant recommendation; a relative's name
and, in another turn, where that person moved; a course started in a given month) and similar-attribute distractor
turns (other people's values of the same attribute, other months, other occasions). All option values are
independent uniform draws from one pool and the gold position is uniform, so without the memory the best score is
chance; the evidence chunk states the gold value verbatim, in the words of the option.
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

GENERATOR_VERSION = 1  # bump when templates change: cached files with an older version are regenerated

# ----------------------------------------------------------------------------------------------------------------
# Vocabulary. Every pool has 12 values, so a 10-choice question draws all options from one pool.


@dataclass(frozen=True)
class Family:
    """A persona attribute and how the dialogue talks about it."""
    noun: str      # "home city": used in the questions
    pool: tuple[str, ...]
    state: str     # first person: "I live in {v}"
    third: str     # about someone else: "lives in {v}"
    hint: str      # the user's indirect line when only the assistant states the value
    echo: str      # the assistant's echo: "Welcome to {v}, ..."


CITIES = ("Lisbon", "Oslo", "Madrid", "Dublin", "Vienna", "Prague", "Warsaw", "Athens", "Helsinki", "Zurich",
          "Seoul", "Toronto")
USER_FACTS = {
    "city": Family("home city", CITIES, "I live in {v}", "lives in {v}",
                   "I finally unpacked the last boxes after my move", "Welcome to {v}, it is a lovely place to live."),
    "pet": Family("pet", ("parrot", "hamster", "rabbit", "turtle", "kitten", "puppy", "goldfish", "ferret", "iguana",
                          "canary", "hedgehog", "gecko"), "I have a pet {v}", "has a pet {v}",
                  "I brought my new pet home from the shelter today", "Congratulations on your new {v}, enjoy it."),
    "job": Family("job", ("nurse", "pilot", "baker", "chemist", "teacher", "lawyer", "plumber", "dentist",
                          "librarian", "carpenter", "florist", "barber"), "I work as a {v}", "works as a {v}",
                  "I signed the contract for my new position today", "Congratulations, you will be a great {v}."),
    "instrument": Family("instrument", ("violin", "cello", "banjo", "flute", "harp", "drums", "trumpet", "ukulele",
                                        "piano", "oboe", "saxophone", "accordion"), "I play the {v}", "plays the {v}",
                         "I practised my instrument for two hours today", "Two hours on the {v} is impressive."),
    "sport": Family("sport", ("tennis", "hockey", "cricket", "rugby", "volleyball", "badminton", "golf", "squash",
                              "handball", "baseball", "basketball", "polo"), "I play {v} every weekend",
                    "plays {v} every weekend", "my team won our match on Saturday",
                    "Well done, winning at {v} takes real effort."),
    "colour": Family("favourite colour", ("teal", "maroon", "amber", "lilac", "olive", "coral", "navy", "crimson",
                                          "ivory", "mustard", "indigo", "beige"), "my favourite colour is {v}",
                     "loves the colour {v}", "I repainted my whole bedroom in my favourite colour",
                     "Your {v} bedroom must look calm and cosy."),
    "plant": Family("balcony plant", ("tomatoes", "basil", "mint", "chillies", "lavender", "roses", "tulips",
                                      "orchids", "ferns", "cacti", "sunflowers", "strawberries"),
                    "I grow {v} on my balcony", "grows {v} on the balcony",
                    "my balcony garden finally looks green and full", "Your {v} must look lovely on the balcony."),
    "genre": Family("favourite book genre", ("crime", "fantasy", "romance", "horror", "poetry", "history", "mystery",
                                             "travel", "cooking", "biography", "comics", "science"),
                    "I mostly read {v} books", "mostly reads {v} books",
                    "I finished another book from my favourite shelf last night",
                    "Another {v} book already, you read fast."),
}
PREFERENCES = {  # category -> (pool, question)
    "drink": (("espresso", "matcha", "cider", "lemonade", "kombucha", "cocoa", "chai", "milkshake", "eggnog",
               "sangria", "mojito", "cappuccino"), "Which drink should the assistant offer the user?"),
    "dessert": (("tiramisu", "brownies", "cheesecake", "baklava", "churros", "sorbet", "flan", "macarons", "donuts",
                 "pavlova", "trifle", "strudel"), "Which dessert should the assistant suggest to the user?"),
    "music": (("jazz", "reggae", "opera", "techno", "blues", "salsa", "country", "punk", "gospel", "disco",
               "flamenco", "grunge"), "Which music should the assistant play for the user?"),
}
DISHES = ("ramen", "paella", "tacos", "risotto", "curry", "sushi", "lasagna", "falafel", "goulash", "dumplings",
          "pancakes", "couscous")
OCCASIONS = (("my guests on Friday", "the user's guests on Friday"), ("my mother's birthday", "the user's mother's "
             "birthday"), ("the office picnic", "the user's office picnic"), ("a rainy Sunday", "a rainy Sunday"),
             ("my first date", "the user's first date"))
COURSES = ("Spanish", "Italian", "German", "Greek", "Dutch", "Turkish", "Korean", "Swahili", "Polish", "Hindi",
           "Arabic", "Japanese")
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December")
RELATIONS = ("cousin", "neighbour", "colleague", "roommate", "friend", "boss", "classmate", "teammate", "tutor",
             "coach", "penpal", "flatmate")
NAMES = ("Ana", "Ben", "Carla", "Dev", "Elif", "Farid", "Greta", "Hugo", "Ines", "Jonas", "Kemal", "Lena", "Milo",
         "Nora", "Omar", "Pia")
REASONS = ("my doctor suggested it", "a friend recommended it", "it fits my new schedule", "it is much cheaper",
           "I got bored of the old one", "my partner asked me to", "I read a good review",
           "it is better for my health", "my landlord insisted", "I won a voucher", "my new job requires it",
           "I wanted a new challenge")
ACKS = ("Thanks for sharing that.", "Good to know!", "That sounds lovely.", "I will remember that.")
SMALL_TALK = (
    ("Can you suggest a way to stay focused while working?", "Try short blocks of work with small breaks."),
    ("What is a quick breakfast idea?", "Oatmeal with fruit is quick and filling."),
    ("How can I sleep better?", "Keep a regular bedtime and avoid screens late at night."),
    ("Any tips for a long train ride?", "Bring a good book, snacks and a charged phone."),
    ("How do I stop procrastinating?", "Start with the smallest task and set a timer."),
    ("What should I pack for a rainy weekend?", "An umbrella, a warm jumper and waterproof shoes."),
    ("How can I save a bit more money?", "Track your spending for a month and set a budget."),
    ("What is a good way to learn new words?", "Review them daily with flashcards."),
    ("How do I write a polite complaint?", "Be clear, stay calm and suggest a solution."),
    ("Can you help me plan my week?", "Sure, let us list your main tasks first."),
    ("How long should a power nap be?", "About twenty minutes is usually enough."),
    ("How do I remember birthdays?", "Put them in a calendar with reminders."),
    ("Any ideas for a quiet afternoon?", "A walk in the park or a film at home works well."),
    ("How can I drink more water?", "Keep a bottle on your desk and refill it often."),
    ("What is a good stretch after sitting all day?", "Try a gentle forward bend and shoulder rolls."),
    ("How do I keep my inbox tidy?", "Archive what is done and answer short mails at once."),
)
FILLER = ("The weather has been mild this week.", "I had a long day and I am a bit tired.",
          "Traffic was slow again this morning.", "I am writing this from the kitchen table.",
          "The neighbours are having a party tonight.", "My phone battery is almost empty.",
          "I still have a lot of emails to answer.", "It has been a busy month overall.")

# (question_type as the real set names it, recipe) in the order memories cycle through them
QUESTION_TYPES = {
    "mini-personamem": (("recall_user_shared_facts", "fact"), ("acknowledge_latest_user_preferences", "latest"),
                        ("track_full_preference_evolution", "before"),
                        ("revisit_reasons_behind_preference_updates", "reason"),
                        ("provide_preference_aligned_recommendations", "preference")),
    "mini-locomo": (("single_hop", "fact"), ("multi_hop", "multihop"), ("temporal_reasoning", "course"),
                    ("open_domain", "preference"), ("single_hop", "recommendation"), ("temporal_reasoning", "before")),
    "mini-longmemeval": (("single-session-user", "fact"), ("single-session-assistant", "recommendation"),
                         ("single-session-preference", "preference"), ("multi-session", "multihop"),
                         ("knowledge-update", "latest"), ("temporal-reasoning", "course")),
}
DEFAULT_OPTIONS = {"mini-personamem": 4, "mini-locomo": 10, "mini-longmemeval": 10}
FILES = {"mini-personamem": ("questions_mini.csv", "shared_contexts_mini.jsonl"),
         "mini-locomo": ("locomo_mc10.json",), "mini-longmemeval": ("lme_s_mc10.json",)}
SPLIT_FILE = "split.json"
NOT_ANSWERABLE = "Not answerable"


# ----------------------------------------------------------------------------------------------------------------
@dataclass
class Turn:
    """One future chunk: the user's message(s) then the assistant's reply (two user messages get merged)."""
    user: list[str]
    assistant: str


@dataclass
class Item:
    """A question with the turns that answer it and a source of similar-attribute distractor turns."""
    question_type: str
    question: str
    gold: str
    pool: tuple[str, ...]
    turns: list[Turn]                 # chronological
    evidence: list[int]               # which of `turns` the answer needs
    confusers: list[str]              # other values the memory mentions for this attribute
    distractor: Callable[[], Turn] | None = None
    options: list[str] = field(default_factory=list)
    chunk_ids: list[int] = field(default_factory=list)


class Persona:
    """The facts of one memory, so that no two turns contradict each other (each value used once)."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.taken: dict[str, set[str]] = {}

    def take(self, key: str, pool: tuple[str, ...], k: int = 1) -> list[str]:
        free = [v for v in pool if v not in self.taken.setdefault(key, set())]
        if len(free) < k:
            raise ValueError(f"MemorySuite-mini: not enough distinct {key} values for one memory; lower "
                             f"data.mini.questions_per_memory or turns_per_session")
        values = self.rng.sample(free, k)
        self.taken[key].update(values)
        return values

    def other_person(self) -> str:
        return f"My {self.take('relation', RELATIONS)[0]} {self.take('name', NAMES)[0]}"


def _cap(s: str) -> str:
    return s[0].upper() + s[1:]


def _fact_turn(rng: random.Random, fam: Family, v: str, mode: str) -> Turn:
    ask, answer = rng.choice(SMALL_TALK)
    statement = fam.state.format(v=v)
    if mode == "early":
        return Turn([f"{_cap(statement)}. {ask}"], answer)
    if mode == "late":  # two user messages in a row: the chunking merges them
        return Turn([ask, f"By the way, {statement}."], f"{answer} {rng.choice(ACKS)}")
    return Turn([_cap(fam.hint) + "!"], fam.echo.format(v=v))  # echo: only the assistant names the value


def _recipe(kind: str, qtype: str, p: Persona) -> Item:
    rng = p.rng
    if kind in ("fact", "latest", "before", "reason"):
        key = p.take("family", tuple(USER_FACTS))[0]
        fam = USER_FACTS[key]

        def other() -> Turn:
            v2 = p.take(key, fam.pool)[0]
            item.confusers.append(v2)
            return Turn([f"{p.other_person()} {fam.third.format(v=v2)}."], rng.choice(ACKS))

        if kind == "fact":
            (v,) = p.take(key, fam.pool)
            item = Item(qtype, f"What is the user's {fam.noun}?", v, fam.pool,
                        [_fact_turn(rng, fam, v, rng.choice(("early", "late", "echo")))], [0], [], other)
            return item
        old, new = p.take(key, fam.pool, 2)
        reason = rng.choice(REASONS)
        turns = [_fact_turn(rng, fam, old, rng.choice(("early", "late"))),
                 Turn([f"Quick update: {fam.state.format(v=new)} now, because {reason}."],
                      "Thanks for telling me, I will remember that.")]
        if kind == "latest":
            item = Item(qtype, f"What is the user's {fam.noun} now?", new, fam.pool, turns, [1], [old], other)
        elif kind == "before":
            item = Item(qtype, f"What was the user's {fam.noun} before the latest change?", old, fam.pool, turns,
                        [0, 1], [new], other)
        else:
            item = Item(qtype, f"Why did the user change their {fam.noun}?", reason, REASONS, turns, [1], [], other)
        return item
    if kind == "preference":
        category = p.take("preference", tuple(PREFERENCES))[0]
        pool, question = PREFERENCES[category]
        good, bad = p.take(category, pool, 2)

        def liked_by_other() -> Turn:
            v2 = p.take(category, pool)[0]
            item.confusers.append(v2)
            return Turn([f"{p.other_person()} loves {v2}."], rng.choice(ACKS))

        item = Item(qtype, question, good, pool, [Turn([f"I really cannot stand {bad}, but I love {good}."],
                                                       "Noted, I will keep that in mind.")], [0], [bad],
                    liked_by_other)
        return item
    if kind == "recommendation":
        occasion, asked = p.take("occasion", OCCASIONS)[0]

        def other_occasion() -> Turn:
            occ2, dish2 = p.take("occasion", OCCASIONS)[0][0], p.take("dish", DISHES)[0]
            item.confusers.append(dish2)
            return Turn([f"What should I cook for {occ2}?"], f"Try {dish2}; it never fails.")

        (dish,) = p.take("dish", DISHES)
        item = Item(qtype, f"Which dish did the assistant recommend for {asked}?", dish, DISHES,
                    [Turn([f"What should I cook for {occasion}?"],
                          f"I recommend {dish}; it is easy to make and everyone likes it.")], [0], [], other_occasion)
        return item
    if kind == "multihop":  # who the relative is (one turn) + where that person moved (another turn)
        relation, name, city = p.take("relation", RELATIONS)[0], p.take("name", NAMES)[0], p.take("moved", CITIES)[0]

        def someone_else_moved() -> Turn:
            name2, city2 = p.take("name", NAMES)[0], p.take("moved", CITIES)[0]
            item.confusers.append(city2)
            return Turn([f"{name2} has just moved to {city2}."], f"Moving to {city2} is a big step for {name2}.")

        item = Item(qtype, f"Which city did the user's {relation} move to?", city, CITIES,
                    [Turn([f"My {relation} is called {name}; we talk every week."],
                          f"It is lovely that you and {name} stay close."),
                     Turn([f"{name} has just moved to {city}."], f"Moving to {city} is a big step for {name}.")],
                    [0, 1], [], someone_else_moved)
        return item
    if kind == "course":  # temporal: the month anchors which course
        month, course = p.take("month", MONTHS)[0], p.take("course", COURSES)[0]

        def other_month() -> Turn:
            month2, course2 = p.take("month", MONTHS)[0], p.take("course", COURSES)[0]
            item.confusers.append(course2)
            return Turn([f"In {month2} I started a {course2} course."], "Good luck with the course!")

        item = Item(qtype, f"Which course did the user start in {month}?", course, COURSES,
                    [Turn([f"In {month} I started a {course} course."], "Good luck with the course!")], [0], [],
                    other_month)
        return item
    if kind == "adversarial":  # LoCoMo's unanswerable category: this relative is never mentioned (taken: no turn will)
        relation = p.take("relation", RELATIONS)[0]
        return Item(qtype, f"Which instrument does the user's {relation} play?", NOT_ANSWERABLE,
                    USER_FACTS["instrument"].pool, [], [], [])
    raise ValueError(f"unknown recipe {kind!r}")


def _memory(rng: random.Random, recipes: list[tuple[str, str]], cfg, n_options: int) -> tuple[list[list[Turn]],
                                                                                             list[Item]]:
    """Sessions of turns and the answered questions of one memory (turn positions = chunk indices)."""
    persona = Persona(rng)
    items = [_recipe(kind, qtype, persona) for qtype, kind in recipes]
    n_slots = cfg.sessions_per_memory * cfg.turns_per_session
    needed = sum(len(it.turns) for it in items)
    if needed > n_slots:
        raise ValueError(f"MemorySuite-mini: {len(items)} questions need {needed} turns, but a memory has "
                         f"{n_slots} (sessions_per_memory x turns_per_session); raise turns_per_session")
    slots: list[Turn | None] = [None] * n_slots
    free = list(range(n_slots))
    rng.shuffle(free)
    for it in items:
        positions = sorted(free.pop() for _ in it.turns)  # chronological order of an update / a two-hop story
        for pos, turn in zip(positions, it.turns):
            slots[pos] = turn
        it.chunk_ids = [positions[i] for i in it.evidence]
    small_talk = list(SMALL_TALK)
    rng.shuffle(small_talk)
    for n, pos in enumerate(free):
        it = items[n % len(items)]
        turn = None
        if it.distractor and rng.random() < cfg.distractor_similarity:
            try:
                turn = it.distractor()
            except ValueError:  # the attribute ran out of distinct values: small talk instead
                turn = None
        slots[pos] = turn or Turn([small_talk[n % len(small_talk)][0]], small_talk[n % len(small_talk)][1])
    if cfg.filler_words:
        for turn in slots:
            extra: list[str] = []
            while sum(len(s.split()) for s in extra) < cfg.filler_words:
                extra.append(rng.choice(FILLER))
            turn.user[-1] += " " + " ".join(extra)
    for it in items:
        it.options = _options(rng, it, n_options)
    t = cfg.turns_per_session
    return [slots[s * t:(s + 1) * t] for s in range(cfg.sessions_per_memory)], items


def _options(rng: random.Random, it: Item, n: int) -> list[str]:
    """Gold + the memory's other values of the attribute + uniform fill from the pool, in uniform random order."""
    values = [it.gold] + [v for v in dict.fromkeys(it.confusers) if v != it.gold and v in it.pool][: n - 1]
    values += rng.sample([v for v in it.pool if v not in values], n - len(values))
    rng.shuffle(values)
    return values


def _turns(session: list[Turn]) -> list[dict[str, str]]:
    out = []
    for turn in session:
        out += [{"role": "user", "content": u} for u in turn.user] + [{"role": "assistant", "content": turn.assistant}]
    return out


def _split(rng: random.Random, n: int) -> dict[str, list[int]]:
    """60/20/20 of n units by position (at least one in val and test). A shuffle's draws depend only on the length,
    so positions split exactly as the unit ids themselves did."""
    if n < 3:
        raise ValueError("MemorySuite-mini: data.mini.n_memories must be >= 3 (train, val and test each need one)")
    order = list(range(n))
    rng.shuffle(order)
    n_eval = max(1, round(0.2 * n))
    return {"train": order[2 * n_eval:], "val": order[n_eval:2 * n_eval], "test": order[:n_eval]}


def _plan(setting: str, q: int, memories: range) -> list[list[tuple[str, str]]]:
    """The recipes of memories `memories` (indices), each a list of (question_type, recipe): memory m cycles through
    the setting's types from its m-th; a LongMemEval-like memory is q one-question haystacks."""
    types = QUESTION_TYPES[setting]
    if setting == "mini-longmemeval":  # one haystack per question, as LongMemEval
        return [[types[i % len(types)]] for i in range(memories.start * q, memories.stop * q)]
    plan = [[types[(m + j) % len(types)] for j in range(q)] for m in memories]
    if setting == "mini-locomo":  # plus one unanswerable question per conversation, dropped by the loader
        plan = [recipes + [("adversarial", "adversarial")] for recipes in plan]
    return plan


def _params(cfg) -> dict:
    """The generator's params as split.json records them; extra_test_memories at 0 is left out, so that the files
    made before it existed stay byte-identical and are not regenerated."""
    params = {"version": GENERATOR_VERSION, **dataclasses.asdict(cfg)}
    if not params.get("extra_test_memories"):
        params.pop("extra_test_memories", None)
    return params


# ----------------------------------------------------------------------------------------------------------------
def build(setting: str, cfg) -> tuple[dict[str, str], dict]:
    """File name -> content, and the split file, of one mini setting (pure: nothing is written)."""
    if setting not in QUESTION_TYPES:
        raise ValueError(f"unknown MemorySuite-mini setting {setting!r}; use one of {', '.join(QUESTION_TYPES)}")
    n_options = cfg.n_options or DEFAULT_OPTIONS[setting]
    if not 2 <= n_options <= 12:
        raise ValueError(f"data.mini.n_options = {n_options}: use 2..12 (0 = the real set's count)")
    extra = cfg.extra_test_memories
    if extra < 0:
        raise ValueError(f"data.mini.extra_test_memories = {extra}: use >= 0")
    rng = random.Random(f"{cfg.seed}/{setting}")  # a str seed is hashed with sha512: stable across runs
    q = cfg.questions_per_memory
    memories = [_memory(rng, recipes, cfg, n_options) for recipes in _plan(setting, q, range(cfg.n_memories))]
    n_base = len(memories)  # units (memories; LongMemEval-like: haystacks) before the extra ones
    parts = _split(rng, n_base)
    # the extra test memories come after every draw above, so the first n_memories and their split are unchanged
    memories += [_memory(rng, recipes, cfg, n_options)
                 for recipes in _plan(setting, q, range(cfg.n_memories, cfg.n_memories + extra))]
    parts["test"] += range(n_base, len(memories))

    if setting == "mini-personamem":
        files, units, unit, n_records = _personamem(memories)
    else:
        files, units, unit, n_records = _mc10(setting, memories)
    splits = {k: sorted(units[i] for i in idx) for k, idx in parts.items()}
    split_file = {"setting": setting, "unit": unit, "source": f"MemorySuite-mini generator v{GENERATOR_VERSION}",
                  "expected": {k: len(v) for k, v in splits.items()}, "expected_records": n_records,
                  "procedure": None, "generator": _params(cfg),
                  "sha256": {name: hashlib.sha256(text.encode()).hexdigest() for name, text in files.items()},
                  "splits": splits}
    return files, split_file


def _personamem(memories) -> tuple[dict[str, str], list[str], str, int]:
    contexts, rows = io.StringIO(), []
    ids = []
    for m, (sessions, items) in enumerate(memories):
        context = [{"role": "system", "content": "You are a helpful assistant. The user is an adult who chats "
                                                 "about daily life; remember what they tell you."}]
        context += [t for s in sessions for t in _turns(s)]
        cid = hashlib.sha256(json.dumps(context).encode()).hexdigest()
        ids.append(cid)
        contexts.write(json.dumps({cid: context}) + "\n")
        for j, it in enumerate(items):
            rows.append({"question_id": f"pm-mini-{m:03d}-{j:02d}", "question_type": it.question_type,
                         "topic": it.question_type, "user_question_or_message": it.question,
                         "correct_answer": f"({chr(97 + it.options.index(it.gold))})",
                         "all_options": "\n".join(f"({chr(97 + i)}) {o}" for i, o in enumerate(it.options)),
                         "shared_context_id": cid, "evidence_chunks": json.dumps(it.chunk_ids)})
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    names = FILES["mini-personamem"]
    return {names[0]: out.getvalue(), names[1]: contexts.getvalue()}, ids, "context", len(rows)


def _mc10(setting: str, memories) -> tuple[dict[str, str], list[str], str, int]:
    lines, units = [], []
    for m, (sessions, items) in enumerate(memories):
        haystack = [_turns(s) for s in sessions]
        if setting == "mini-locomo":
            units.append(f"conv-m{m:02d}")
            qids = [f"conv-m{m:02d}_q{j}" for j in range(len(items))]
        else:
            qids = [f"lme-mini-{m:04d}"]
            units.append(qids[0])
        for qid, it in zip(qids, items):
            lines.append(json.dumps({"question_id": qid, "question": it.question, "choices": it.options,
                                     "correct_choice_index": it.options.index(it.gold),
                                     "question_type": it.question_type, "haystack_sessions": haystack,
                                     "evidence_chunks": it.chunk_ids}))
    unit = "conversation" if setting == "mini-locomo" else "question"
    return {FILES[setting][0]: "\n".join(lines) + "\n"}, units, unit, len(lines)


def generate(setting: str, cfg, folder: str | Path) -> Path:
    """Write one mini setting into `folder`/<setting>/ (files + split.json); skipped when the same files exist."""
    target = Path(folder) / setting
    split_path = target / SPLIT_FILE
    wanted = _params(cfg)
    if split_path.is_file():
        existing = json.loads(split_path.read_text())
        if existing.get("generator") == wanted and all(
                (target / name).is_file() and _sha256(target / name) == digest
                for name, digest in existing["sha256"].items()):
            return target
    files, split_file = build(setting, cfg)
    target.mkdir(parents=True, exist_ok=True)
    for name, text in {**files, SPLIT_FILE: json.dumps(split_file, indent=1) + "\n"}.items():
        tmp = target / f".{name}.tmp-{os.getpid()}"
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, target / name)
    return target


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
