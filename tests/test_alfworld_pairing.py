"""`elasticmem alfworld-pair`: ALFWorld agents played by different runs, paired only when they played the same games.

The inputs are the result files of a real overlay run (the c9e3d07 reference folder: ElasticMem and no memory on
40 + 40 games); a second run is made from them by moving one agent's files into a folder of its own."""
import json
import shutil
from pathlib import Path

import pytest

from elasticmem_core.alfworld import pairing, play
from elasticmem_core.core.evaluate import ResultsError, load_results
from elasticmem_core.harness import runner

REF = Path(__file__).resolve().parents[1] / "outputs/reference/alfworld-2026-12-07-c9e3d07"


def _split_runs(tmp_path, as_method="text_memory"):
    """Two run folders from one: (a) ElasticMem, (b) the no-memory agent's files, renamed `as_method`."""
    a, b = tmp_path / "run_a", tmp_path / "run_b"
    shutil.copytree(REF / "results", a / "results", ignore=shutil.ignore_patterns("no_memory"))
    shutil.copy(REF / "games_manifest.json", a / "games_manifest.json")
    for f in (REF / "results/no_memory").rglob("*.json"):
        r = json.loads(f.read_text())
        r["method"] = r["fingerprint"]["method"] = as_method
        dst = b / "results" / as_method / f.parent.name / f.name
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_text(json.dumps(r))
    (b / "data/alfworld-offline").mkdir(parents=True)   # a run folder's manifest place
    shutil.copy(REF / "games_manifest.json", b / "data/alfworld-offline/manifest.json")
    return a, b


def _edit(folder, split, edit):
    f = next((folder / "results").glob(f"*/*/{split}-seed42.json"))
    r = json.loads(f.read_text())
    edit(r)
    f.write_text(json.dumps(r))
    return f


def test_agents_of_two_runs_pair_as_if_one_run_had_played_them(tmp_path):
    a, b = _split_runs(tmp_path)
    results, summary, paired = pairing.write(tmp_path / "out", [a, b])
    one_run = play.paired_success(load_results(REF), [("elasticmem", "no_memory")], 2000, 42)
    mine = [p for p in paired if (p["a"], p["b"]) == ("elasticmem", "text_memory")]
    assert len(mine) == 3 and [p["split"] for p in mine] == ["valid_seen", "valid_unseen", "both"]
    for p, q in zip(mine, one_run):
        assert {k: p[k] for k in ("n", "difference", "ci_low", "ci_high", "p_mcnemar", "tok_b")} == \
               {k: q[k] for k in ("n", "difference", "ci_low", "ci_high", "p_mcnemar", "tok_b")}
    assert summary["both_splits"]["text_memory"]["successes"] == 7 and summary["both_splits"]["elasticmem"]["n"] == 80
    out = tmp_path / "out"
    assert len(load_results(out)) == 6 and (out / "metrics/06_alfworld_paired.json").is_file()
    sources = json.loads((out / "sources.json").read_text())
    assert {Path(s["from"]).parents[3].name for s in sources} == {"run_a", "run_b"}
    assert all(s["commit"].startswith("c9e3d07") for s in sources)
    assert {r["file"] for r in results} == {str(f) for f in out.glob("results/*/*/*.json")}
    pairing.write(out, [a, b])   # again into the same folder: the same files, accepted
    with pytest.raises(ResultsError, match="holds 2 file.s. not among the folders gathered"):
        pairing.write(out, [a])   # text_memory's files would enter the ledger unchecked
    before = (out / "sources.json").read_text()
    _edit(b, "valid_unseen", lambda r: r["records"][0].update(steps=29))   # another result where one already lies
    with pytest.raises(ResultsError, match="valid_unseen-seed42.json: already holds another result"):
        pairing.write(out, [a, b])
    assert (out / "sources.json").read_text() == before   # refused before anything was written


def test_a_run_on_other_games_or_agents_is_refused_by_file_game_and_field(tmp_path):
    a, b = _split_runs(tmp_path)
    game = json.loads((REF / "results/no_memory/alfworld-offline/valid_unseen-seed42.json").read_text())["records"][3]
    f = _edit(b, "valid_unseen", lambda r: r["records"][3].update(objective="put a mug in fridge."))
    with pytest.raises(ResultsError, match=rf"{f}: game {game['qid']} has objective 'put a mug in fridge.'"):
        pairing.combine([a, b])
    a, b = _split_runs(tmp_path / "2")
    _edit(b, "valid_seen", lambda r: r.update(records=r["records"][1:]))
    with pytest.raises(ResultsError, match="played 39 valid_seen games.*1 game ids differ"):
        pairing.combine([a, b])
    a, b = _split_runs(tmp_path / "2b")   # as many games, one of them another
    _edit(b, "valid_seen", lambda r: r["records"][0].update(qid="valid_seen/another-game"))
    with pytest.raises(ResultsError, match=r"played 40 valid_seen games.*2 game ids differ \(only here e.g. "
                                           r"\['valid_seen/another-game'\]"):
        pairing.combine([a, b])
    a, b = _split_runs(tmp_path / "2c")   # another seed
    for f in list((b / "results").rglob("*-seed42.json")):
        r = json.loads(f.read_text())
        r["seed"] = 43
        f.with_name(f.name.replace("seed42", "seed43")).write_text(json.dumps(r))
        f.unlink()
    with pytest.raises(ResultsError, match="field 'seed' is 43"):
        pairing.combine([a, b])
    a, b = _split_runs(tmp_path / "2d")   # a record that cannot be summarised
    f = _edit(b, "valid_seen", lambda r: r["records"][2].pop("reason"))
    with pytest.raises(ResultsError, match=rf"{f}: record 2 \(.*\) lacks field\(s\) reason"):
        pairing.combine([a, b])
    a, b = _split_runs(tmp_path / "3")
    _edit(b, "valid_seen", lambda r: r["fingerprint"]["params"]["alfworld"].update(max_steps=50, history=5))
    with pytest.raises(ResultsError, match=r"params alfworld.history, alfworld.max_steps differ .*\(5 vs 2, 50 vs 30\)"):
        pairing.combine([a, b])
    a, b = _split_runs(tmp_path / "4")   # which agents a run trained does not shape an agent's games: accepted
    _edit(b, "valid_seen", lambda r: r["fingerprint"]["params"]["alfworld"].update(agents=["text"], elasticmem=False))
    assert len(pairing.combine([a, b])) == 6
    m = json.loads((b / "data/alfworld-offline/manifest.json").read_text())
    m["params"]["format"] = 2
    (b / "data/alfworld-offline/manifest.json").write_text(json.dumps(m))
    with pytest.raises(ResultsError, match=r"manifest.json: the games manifest's params differ .*'format': 2"):
        pairing.combine([a, b])
    (b / "data/alfworld-offline/manifest.json").unlink()
    with pytest.raises(ResultsError, match=r"run_b: no games manifest"):
        pairing.combine([a, b])
    a, b = _split_runs(tmp_path / "5", as_method="elasticmem")   # one agent twice
    with pytest.raises(ResultsError, match="elasticmem valid_seen is also in"):
        pairing.combine([a, b])
    with pytest.raises(ResultsError, match="no results/ folder"):
        pairing.combine([a, tmp_path])


def test_the_command_writes_the_folder_or_names_what_is_wrong(tmp_path, capsys):
    a, b = _split_runs(tmp_path)
    assert runner.main(["alfworld-pair", str(tmp_path / "out"), str(a), str(b)]) == 0
    assert "elasticmem - text_memory (both, n 80): +0.025" in capsys.readouterr().out
    assert (tmp_path / "out/figures/06_alfworld.png").stat().st_size > 10_000   # 06's figure of the agents gathered
    for split in ("valid_seen", "valid_unseen"):
        _edit(b, split, lambda r: r.update(backbone="qwen2.5-3b"))
    assert runner.main(["alfworld-pair", str(tmp_path / "out2"), str(a), str(b)]) == 1
    assert "field 'backbone' is 'qwen2.5-3b'" in capsys.readouterr().err and not (tmp_path / "out2").exists()
