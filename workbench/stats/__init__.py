"""Paired statistics on per-item results: bootstrap, McNemar, Holm, barrier, dev/test split.

Everything here is pure (arrays in, numbers out) and seeded, so the same inputs and seed give
identical statistics. Conventions (see the README, "Claim check"):

* the unit is the item; two models are compared on the *same* items, so differences are paired;
* BLiMP confidence intervals resample items *within* paradigms (``clusters=paradigm``), which
  keeps every paradigm's weight fixed as in the benchmark's own average;
* accuracy differences also get an exact McNemar test on the discordant pairs;
* many comparisons (a sweep over t, a panel of baselines) are Holm-corrected;
* anything that is *selected* (best t, best ingredient) is selected on a dev split and reported
  on the disjoint test split (:func:`dev_test_split`, :func:`select_and_report`);
* a difference whose confidence interval covers 0 is never called a gain.

Modules: :mod:`~workbench.stats.bootstrap` (paired and one-sample bootstrap intervals),
:mod:`~workbench.stats.hypothesis` (McNemar, Holm), :mod:`~workbench.stats.barrier`
(interpolation barriers), :mod:`~workbench.stats.split` (dev/test split, honest selection),
:mod:`~workbench.stats.descriptive` (tie rate, noise floor), :mod:`~workbench.stats.power`
(minimum detectable effects and sample sizes of the paired tests), :mod:`~workbench.stats.arrays`
(per-item arrays and shared argument checks).

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> a = rng.random(500) < 0.70
>>> b = rng.random(500) < 0.60
>>> r = paired_bootstrap(a, b, n_resamples=2000, seed=0)
>>> r.low < r.estimate < r.high, r.covers_zero
(True, False)
"""

from __future__ import annotations

from workbench.stats.arrays import as_array
from workbench.stats.barrier import barrier, barrier_ci, barrier_t
from workbench.stats.bootstrap import BootstrapResult, bootstrap_ci, paired_bootstrap
from workbench.stats.descriptive import NoiseFloor, noise_floor, tie_rate
from workbench.stats.hypothesis import McNemarResult, holm, mcnemar_exact
from workbench.stats.power import POWER, mcnemar_items, mcnemar_mde, mcnemar_power, normal_mde, paired_se
from workbench.stats.split import Selection, dev_mask, dev_test_split, select_and_report, split_unit_hash

__all__ = [
    "BootstrapResult",
    "McNemarResult",
    "POWER",
    "NoiseFloor",
    "Selection",
    "as_array",
    "barrier",
    "barrier_ci",
    "barrier_t",
    "bootstrap_ci",
    "dev_test_split",
    "dev_mask",
    "holm",
    "mcnemar_exact",
    "mcnemar_items",
    "mcnemar_mde",
    "mcnemar_power",
    "normal_mde",
    "noise_floor",
    "paired_bootstrap",
    "paired_se",
    "select_and_report",
    "split_unit_hash",
    "tie_rate",
]
