"""stats.py on known inputs: the memory (cluster) bootstrap and its seeds, paired differences, Holm, the verdict."""
from __future__ import annotations

import math

import numpy as np
import pytest

from elasticmem_core.core import stats


def plain_bootstrap(x, n_boot: int, seed: int, level: float = 0.95) -> list[float]:
    """The textbook percentile bootstrap over independent values (what every table used before stats.py)."""
    x = np.asarray(x, dtype=float)
    means = x[np.random.default_rng(seed).integers(0, x.size, size=(n_boot, x.size))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    return [float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))]


CORRECT = [1, 0, 1, 1, 0, 1, 1, 1, 0, 1, 0, 1, 1, 0, 1, 1, 1, 0, 1, 1]


def test_one_question_per_memory_and_one_seed_is_the_plain_question_bootstrap():
    expected = plain_bootstrap(CORRECT, 1000, 3)
    for clusters in (None, [f"m{i}" for i in range(20)], [f"m{19 - i}" for i in range(20)]):
        got = stats.bootstrap_mean(CORRECT, clusters, n_boot=1000, seed=3)
        assert got["ci"] == pytest.approx(expected, abs=1e-12)
        assert (got["mean"], got["n"], got["clusters"], got["seeds"]) == (pytest.approx(0.7), 20, 20, 1)


def test_perfectly_correlated_questions_of_a_memory_widen_the_interval():
    # 10 memories of 8 questions; within a memory every question is right or every one wrong
    per_memory = [1, 0, 1, 1, 0, 1, 0, 1, 1, 0]
    x = [c for c in per_memory for _ in range(8)]
    clusters = [m for m in range(10) for _ in range(8)]
    by_memory = stats.bootstrap_mean(x, clusters, n_boot=2000, seed=0)
    as_questions = stats.bootstrap_mean(x, None, n_boot=2000, seed=0)
    width = lambda r: r["ci"][1] - r["ci"][0]  # noqa: E731
    assert by_memory["mean"] == as_questions["mean"] == 0.6 and by_memory["clusters"] == 10
    assert width(by_memory) > 2 * width(as_questions)  # 10 independent units, not 80: about sqrt(8) wider
    # equal-size memories: resampling memories is exactly the plain bootstrap of the memory means
    assert by_memory["ci"] == pytest.approx(plain_bootstrap(per_memory, 2000, 0), abs=1e-12)


def test_seeds_are_a_second_level_and_identical_seeds_change_nothing():
    clusters = [i // 2 for i in range(20)]
    one = stats.bootstrap_mean(CORRECT, clusters, n_boot=500, seed=1)
    same = stats.bootstrap_mean([CORRECT, CORRECT, CORRECT], clusters, n_boot=500, seed=1)
    assert same["ci"] == pytest.approx(one["ci"]) and same["seeds"] == 3 and same["per_seed"] == [0.7] * 3
    other = [1 - c for c in CORRECT]
    two = stats.bootstrap_mean([CORRECT, other], clusters, n_boot=500, seed=1)
    assert two["mean"] == 0.5 and two["per_seed"] == pytest.approx([0.7, 0.3])
    assert two["ci"][0] < 0.5 < two["ci"][1]


def test_paired_difference_on_known_inputs():
    n = 12
    clusters = [i // 3 for i in range(n)]
    always = stats.paired_difference([1] * n, [0] * n, clusters, n_boot=400)
    assert always["difference"] == 1 and always["ci"] == [1.0, 1.0] and always["p"] == 1 / 400
    assert stats.verdict(always["ci"]) == "holds"
    tie = stats.paired_difference(CORRECT, CORRECT, n_boot=400)
    assert tie["difference"] == 0 and tie["ci"] == [0.0, 0.0] and tie["p"] == 1.0
    assert stats.verdict(tie["ci"]) == "not shown"
    worse = stats.paired_difference([0] * n, [1] * n, clusters, n_boot=400)
    assert worse["difference"] == -1 and stats.verdict(worse["ci"]) == "reversed"
    # the difference of a and b is the mean of a - b, bootstrapped as bootstrap_mean of the differences
    a, b = CORRECT, CORRECT[5:] + CORRECT[:5]
    d = stats.paired_difference(a, b, n_boot=300, seed=2)
    direct = stats.bootstrap_mean(np.subtract(a, b), n_boot=300, seed=2)
    assert d["difference"] == pytest.approx(direct["mean"]) and d["ci"] == direct["ci"]
    assert 0 < d["p"] <= 1
    # several seeds of a against one run of b: b is paired with every seed
    three = stats.paired_difference([a, a, b], b, n_boot=300, seed=2)
    assert three["per_seed"] == pytest.approx([d["difference"], d["difference"], 0.0]) and three["seeds"] == 3


def test_p_value_is_the_share_of_centred_replicates_beyond_the_observed_difference():
    x = [1, 1, 1, 0, 1, 1, 0, 1, 1, 1]
    d = stats.paired_difference(x, [0] * 10, n_boot=1000, seed=4)
    reps = np.array(x, float)[np.random.default_rng(4).integers(0, 10, size=(1000, 10))].mean(axis=1)
    assert d["p"] == pytest.approx(max(np.mean(np.abs(reps - 0.8) >= 0.8 - 1e-12), 1 / 1000))


def test_holm_by_hand():
    # sorted: 0.005 x 4 = 0.02, 0.01 x 3 = 0.03, 0.03 x 2 = 0.06, 0.04 x 1 = 0.04 -> 0.06 (monotone)
    assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert stats.holm([0.5, 0.6]) == [1.0, 1.0]  # capped at 1
    assert stats.holm([0.2]) == [0.2] and stats.holm([]) == []
    # a test that did not run is no member of the family
    got = stats.holm([0.01, None, 0.02, float("nan")])
    assert got[0] == pytest.approx(0.02) and got[2] == pytest.approx(0.02)
    assert math.isnan(got[1]) and math.isnan(got[3])
    rows = stats.with_holm([{"p": 0.01}, {"p": 0.04}, {"name": "untested"}])
    assert rows[0]["p_holm"] == pytest.approx(0.02) and rows[1]["p_holm"] == pytest.approx(0.04)  # 2 tested
    assert math.isnan(rows[2]["p_holm"])


def test_verdict_rule():
    assert stats.verdict([0.01, 0.2]) == "holds"
    assert stats.verdict([-0.3, -0.01]) == "reversed"
    assert stats.verdict([-0.1, 0.1]) == "not shown"
    assert stats.verdict([0.0, 0.2]) == "not shown"  # an interval touching 0 does not exclude it
    assert stats.verdict([float("nan"), 0.2]) == "not shown"
    assert stats.verdict([None, 0.2]) == "not shown" and stats.verdict(None) == "not shown"  # JSON null


def test_mismatched_shapes_are_errors():
    with pytest.raises(ValueError, match="same questions: 5 vs 4"):
        stats.paired_difference([1] * 5, [0] * 4)
    with pytest.raises(ValueError, match="3 seeds of a against 2 of b"):
        stats.paired_difference([[1] * 4] * 3, [[0] * 4] * 2)
    with pytest.raises(ValueError, match="4 cluster labels for 5 questions"):
        stats.bootstrap_mean([1] * 5, ["m"] * 4)
    with pytest.raises(ValueError, match="different lengths"):
        stats.bootstrap_mean([[1, 0, 1], [1, 0]])
    with pytest.raises(ValueError, match="per-question values"):
        stats.bootstrap_mean([])
    with pytest.raises(ValueError, match="per-question values"):
        stats.bootstrap_mean([[[1]]])


def test_the_figures_accuracy_table_uses_these_intervals_over_memories_and_seeds():
    import pandas as pd

    from elasticmem_core.harness import figures

    rows = [{"method": m, "seed": s, "qid": f"q{i}", "memory_id": f"m{i // 3}", "correct": float((i + s + k) % 2)}
            for k, m in enumerate(("a", "b")) for s in (1, 2) for i in range(9)]
    table = figures.accuracy_table(pd.DataFrame(rows), ["method"], n_boot=500, seed=3).set_index("method")
    a = [[r["correct"] for r in rows if r["method"] == "a" and r["seed"] == s] for s in (1, 2)]
    want = stats.bootstrap_mean(a, [f"m{i // 3}" for i in range(9)], 500, 3)
    assert table.loc["a", "correct"] == want["mean"] and [table.loc["a", "ci_low"], table.loc["a", "ci_high"]] == want["ci"]
    assert table.loc["a", "seeds"] == 2 and table.loc["a", "n"] == 9
    questions = figures.accuracy_table(pd.DataFrame(rows), ["method"], cluster=None, n_boot=500, seed=3)
    assert questions.loc[0, "ci_low"] != table.loc["a", "ci_low"]  # clusters change the interval


def test_running_mean_and_window_difference_by_hand():
    curve = stats.running_mean([0.0, 1.0, 0.0, 1.0], window=2)
    assert [c["step"] for c in curve] == [1, 2, 3] and [c["mean"] for c in curve] == [0.5, 0.5, 0.5]
    half = 1.96 * math.sqrt(0.5) / math.sqrt(2)                       # sd of (0, 1) = sqrt(0.5)
    assert curve[0]["ci"] == pytest.approx([0.5 - half, 0.5 + half])
    assert stats.running_mean([1.0, 2.0], window=3) == []
    rose = stats.window_difference([0.1, 0.2, 0.15, 0.8, 0.9, 0.85], window=3)
    assert rose["difference"] == pytest.approx(0.7) and rose["moved"] == "rose" and rose["ci"][0] > 0
    assert stats.window_difference([0.0, 1.0, 0.0, 1.0, 0.0, 1.0], window=3)["moved"] == "flat"
    assert stats.window_difference([0.9, 0.8, 0.85, 0.1, 0.2, 0.15], window=3)["moved"] == "fell"
    with pytest.raises(ValueError, match="needs >= 6"):
        stats.window_difference([0.0] * 5, window=3)
    with pytest.raises(ValueError, match="at least 2"):
        stats.running_mean([0.0, 1.0], window=1)
