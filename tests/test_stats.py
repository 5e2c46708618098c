"""Statistics: planted nulls and effects, selection bias, Holm, exact McNemar, barrier, split."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import polars as pl
import pytest

from workbench.errors import WorkbenchError
from workbench.stats import (
    barrier,
    barrier_t,
    bootstrap_ci,
    dev_mask,
    dev_test_split,
    holm,
    mcnemar_exact,
    noise_floor,
    paired_bootstrap,
    select_and_report,
    tie_rate,
)

N_NULL_RUNS = 400  # >= 200 as required; 400 makes the 93-97% window about +-2.2 binomial sd


def _paired_binary(rng: np.random.Generator, difficulty: np.ndarray, shift: float = 0.0):
    """Two systems answering the same items; item difficulty is shared (so results are paired)."""
    a = rng.random(difficulty.shape[0]) < np.clip(difficulty + shift, 0, 1)
    b = rng.random(difficulty.shape[0]) < difficulty
    return a, b


# ----------------------------------------------------------------------------- planted null


def test_planted_null_binary_coverage_near_nominal():
    rng = np.random.default_rng(12345)
    n = 400
    covered = 0
    for run in range(N_NULL_RUNS):
        difficulty = rng.beta(2, 1, size=n)
        a, b = _paired_binary(rng, difficulty)
        r = paired_bootstrap(a, b, n_resamples=2000, seed=run)
        covered += r.covers_zero
    rate = covered / N_NULL_RUNS
    assert 0.93 <= rate <= 0.97, rate


def test_planted_null_clustered_by_paradigm_coverage_near_nominal():
    """BLiMP-like: 20 paradigms with very different base rates; resampling within paradigms."""
    rng = np.random.default_rng(777)
    n_paradigms, per = 20, 30
    clusters = np.repeat([f"paradigm_{i}" for i in range(n_paradigms)], per)
    covered = 0
    for run in range(N_NULL_RUNS):
        base = np.repeat(rng.uniform(0.3, 0.98, size=n_paradigms), per)
        a, b = _paired_binary(rng, base)
        r = paired_bootstrap(a, b, clusters=clusters, n_resamples=2000, seed=run)
        assert r.n_clusters == n_paradigms
        covered += r.covers_zero
    rate = covered / N_NULL_RUNS
    assert 0.93 <= rate <= 0.97, rate


def test_planted_null_continuous_margin_coverage_near_nominal():
    rng = np.random.default_rng(99)
    n = 300
    covered = 0
    for run in range(N_NULL_RUNS):
        item = rng.normal(0.0, 2.0, size=n)  # shared item effect: pairing matters
        x = item + rng.standard_t(5, size=n)
        y = item + rng.standard_t(5, size=n)
        covered += paired_bootstrap(x, y, n_resamples=2000, seed=run).covers_zero
    rate = covered / N_NULL_RUNS
    assert 0.93 <= rate <= 0.97, rate


def test_identical_systems_give_zero_difference_and_p_one():
    a = np.random.default_rng(0).random(500) < 0.7
    r = paired_bootstrap(a, a.copy(), n_resamples=2000)
    assert r.estimate == 0.0 and r.low == 0.0 and r.high == 0.0 and r.covers_zero
    assert r.p_value == 1.0
    m = mcnemar_exact(a, a)
    assert (m.a_only, m.b_only, m.p_value) == (0, 0, 1.0)


# ----------------------------------------------------------------------------- planted effect


def test_planted_binary_effect_is_detected_and_covered():
    """A known accuracy shift: detected in nearly every run, and the CI covers it ~95% of the time."""
    rng = np.random.default_rng(2024)
    n, shift, runs = 3000, 0.06, 200
    detected = covered = mcnemar_hits = 0
    for run in range(runs):
        difficulty = rng.uniform(0.2, 0.8, size=n)
        a, b = _paired_binary(rng, difficulty, shift=shift)
        r = paired_bootstrap(a, b, n_resamples=2000, seed=run)
        detected += r.significant and r.estimate > 0
        covered += r.low <= shift <= r.high
        mcnemar_hits += mcnemar_exact(a, b).p_value < 0.05
    assert detected / runs >= 0.95
    assert mcnemar_hits / runs >= 0.95
    assert 0.91 <= covered / runs <= 0.99, covered / runs


def test_planted_continuous_effect_is_detected_and_covered_clustered():
    rng = np.random.default_rng(5)
    clusters = np.repeat(np.arange(12), 50)
    item = rng.normal(0.0, 3.0, size=clusters.shape[0]) + np.repeat(rng.normal(0, 2, 12), 50)
    shift = 0.4
    x = item + shift + rng.normal(0, 1, size=item.shape[0])
    y = item + rng.normal(0, 1, size=item.shape[0])
    r = paired_bootstrap(x, y, clusters=clusters, n_resamples=2000, seed=3)
    assert r.significant
    assert r.low <= shift <= r.high


def test_planted_effect_coverage_of_the_shift_over_many_runs():
    """The interval covers the planted shift (not just 'excludes 0') about 95% of the time."""
    rng = np.random.default_rng(31)
    shift, n, runs, covered = 0.5, 250, 200, 0
    for run in range(runs):
        d = shift + rng.normal(0, 2, size=n)
        covered += paired_bootstrap(d, np.zeros(n), n_resamples=2000, seed=run).low <= shift
        # (upper side checked together below)
    assert covered / runs >= 0.95
    covered = 0
    for run in range(runs):
        d = shift + rng.normal(0, 2, size=n)
        r = paired_bootstrap(d, np.zeros(n), n_resamples=2000, seed=run)
        covered += r.low <= shift <= r.high
    assert 0.91 <= covered / runs <= 0.99


# ----------------------------------------------------------------------------- selection bias


def test_selection_bias_best_of_many_t_on_test_noise_is_flagged():
    """Twenty 't values' that are all pure noise around the reference."""
    rng = np.random.default_rng(8)
    n, k, sims = 600, 20, 60
    naive_estimates, honest_estimates, honest_covers = [], [], 0
    naive_raw_hits = naive_holm_hits = 0
    for sim in range(sims):
        difficulty = rng.beta(3, 2, size=n)
        ref = rng.random(n) < difficulty
        cands = {f"t={i / (k - 1):.2f}": rng.random(n) < difficulty for i in range(k)}
        items = pl.DataFrame({"task": ["blimp"] * n, "item_id": [f"p/{i}" for i in range(n)]})
        dev = dev_mask(items["task"], items["item_id"], seed=sim)

        naive = select_and_report(cands, ref, n_resamples=1000, seed=sim)
        assert naive.flagged and naive.selected_on == naive.reported_on == "all items"
        assert "optimistic by selection" in naive.note
        assert naive.p_holm >= naive.result.p_value
        naive_raw_hits += naive.result.p_value < 0.05
        naive_holm_hits += naive.p_holm < 0.05
        naive_estimates.append(naive.result.estimate)

        honest = select_and_report(cands, ref, dev=dev, n_resamples=1000, seed=sim)
        assert not honest.flagged and (honest.selected_on, honest.reported_on) == ("dev", "test")
        test = ~dev
        expected = float(np.mean(cands[honest.chosen][test].astype(float) - ref[test]))
        assert honest.result.estimate == pytest.approx(expected)
        assert honest.result.n_items == int(test.sum())
        assert honest.naive_estimate == pytest.approx(naive.result.estimate)
        honest_estimates.append(honest.result.estimate)
        honest_covers += honest.result.covers_zero
    naive_mean, honest_mean = float(np.mean(naive_estimates)), float(np.mean(honest_estimates))
    # sd of one candidate's null difference: Var(a - b) per item = 2 E[p(1 - p)] = 0.4 for Beta(3, 2)
    se_one = math.sqrt(0.4 / n)
    # Best of 20 candidates sharing one reference (correlation 1/2): expected max ~ 1.3 sd.
    print(f"naive mean {naive_mean / se_one:.2f} sd, dev/test mean {honest_mean / se_one:.2f} sd")
    assert naive_mean > 0.9 * se_one
    assert abs(honest_mean) < 0.4 * se_one  # dev/test: unbiased
    assert honest_mean < naive_mean - se_one
    assert honest_covers >= 0.85 * sims
    # Unadjusted, the best of 20 null candidates looks "significant" far more often than 5%;
    # Holm over the 20 candidates brings the false-claim rate back near the nominal level.
    assert naive_raw_hits / sims > 0.1 and naive_raw_hits > naive_holm_hits
    assert naive_holm_hits / sims <= 0.1


def test_selection_rejects_bad_split():
    with pytest.raises(WorkbenchError):
        select_and_report({"a": [1, 0]}, [1, 0], dev=[True, True])
    with pytest.raises(WorkbenchError):
        select_and_report({}, [1, 0])


# ----------------------------------------------------------------------------- McNemar, Holm


def _exact_mcnemar(b: int, c: int) -> float:
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(Fraction(math.comb(n, i), 2**n) for i in range(min(b, c) + 1))
    return float(min(Fraction(1), 2 * tail))


@pytest.mark.parametrize("b,c", [(0, 0), (5, 0), (0, 7), (3, 3), (10, 2), (1, 12), (40, 61), (250, 310), (1500, 1420)])
def test_mcnemar_matches_exact_binomial(b, c):
    a_correct = np.array([1] * b + [0] * c + [1] * 17 + [0] * 9, dtype=bool)
    b_correct = np.array([0] * b + [1] * c + [1] * 17 + [0] * 9, dtype=bool)
    r = mcnemar_exact(a_correct, b_correct)
    assert (r.a_only, r.b_only, r.n_discordant) == (b, c, b + c)
    assert r.p_value == pytest.approx(_exact_mcnemar(b, c), rel=1e-9, abs=1e-300)


def test_mcnemar_known_values():
    # 2 * P(Bin(10, .5) <= 1) = 2 * 11 / 1024
    r = mcnemar_exact([1] * 9 + [0], [0] * 9 + [1])
    assert r.p_value == pytest.approx(22 / 1024)
    with pytest.raises(WorkbenchError):
        mcnemar_exact([1, 0], [1])


def test_holm_against_hand_computation():
    p = [0.01, 0.04, 0.03, 0.005]
    # sorted: 0.005*4=0.02, 0.01*3=0.03, 0.03*2=0.06, 0.04*1=0.04 -> running max 0.06
    assert holm(p).tolist() == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]).tolist() == pytest.approx([1.0, 1.0])
    assert holm([0.2]).tolist() == pytest.approx([0.2])
    out = holm([0.01, float("nan"), 0.02])
    assert np.isnan(out[1]) and out[0] == pytest.approx(0.02) and out[2] == pytest.approx(0.02)
    with pytest.raises(WorkbenchError):
        holm([1.5])


def test_holm_controls_family_wise_error_on_null_pvalues():
    rng = np.random.default_rng(1)
    any_reject = sum(bool(np.any(holm(rng.random(20)) < 0.05)) for _ in range(2000))
    assert any_reject / 2000 <= 0.06


# ----------------------------------------------------------------------------- other pieces


def test_bootstrap_is_seeded_and_deterministic():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=300), rng.normal(size=300)
    r1 = paired_bootstrap(x, y, seed=4)
    assert r1 == paired_bootstrap(x, y, seed=4)
    assert r1 != paired_bootstrap(x, y, seed=5)
    a, b = rng.random(300) < 0.5, rng.random(300) < 0.5
    assert paired_bootstrap(a, b, seed=1) == paired_bootstrap(a, b, seed=1)


@pytest.mark.parametrize("macro", [False, True])
def test_discrete_and_generic_resamplers_agree(monkeypatch, macro):
    """The multinomial-count resampler (few distinct differences) and the item-gather one
    draw from the same bootstrap distribution (also with per-paradigm weights 1/size)."""
    import workbench.stats.bootstrap as stats

    rng = np.random.default_rng(3)
    sizes = rng.integers(100, 300, size=10)
    clusters = np.repeat(np.arange(10), sizes)
    a, b = _paired_binary(rng, np.repeat(rng.uniform(0.4, 0.9, 10), sizes), shift=0.02)
    weights = 1.0 / np.repeat(sizes, sizes) if macro else None
    fast = paired_bootstrap(a, b, clusters=clusters, weights=weights, n_resamples=4000)
    monkeypatch.setattr(stats, "_MAX_DISCRETE_VALUES", 0)
    slow = paired_bootstrap(a, b, clusters=clusters, weights=weights, n_resamples=4000)
    assert fast != slow  # really two different code paths
    assert fast.estimate == pytest.approx(slow.estimate)
    if macro:
        per_paradigm = [np.mean(a[clusters == g].astype(float) - b[clusters == g]) for g in range(10)]
        assert fast.estimate == pytest.approx(np.mean(per_paradigm))
    assert fast.se == pytest.approx(slow.se, rel=0.08)
    assert fast.low == pytest.approx(slow.low, abs=0.004)
    assert fast.high == pytest.approx(slow.high, abs=0.004)


def test_clustered_resampling_keeps_cluster_sizes():
    """Within-paradigm resampling: a paradigm-constant difference has zero bootstrap variance."""
    clusters = np.repeat(["a", "b", "c"], [10, 20, 30])
    d = np.repeat([1.0, -1.0, 0.5], [10, 20, 30])
    r = paired_bootstrap(d, np.zeros(60), clusters=clusters, n_resamples=500)
    assert r.low == pytest.approx(r.high) == pytest.approx(r.estimate)
    # Whole-cluster resampling does see the between-paradigm variation.
    rc = paired_bootstrap(d, np.zeros(60), clusters=clusters, n_resamples=500, resample="clusters")
    assert rc.high - rc.low > 0.1


def test_weighted_bootstrap_estimate_is_the_ratio():
    ll_a = np.array([-100.0, -50.0, -300.0])
    ll_b = np.array([-110.0, -55.0, -290.0])
    nbytes = np.array([40.0, 20.0, 120.0])
    r = paired_bootstrap(-ll_a / nbytes, -ll_b / nbytes, weights=nbytes, n_resamples=200)
    assert r.estimate == pytest.approx((-(ll_a.sum()) + ll_b.sum()) / nbytes.sum())


def test_bootstrap_rejects_bad_input():
    with pytest.raises(WorkbenchError, match="pairs must match"):
        paired_bootstrap([1, 0, 1], [1, 0])
    with pytest.raises(WorkbenchError, match="non-finite"):
        paired_bootstrap([1.0, float("nan")], [1.0, 0.0])
    with pytest.raises(WorkbenchError, match="no items"):
        paired_bootstrap([], [])
    with pytest.raises(WorkbenchError, match="clusters"):
        paired_bootstrap([1, 0], [1, 0], clusters=["a"])


def test_bootstrap_ci_of_an_accuracy():
    acc = np.r_[np.ones(70), np.zeros(30)]
    r = bootstrap_ci(acc, n_resamples=2000)
    assert r.estimate == pytest.approx(0.7)
    assert 0.58 < r.low < 0.7 < r.high < 0.8


def test_tie_rate_and_noise_floor():
    assert tie_rate([True, False, False, True]) == 0.5
    nf = noise_floor({"a": 0.60, "b": 0.65, "c": 0.62})
    assert nf.spread == pytest.approx(0.05) and nf.n == 3
    assert nf.std == pytest.approx(np.std([0.60, 0.65, 0.62], ddof=1))
    assert noise_floor([0.5]).std == 0.0
    with pytest.raises(WorkbenchError):
        noise_floor([])


def test_barrier():
    ts = [0.0, 0.25, 0.5, 0.75, 1.0]
    assert barrier(ts, [1.0, 1.25, 1.5, 1.75, 2.0]) == pytest.approx(0.0)  # on the line
    assert barrier(ts, [1.0, 1.0, 1.0, 1.0, 2.0]) == pytest.approx(0.0)  # below the line
    assert barrier(ts, [1.0, 2.0, 3.0, 2.0, 1.0]) == pytest.approx(2.0)
    assert barrier_t(ts, [1.0, 2.0, 3.0, 2.0, 1.0]) == 0.5
    # unsorted grid: same answer
    assert barrier([1.0, 0.0, 0.5], [2.0, 1.0, 3.5]) == pytest.approx(2.0)
    with pytest.raises(WorkbenchError):
        barrier([0.0], [1.0])


def _fake_items() -> pl.DataFrame:
    paradigms = [f"paradigm_{i}" for i in range(5)]
    blimp = pl.DataFrame(
        {
            "task": "blimp",
            "item_id": [f"{p}/{j}" for p in paradigms for j in range(1000)],
            "group": [p for p in paradigms for _ in range(1000)],
            "correct": [True] * 5000,
        }
    )
    arc = pl.DataFrame(
        {"task": "arc_easy", "item_id": [f"q{j}" for j in range(500)], "group": "arc_easy", "correct": [False] * 500}
    )
    wiki = pl.DataFrame(
        {
            "task": "wikitext",
            "item_id": [f"doc{j // 3}#{j % 3}" for j in range(150)],
            "group": [f"doc{j // 3}" for j in range(150)],
            "correct": pl.Series([None] * 150, dtype=pl.Boolean),
        }
    )
    return pl.concat([blimp, arc, wiki])


def test_dev_test_split_is_deterministic_stratified_and_stable_under_subsampling():
    items = _fake_items()
    split = dev_test_split(items, seed=0)
    assert split.height == items.height and split["split"].to_list() == dev_test_split(items, seed=0)["split"].to_list()
    assert split["split"].to_list() != dev_test_split(items, seed=1)["split"].to_list()
    # BLiMP: every paradigm split close to half (stratified in expectation)
    per = split.filter(pl.col("task") == "blimp").group_by("group").agg((pl.col("split") == "dev").mean().alias("f"))
    assert per.height == 5 and per["f"].min() > 0.42 and per["f"].max() < 0.58
    # WikiText: a document never straddles the split
    wiki = split.filter(pl.col("task") == "wikitext").group_by("group").agg(pl.col("split").n_unique().alias("k"))
    assert wiki["k"].max() == 1
    # stable under subsampling and reordering
    sub = items.sample(fraction=0.3, seed=11, shuffle=True)
    joined = dev_test_split(sub, seed=0).join(split, on=["task", "item_id"], suffix="_full")
    assert joined.height == sub.height
    assert (joined["split"] == joined["split_full"]).all()
    # the fraction parameter is honoured
    frac = (dev_test_split(items, seed=0, dev_fraction=0.3)["split"] == "dev").mean()
    assert 0.27 < frac < 0.33


def test_dev_test_split_rejects_bad_input():
    with pytest.raises(WorkbenchError):
        dev_test_split(pl.DataFrame({"x": [1]}))
    with pytest.raises(WorkbenchError):
        dev_test_split(_fake_items(), dev_fraction=1.0)


def test_small_paradigms_do_not_shrink_the_interval():
    """Within-paradigm resampling with 3 items per paradigm: the rescaled bootstrap keeps ~95%
    coverage (a plain within-cluster bootstrap would see only 2/3 of the variance)."""
    rng = np.random.default_rng(21)
    clusters = np.repeat(np.arange(100), 3)
    covered = 0
    for run in range(N_NULL_RUNS):
        base = np.repeat(rng.normal(0, 3, 100), 3)
        x, y = base + rng.normal(0, 1, 300), base + rng.normal(0, 1, 300)
        covered += paired_bootstrap(x, y, clusters=clusters, n_resamples=2000, seed=run).covers_zero
    assert 0.93 <= covered / N_NULL_RUNS <= 0.97, covered / N_NULL_RUNS


def test_barrier_ci_sees_a_bump_and_not_a_flat_path():
    from workbench.stats import barrier_ci

    rng = np.random.default_rng(13)
    ts = [0.0, 0.25, 0.5, 0.75, 1.0]
    difficulty = rng.uniform(0.2, 0.8, 800)
    flat = np.stack([rng.random(800) < difficulty for _ in ts], axis=1).astype(float)
    low, high = barrier_ci(ts, flat, n_resamples=1000)
    assert low == 0.0 and high > 0.0
    bump = flat.copy()
    bump[:, 2] = (rng.random(800) < np.clip(difficulty + 0.15, 0, 1)).astype(float)  # error up 15 points at t=0.5
    low, high = barrier_ci(ts, bump, n_resamples=1000)
    assert low > 0.05 and high > barrier(ts, bump.mean(axis=0)) - 0.05
    with pytest.raises(WorkbenchError):
        barrier_ci(ts, flat[:, :3])


@pytest.mark.parametrize(
    "kwargs, ts, message",
    [
        ({"weights": -np.ones(10)}, [0, 0.5, 1], "weights"),
        ({"weights": np.ones(3)}, [0, 0.5, 1], "weights"),
        ({"confidence": 1.5}, [0, 0.5, 1], "confidence"),
        ({}, [0.5, 0.5, 0.5], "no width"),
    ],
)
def test_barrier_ci_checks_its_inputs_like_paired_bootstrap(kwargs, ts, message):
    from workbench.stats import barrier_ci

    with pytest.raises(WorkbenchError, match=message):
        barrier_ci(ts, np.ones((10, 3)), **kwargs)
