"""Honest selection: a seeded, stable dev/test split of items, and choosing on dev, reporting on test.

>>> dev_mask(["t"] * 3, ["a", "b", "c"]).dtype
dtype('bool')
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from workbench.errors import WorkbenchError
from workbench.stats.arrays import as_array
from workbench.stats.bootstrap import BootstrapResult, paired_bootstrap
from workbench.stats.hypothesis import holm

__all__ = ["Selection", "dev_mask", "dev_test_split", "select_and_report", "split_unit_hash"]


def split_unit_hash(task: str, unit: str, seed: int = 0) -> float:
    """A uniform number in [0, 1) from a seeded hash of (task, unit id); stable across runs.

    >>> split_unit_hash("blimp", "adjunct_island/0") == split_unit_hash("blimp", "adjunct_island/0")
    True
    >>> 0.0 <= split_unit_hash("arc_easy", "Mercury_7175875", seed=3) < 1.0
    True
    """
    digest = hashlib.blake2b(f"{int(seed)}\x1f{task}\x1f{unit}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def dev_mask(tasks: Any, units: Any, *, seed: int = 0, dev_fraction: float = 0.5) -> np.ndarray:
    """Boolean mask (True = dev) from a seeded hash of each (task, unit id).

    Each unit's side depends only on its own id and the seed, so the split is stable when the
    items are subsampled (``--limit``) or reordered.

    >>> full = dev_mask(["t"] * 4, ["a", "b", "c", "d"], seed=0)
    >>> sub = dev_mask(["t"] * 2, ["c", "a"], seed=0)
    >>> sub.tolist() == [full[2], full[0]]
    True
    """
    if not 0.0 < dev_fraction < 1.0:
        raise WorkbenchError(f"dev_fraction: must be in (0, 1), got {dev_fraction}")
    task_arr = as_array(tasks, name="tasks", dtype=None).astype(str)
    unit_arr = as_array(units, name="units", dtype=None).astype(str)
    if task_arr.shape != unit_arr.shape:
        raise WorkbenchError("dev_mask: tasks and units must have the same length")
    return np.fromiter(
        (split_unit_hash(t, u, seed) < dev_fraction for t, u in zip(task_arr, unit_arr)),
        dtype=bool,
        count=task_arr.shape[0],
    )


def dev_test_split(items: Any, *, seed: int = 0, dev_fraction: float = 0.5) -> Any:
    """Add a ``split`` column ("dev" / "test") to a per-item table, deterministically.

    ``items`` is a polars DataFrame with the evaluation columns ``task``, ``item_id``,
    ``group`` and ``correct``. The split unit is the item (BLiMP minimal pair, ARC question),
    except for perplexity items (``correct`` is null), whose unit is the document (``group``),
    so a WikiText document never straddles the split. A unit goes to dev when the seeded hash
    of (task, unit id) is below ``dev_fraction``: every BLiMP paradigm is split in that
    proportion in expectation (stratified by paradigm up to rounding noise), and a unit's side
    never depends on which other items are present.

    >>> import polars as pl
    >>> items = pl.DataFrame({"task": ["blimp"] * 4, "item_id": ["p/0", "p/1", "p/2", "p/3"],
    ...                       "group": ["p"] * 4, "correct": [True, False, True, True]})
    >>> out = dev_test_split(items, seed=0)
    >>> out.columns[-1], sorted(set(out["split"].to_list())) <= ["dev", "test"]
    ('split', True)
    """
    import polars as pl

    if not isinstance(items, pl.DataFrame):
        raise WorkbenchError("dev_test_split: expected a polars DataFrame of per-item results")
    missing = [c for c in ("task", "item_id") if c not in items.columns]
    if missing:
        raise WorkbenchError(f"dev_test_split: items table lacks column(s) {missing}")
    if items.height == 0:
        return items.with_columns(pl.lit(None, dtype=pl.Utf8).alias("split"))
    item_ids = items["item_id"].cast(pl.Utf8).to_numpy()
    units = item_ids.copy()
    if "correct" in items.columns and "group" in items.columns:
        doc_level = items["correct"].is_null().to_numpy()
        groups = items["group"].cast(pl.Utf8).fill_null("").to_numpy()
        units = np.where(doc_level, groups, units)
    mask = dev_mask(items["task"].cast(pl.Utf8).to_numpy(), units, seed=seed, dev_fraction=dev_fraction)
    split = np.where(mask, "dev", "test")
    return items.with_columns(pl.Series("split", split, dtype=pl.Utf8))


# ----------------------------------------------------------------------------- selection


@dataclass(frozen=True)
class Selection:
    """The outcome of choosing the best of several candidates against a reference.

    ``selected_on`` / ``reported_on`` say which items were used for each step; ``flagged`` is
    True when they are the same items (the reported number is inflated by the selection).
    ``result`` is the chosen candidate minus the reference on the reporting items;
    ``p_holm`` its Holm-adjusted p-value over all candidates on the reporting items;
    ``naive_estimate`` is what best-of-all-on-all-items would have claimed.
    """

    chosen: str
    n_candidates: int
    selected_on: str
    reported_on: str
    flagged: bool
    result: BootstrapResult
    p_holm: float
    naive_choice: str
    naive_estimate: float
    note: str


def select_and_report(
    candidates: Mapping[str, Any],
    reference: Any,
    *,
    dev: Any = None,
    clusters: Any = None,
    n_resamples: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
    higher_is_better: bool = True,
) -> Selection:
    """Choose the best candidate (e.g. the best t) and report it honestly against ``reference``.

    ``candidates`` maps names to per-item values on the same items as ``reference``. With a
    ``dev`` mask (True = dev item) the choice is made on dev and the difference is reported on
    the test items only; without one, choice and report use the same items and the result is
    flagged as optimistic by selection (with a Holm-adjusted p-value over all candidates).

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> ref = rng.random(400) < 0.6
    >>> cands = {f"t={t}": rng.random(400) < 0.6 for t in (0.1, 0.3, 0.5, 0.7, 0.9)}
    >>> naive = select_and_report(cands, ref, n_resamples=500)
    >>> honest = select_and_report(cands, ref, dev=np.arange(400) % 2 == 0, n_resamples=500)
    >>> naive.flagged, honest.flagged, honest.reported_on
    (True, False, 'test')
    """
    ref, values = _paired_values(candidates, reference)
    sign = 1.0 if higher_is_better else -1.0
    names = list(values)
    cl = None if clusters is None else as_array(clusters, name="clusters", dtype=None)

    def best_on(mask: np.ndarray) -> str:
        means = [sign * float(np.mean(values[k][mask])) for k in names]
        return names[int(np.argmax(means))]  # ties: the first candidate

    all_items = np.ones(ref.shape[0], dtype=bool)
    naive_choice = best_on(all_items)
    naive_estimate = float(np.mean(values[naive_choice] - ref))
    select_mask, report_mask, selected_on, reported_on = _selection_masks(dev, all_items)
    chosen = best_on(select_mask)
    sub_cl = None if cl is None else cl[report_mask]
    results = {
        k: paired_bootstrap(
            values[k][report_mask],
            ref[report_mask],
            clusters=sub_cl,
            n_resamples=n_resamples,
            seed=seed,
            confidence=confidence,
        )
        for k in names
    }
    p_adj = holm([results[k].p_value for k in names])
    p_holm = float(p_adj[names.index(chosen)])
    flagged = dev is None and len(names) > 1
    if flagged:
        note = (
            f"best of {len(names)} chosen on the same items it is reported on: the estimate is "
            f"optimistic by selection; Holm-adjusted p over {len(names)} candidates = {p_holm:.3g}"
        )
    else:
        note = f"chosen on dev among {len(names)} candidates, reported on the disjoint test items"
    return Selection(
        chosen=chosen,
        n_candidates=len(names),
        selected_on=selected_on,
        reported_on=reported_on,
        flagged=flagged,
        result=results[chosen],
        p_holm=p_holm,
        naive_choice=naive_choice,
        naive_estimate=naive_estimate,
        note=note,
    )


def _paired_values(candidates: Mapping[str, Any], reference: Any) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The reference and every candidate as arrays over the same items."""
    if not candidates:
        raise WorkbenchError("select_and_report: no candidates to choose from")
    ref = as_array(reference, name="reference")
    values = {str(k): as_array(v, name=f"candidate {k}") for k, v in candidates.items()}
    for k, v in values.items():
        if v.shape != ref.shape:
            raise WorkbenchError(f"select_and_report: candidate {k} has {v.shape[0]} items, reference {ref.shape[0]}")
    return ref, values


def _selection_masks(dev: Any, all_items: np.ndarray) -> tuple[np.ndarray, np.ndarray, str, str]:
    """Items to choose on, items to report on, and their names: dev / test with a dev mask,
    else all items for both."""
    if dev is None:
        return all_items, all_items, "all items", "all items"
    dmask = as_array(dev, name="dev", dtype=None).astype(bool)
    if dmask.shape != all_items.shape:
        raise WorkbenchError("select_and_report: the dev mask must have one entry per item")
    if not dmask.any() or dmask.all():
        raise WorkbenchError("select_and_report: the dev/test split leaves one side empty")
    return dmask, ~dmask, "dev", "test"
