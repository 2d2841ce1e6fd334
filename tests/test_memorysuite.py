"""MemorySuite data layer: chunking, the real-format loaders on hand-written fixtures, frozen splits, accounting,
bad input, and MemorySuite-mini round-tripping through the same loaders."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from collections import Counter
from pathlib import Path

import pytest

from elasticmem_core import memorysuite
from elasticmem_core.core.experiment import resolve
from elasticmem_core.harness import checks
from elasticmem_core.memorysuite import DataError, chunk_turns, loaders, mini, splits

FIX = Path(__file__).parent / "fixtures"
MINI = ("mini-personamem", "mini-locomo", "mini-longmemeval")


def turns(*pairs):
    return [{"role": r, "content": c} for r, c in pairs]


# ---------------------------------------------------------------------------------------------------- chunking
def test_chunking_pairs_user_with_assistant():
    assert chunk_turns(turns(("user", "Hi"), ("assistant", "Hello"), ("user", "Bye"), ("assistant", "Ciao"))) == [
        "User: Hi\nAssistant: Hello", "User: Bye\nAssistant: Ciao"]


def test_chunking_drops_system_merges_runs_and_counts_unpaired():
    counts = Counter()
    texts = chunk_turns(turns(("system", "persona"), ("assistant", "Welcome"), ("user", "a"), ("user", "b"),
                              ("assistant", "c"), ("assistant", "d"), ("user", " "), ("user", "last ")), counts)
    assert texts == ["Assistant: Welcome", "User: a\nb\nAssistant: c\nd", "User: last"]
    assert counts == {"system_turns_dropped": 1, "same_role_turns_merged": 2, "unpaired_turns": 2,
                      "empty_turns_dropped": 1}


def test_chunking_empty_and_system_only():
    assert chunk_turns([]) == []
    assert chunk_turns(turns(("system", "x"))) == []


# ---------------------------------------------------------------------------------------------------- loaders
def personamem(folder=FIX / "personamem", skip=False):
    return loaders.load_personamem(folder / "questions_32k.csv", folder / "shared_contexts_32k.jsonl",
                                   folder / "split.json", "personamem-fixture", skip)


def mc10(name, folder=None, skip=False, memory=None):
    folder = folder or FIX / name
    file = "locomo_mc10.json" if name == "locomo-mc10" else "lme_s_mc10.json"
    memory = memory or ("conversation" if name == "locomo-mc10" else "haystack")
    return loaders.load_mc10(folder / file, folder / "split.json", name, memory, skip)


def alfworld(folder=FIX / "alfworld", skip=False, split=None):
    return loaders.load_alfworld(folder / "expert_replays.json", folder / "skill_cards.json",
                                 split or folder / "split.json", "alfworld", skip)


def test_personamem_fixture_exact():
    ds = personamem()
    assert [c.text for c in ds.memories["ctx-a"].chunks] == [
        "User: I moved to Lisbon last spring.\nAssistant: Lisbon is lovely.",
        "User: I adopted a cat.\nHer name is Mia.\nAssistant: Congratulations!\nCats are great company.",
        "User: Bye for now."]
    assert [c.text for c in ds.memories["ctx-b"].chunks] == ["Assistant: Hello! How can I help?",
                                                            "User: I play the cello.\nAssistant: Nice."]
    assert [c.chunk_id for c in ds.memories["ctx-c"].chunks] == ["ctx-c#0"]
    q = {q.qid: q for q in ds.questions}
    assert q["pm-q1"].options == ["Paris", "Lisbon", "Rome", "Oslo"] and q["pm-q1"].gold == "(b)"
    assert q["pm-q2"].options[2] == "A cat called Mia" and q["pm-q2"].gold == "(c)"  # list-literal options
    assert q["pm-q3"].options[1] == "The violin\nwhich is louder" and q["pm-q3"].gold == "(a)"
    assert (q["pm-q1"].split, q["pm-q3"].split, q["pm-q4"].split) == ("train", "val", "test")
    assert q["pm-q4"].question_type == "recall_user_shared_facts" and q["pm-q4"].memory_id == "ctx-c"
    c = ds.summary.counts
    assert (c["questions"], c["records_read"], c["contexts_read"], c["memories_without_questions"]) == (4, 4, 4, 1)
    assert (c["system_turns_dropped"], c["same_role_turns_merged"], c["unpaired_turns"], c["empty_turns_dropped"]) \
        == (2, 2, 2, 1)


def test_locomo_fixture_drops_adversarial_and_chunks_per_session():
    ds = mc10("locomo-mc10")
    assert [c.text for c in ds.memories["conv-26"].chunks] == [
        "User: Hi, I'm Caroline. I started painting.\nAssistant: That's wonderful!",
        "User: I went to a pride parade last week.\nAssistant: How was it?", "User: Amazing."]
    assert [c.text for c in ds.memories["conv-47"].chunks] == ["Assistant: Morning Jon!",
                                                              "User: I lost my job.\nAssistant: Sorry to hear."]
    q = {q.qid: q for q in ds.questions}
    assert set(q) == {"conv-26_q0", "conv-47_q0", "conv-49_q0"}
    assert q["conv-26_q0"].gold == "(d)" and q["conv-26_q0"].options[3] == "painting"
    assert len(q["conv-26_q0"].options) == 10 and q["conv-26_q0"].labels[-1] == "(j)"
    assert q["conv-49_q0"].evidence == ["conv-49#0"] and q["conv-26_q0"].evidence == []
    assert [q[k].split for k in ("conv-26_q0", "conv-47_q0", "conv-49_q0")] == ["train", "val", "test"]
    c = ds.summary.counts
    assert c["questions_dropped_adversarial"] == 1 and c["unpaired_turns"] == 2
    assert c["records_read"] == c["questions"] + c["questions_dropped_adversarial"]


def test_longmemeval_fixture_one_haystack_per_question():
    ds = mc10("longmemeval-mc10")
    assert set(ds.memories) == {"e47becba", "118b2229", "gpt4_2655b836_abs"}
    assert [c.text for c in ds.memories["118b2229"].chunks] == [
        "User: My commute is 30 minutes.\nAssistant: Okay.",
        "User: Now my commute is 45 minutes.\nAssistant: That is longer."]
    q = {q.qid: q for q in ds.questions}
    assert q["118b2229"].gold == "(b)" and q["118b2229"].question_type == "knowledge-update"
    assert q["118b2229"].options_text().startswith("(a) 30 minutes\n(b) 45 minutes\n(c) 2 hours")
    assert ds.summary.counts["system_turns_dropped"] == 1


def test_alfworld_fixture():
    ds = alfworld()
    bank = ds.memories["alfworld-skills"].chunks
    assert [c.text for c in bank] == [
        "[pick_and_place_simple] Find the pen first: check sidetables and desks, take it, go to the desk and put it "
        "there.", "[pick_heat_then_place_in_recep] Take the potato, heat it in the microwave 1, then open the fridge "
                  "and put it inside."]
    assert bank[1].chunk_id == "alfworld-skills#1" and ds.questions == []
    eps = {e.episode_id: e for e in ds.episodes}
    pen = eps["train/pick_and_place_simple-Pen-None-Desk-1/trial_1/game.tw-pddl"]
    assert pen.split == "bank" and pen.steps[1].action == "take pen 1 from sidetable 1"
    assert pen.steps[0].admissible_commands == ["go to desk 1", "take pen 1 from sidetable 1"]
    assert eps["train/pick_heat_then_place_in_recep-Egg-None-Fridge-3/trial_3/game.tw-pddl"].split == "val"
    c = ds.summary.counts
    assert (c["replays_read"], c["replays_unsuccessful"], c["episodes"], c["skill_cards_read"]) == (4, 1, 3, 2)


# ---------------------------------------------------------------------------------------------------- splits
@pytest.mark.parametrize("setting", ["personamem-32k", "personamem-128k", "locomo-mc10", "longmemeval-mc10",
                                     "alfworld"])
def test_package_split_files(setting):
    sf = splits.read_split_file(splits.package_split_file(setting))
    assert sf["setting"] == setting and set(sf["expected"]) >= {"train", "val"}
    if sf["splits"] is not None:
        members = [u for us in sf["splits"].values() for u in us]
        assert len(members) == len(set(members))
        assert {k: len(v) for k, v in sf["splits"].items()} == sf["expected"]
    else:
        assert sf["procedure"] in splits.PROCEDURES


def test_locomo_split_is_the_papers():
    sf = splits.read_split_file(splits.package_split_file("locomo-mc10"))
    assert sf["splits"] == {"train": ["conv-26", "conv-30", "conv-41", "conv-42", "conv-43", "conv-44"],
                            "val": ["conv-47", "conv-48"], "test": ["conv-49", "conv-50"]}


def test_longmemeval_procedure_counts_and_is_deterministic():
    ids = [f"q{i:03d}" for i in range(500)]
    a = splits.PROCEDURES["seed42_test20_val10"](ids, {})
    assert {k: len(v) for k, v in a.items()} == {"train": 350, "val": 50, "test": 100}
    assert a == splits.PROCEDURES["seed42_test20_val10"](list(reversed(ids)), {})
    assert not set(a["train"]) & set(a["test"]) and not set(a["val"]) & set(a["test"])


def test_split_frozen_on_first_load_then_verified(tmp_path):
    records = [{"question_id": f"q{i}", "question": "?", "choices": ["x", "y"], "correct_choice_index": 0,
                "question_type": "t", "haystack_sessions": [[{"role": "user", "content": f"fact {i}"}]]}
               for i in range(20)]
    (tmp_path / "lme_s_mc10.json").write_text("".join(json.dumps(r) + "\n" for r in records))
    sf = {"setting": "lme-tmp", "unit": "question", "expected": {"train": 14, "val": 2, "test": 4},
          "expected_records": 20, "procedure": "seed42_test20_val10", "sha256": {}, "splits": None}
    (tmp_path / "split.json").write_text(json.dumps(sf))
    first = mc10("longmemeval-mc10", folder=tmp_path)
    assert any("froze" in n for n in first.summary.notes)
    frozen = json.loads((tmp_path / "split.json").read_text())["splits"]
    assert {k: len(v) for k, v in frozen.items()} == {"train": 14, "val": 2, "test": 4}
    second = mc10("longmemeval-mc10", folder=tmp_path)
    assert not second.summary.notes and [q.split for q in second.questions] == [q.split for q in first.questions]
    sf["expected"] = {"train": 15, "val": 1, "test": 4}  # a wrong release must not get frozen
    (tmp_path / "split.json").write_text(json.dumps(sf))
    with pytest.raises(DataError, match="split 'train' has 14 question"):
        mc10("longmemeval-mc10", folder=tmp_path)


def _edit_split(tmp_path, name, change):
    folder = tmp_path / name
    shutil.copytree(FIX / name, folder)
    sf = json.loads((folder / "split.json").read_text())
    change(sf)
    (folder / "split.json").write_text(json.dumps(sf))
    return folder


def test_split_overlap_count_and_coverage_errors(tmp_path):
    def overlap(sf):
        sf["splits"]["test"].append("conv-26")
        sf["expected"]["test"] = 2
    with pytest.raises(DataError, match="'conv-26' is in both 'train' and 'test'"):
        mc10("locomo-mc10", _edit_split(tmp_path / "a", "locomo-mc10", overlap))
    with pytest.raises(DataError, match="split 'val' has 1 conversation"):
        mc10("locomo-mc10", _edit_split(tmp_path / "b", "locomo-mc10", lambda sf: sf["expected"].update(val=2)))

    def drop(sf):
        sf["splits"]["test"] = []
        sf["expected"]["test"] = 0
    with pytest.raises(DataError, match="have no split, e.g. 'conv-49'"):
        mc10("locomo-mc10", _edit_split(tmp_path / "c", "locomo-mc10", drop))
    with pytest.raises(DataError, match="4 records, but the release"):
        mc10("locomo-mc10", _edit_split(tmp_path / "d", "locomo-mc10", lambda sf: sf.update(expected_records=5)))


def test_alfworld_bank_game_in_train_is_an_error(tmp_path):
    def leak(sf):
        game = sf["splits"]["bank"].pop(0)
        sf["splits"]["train"].append(game)
        sf["expected"].update(bank=1, train=2)
    with pytest.raises(DataError, match="must be in 'bank'"):
        alfworld(_edit_split(tmp_path, "alfworld", leak))


# ---------------------------------------------------------------------------------------------------- bad input
def _copy(tmp_path, name):
    shutil.copytree(FIX / name, tmp_path / name)
    return tmp_path / name


def _rewrite_line(path: Path, lineno: int, change) -> None:
    lines = path.read_text().splitlines(keepends=True)
    lines[lineno - 1] = change(lines[lineno - 1])
    path.write_text("".join(lines))


def test_missing_files(tmp_path):
    with pytest.raises(DataError, match="questions_32k.csv: file not found"):
        personamem(tmp_path)
    with pytest.raises(DataError, match="locomo_mc10.json: file not found"):
        mc10("locomo-mc10", folder=tmp_path)
    with pytest.raises(DataError, match="expert_replays.json: file not found"):
        alfworld(tmp_path, split=FIX / "alfworld" / "split.json")


def test_personamem_bad_rows(tmp_path):
    folder = _copy(tmp_path, "personamem")
    csv_path = folder / "questions_32k.csv"
    good = csv_path.read_text()
    csv_path.write_text(good.replace("ctx-c,2", "ctx-c,2,surplus"))
    with pytest.raises(DataError, match=r"questions_32k.csv:12: malformed row"):
        personamem(folder)
    csv_path.write_text(good.replace("(d),\"(a) red", "(e),\"(a) red"))
    with pytest.raises(DataError, match=r"questions_32k.csv:12 field 'correct_answer': gold label \(e\) is outside "
                                        r"the 4 options"):
        personamem(folder)
    csv_path.write_text(good.replace(",ctx-c,", ",ctx-zzz,"))
    with pytest.raises(DataError, match=r":12 field 'shared_context_id': 'ctx-zzz' has no context"):
        personamem(folder)
    csv_path.write_text(good.replace("(b) Lisbon", "(c) Lisbon"))
    with pytest.raises(DataError, match=r":2 field 'all_options': option 2 should start with \(b\)"):
        personamem(folder)
    csv_path.write_text(good.replace("shared_context_id,", "context,"))
    with pytest.raises(DataError, match=r":1 field 'shared_context_id': column missing"):
        personamem(folder)


def test_personamem_bad_context_line_and_skipping(tmp_path):
    folder = _copy(tmp_path, "personamem")
    _rewrite_line(folder / "shared_contexts_32k.jsonl", 2, lambda line: line[:-5] + "\n")
    with pytest.raises(DataError, match=r"shared_contexts_32k.jsonl:2: malformed JSON line"):
        personamem(folder)
    ds = personamem(folder, skip=True)  # ctx-b lost: its question is skipped too, both listed
    assert len(ds.summary.skipped) == 2 and "shared_contexts_32k.jsonl:2" in ds.summary.skipped[0]
    assert "'ctx-b' has no context" in ds.summary.skipped[1]
    assert {q.qid for q in ds.questions} == {"pm-q1", "pm-q2", "pm-q4"}
    assert any("absent from the data" in n for n in ds.summary.notes)


@pytest.mark.parametrize("change, message", [
    (lambda r: r.pop("choices"), r":1 field 'choices': missing"),
    (lambda r: r.update(correct_choice_index="3"), r":1 field 'correct_choice_index': expected int, got str"),
    (lambda r: r.update(correct_choice_index=10), r":1 field 'correct_choice_index': gold 10 is outside the 10"),
    (lambda r: r["haystack_sessions"][0][0].update(role="narrator"), r"'haystack_sessions'\[0\] turn 0 field 'role'"),
    (lambda r: r["haystack_sessions"][0][0].pop("content"), r"turn 0 field 'content': missing"),
    (lambda r: r.update(question_id="conv26-0"), r"field 'question_id': 'conv26-0' has no conversation prefix"),
    (lambda r: r.update(evidence_chunks=[7]), r"field 'evidence_chunks': 7 is not a chunk index"),
])
def test_mc10_bad_records(tmp_path, change, message):
    folder = _copy(tmp_path, "locomo-mc10")
    path = folder / "locomo_mc10.json"

    def edit(line):
        record = json.loads(line)
        change(record)
        return json.dumps(record) + "\n"
    _rewrite_line(path, 1, edit)
    with pytest.raises(DataError, match=message):
        mc10("locomo-mc10", folder=folder)


def test_mc10_malformed_line_skipped_and_listed(tmp_path):
    folder = _copy(tmp_path, "longmemeval-mc10")
    _rewrite_line(folder / "lme_s_mc10.json", 2, lambda line: "{not json\n")
    with pytest.raises(DataError, match=r"lme_s_mc10.json:2: malformed JSON line"):
        mc10("longmemeval-mc10", folder=folder)
    ds = mc10("longmemeval-mc10", folder=folder, skip=True)
    assert ds.summary.counts["records_skipped"] == 1 and ds.summary.skipped[0].endswith("(Expecting property name "
                                                                                         "enclosed in double quotes "
                                                                                         "at column 2)")
    assert ds.summary.counts["records_read"] == ds.summary.counts["questions"] + 1


def test_locomo_haystack_must_match_within_a_conversation(tmp_path):
    folder = _copy(tmp_path, "locomo-mc10")

    def edit(line):
        record = json.loads(line)
        record["haystack_sessions"][0][0]["content"] = "changed"
        return json.dumps(record) + "\n"
    _rewrite_line(folder / "locomo_mc10.json", 2, edit)
    with pytest.raises(DataError, match=r"locomo_mc10.json:2 field 'haystack_sessions': differs from the conv-26 "
                                        r"haystack read at .*:1"):
        mc10("locomo-mc10", folder=folder)


def test_alfworld_bad_records(tmp_path):
    folder = _copy(tmp_path, "alfworld")
    replays = json.loads((folder / "expert_replays.json").read_text())
    game = next(iter(replays["pick_and_place_simple"].values()))
    del game["steps"][0]["admissible_commands"]
    (folder / "expert_replays.json").write_text(json.dumps(replays))
    with pytest.raises(DataError, match=r"\[.pick_and_place_simple.\]\[.*Desk-1.*\] steps\[0\] field "
                                        r"'admissible_commands': missing"):
        alfworld(folder)
    cards = json.loads((folder / "skill_cards.json").read_text())
    cards[1]["summary"] = 3
    (folder / "skill_cards.json").write_text(json.dumps(cards))
    with pytest.raises(DataError, match=r"skill_cards.json \[1\] field 'summary': expected str, got int"):
        alfworld(folder)


def test_alfworld_card_in_another_engines_syntax_is_refused_or_counted(tmp_path):
    """The fixture's replays were recorded with "put X in/on Y" (ALFWorld < 0.4): a card naming "move X to Y" would
    teach a command that engine refuses; a card in the replays' own syntax passes."""
    folder = _copy(tmp_path, "alfworld")
    cards = json.loads((folder / "skill_cards.json").read_text())
    cards[0]["summary"] += " Finish with: put pen 1 in/on desk 1."   # the replays' syntax: accepted
    (folder / "skill_cards.json").write_text(json.dumps(cards))
    assert len(alfworld(folder).memories["alfworld-skills"].chunks) == 2
    cards[1]["summary"] += " Then: move potato 1 to fridge 1."
    (folder / "skill_cards.json").write_text(json.dumps(cards))
    with pytest.raises(DataError, match=r"skill_cards.json \[1\] field 'summary': names 'move potato 1 to fridge 1', "
                                        r"a command the engine that recorded .*expert_replays.json does not accept"):
        alfworld(folder)
    ds = alfworld(folder, skip=True)
    assert len(ds.memories["alfworld-skills"].chunks) == 1 and ds.summary.counts["records_skipped"] == 1


# ---------------------------------------------------------------------------------------------------- load(), mini
@pytest.fixture()
def mini_cfg(smoke_cfg, tmp_path):
    smoke_cfg.data.mini_dir = str(tmp_path / "mini")
    return smoke_cfg


def test_the_alignment_corpus_is_new_memories_and_refuses_overlap_with_validation_or_test(mini_cfg, monkeypatch):
    ds = memorysuite.load("mini-personamem", mini_cfg)
    corpus = memorysuite.alignment_corpus(ds, mini_cfg, 3)
    assert corpus.setting == "mini-personamem-align-corpus-n3" and corpus.questions == []
    assert len(corpus.memories) == 3 and all(m.startswith("align-corpus/") for m in corpus.memories)
    assert all(c.chunk_id.startswith("align-corpus/") and c.memory_id in corpus.memories for c in corpus.chunks())
    held = {q.memory_id for q in ds.questions if q.split != "train"}
    trained = {c.text for m, mem in ds.memories.items() if m not in held for c in mem.chunks}
    unique = {c.text for m in held for c in ds.memories[m].chunks} - trained   # small talk is shared by all
    assert unique and not unique & {c.text for c in corpus.chunks()}
    # the generator's own seed for the corpus: the dataset's memories again are refused, naming the key
    monkeypatch.setattr(memorysuite, "CORPUS_SEED_OFFSET", 0)
    with pytest.raises(DataError, match=r"align.corpus_memories: the alignment corpus .* has memory .*which is the "
                                        r"validation/test memory"):
        memorysuite.alignment_corpus(ds, mini_cfg, mini_cfg.data.mini.n_memories)
    # a memory that only shares some turns with a held-out one keeps the rest, and the dropped turns are counted
    monkeypatch.setattr(memorysuite, "CORPUS_SEED_OFFSET", 7_919)
    held_text = next(iter(unique))
    first = next(iter(corpus.memories.values())).chunks[0]
    orig = memorysuite.load

    def load_with_a_shared_turn(*a, **k):
        d = orig(*a, **k)
        mem = next(iter(d.memories.values()))
        mem.chunks[0] = dataclasses.replace(mem.chunks[0], text=held_text)
        return d
    monkeypatch.setattr(memorysuite, "load", load_with_a_shared_turn)
    again = memorysuite.alignment_corpus(ds, mini_cfg, 3)
    assert again.summary.counts["chunks_dropped_as_validation_or_test_text"] == 1
    assert len(again.chunks()) == len(corpus.chunks()) - 1
    assert first.chunk_id not in {c.chunk_id for c in again.chunks()}
    with pytest.raises(DataError, match=r"align.corpus_memories = 3: .*not 'personamem-fixture'"):
        memorysuite.alignment_corpus(personamem(), mini_cfg, 3)


@pytest.mark.parametrize("setting", MINI)
def test_mini_round_trip(mini_cfg, setting):
    ds = memorysuite.load(setting, mini_cfg)
    n_options = 4 if setting == "mini-personamem" else 10
    assert ds.questions and {q.split for q in ds.questions} == {"train", "val", "test"}
    chunks = {c.chunk_id: c.text for c in ds.chunks()}
    for q in ds.questions:
        assert len(q.options) == n_options == len(set(q.options))
        answer = q.options[q.gold_index]
        assert q.evidence and all(e in chunks for e in q.evidence)
        assert any(answer in chunks[e] for e in q.evidence), q  # the right chunk states the answer verbatim
        assert answer not in q.question
    c = ds.summary.counts
    assert c["records_read"] == c["questions"] + c.get("questions_dropped_adversarial", 0)
    if setting == "mini-locomo":
        m = mini_cfg.data.mini
        assert c["questions_dropped_adversarial"] == m.n_memories + m.extra_test_memories


def test_mini_options_are_exchangeable_without_memory(mini_cfg):
    """Gold positions cover every label, and every option of a question comes from the gold value's pool."""
    mini_cfg.data.mini.n_memories = 12
    pools = [f.pool for f in mini.USER_FACTS.values()] + [p for p, _ in mini.PREFERENCES.values()] + [
        mini.DISHES, mini.COURSES, mini.REASONS]
    for setting in MINI:
        ds = memorysuite.load(setting, mini_cfg)
        assert set(Counter(q.gold for q in ds.questions)) == set(ds.questions[0].labels)
        for q in ds.questions:
            pool = next(p for p in pools if q.options[q.gold_index] in p)
            assert set(q.options) <= set(pool), q


def test_mini_is_deterministic_and_idempotent(mini_cfg):
    memorysuite.load("mini-locomo", mini_cfg)
    path = memorysuite.mini_root(mini_cfg) / "mini-locomo" / "locomo_mc10.json"
    before, mtime = path.read_bytes(), path.stat().st_mtime_ns
    memorysuite.load("mini-locomo", mini_cfg)
    assert path.stat().st_mtime_ns == mtime  # the same files exist: not regenerated
    assert [r["status"] for r in memorysuite.checksums("mini-locomo", mini_cfg)] == ["ok"]
    assert mini.build("mini-locomo", mini_cfg.data.mini)[0]["locomo_mc10.json"].encode() == before
    mini_cfg.data.mini.seed = 7
    assert mini.build("mini-locomo", mini_cfg.data.mini)[0]["locomo_mc10.json"].encode() != before
    memorysuite.load("mini-locomo", mini_cfg)  # new params: regenerated
    assert path.read_bytes() != before


# MemorySuite-mini under params/mini.yaml's data.mini, frozen: the files' sha256 without the extra test memories (the
# data of every result made before data.mini.extra_test_memories existed) and with them (test grown to >= 240).
# A change here changes the data under every result: update a digest only for a deliberate generator change
# (then bump mini.GENERATOR_VERSION), with a comment saying which.
MINI_FROZEN = {
    "before extra": {
        "mini-personamem": {"questions_mini.csv": "43d395ebea61a9467f0e271476d14217c2b32a7317cecb0addb25f92a5008a15",
                            "shared_contexts_mini.jsonl":
                                "ae21b1550700a83258ad511c89eb6995d8ab138835ea10d297674374f62f4120"},
        "mini-locomo": {"locomo_mc10.json": "19050aa11a5dddfebf16a02ccc55d815402ad9744a7143e060cb10f9293b40d4"},
        "mini-longmemeval": {"lme_s_mc10.json": "bf1486faa094ca57b75a21e59ffa45e22927b9db5c98fa859ecfa4093171922c"},
    },
    # + data.mini.extra_test_memories = 21 (the 48 memories above unchanged, 21 appended, test only)
    "with extra": {
        "mini-personamem": {"questions_mini.csv": "4ed7807bbd3bf270a22387fed41fbc421c247978b68199463bafa2e271195e6a",
                            "shared_contexts_mini.jsonl":
                                "4f892b72b1bd7589091312874b329f99811ae38f4ec27268a3986d18f52defd7"},
        "mini-locomo": {"locomo_mc10.json": "571fcd8c15497dfd3ac274ec648b5667d1f0d9a2218009a1c9480f658a869400"},
        "mini-longmemeval": {"lme_s_mc10.json": "221d81552e7f17f100498fb41fcc3ebb7d97a1845d3d534fc09dffbbf3724049"},
    },
}


def test_mini_params_data_is_frozen():
    params = checks.load(resolve("params/mini.yaml")).data.mini
    for key, cfg in (("before extra", dataclasses.replace(params, extra_test_memories=0)), ("with extra", params)):
        for setting in MINI:
            files, split = mini.build(setting, cfg)
            digests = {name: hashlib.sha256(text.encode()).hexdigest() for name, text in files.items()}
            assert digests == split["sha256"] == MINI_FROZEN[key][setting], (key, setting)
    # no extra memories: split.json has no extra key either, so files written before it are reused as they are
    assert "extra_test_memories" not in mini.build("mini-locomo", dataclasses.replace(params, extra_test_memories=0))[
        1]["generator"]


@pytest.mark.parametrize("setting", MINI)
def test_mini_extra_test_memories_only_add_test(setting, tmp_path):
    """The first n_memories memories keep their text and split, the extra ones are appended to test only, and under
    params/mini.yaml every setting's test split has >= 240 questions (train and validation unchanged)."""
    cfg = checks.load(resolve("params/mini.yaml"))
    cfg.data.mini_dir = str(tmp_path)
    extra = cfg.data.mini.extra_test_memories
    files, split = mini.build(setting, dataclasses.replace(cfg.data.mini, extra_test_memories=0))
    more_files, more = mini.build(setting, cfg.data.mini)
    for name, text in files.items():
        assert more_files[name].startswith(text) and len(more_files[name]) > len(text), name  # records appended
    assert more["splits"]["train"] == split["splits"]["train"] and more["splits"]["val"] == split["splits"]["val"]
    added = set(more["splits"]["test"]) - set(split["splits"]["test"])
    assert set(split["splits"]["test"]) < set(more["splits"]["test"])
    per_memory = cfg.data.mini.questions_per_memory if setting == "mini-longmemeval" else 1  # haystacks per memory
    assert len(added) == extra * per_memory

    ds = memorysuite.load(setting, cfg)
    n = {name: len(ds.split(name)) for name in ("train", "val", "test")}
    assert n["test"] >= 240 and (n["train"], n["val"]) == {"mini-longmemeval": (230, 77)}.get(setting, (224, 80))
    assert {q.memory_id for q in ds.split("test")} >= added
    assert [r["status"] for r in memorysuite.checksums(setting, cfg)] == ["ok"] * len(files)


def test_mini_too_many_questions_is_a_clear_error(mini_cfg):
    mini_cfg.data.mini.turns_per_session = 1
    with pytest.raises(ValueError, match="raise turns_per_session"):
        memorysuite.load("mini-personamem", mini_cfg)


def test_truncation_is_counted(mini_cfg, tiny_backbone):
    tok = tiny_backbone.tokenizer
    mini_cfg.data.chunk_max_tokens = 12
    ds = memorysuite.load("mini-personamem", mini_cfg, tokenizer=tok)
    full = memorysuite.load("mini-personamem", mini_cfg)
    long = [c for c in full.chunks() if memorysuite.token_counts([c.text], tok)[0] > 12]
    assert long and ds.summary.counts["chunks_truncated"] == len(long)
    cut = {c.chunk_id: c.text for c in ds.chunks()}
    for c in long:
        assert c.text.startswith(cut[c.chunk_id]) and len(cut[c.chunk_id]) < len(c.text)
        assert memorysuite.token_counts([cut[c.chunk_id]], tok)[0] <= 12


def test_real_setting_without_files_names_the_layout(smoke_cfg, tmp_path):
    smoke_cfg.data.data_dir = str(tmp_path)
    with pytest.raises(DataError, match=r"locomo-mc10/locomo_mc10.json: file not found .*README"):
        memorysuite.load("locomo-mc10", smoke_cfg)
    with pytest.raises(DataError, match="unknown MemorySuite setting 'locomo'"):
        memorysuite.load("locomo", smoke_cfg)
    assert memorysuite.checksums("personamem-32k", smoke_cfg)[0]["status"] == "absent"
