"""04_walkthrough's library: one question traced through the method on tiny-random."""
from __future__ import annotations

import pytest
from tinydata import QUESTIONS, tiny_bank, tiny_model

from elasticmem_core.studies import walkthrough


@pytest.mark.parametrize("memory", ["latent", "text"])
def test_the_trace_accounts_for_every_input_column(tmp_path, memory):
    model = tiny_model(tiny_bank(tmp_path / "bank"), "retrieval.mode=control_token", memory=memory)
    t = walkthrough.trace(model, QUESTIONS[0])
    shown = [k for k in t.layout if k != "padding"]
    assert shown.count("answer") == t.tokens["output"] > 0
    assert shown.count("soft tokens" if memory == "latent" else "memory text") + shown.count("separator") == \
        t.tokens["memory"]
    assert shown.count("separator") == sum(1 for r in t.retrieved if memory == "text" or r["budget"] > 0)
    assert shown.count("control token") == 1 and shown[0] == "question"
    assert sum(shown.count(k) for k in ("question", "control token", "instruction + options")) == t.tokens["task_text"]
    assert [m["evidence"] for m in t.memory].count(True) == 1  # m0#0 holds the answer
    # the control token of the run's own retrieval (control_token mode) is the one the trace reports
    assert t.control["token"] == model.tokenizer.decode([t.control["id"]]) and 0 < t.control["probability"] <= 1
    assert t.control["rows"] == [r["row"] for r in t.retrieved] + [-1] * (len(t.control["rows"]) - len(t.retrieved))
