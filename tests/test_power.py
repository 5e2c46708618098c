"""Power: the MDE the claim check reports is the effect its call detects 80% of the time, and
``plan`` agrees with the closed forms and with simulation."""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from workbench.claim.metrics import ACC, BPB, MARGIN, analytic_se, call, macro_weights, mde, paired
from workbench.claim.plan import plan_from_assumptions, plan_from_pilot
from workbench.cli import app
from workbench.errors import WorkbenchError
from workbench.eval.result import items_frame
from workbench.stats import paired_bootstrap
from workbench.stats.power import (
    discordance_rate,
    mcnemar_items,
    mcnemar_mde,
    mcnemar_power,
    normal_items,
    paired_se,
)

N_RUNS = 400
#: The most false calls a level-5% bootstrap test may make in N_RUNS null runs: 5% plus two
#: binomial standard deviations (a test exactly at its level exceeds 5% in half of all
#: simulations; the exact McNemar test of accuracy is conservative and is held to 5% itself).
BOOTSTRAP_NULL_MAX = 0.05 + 2 * math.sqrt(0.05 * 0.95 / N_RUNS)
#: the panel's bootstrap (2000 resamples); each simulated evaluation gets its own bootstrap seed
BOOT = {"n_resamples": 2000, "seed": 0, "confidence": 0.95}


def _z(p: float) -> float:
    return NormalDist().inv_cdf(p)


# ----------------------------------------------------------------------------- building blocks


@pytest.mark.parametrize("kind", ["binary", "clustered_macro", "weighted_continuous"])
def test_paired_se_is_the_bootstrap_standard_error(kind):
    rng = np.random.default_rng(1)
    n = 600
    clusters = weights = None
    if kind == "binary":
        x, y = rng.random(n) < 0.7, rng.random(n) < 0.6
    elif kind == "clustered_macro":
        clusters = np.repeat([f"p{i}" for i in range(20)], 30)
        base = np.repeat(rng.uniform(0.3, 0.95, 20), 30)
        x, y = rng.random(n) < base, rng.random(n) < base
        weights = macro_weights(clusters, np.ones(n, dtype=bool))
    else:
        x, y = rng.normal(0, 1, n), rng.normal(0, 1, n)
        weights = rng.integers(100, 5000, n).astype(float)
    boot = paired_bootstrap(x, y, clusters=clusters, weights=weights, n_resamples=20000, seed=2)
    assert paired_se(x, y, clusters=clusters, weights=weights) == pytest.approx(boot.se, rel=0.03)


def test_exact_mcnemar_power_matches_monte_carlo():
    from workbench.stats import mcnemar_exact

    rng = np.random.default_rng(5)
    n, disc, effect = 300, 0.25, 0.07
    p1 = (disc + effect) / (2 * disc)
    hits = 0
    for _ in range(2000):
        nd = rng.binomial(n, disc)
        k = rng.binomial(nd, p1)
        a = np.r_[np.ones(k), np.zeros(nd - k)]
        hits += mcnemar_exact(a, 1 - a).p_value < 0.05
    assert mcnemar_power(n, disc, effect, alpha=0.05) == pytest.approx(hits / 2000, abs=0.03)


def test_mde_grows_with_stricter_alpha_and_fewer_items():
    assert (
        mcnemar_mde(500, 0.2, alpha=0.05 / 20) > mcnemar_mde(500, 0.2, alpha=0.05) > mcnemar_mde(2000, 0.2, alpha=0.05)
    )
    assert math.isinf(mcnemar_mde(4, 0.5, alpha=0.05))  # four items can never reach p < 0.05
    # identical systems: an effect needs discordant pairs, so the MDE stays finite, not 0
    assert 0 < mcnemar_mde(200, 0.0, alpha=0.05) < 0.1
    with pytest.raises(WorkbenchError, match="alpha"):
        mcnemar_mde(100, 0.2, alpha=1.5)


# ----------------------------------------------------------------------------- simulation


def _accuracy_pair(rng, base: np.ndarray, disc: float, effect: float) -> tuple[np.ndarray, np.ndarray]:
    """Paired correctness: b ~ base; a disagrees with b on a share ``disc`` of items, the
    disagreements won by a with probability (disc + effect) / (2 disc) (a is ``effect`` better)."""
    b = rng.random(base.shape[0]) < base
    disagree = rng.random(base.shape[0]) < disc
    a_wins = rng.random(base.shape[0]) < (disc + effect) / (2 * disc)
    a = np.where(disagree, a_wins, b)
    b = np.where(disagree, ~a_wins, b)
    return a.astype(float), b.astype(float)


def _called(a, b, metric, clusters, weights, seed: int, alpha=0.05) -> bool:
    boot = {**BOOT, "seed": seed}
    r, mc, identical = paired(a, b, metric, clusters=clusters, weights=weights, boot=boot)
    p = mc.p_value if mc else r.p_value
    row = {"identical": identical, "n_items": a.shape[0], "low": r.low, "high": r.high, "p_holm": p}
    row.update(estimate=r.estimate, higher_is_better=True)
    return call(row, alpha) != "no evidence"


def _reported_mde(a, b, metric, clusters, weights, alpha=0.05) -> float:
    """The MDE the panel reports for one comparison (a Holm family of one: alpha itself)."""
    r, mc, _ = paired(a, b, metric, clusters=clusters, weights=weights, boot=BOOT)
    row = {
        "n_items": a.shape[0],
        "a_only": mc.a_only if mc else None,
        "b_only": mc.b_only if mc else None,
        "se_analytic": analytic_se(a, b, clusters=clusters, weights=weights),
        "binary": metric.binary,
    }
    return mde(row, alpha, BOOT["confidence"])


def _rate(make, metric, clusters, weights) -> float:
    return sum(_called(*make(run), metric, clusters, weights, seed=run) for run in range(N_RUNS)) / N_RUNS


@pytest.mark.slow
def test_planted_mde_is_called_80_percent_of_the_time_accuracy():
    """Unclustered accuracy (ARC-like): McNemar exact + bootstrap CI, the call's own tests."""
    n, disc = 500, 0.2
    base = np.full(n, 0.65)
    rng = np.random.default_rng(11)
    pilot = _accuracy_pair(rng, base, disc, 0.0)
    effect = _reported_mde(*pilot, ACC, None, None)
    assert 0.04 < effect < 0.08
    planted = _rate(lambda _: _accuracy_pair(rng, base, disc, effect), ACC, None, None)
    null = _rate(lambda _: _accuracy_pair(rng, base, disc, 0.0), ACC, None, None)
    assert 0.75 <= planted <= 0.85, planted
    assert null <= 0.05, null


@pytest.mark.slow
def test_planted_mde_is_called_80_percent_of_the_time_blimp_clustered():
    """BLiMP-like: 20 paradigms of 30 items with their own base rates and discordance; the macro
    mean, items resampled within paradigms; accuracy and the continuous margin."""
    k, per = 20, 30
    clusters = np.repeat([f"p{i}" for i in range(k)], per)
    weights = macro_weights(clusters, np.ones(k * per, dtype=bool))
    rng = np.random.default_rng(12)
    base = np.repeat(rng.uniform(0.5, 0.95, k), per)
    disc = 0.25
    pilot = _accuracy_pair(rng, base, disc, 0.0)
    effect = _reported_mde(*pilot, ACC, clusters, weights)
    planted = _rate(lambda _: _accuracy_pair(rng, base, disc, effect), ACC, clusters, weights)
    null = _rate(lambda _: _accuracy_pair(rng, base, disc, 0.0), ACC, clusters, weights)
    assert 0.75 <= planted <= 0.85, planted
    assert null <= 0.05, null

    shift = np.repeat(rng.normal(0, 2, k), per)  # paradigm effects shared by both systems

    def margins(delta):
        item = shift + rng.normal(0, 1.5, k * per)
        return item + rng.normal(0, 1, k * per) + delta, item + rng.normal(0, 1, k * per)

    m_effect = _reported_mde(*margins(0.0), MARGIN, clusters, None)
    assert 0.75 <= _rate(lambda _: margins(m_effect), MARGIN, clusters, None) <= 0.85
    assert _rate(lambda _: margins(0.0), MARGIN, clusters, None) <= BOOTSTRAP_NULL_MAX


@pytest.mark.slow
def test_planted_mde_is_called_80_percent_of_the_time_bits_per_byte():
    """Documents weighted by bytes (WikiText-like), lower is better: the sign does not matter."""
    n = 120
    nbytes = np.random.default_rng(3).integers(500, 8000, n).astype(float)
    rng = np.random.default_rng(13)

    def docs(delta):
        doc = rng.normal(1.9, 0.2, n)
        return doc + rng.normal(0, 0.03, n), doc + rng.normal(0, 0.03, n) + delta

    effect = _reported_mde(*docs(0.0), BPB, None, nbytes)
    assert 0.75 <= _rate(lambda _: docs(effect), BPB, None, nbytes) <= 0.85
    assert _rate(lambda _: docs(0.0), BPB, None, nbytes) <= BOOTSTRAP_NULL_MAX


# ----------------------------------------------------------------------------- planning


def test_plan_against_the_two_proportion_closed_form():
    """No clustering, independent answers: the textbook two-proportion sample size
    n = (z_{a/2} sqrt(2 pbar qbar) + z_b sqrt(p1 q1 + p2 q2))^2 / delta^2 per arm."""
    for p1, delta, alpha in ((0.6, 0.05, 0.05), (0.6, 0.01, 0.05), (0.8, 0.03, 0.01)):
        p2 = p1 + delta
        pbar = (p1 + p2) / 2
        closed = (
            _z(1 - alpha / 2) * math.sqrt(2 * pbar * (1 - pbar)) + _z(0.8) * math.sqrt(p1 * (1 - p1) + p2 * (1 - p2))
        ) ** 2 / delta**2
        plan = plan_from_assumptions(delta * 100, accuracy=p1, correlation=0.0, alpha=alpha)
        # the exact McNemar test is discrete, so it needs a little more (a few percent at ~1,500 items)
        assert 1.0 <= plan.items / closed <= 1.04, (p1, delta, plan.items, closed)
        if closed > 20_000:
            assert plan.items / closed <= 1.01


def test_plan_continuous_and_clusters():
    p = plan_from_assumptions(0.1, metric="margin", sd=1.0)
    assert p.items == normal_items(0.1, 1.0, alpha=0.05) == math.ceil((_z(0.975) + _z(0.8)) ** 2 * 100)
    blimp = plan_from_assumptions(2.0, accuracy=0.7, correlation=0.6, paradigms=67, comparisons=9)
    assert blimp.per_cluster * 67 == blimp.items and blimp.alpha == pytest.approx(0.05 / 9)
    assert blimp.limit == 2 * blimp.per_cluster  # the claim check reports on the test half of a dev/test split
    disc = discordance_rate(0.7, 0.72, 0.6)
    assert blimp.items >= mcnemar_items(0.02, disc, alpha=0.05 / 9) > blimp.items - 67
    with pytest.raises(WorkbenchError, match="--accuracy"):
        plan_from_assumptions(2.0)
    with pytest.raises(WorkbenchError, match="--sd"):
        plan_from_assumptions(0.1, metric="margin")


def _pilot(rng, n_par: int, per: int, acc: np.ndarray | None = None) -> pl.DataFrame:
    n = n_par * per
    acc = np.repeat(rng.uniform(0.55, 0.9, n_par), per) if acc is None else acc
    return items_frame(
        {
            "task": ["blimp"] * n,
            "item_id": [f"p{i // per}/{i % per}" for i in range(n)],
            "group": [f"p{i // per}" for i in range(n)],
            "correct": (rng.random(n) < acc).tolist(),
            "tie": [False] * n,
            "margin": rng.normal(0, 1, n).tolist(),
        }
    )


def test_plan_from_a_one_model_pilot_matches_assumptions_without_clusters():
    rng = np.random.default_rng(21)
    n = 3000
    pilot = items_frame(
        {
            "task": ["arc_easy"] * n,
            "item_id": [str(i) for i in range(n)],
            "group": ["arc_easy"] * n,
            "correct": (rng.random(n) < 0.6).tolist(),
            "tie": [False] * n,
        }
    )
    row = plan_from_pilot(pilot, 5.0, correlation=0.3).row(0, named=True)
    acc = float(pilot["correct"].mean())
    want = plan_from_assumptions(5.0, accuracy=acc, correlation=0.3)
    assert row["items"] == pytest.approx(want.items, rel=0.01) and row["n_clusters"] == 1
    assert row["pilot_items"] == n and 0 < row["pilot_mde"] < 5.0


@pytest.mark.slow
def test_planned_blimp_size_reaches_the_power_in_simulation():
    """The per-paradigm size plan_from_pilot gives from a BLiMP-like pair pilot makes a planted
    effect of the asked size called ~80% of the time."""
    rng = np.random.default_rng(31)
    k, per, disc, effect = 20, 25, 0.25, 0.06
    base_par = rng.uniform(0.55, 0.9, k)
    a, b = _accuracy_pair(rng, np.repeat(base_par, per), disc, 0.0)
    pilot = pl.concat(
        [
            _pilot(rng, k, per).with_columns(pl.Series("correct", x.astype(bool)), pl.lit(name).alias("system"))
            for name, x in (("A", a), ("B", b))
        ]
    )
    row = plan_from_pilot(pilot, effect * 100, systems=("A", "B")).row(0, named=True)
    n_per = row["per_cluster"]
    assert row["n_clusters"] == k and row["items"] == n_per * k
    clusters = np.repeat([f"p{i}" for i in range(k)], n_per)
    weights = macro_weights(clusters, np.ones(k * n_per, dtype=bool))
    base = np.repeat(base_par, n_per)
    rate = _rate(lambda _: _accuracy_pair(rng, base, disc, effect), ACC, clusters, weights)
    assert 0.75 <= rate <= 0.87, (n_per, rate)


def test_plan_command(tmp_path):
    rng = np.random.default_rng(41)
    path = tmp_path / "items.parquet"
    _pilot(rng, 10, 20).write_parquet(path)
    res = CliRunner().invoke(app, ["plan", "--pilot", str(path), "--effect", "5", "--out", str(tmp_path / "p.csv")])
    assert res.exit_code == 0, res.output
    assert "items per paradigm" in res.output and "over 10 paradigms" in res.output
    assert pl.read_csv(tmp_path / "p.csv")["n_clusters"][0] == 10
    res = CliRunner().invoke(app, ["plan", "--effect", "5", "--accuracy", "0.6", "--correlation", "0"])
    assert res.exit_code == 0 and "1,514 items" in res.output
    res = CliRunner().invoke(app, ["plan", "--effect", "2"])
    assert res.exit_code == 2 and "--accuracy" in res.output
    res = CliRunner().invoke(app, ["plan", "--pilot", str(tmp_path / "missing.parquet"), "--effect", "2"])
    assert res.exit_code == 2 and "missing.parquet" in res.output
    res = CliRunner().invoke(app, ["plan", "--pilot", str(path), "--effect", "2", "--systems", "A", "B"])
    assert res.exit_code == 2 and "'system' column" in res.output
