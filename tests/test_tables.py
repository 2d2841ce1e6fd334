"""07's tables, built on the committed reference runs' results files: each cell agrees with the results it came
from, and each comparison pairs the rows the table says it pairs."""
from __future__ import annotations

import pytest

from elasticmem_core.core import evaluate
from elasticmem_core.core.experiment import resolve
from elasticmem_core.harness import tables


def _test(folder):
    path = resolve("outputs/reference") / folder
    if not path.exists():
        pytest.skip(f"{path} is not in this checkout")
    return [r for r in evaluate.load_results(path) if r["split"] == "test"]


def test_main_table_cells_are_the_mean_over_seeds_and_the_paper_rows_are_labelled():
    test = _test("mini-2026-12-05-c902974")
    table = tables.main_table(test, 200, 0)
    em = [r["summary"] for r in test if r["method"] == "elasticmem"]
    assert len(em) == 3
    acc, tok = sum(s["accuracy"] for s in em) / 3, sum(s["tok"] for s in em) / 3
    assert table.loc["elasticmem", "mini-personamem"] == f"{acc:.3f} / {tok:.0f}"
    paper = [i for i in table.index if i.startswith("[paper, ")]
    assert paper and all(table.loc[i, "weighted"] for i in paper)       # the paper's weighted numbers, labelled
    assert {tables.family(r) for r in test} >= {"ElasticMem", "baseline", "baseline, warmed-up reader"}


def test_budget_slots_give_one_row_per_retrieved_chunk_with_memory():
    test = _test("mini-2026-12-05-c902974")
    slots = tables.budget_slots(test)
    answered = sum(1 for r in test if r["params"]["eval"]["method"] == "elasticmem"
                   for x in r["records"] if x["tokens"]["memory"])
    assert sorted(slots["rank"].unique()) == [1, 2, 3, 4]
    assert (slots["rank"] == 1).sum() == answered
    assert slots.budget.between(0, test[0]["params"]["budget"]["b_max"]).all()


def test_text_memory_rows_pair_with_text_rag_of_the_same_reader():
    test = _test("textmem-2026-12-02-0820601")
    table = tables.text_memory_table(test, 200, 0).set_index("method")
    assert set(table.index) == {"mem0", "mem0+reader", "agemem"}
    acc = {r["method"]: r["summary"]["accuracy"] for r in test}
    cell = table.loc["mem0+reader", "minus text RAG (text_rag_semantic+reader) [95% CI], McNemar p"]
    assert cell.startswith(f"{acc['mem0+reader'] - acc['text_rag_semantic+reader']:+.3f} [")
    assert table.loc["mem0", "minus text RAG (text_rag_semantic) [95% CI], McNemar p"].startswith(
        f"{acc['mem0'] - acc['text_rag_semantic']:+.3f} [")


def test_memgen_rows_pair_with_elasticmem_and_count_the_weaver():
    test = _test("memgen-2026-12-02-3c0d7f4")
    memgen = next(r for r in test if r["method"] == "memgen")
    # ElasticMem on the same questions, answering every one right: the difference is accuracy - 1
    em = dict(memgen, method="elasticmem", params={**memgen["params"], "eval": {**memgen["params"]["eval"],
                                                                               "method": "elasticmem"}},
              records=[dict(x, correct=True) for x in memgen["records"]])
    row = tables.memgen_table(test + [em], 200, 0).iloc[0]
    assert row["method"] == "memgen" and row["#Tok (+ weaver)"] > row["#Tok (reasoner)"]
    assert row["ElasticMem"] == "1.000"
    assert row["MemGen-style - ElasticMem [95% CI]"].startswith(f"{memgen['summary']['accuracy'] - 1:+.3f} [")
