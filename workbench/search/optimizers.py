"""The optimisers: CMA-ES and a quasi-random Sobol baseline, both seeded, both ask/tell.

Coordinates are the unit cube of the space's ranges plus one index per list of choices.

* ``cmaes``: CMA-ES with margin for mixed continuous and categorical spaces (``cmaes.CatCMAwM``,
  Hamano et al. 2024), started at the middle of every range with step size ``sigma`` (a fraction
  of each range). The ``cmaes`` package is chosen over optuna's CMA-ES sampler because the search
  owns what optuna would otherwise own twice: trial storage and resume (the results cache keyed
  by recipe fingerprint), multi-fidelity pruning (successive halving on fixed dev subsets) and
  parallel execution (the sweep's Ray backend). ``cmaes`` is the bare ask/tell optimiser (numpy
  only; optuna's sampler wraps the same package), so a generation is asked, evaluated with those
  tools, and told back; replaying the same told values reproduces the same candidates, which is
  what makes a killed search resume exactly.
* ``sobol``: scrambled Sobol points (``scipy.stats.qmc.Sobol``), the baseline any optimiser must
  beat for its budget; choices take ``floor(u * n)``.

Both are told ranks (0 = best): CMA-ES only uses the order of the values, and a candidate that
survived more rungs of successive halving ranks above one that did not.

>>> opt = make_optimizer("sobol", n_continuous=2, n_choices=[3], seed=0, popsize=4)
>>> cands = opt.ask(4)
>>> [len(c.unit) for c in cands], all(0 <= c.choice[0] < 3 for c in cands)
([2, 2, 2, 2], True)
>>> opt = make_optimizer("cmaes", n_continuous=2, n_choices=[], seed=0)
>>> a = [c.unit for c in opt.ask(opt.popsize)]
>>> b = [c.unit for c in make_optimizer("cmaes", n_continuous=2, n_choices=[], seed=0).ask(opt.popsize)]
>>> a == b
True
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from workbench.errors import WorkbenchError

__all__ = ["Candidate", "CMAESOptimizer", "SobolOptimizer", "make_optimizer"]


@dataclass(frozen=True)
class Candidate:
    """One proposal: unit coordinates of the ranges, indices of the choices, the optimiser's own handle."""

    unit: tuple[float, ...]
    choice: tuple[int, ...]
    handle: Any = None


class CMAESOptimizer:
    """CMA-ES with margin (``cmaes.CatCMAwM``) over the unit cube and the choices; a generation of
    ``popsize`` candidates is asked, then told all at once."""

    name = "cmaes"

    def __init__(
        self, n_continuous: int, n_choices: Sequence[int], *, seed: int, popsize: int | None = None, sigma: float = 0.3
    ):
        from cmaes import CatCMAwM

        self._fixed = [i for i, n in enumerate(n_choices) if n < 2]  # a single choice is a constant
        self._cat = [i for i, n in enumerate(n_choices) if n >= 2]
        self._n_choices = list(n_choices)
        self._n_cont = n_continuous
        if n_continuous == 0 and not self._cat:
            raise WorkbenchError("search space: nothing to optimise (every list of choices has one value)")
        kwargs: dict[str, Any] = {"seed": int(seed), "population_size": popsize}
        if n_continuous:
            kwargs.update(x_space=[[0.0, 1.0]] * n_continuous, sigma=float(sigma))
        if self._cat:
            kwargs["c_space"] = [n_choices[i] for i in self._cat]
        self._opt = CatCMAwM(**kwargs)
        self.popsize = int(self._opt.population_size)

    def ask(self, n: int) -> list[Candidate]:
        """``n`` candidates (at most a generation)."""
        out = []
        for _ in range(n):
            sol = self._opt.ask()
            unit = tuple(float(x) for x in np.clip(sol.x, 0.0, 1.0)) if self._n_cont else ()
            choice = [0] * len(self._n_choices)
            if self._cat:
                for j, i in enumerate(self._cat):
                    choice[i] = int(np.argmax(sol.c[j][: self._n_choices[i]]))
            out.append(Candidate(unit, tuple(choice), sol))
        return out

    def tell(self, candidates: Sequence[Candidate], ranks: Sequence[float]) -> None:
        """Tell a whole generation its ranks (lower is better); a partial generation is not told."""
        if len(candidates) != self.popsize:
            return
        self._opt.tell([(c.handle, float(r)) for c, r in zip(candidates, ranks)])


class SobolOptimizer:
    """Scrambled Sobol points over the unit cube and the choices; telling changes nothing."""

    name = "sobol"

    def __init__(self, n_continuous: int, n_choices: Sequence[int], *, seed: int, popsize: int | None = None):
        from scipy.stats import qmc

        self._n_cont = n_continuous
        self._n_choices = list(n_choices)
        self._engine = qmc.Sobol(d=max(1, n_continuous + len(self._n_choices)), scramble=True, seed=int(seed))
        self.popsize = int(popsize or 8)

    def ask(self, n: int) -> list[Candidate]:
        """The next ``n`` points of the sequence."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # balance needs powers of 2; a search's budget need not be one
            pts = self._engine.random(n)
        out = []
        for row in pts:
            unit = tuple(float(x) for x in row[: self._n_cont])
            choice = tuple(min(k - 1, int(row[self._n_cont + j] * k)) for j, k in enumerate(self._n_choices))
            out.append(Candidate(unit, choice))
        return out

    def tell(self, candidates: Sequence[Candidate], ranks: Sequence[float]) -> None:
        """Nothing to learn: the sequence does not depend on the results."""


def make_optimizer(
    name: str,
    *,
    n_continuous: int,
    n_choices: Sequence[int],
    seed: int,
    popsize: int | None = None,
    sigma: float = 0.3,
) -> CMAESOptimizer | SobolOptimizer:
    """The optimiser ``name`` (``cmaes`` or ``sobol``) over ``n_continuous`` unit ranges and lists of
    ``n_choices`` choices, seeded."""
    if name == "cmaes":
        return CMAESOptimizer(n_continuous, n_choices, seed=seed, popsize=popsize, sigma=sigma)
    if name == "sobol":
        return SobolOptimizer(n_continuous, n_choices, seed=seed, popsize=popsize)
    raise WorkbenchError(f"unknown optimizer {name!r}; use cmaes or sobol")
