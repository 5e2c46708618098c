"""How the verdict words a number: differences with their CI and call, the MDE, the seed ratio.

One comparison row (:attr:`workbench.claim.Panel.comparisons`, or a curve test) becomes one
phrase, the same in the headline, the details and the tables, so a number never reads two ways.

>>> row = {"estimate": 0.004, "low": -0.019, "high": 0.026, "scale": 100.0, "unit": "points",
...        "call": "no evidence", "identical": False, "n_items": 680, "mde": 0.048, "mde_alpha": 0.0021,
...        "higher_is_better": True}
>>> result_phrase(row, 0.95)
'+0.4 points (95% CI -1.9 to +2.6): no evidence of a difference; the evaluation would have detected ±4.8 points (80% power at α = 0.0021)'
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from workbench.claim.metrics import MIN_ITEMS_FOR_CALL, POWER

__all__ = ["CALL_WORDS", "brief_phrase", "ci_text", "count", "fmt", "mde_text", "result_phrase", "seed_text"]

#: The call as the verdict writes it.
CALL_WORDS = {"gain": "a significant gain", "loss": "a significant loss", "no evidence": "no evidence of a difference"}


def fmt(x: float | None, scale: float, signed: bool = True) -> str:
    """A value in display units: 1 decimal for points, 3 for nats and bits per byte.

    >>> fmt(0.0123, 100.0), fmt(0.0123, 1.0, signed=False), fmt(None, 1.0)
    ('+1.2', '0.012', '-')
    """
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    v = x * scale
    digits = 1 if scale >= 100 else 3
    return f"{v:+.{digits}f}" if signed else f"{v:.{digits}f}"


def count(n: int, metric: str | None = None) -> str:
    """``"66 items"``, ``"1 document"``: paired units of a metric (documents for bits per byte).

    >>> count(1, "bits_per_byte"), count(66, "acc")
    ('1 document', '66 items')
    """
    unit = "document" if metric == "bits_per_byte" else "item"
    return f"{n} {unit}" + ("" if n == 1 else "s")


def ci_text(row: Mapping[str, Any], conf: float) -> str:
    """``"95% CI -1.9 to +2.6"`` of a row."""
    return f"{int(round(conf * 100))}% CI {fmt(row['low'], row['scale'])} to {fmt(row['high'], row['scale'])}"


def mde_text(row: Mapping[str, Any], *, short: bool = False, power: float = POWER) -> str:
    """What size of difference the comparison would have detected (``""`` when it has no MDE).

    >>> mde_text({"mde": 0.031, "mde_alpha": 0.05, "scale": 1.0, "unit": "nats"}, short=True)
    'would detect ±0.031 nats'
    """
    m = row.get("mde")
    if m is None or (isinstance(m, float) and math.isnan(m)):
        return ""
    if math.isinf(m):
        return "too few items to detect any difference"
    size = f"±{fmt(m, row['scale'], signed=False)} {row['unit']}"
    if short:
        return f"would detect {size}"
    return f"the evaluation would have detected {size} ({int(round(power * 100))}% power at α = {row['mde_alpha']:.2g})"


def seed_text(row: Mapping[str, Any]) -> str:
    """``"1.3x the seed spread"`` (``""`` without seeds).

    >>> seed_text({"seed_ratio": 1.34}), seed_text({"seed_ratio": None})
    ('1.3x the seed spread', '')
    """
    ratio = row.get("seed_ratio")
    if ratio is None or (isinstance(ratio, float) and math.isnan(ratio)):
        return ""
    if math.isinf(ratio):
        return "the seeds agree exactly"
    return f"{ratio:.1f}x the seed spread"


def result_phrase(
    row: Mapping[str, Any], conf: float, *, short: bool = False, seeds: bool = True, power: float = POWER
) -> str:
    """The difference, its CI (and seed ratio), the call, and for a non-call the detectable size.

    ``short`` gives the compact detectable size of a clause; ``seeds=False`` leaves out the seed ratio.
    """
    inside = ci_text(row, conf)
    ratio = seed_text(row) if seeds else ""
    if ratio:
        inside += f"; {ratio}"
    num = f"{fmt(row['estimate'], row['scale'])} {row['unit']} ({inside})"
    if row.get("identical"):
        detect = mde_text(row, short=short, power=power)
        return "identical per-item results: no evidence of a difference" + (f"; {detect}" if detect else "")
    word = CALL_WORDS.get(row["call"], row["call"])
    if row["call"] != "no evidence":
        better = "" if short else (" (lower is better)" if not row["higher_is_better"] else "")
        return f"{num}: {word}{better}"
    if row.get("n_items") is not None and row["n_items"] < MIN_ITEMS_FOR_CALL:
        return f"{num}: {word} (only {count(row['n_items'], row.get('metric'))}, too few to call any difference)"
    reason = ""
    if not short and row.get("note") == "CI excludes 0 but not significant after Holm correction":
        reason = " (the CI excludes 0 but not after Holm correction)"
    detect = mde_text(row, short=short, power=power)
    return f"{num}: {word}{reason}" + (f"; {detect}" if detect else "")


def brief_phrase(row: Mapping[str, Any]) -> str:
    """The difference and the call in a few words (the headline's cost line), with the detectable size
    of a non-call.

    >>> brief_phrase({"estimate": -0.039, "scale": 100.0, "unit": "points", "call": "no evidence",
    ...               "identical": False, "n_items": 66, "mde": 0.185, "mde_alpha": 0.002})
    '-3.9 points (no evidence of a difference; would detect ±18.5 points)'
    """
    if row.get("identical"):
        return "identical per-item results"
    num = f"{fmt(row['estimate'], row['scale'])} {row['unit']}"
    word = CALL_WORDS.get(row["call"], row["call"])
    if row["call"] != "no evidence":
        return f"{num} ({word})"
    if row.get("n_items") is not None and row["n_items"] < MIN_ITEMS_FOR_CALL:
        return f"{num} ({word}; too few items to call)"
    detect = mde_text(row, short=True)
    return f"{num} ({word}" + (f"; {detect})" if detect else ")")
