"""The claims ledger: rows paired within seeds and pooled, verdicts by the written rule, overlays named, README's
block rewritten between its markers only."""
from __future__ import annotations

import json

import pytest

from elasticmem_core.core.evaluate import ResultsError, result_path
from elasticmem_core.core.experiment import write_json
from elasticmem_core.harness import claims, report


def _result(run, method, seed, correct, tok=100, setting="mini-personamem", commit="abc"):
    """A results file as evaluate writes one: 8 memories of 3 questions; `correct` is a function of question i."""
    records = [{"qid": f"q{i}", "memory_id": f"m{i // 3}", "correct": bool(correct(i)), "tok": tok}
               for i in range(24)]
    write_json(result_path(run, method, setting, "test", seed),
               {"method": method, "setting": setting, "split": "test", "seed": seed, "backbone": "tiny",
                "code_version": {"commit": commit, "dirty": False}, "records": records})


def _by_id(ledger):
    return {r["id"]: r for r in ledger["claims"]}


def test_rows_pair_within_seeds_pool_them_and_follow_the_rule(tmp_path):
    run = tmp_path / "run"
    write_json(run / "run.json", {"code_version": {"commit": "abc", "dirty": False}})
    for s in (42, 43, 44):
        _result(run, "elasticmem", s, lambda i: True, tok=80)
        _result(run, "text_rag_semantic+reader", s, lambda i: i % 2 == 0, tok=150)   # 0.5: C1 holds
        _result(run, "elasticmem_reference", s, lambda i: i % 2 == 0)                # C4 via 05's pair: reversed
        _result(run, "budget_uniform", s, lambda i: True, commit="old")
    ledger = claims.build(run, tmp_path / "reference")
    rows = _by_id(ledger)
    assert [r["id"] for r in ledger["claims"]] == [f"C{i}" for i in range(1, 9)]
    c1 = rows["C1"]
    assert c1["verdict"] == "holds" and c1["seeds"] == [42, 43, 44] and c1["n"] == 24
    assert c1["difference"] == pytest.approx(0.5) and c1["per_seed"] == pytest.approx([0.5] * 3)
    assert c1["tokens"] == {"a": 80, "b": 150} and c1["fewer_tokens"] is True and c1["source"] == "main"
    assert any("n = 24" in n for n in c1["notes"])                          # fewer than 240: said
    c4 = rows["C4"]
    assert (c4["a"], c4["b"], c4["verdict"]) == ("elasticmem_reference", "budget_uniform", "reversed")
    assert any("other code than the run's (old vs abc)" in n for n in c4["notes"])
    for cid in ("C2", "C3", "C5", "C6", "C7", "C8"):                          # nothing ran: not shown, and why
        assert rows[cid]["verdict"] == "not shown" and rows[cid]["ci"] is None and rows[cid]["notes"], cid
    assert json.loads((run / "metrics" / "claims.json").read_text()) == json.loads(json.dumps(ledger))


def test_an_overlay_claim_is_read_from_its_newest_reference_folder_against_its_binding_comparator(tmp_path):
    run, ref = tmp_path / "run", tmp_path / "reference"
    _result(run, "elasticmem", 42, lambda i: True)
    for folder in ("textmem-2026-01-01-aaa", "textmem-2026-02-01-bbb"):
        _result(ref / folder, "elasticmem", 42, lambda i: i < 20)
        _result(ref / folder, "mem0+reader", 42, lambda i: i < 4)
        _result(ref / folder, "agemem", 42, lambda i: i < 16)                   # the closer one binds
    c3 = _by_id(claims.build(run, ref))["C3"]
    assert c3["source"].endswith("textmem-2026-02-01-bbb") and c3["b"] == "agemem"
    assert c3["difference"] == pytest.approx(4 / 24) and c3["others"][0]["b"] == "mem0+reader"
    assert any("not run in the main job" in n for n in c3["notes"])
    # two folders of one day: the run that started later is newer, whatever its commit hash
    for folder, started, won in (("textmem-2026-03-01-fff", "2026-03-01T08:00:00+0000", lambda i: i < 20),
                                 ("textmem-2026-03-01-000", "2026-03-01T21:00:00+0000", lambda i: i < 10)):
        for method in ("elasticmem", "mem0+reader", "agemem"):
            _result(ref / folder, method, 42, won if method == "elasticmem" else (lambda i: i < 4))
        write_json(ref / folder / "run.json", {"started": started})
    c3 = _by_id(claims.build(run, ref))["C3"]
    assert c3["source"].endswith("textmem-2026-03-01-000") and c3["difference"] == pytest.approx(6 / 24)


def test_results_on_other_questions_are_refused_by_file(tmp_path):
    run = tmp_path / "run"
    _result(run, "elasticmem", 42, lambda i: True)
    _result(run, "text_rag_semantic+reader", 42, lambda i: True)
    path = result_path(run, "text_rag_semantic+reader", "mini-personamem", "test", 42)
    body = json.loads(path.read_text())
    body["records"][0]["qid"] = "elsewhere"
    path.write_text(json.dumps(body))
    with pytest.raises(ResultsError, match="answered other questions in seed 42.*text_rag_semantic"):
        claims.build(run, tmp_path / "reference")


def test_readme_block_is_rewritten_between_its_markers_only(tmp_path, monkeypatch):
    run = tmp_path / "run"
    _result(run, "elasticmem", 42, lambda i: True)
    _result(run, "text_rag_semantic+reader", 42, lambda i: i % 3 == 0)
    ledger = claims.build(run, tmp_path / "reference")
    readme = tmp_path / "README.md"
    readme.write_text(f"# Title\n\n{claims.MARK_START}\nold table\n{claims.MARK_END}\n\nrest\n")
    claims.update_readme(ledger, readme)
    text = readme.read_text()
    assert text.startswith("# Title\n\n") and text.endswith("\n\nrest\n") and "old table" not in text
    assert "| **C1** " in text and "**holds**" in text and "+0.667" in text
    readme.write_text("# no markers\n")
    with pytest.raises(ValueError, match="no generated claims block"):
        claims.update_readme(ledger, readme)


def test_results_doc_table_is_drawn_from_the_run_folder_between_its_markers(tmp_path):
    from elasticmem_core.core.evaluate import summarize

    run = tmp_path / "run"
    for seed, k in ((42, 2), (43, 3)):
        _result(run, "elasticmem", seed, lambda i, k=k: i % k == 0, tok=150)
        _result(run, "text_rag_semantic+reader", seed, lambda i: True, tok=170)
    for f in (run / "results").rglob("*.json"):  # evaluate writes each file's summary beside its records
        r = json.loads(f.read_text())
        full = [{**x, "tokens": {"task_text": 0, "memory": 0, "output": 0}, "seconds": 0.1, "peak_mb": 1.0}
                for x in r["records"]]
        write_json(f, {**r, "summary": summarize(full, 100, 0)})
    write_json(run / "train" / "quality_seed42.json", [{"method": "text memory", "split": "val", "accuracy": 0.7}])
    doc = tmp_path / "results.md"
    doc.write_text(f"# Results\n\n{report.MARK_START}\nold\n{report.MARK_END}\n\nprose\n")
    report.update_results_doc(run, doc)
    text = doc.read_text()
    assert text.startswith("# Results\n\n") and text.endswith("\n\nprose\n") and "old" not in text
    # rows in the main job's order; per seed 12/24 and 8/24 correct, their mean, the mean #Tok
    assert text.index("text RAG, stage-0 reader | 1.000 | 1.000 | 1.000 | 170") < \
        text.index("**ElasticMem** (latent memory, learned budget) | 0.500 | 0.333 | 0.417 | 150")
    assert "| stage-0 reader, memory as text | 0.700 |" in text
    doc.write_text("# no markers\n")
    with pytest.raises(ValueError, match="no generated results block"):
        report.update_results_doc(run, doc)


@pytest.mark.parametrize("p_holm,verdict", [(0.09, "not shown"), (0.01, "holds")])
def test_c5_takes_the_best_learned_point_against_the_hull_and_judges_it_with_holm(tmp_path, p_holm, verdict):
    run, ref = tmp_path / "run", tmp_path / "reference"
    _result(run, "elasticmem", 42, lambda i: True)

    def point(price, diff, p):
        return {"token_price": price, "memory_tokens": 40.0,
                "vs_envelope": {"against": "top-1 whole", "difference": diff + 0.1, "ci": [diff, diff + 0.2]},
                "vs_hull": {"against": "mix", "against_memory_tokens": 40.0, "difference": diff, "n": 240,
                            "ci": [diff - 0.01, diff + 0.1], "p_holm": p, "seeds": [42],
                            "per_seed": [{"seed": 42, "difference": diff}]}}

    write_json(ref / "frontier-2026-01-01-aaa" / "metrics" / "budget_pareto.json",
               {"n": 240, "learned": [point(0.0, -0.05, 1.0), point(0.5, 0.06, p_holm), point(0.2, 0.0, 1.0)]})
    c5 = _by_id(claims.build(run, ref))["C5"]
    assert c5["a"] == "learned policy (price 0.5)" and c5["difference"] == pytest.approx(0.06)  # the hull, not the staircase
    assert c5["verdict"] == verdict and not any("step envelope" in n for n in c5["notes"])
    assert any("best of 3 learned points" in n for n in c5["notes"]) == (verdict == "not shown")


def test_c5_notes_carry_the_controls_of_its_learned_point(tmp_path):
    run, ref = tmp_path / "run", tmp_path / "reference"
    _result(run, "elasticmem", 42, lambda i: True)
    point = {"token_price": 0.2, "memory_tokens": 60.0, "step0": {"accuracy": 0.7, "memory_tokens": 95.0},
             "per_rank": [{"rank": 1, "budget": 40, "evidence_budget": 40.0, "other_budget": 20.0},
                          {"rank": 2, "budget": 10, "evidence_budget": 12.0, "other_budget": 10.0},
                          {"rank": 3, "budget": 5, "evidence_budget": None, "other_budget": 5.0}],
             "distinct_budget_vectors": [3, 5], "training": [{"seed": 42, "reward_mean_moved": {"moved": "rose"}},
                                                            {"seed": 43, "reward_mean_moved": {"moved": "flat"}}],
             "vs_hull": {"against": "mix", "against_memory_tokens": 60.0, "difference": 0.01, "n": 240,
                         "ci": [-0.05, 0.07], "p_holm": 0.8, "seeds": [42, 43], "per_seed": []},
             "vs_step0": {"reward": {"difference": 0.25, "ci": [0.2, 0.31]}}}
    write_json(ref / "frontier-2026-01-01-aaa" / "metrics" / "budget_pareto.json",
               {"n": 240, "learned": [point], "oracle": [{"token_price": 0.0, "accuracy": 0.79, "memory_tokens": 80.0}],
                "probe": {"probes": [{"features": "score", "auc": 0.74},
                                     {"features": "all policy inputs", "auc": 0.99}]},
                "heuristics": [
                   {"name": "evidence whole (oracle reference)", "accuracy": 0.81, "memory_tokens": 34.0}]})
    notes = " | ".join(_by_id(claims.build(run, ref))["C5"]["notes"])
    assert "untrained (step 0): 0.700 at 95.0 tokens" in notes
    assert "at most 2.00x (rank 1; the bar is 1.5x)" in notes            # 40 / 20; rank 3 has no evidence chunk
    assert "[3, 5]" in notes and "rose, flat" in notes and "0.810 at 34.0 tokens" in notes
    assert "minus step 0's, paired on test: +0.250 [+0.200, +0.310]" in notes
    assert "oracle-feature policy (sees the evidence flag), price 0: 0.790 at 80.0 tokens" in notes
    assert "relevance probe, test AUC: all policy inputs 0.99, score 0.74" in notes


def test_readme_cost_block_is_drawn_from_the_wallclock_and_the_newest_test_timings(tmp_path):
    run, ref = tmp_path / "mini-x", tmp_path / "reference"
    write_json(run / "run.json", {"code_version": {"commit": "abcdef123", "dirty": False}, "compute_dtype": "bfloat16"})
    readme = tmp_path / "README.md"
    readme.write_text(f"top\n{report.COST_START}\nold 99 min\n{report.COST_END}\nend\n")
    report.update_readme_cost(run, readme, ref)
    text = readme.read_text()
    assert "old" not in text and "not measured" in text and text.startswith("top\n") and text.endswith("end\n")
    (run / "WALLCLOCK.txt").write_text("3439 s wall (fresh clone: git clone + make reproduce)\n")
    for date, n in (("2026-12-05T10:00:00+00:00", 380), ("2026-12-01T10:00:00+00:00", 300)):  # the newer one counts
        write_json(ref / f"tests-{date[:10]}.json", {"date": date, "commit": "fedcba9", "pytest": f"{n} passed",
                                                     "pytest_seconds": 240, "nbval": "99 passed", "nbval_seconds": 300})
    report.update_readme_cost(run, readme, ref)
    text = readme.read_text()
    assert "`make reproduce`: 57.3 min from a fresh clone of abcdef1, base in bfloat16, install" in text
    assert "`make test`: 380 passed in 4.0 min, then nbval 99 passed in 5.0 min" in text and "300 passed" not in text
    write_json(ref / "tests-2026-12-06.json", {"date": "2026-12-06T10:00:00+00:00", "commit": "0123456",
                                               "pytest": "390 passed", "pytest_seconds": 300, "nbval": "99 passed",
                                               "nbval_seconds": 720, "machine": {"cpu": "AMD EPYC", "cpu_bf16": False}})
    report.update_readme_cost(run, readme, ref)
    assert "390 passed in 5.0 min, then nbval 99 passed in 12.0 min, install already done (2026-12-06, 0123456, AMD " \
           "EPYC without native bf16;" in readme.read_text()


def test_c6_reads_the_first_retrieval_variant_per_seed_with_its_quality_bar_in_the_notes(tmp_path):
    run, ref = tmp_path / "run", tmp_path / "reference"
    _result(run, "elasticmem", 42, lambda i: True)

    def row(b, diff):
        return {"difference": diff, "ci": [diff - 0.05, diff + 0.04], "p": 0.2, "p_holm": 0.4,
                "seeds": [{"seed": 42, "difference": diff - 0.01}, {"seed": 43, "difference": diff + 0.01}]}
    bar = {"variant": "one_lora", "mode": "control_token", "reading_holds": True, "worst_reading_drop": 0.0125,
           "recall_at_4": 0.9, "recall_ratio": 1.06, "accuracy_minus_semantic": -0.02, "ci": [-0.07, 0.02]}
    write_json(ref / "retrieval-study-2026-01-01-aaa" / "metrics" / "retrieval.json",
               {"n": 248, "variants": ["one_lora", "head"], "quality_bar": [bar],
                "accuracy": [{"variant": "one_lora", "mode": "control_token", "memory_tokens": 90.0},
                             {"variant": "one_lora", "mode": "semantic", "memory_tokens": 95.0},
                             {"variant": "head", "mode": "semantic", "memory_tokens": 10.0}],
                "paired_control_token_minus": {"semantic": row("semantic", -0.02),
                                               "frozen_state": row("frozen_state", 0.1),
                                               "query_state": row("query_state", 0.05)}})
    c6 = _by_id(claims.build(run, ref))["C6"]
    assert (c6["a"], c6["b"]) == ("control token (one_lora)", "semantic")          # the worst comparison
    assert c6["seeds"] == [42, 43] and c6["per_seed"] == pytest.approx([-0.03, -0.01])
    assert c6["tokens"] == {"a": 90.0, "b": 95.0} and c6["verdict"] != "holds"
    notes = " | ".join(c6["notes"])
    assert "reading held (largest drop +0.013" in notes and "1.06x the embedder's" in notes


def test_c7_is_judged_at_the_alignments_b_not_at_the_best_b_on_test(tmp_path):
    run, ref = tmp_path / "run", tmp_path / "reference"
    _result(run, "elasticmem", 42, lambda i: True)

    def pair(a, b, diff, p_holm):
        return {"a": a, "b": "text, last b tokens", "tokens_per_chunk": b, "n": 248, "difference": diff,
                "ci": [diff - 0.05, diff + 0.05], "p": p_holm / 2, "p_holm": p_holm}
    write_json(ref / "compression-2026-01-01-aaa" / "metrics" / "compression.json",
               {"n": 248, "meta": {"align": {"curve_b": 8}, "align_seeds": [42, 43]},
                "paired": [pair("cache: layer 15, aligned", 4, 0.2, 0.01),   # the best b on test, not the bar's
                           pair("cache: layer 15, aligned", 8, 0.01, 0.9),
                           pair("cache: layer 15, aligned with LoRA", 8, 0.03, 0.8),
                           pair("cache: input embeddings", 8, 0.0, 1.0)],
                "curves": [{"cache": "mid+align", "seed": 42, "points": [
                    {"step": 0, "b": 8, "val_reconstruction": 9.5, "val_self_distill": 1.2, "val_accuracy": 0.25},
                    {"step": 80, "b": 8, "val_reconstruction": 4.25, "val_self_distill": 0.5, "val_accuracy": 0.3}]}]})
    c7 = _by_id(claims.build(run, ref))["C7"]
    assert (c7["a"], c7["tokens"]["a"], c7["difference"]) == ("cache: layer 15, aligned with LoRA", 8, 0.03)
    assert c7["seeds"] == [42, 43]                                         # the alignment seeds the table pooled
    notes = " | ".join(c7["notes"])
    assert "judged at b = 8" in notes and "Holm-adjusted p over the table's rows 0.800" in notes
    assert "cache: layer 15, aligned at b = 8: +0.010" in notes and c7["verdict"] != "holds"
    assert ("mid+align seed 42, learning curve on validation at b = 8: accuracy 0.250 -> 0.300, reconstruction "
            "9.500 -> 4.250, self_distill 1.200 -> 0.500 (steps 0 -> 80)") in notes
    # no aligned row at the alignment's b: no verdict, rather than the best b on test
    write_json(ref / "compression-2026-01-02-bbb" / "metrics" / "compression.json",
               {"n": 248, "meta": {"align": {"curve_b": 16}},
                "paired": [pair("cache: layer 15, aligned", 4, 0.2, 0.01)]})
    assert _by_id(claims.build(run, ref))["C7"]["verdict"] == "not shown"


def test_c8_pools_both_alfworld_splits_from_the_alfworld_overlays_reference_folder(tmp_path):
    """ALFWorld is an overlay: C8 comes from the newest alfworld-* reference folder, seen and unseen games pooled
    (one success record per game), ElasticMem against the closer of text_memory / no_memory."""
    run, ref = tmp_path / "run", tmp_path / "reference" / "alfworld-2026-12-06-abc"
    _result(run, "elasticmem", 42, lambda i: True)
    wins = {"elasticmem": lambda i: i < 12, "text_memory": lambda i: i < 6, "no_memory": lambda i: i < 3}
    for method, won in wins.items():
        for split in ("valid_seen", "valid_unseen"):
            records = [{"qid": f"g{i}", "memory_id": "skill-bank", "correct": won(i), "success": won(i),
                        "tok": 500 if method == "text_memory" else 300} for i in range(20)]
            write_json(result_path(ref, method, "alfworld-offline", split, 42),
                       {"method": method, "setting": "alfworld-offline", "split": split, "seed": 42,
                        "backbone": "tiny", "records": records})
    c8 = _by_id(claims.build(run, tmp_path / "reference"))["C8"]
    assert c8["source"].endswith("alfworld-2026-12-06-abc") and c8["n"] == 40 and c8["b"] == "text_memory"
    assert c8["difference"] == pytest.approx(12 / 40) and c8["tokens"] == {"a": 300, "b": 500}
    assert c8["fewer_tokens"] is True and c8["others"][0]["b"] == "no_memory"
    # the MemGen-style agent, played, is a comparator too: its fewer tokens decide "fewest tokens" though the
    # cards as text (closer in success) bind; no memory's tokens are a floor, not a system's
    for split in ("valid_seen", "valid_unseen"):
        records = [{"qid": f"g{i}", "memory_id": "skill-bank", "correct": i < 4, "success": i < 4, "tok": 280}
                   for i in range(20)]
        write_json(result_path(ref, "memgen", "alfworld-offline", split, 42),
                   {"method": "memgen", "setting": "alfworld-offline", "split": split, "seed": 42, "backbone": "tiny",
                    "records": records})
    c8 = _by_id(claims.build(run, tmp_path / "reference"))["C8"]
    assert c8["b"] == "text_memory" and c8["difference"] == pytest.approx(12 / 40)
    assert {o["b"] for o in c8["others"]} == {"memgen", "no_memory"} and "missing" not in c8
    assert c8["fewer_tokens"] is False   # 300 tokens: fewer than the text agent's 500, not than memgen's 280


def test_c8_without_the_text_agent_is_judged_against_no_memory_and_cannot_hold(tmp_path):
    run, ref = tmp_path / "run", tmp_path / "reference" / "alfworld-2026-12-07-abc"
    _result(run, "elasticmem", 42, lambda i: True)
    for method, won in {"elasticmem": lambda i: i < 18, "no_memory": lambda i: i < 1}.items():
        for split in ("valid_seen", "valid_unseen"):
            records = [{"qid": f"g{i}", "memory_id": "skill-bank", "correct": won(i), "success": won(i),
                        "tok": 300} for i in range(20)]
            write_json(result_path(ref, method, "alfworld-offline", split, 42),
                       {"method": method, "setting": "alfworld-offline", "split": split, "seed": 42,
                        "backbone": "tiny", "records": records})
    c8 = _by_id(claims.build(run, tmp_path / "reference"))["C8"]
    assert c8["b"] == "no_memory" and 0 < c8["ci"][0] < c8["difference"] < c8["ci"][1]   # games are the units
    assert c8["verdict"] == "not shown"
    assert any("not played: text_memory" in n for n in c8["notes"])
    assert any("n = 40 evaluation games" in n for n in c8["notes"])      # games, not questions


def test_c8_says_when_the_compared_agents_ran_in_other_dtypes_or_commits(tmp_path):
    """The cards-as-text agent of the ALFWorld reference ran in float32 on another CPU and commit than the other two
    (bf16): the row says so, whichever comparator binds; results of one dtype and commit add no such note."""
    run, ref = tmp_path / "run", tmp_path / "reference" / "alfworld-2026-12-06-abc"
    _result(run, "elasticmem", 42, lambda i: True)
    made = {"elasticmem": ("bfloat16", "c1"), "no_memory": ("bfloat16", "c1"), "text_memory": ("float32", "c2")}

    def write(methods):   # no memory binds (the smallest difference): the text agent's dtype and commit are merged in
        for method, (dtype, commit) in methods.items():
            wins = 2 if method == "text_memory" else 5
            for split in ("valid_seen", "valid_unseen"):
                records = [{"qid": f"g{i}", "memory_id": "skill-bank", "correct": i < wins, "success": i < wins,
                            "tok": 300} for i in range(20)]
                write_json(result_path(ref, method, "alfworld-offline", split, 42),
                           {"method": method, "setting": "alfworld-offline", "split": split, "seed": 42,
                            "backbone": "tiny", "code_version": {"commit": commit, "dirty": False},
                            "fingerprint": {"params": {"runtime": {"dtype": dtype}}}, "records": records})

    write({m: made[m] for m in ("elasticmem", "no_memory")})
    notes = _by_id(claims.build(run, tmp_path / "reference"))["C8"]["notes"]
    assert not any("dtypes" in n or "different commits" in n for n in notes)
    write(made)
    c8 = _by_id(claims.build(run, tmp_path / "reference"))["C8"]
    notes = c8["notes"]
    assert c8["b"] == "no_memory"
    assert any("different dtypes" in n and "text_memory float32" in n and "no_memory bfloat16" in n for n in notes)
    assert any("different commits (c1, c2)" in n for n in notes)


def test_c8_lists_every_commit_that_played_its_games_split_by_split(tmp_path):
    """A method's two splits are merged into one row: a split played by another commit, a split resumed from a
    stopped run of another commit, and games taken over from another row (`same_play_as`) all name their commits."""
    run, ref = tmp_path / "run", tmp_path / "reference" / "alfworld-2026-12-08-abc"
    _result(run, "elasticmem", 42, lambda i: True)

    def write(method, split, commit, **extra):
        records = [{"qid": f"g{i}", "memory_id": "skill-bank", "correct": i < 3, "success": i < 3, "tok": 300}
                   for i in range(20)]
        write_json(result_path(ref, method, "alfworld-offline", split, 42),
                   {"method": method, "setting": "alfworld-offline", "split": split, "seed": 42, "backbone": "tiny",
                    "code_version": {"commit": commit, "dirty": False}, "records": records, **extra})

    for split in ("valid_seen", "valid_unseen"):
        write("no_memory", split, "c1")
    write("elasticmem", "valid_seen", "c0")                   # the first split: another commit than the last
    write("elasticmem", "valid_unseen", "c1", resumed={"games": 5, "code_version": {"commit": "c2"}})
    notes = _by_id(claims.build(run, tmp_path / "reference"))["C8"]["notes"]
    assert any("different commits (c0, c1, c2)" in n for n in notes)

    write("elasticmem", "valid_seen", "c1")
    write("elasticmem", "valid_unseen", "c1", same_play_as={"method": "elasticmem_imitation",
                                                            "code_version": {"commit": "c3"}})
    notes = _by_id(claims.build(run, tmp_path / "reference"))["C8"]["notes"]
    assert any("different commits (c1, c3)" in n for n in notes)
    write("elasticmem", "valid_unseen", "c1")
    notes = _by_id(claims.build(run, tmp_path / "reference"))["C8"]["notes"]
    assert not any("different commits" in n for n in notes)
