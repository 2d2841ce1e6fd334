"""Evaluation metrics on known inputs, and results files: round trip, reuse, refusal of mismatched files."""
from __future__ import annotations

import json
import warnings

import pytest
from tinydata import tiny_cfg

from elasticmem_core.core import evaluate
from elasticmem_core.memorysuite.records import Question


def test_bootstrap_interval_brackets_the_mean_and_is_degenerate_for_constants():
    lo, hi = evaluate.bootstrap_ci([1, 0] * 50, n_boot=2000, seed=0)
    assert lo < 0.5 < hi and hi - lo == pytest.approx(0.2, abs=0.05)  # 95% of a mean of 100 coin flips: +-0.1
    assert evaluate.bootstrap_ci([1, 1, 1], n_boot=50) == (1.0, 1.0)


def test_weighted_average_is_by_test_set_size():
    assert evaluate.weighted_average([0.5, 1.0], [300, 100]) == pytest.approx(0.625)


def test_mcnemar_and_paired_comparison():
    assert evaluate.mcnemar_exact(0, 0) == 1.0
    assert evaluate.mcnemar_exact(0, 6) == pytest.approx(2 / 64)  # all six discordant pairs favour one side
    a = [{"qid": f"q{i}", "correct": i < 8} for i in range(10)]
    b = [{"qid": f"q{i}", "correct": i < 2 or i == 9} for i in range(10)]
    with pytest.warns(evaluate.QuestionLevelWarning, match="without memory_id"):  # records of an old file
        c = evaluate.paired_comparison(a, b, n_boot=500)
    assert (c["accuracy_a"], c["accuracy_b"], c["a_only"], c["b_only"]) == (0.8, 0.3, 6, 1)
    assert c["difference"] == pytest.approx(0.5) and c["ci_low"] <= 0.5 <= c["ci_high"]
    assert c["p_mcnemar"] == pytest.approx(2 * 8 / 128) and c["ci_unit"] == "question" and 0 < c["p"] < 0.05
    with pytest.raises(evaluate.ResultsError, match="same questions"):
        evaluate.paired_comparison(a, b[:5])


def test_intervals_resample_memories():
    """Every interval is stats.py's bootstrap over the records' memory ids; one memory alone (ALFWorld's skill bank,
    a by-memory row) has only its questions to resample."""
    from elasticmem_core.core import stats

    rec = lambda correct: [{"qid": f"q{i:02d}", "memory_id": f"m{i // 5}", "correct": c,  # noqa: E731
                            "tokens": {"task_text": 1, "memory": 0, "output": 1}, "tok": 2, "seconds": 0.1,
                            "peak_mb": 1.0} for i, c in enumerate(correct)]
    a = rec([1] * 10 + [0] * 5 + [1] * 5)  # whole memories right or wrong
    b = rec([0] * 20)
    clusters = [x["memory_id"] for x in a]
    s = evaluate.summarize(a, 500, 1)
    assert (s["ci_unit"], s["units"]) == ("memory", 4)
    assert [s["ci_low"], s["ci_high"]] == stats.bootstrap_mean([x["correct"] for x in a], clusters, 500, 1)["ci"]
    c = evaluate.paired_comparison(a, b, 500, 1)
    d = stats.paired_difference([x["correct"] for x in a], [0] * 20, clusters, 500, 1)
    assert ([c["ci_low"], c["ci_high"]], c["p"], c["units"]) == (d["ci"], d["p"], 4)
    one = evaluate.summarize(a[:5] + [{**a[5], "memory_id": "m0", "correct": 0}], 500, 1)
    assert one["ci_unit"] == "question" and one["ci_low"] < one["ci_high"]


QS = [Question(f"q{i}", "?", ["x", "y", "z", "w"], "(a)", "fact" if i % 2 else "pref", f"m{i % 3}", "test")
      for i in range(7)]


def fake_answer(batch):
    """A deterministic answerer: right on even question numbers, 10 + 5 + 1 tokens each."""
    return [{"qid": q.qid, "prediction": "(a)" if int(q.qid[1:]) % 2 == 0 else "(b)", "gold": q.gold,
             "correct": int(q.qid[1:]) % 2 == 0, "tokens": {"task_text": 10, "memory": 5, "output": 1},
             "rows": [0, 1], "budgets": [2, 0]} for q in batch]


def test_results_round_trip_resume_and_refusal(tmp_path):
    def base(*overrides):   # ALFWorld's later keys at their defaults: the older results below predate them
        return tiny_cfg("eval.max_questions=0", "eval.batch_size=3", "alfworld.bc_epochs=0", "alfworld.agents=[none, text]",
                        "alfworld.action_selection=generate", *overrides)
    cfg = base()
    meta = {"method": "fake", "setting": "s", "split": "test", "seed": 42, "backbone": "b"}
    path = evaluate.result_path(tmp_path, "fake", "s", "test", 42)
    calls = []
    answer = lambda batch: calls.append(len(batch)) or fake_answer(batch)  # noqa: E731
    res = evaluate.evaluate(answer, QS, path, meta, cfg)
    assert calls == [3, 3, 1]
    s = res["summary"]
    assert s["n"] == 7 and s["accuracy"] == pytest.approx(4 / 7) and s["tok"] == 16 and s["memory"] == 5
    assert res["params"]["eval"]["batch_size"] == 3 and "versions" in res["environment"]
    assert all(r["seconds"] >= 0 and r["peak_mb"] > 0 for r in res["records"])
    # reused, not recomputed; identical to what was saved
    again = evaluate.evaluate(answer, QS, path, meta, cfg)
    assert calls == [3, 3, 1] and again == json.loads(path.read_text()) == res
    assert evaluate.evaluate(answer, QS, path, meta, base("eval.baselines=[no_memory]")) == res  # not shaping
    # which comparison agents 06 trains shapes no agent's result; a file saved while it was fingerprinted (it holds
    # alfworld.agents) is reused under another list too
    assert evaluate.evaluate(answer, QS, path, meta, base("alfworld.agents=[text]")) == res
    older = json.loads(path.read_text())
    older["fingerprint"]["params"]["alfworld"]["agents"] = ["none"]
    path.write_text(json.dumps(older))
    assert evaluate.evaluate(answer, QS, path, meta, cfg)["summary"] == res["summary"] and calls == [3, 3, 1]
    path.write_text(json.dumps(res))
    with pytest.raises(evaluate.ResultsError, match="grpo.lr"):
        evaluate.evaluate(answer, QS, path, meta, base("grpo.lr=1"))
    # a result saved before a section (or key) existed is reused while the new params stay at their defaults
    older = json.loads(path.read_text())
    del older["fingerprint"]["params"]["align"], older["fingerprint"]["params"]["bank"]["cache_layer"]
    path.write_text(json.dumps(older))
    assert evaluate.evaluate(answer, QS, path, meta, cfg)["summary"] == res["summary"] and calls == [3, 3, 1]
    # a result saved when ALFWorld's params were data.alfworld_* keys is reused: they are read as the alfworld section
    from elasticmem_core.core import renamed

    moved = {new.split(".")[1] for new in renamed.RENAMED.values()}   # the keys the section had when it moved
    older["fingerprint"]["params"]["data"].update(
        {f"alfworld_{k}": v for k, v in older["fingerprint"]["params"].pop("alfworld").items() if k in moved})
    path.write_text(json.dumps(older))
    assert evaluate.evaluate(answer, QS, path, meta, cfg)["summary"] == res["summary"] and calls == [3, 3, 1]
    with pytest.raises(evaluate.ResultsError, match=r"params.alfworld.n_train: 18 -> 5"):
        evaluate.evaluate(answer, QS, path, meta, base("alfworld.n_train=5"))
    # the align section shapes nothing while align.steps = 0
    assert evaluate.evaluate(answer, QS, path, meta, base("align.lr=0.5"))["summary"] == res["summary"]
    for changed, message in (("align.steps=5", r"params.align: None -> \{'steps': 5"),
                             ("bank.cache_layer=0", r"params.bank.cache_layer: None -> 0")):
        with pytest.raises(evaluate.ResultsError, match=message):
            evaluate.evaluate(answer, QS, path, meta, base(changed))
    path.write_text(json.dumps(res))
    # tables: per type, per memory, pooled = size-weighted over settings
    evaluate.evaluate(answer, QS[:4], evaluate.result_path(tmp_path, "fake", "t", "test", 42), {**meta, "setting": "t"},
                      cfg)
    results = evaluate.load_results(tmp_path)
    overall = evaluate.overall_table(results).iloc[0]
    assert overall["n"] == 11 and overall["accuracy"] == pytest.approx(6 / 11)
    by_type = evaluate.group_table(results, "question_type").set_index(["setting", "question_type"])
    assert by_type.loc[("s", "pref"), "accuracy"] == 1.0 and by_type.loc[("s", "fact"), "accuracy"] == 0.0
    assert overall["ci_unit"] == "memory"  # QS's memories m0..m2 of two settings: six units
    by_memory = evaluate.group_table(results, "memory_id")
    assert set(by_memory["ci_unit"]) == {"question"}  # one memory's own row: its questions are the units
    paths = evaluate.save_tables(tmp_path, results)
    assert paths["records"].is_file() and len(evaluate.records_table(results)) == 11


def test_old_results_files_load_with_question_level_intervals(tmp_path):
    """A file saved before the memory bootstrap: its summary is recomputed over memories on load; one whose records
    have no memory_id still loads, with a warning, and resamples questions."""
    cfg = tiny_cfg()
    meta = {"method": "fake", "setting": "s", "split": "test", "seed": 42, "backbone": "b"}
    path = evaluate.result_path(tmp_path, "fake", "s", "test", 42)
    res = evaluate.evaluate(fake_answer, QS, path, meta, cfg)
    assert res["summary"]["ci_unit"] == "memory"
    old = json.loads(path.read_text())
    for key in ("ci_unit", "units"):
        del old["summary"][key]
    old["summary"].update(ci_low=0.0, ci_high=1.0, extra="kept")
    path.write_text(json.dumps(old))
    (got,) = evaluate.load_results(tmp_path)
    assert got["summary"] == {**res["summary"], "extra": "kept"}
    assert evaluate.evaluate(fake_answer, QS, path, meta, cfg)["summary"] == got["summary"]  # reused the same way
    for x in old["records"]:
        del x["memory_id"]
    path.write_text(json.dumps(old))
    with pytest.warns(evaluate.QuestionLevelWarning):
        (got,) = evaluate.load_results(tmp_path)
        tables = evaluate.overall_table([got]), evaluate.records_table([got])
    assert got["summary"]["ci_unit"] == "question" and tables[0].iloc[0]["ci_unit"] == "question"
    assert got["summary"]["ci_low"] <= got["summary"]["accuracy"] <= got["summary"]["ci_high"]


def test_results_from_two_backbones_are_not_mixed(tmp_path):
    cfg = tiny_cfg()
    for setting, backbone in (("s", "one"), ("t", "other")):
        meta = {"method": "fake", "setting": setting, "split": "test", "seed": 42, "backbone": backbone}
        evaluate.evaluate(fake_answer, QS[:2], evaluate.result_path(tmp_path, "fake", setting, "test", 42), meta, cfg)
    with pytest.raises(evaluate.ResultsError, match="different backbones"):
        evaluate.load_results(tmp_path)


def test_a_results_file_in_another_split_s_place_is_refused(tmp_path):
    cfg = tiny_cfg()
    meta = {"method": "fake", "setting": "s", "split": "val", "seed": 42, "backbone": "b"}
    val = evaluate.result_path(tmp_path, "fake", "s", "val", 42)
    evaluate.evaluate(fake_answer, QS[:2], val, meta, cfg)
    assert len(evaluate.load_results(tmp_path)) == 1
    test = evaluate.result_path(tmp_path, "fake", "s", "test", 42)
    test.write_text(val.read_text())  # a validation result copied where the test result belongs
    with pytest.raises(evaluate.ResultsError, match=r"test-seed42.json: field 'split' is 'val'"):
        evaluate.load_results(tmp_path)


def test_a_result_from_another_code_version_is_reused_loudly_and_fresh_recomputes(tmp_path, monkeypatch, capsys):
    cfg = tiny_cfg()
    meta = {"method": "fake", "setting": "s", "split": "test", "seed": 42, "backbone": "b"}
    path = evaluate.result_path(tmp_path, "fake", "s", "test", 42)
    calls = []
    answer = lambda batch: calls.append(len(batch)) or fake_answer(batch)  # noqa: E731
    res = evaluate.evaluate(answer, QS[:3], path, meta, cfg)
    assert set(res["code_version"]) == {"commit", "dirty"}  # the real one, recorded in every result
    now = {"commit": "c" * 40, "dirty": False}
    monkeypatch.setattr(evaluate, "code_version", lambda: now)
    other = {"commit": "0123abcd" * 5, "dirty": True}
    saved = json.loads(path.read_text())
    path.write_text(json.dumps({**saved, "code_version": other}))
    calls.clear()
    with pytest.warns(evaluate.CodeVersionWarning) as caught:
        again = evaluate.evaluate(answer, QS[:3], path, meta, cfg)
    assert calls == [] and again["code_version"] == other  # params equal: reused, not recomputed
    (w,) = caught
    msg = str(w.message)
    assert str(path) in msg and other["commit"] in msg and now["commit"] in msg and "ELASTICMEM_FRESH=1" in msg
    assert "--fresh" in msg and msg in capsys.readouterr().err  # on stderr too
    # an older file, with no code version at all, also warns
    path.write_text(json.dumps({k: v for k, v in saved.items() if k != "code_version"}))
    with pytest.warns(evaluate.CodeVersionWarning, match="unrecorded code version"):
        evaluate.evaluate(answer, QS[:3], path, meta, cfg)
    assert calls == []
    # the one documented way to recompute: ELASTICMEM_FRESH=1 recomputes and overwrites
    monkeypatch.setenv("ELASTICMEM_FRESH", "1")
    recomputed = evaluate.evaluate(answer, QS[:3], path, meta, cfg)
    assert calls == [3] and recomputed["code_version"] == now == json.loads(path.read_text())["code_version"]
    # the same code version again: reused silently
    monkeypatch.delenv("ELASTICMEM_FRESH")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert evaluate.evaluate(answer, QS[:3], path, meta, cfg) == recomputed
    assert calls == [3]
