"""
Metrics as functions of records: certified accuracy at radii, the average certified radius (ACR), the abstention
rate, and the tables ``art-some`` prints (one run's summary, several runs side by side).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from art_some.core.noise import NORM_LABELS


def certified_accuracy(records: Sequence[dict], radii: Sequence[float]) -> np.ndarray:
    """Fraction of inputs that are correct with a certified radius >= r, for each r in ``radii``."""
    correct = np.array([r["correct"] for r in records], dtype=bool)
    radius = np.array([r["radius"] for r in records], dtype=np.float64)
    if len(records) == 0:
        return np.zeros(len(radii))
    return np.array([np.mean(correct & (radius >= r)) for r in radii])


def average_certified_radius(records: Sequence[dict]) -> float:
    """ACR: the mean over all inputs of ``correct * radius`` (abstentions and errors count as 0)."""
    if len(records) == 0:
        return 0.0
    return float(np.mean([r["correct"] * r["radius"] for r in records]))


def abstention_rate(records: Sequence[dict]) -> float:
    """Fraction of inputs on which CERTIFY abstained."""
    if len(records) == 0:
        return 0.0
    return float(np.mean([r["predict"] == -1 for r in records]))


def default_radii(records: Sequence[dict], step: float = 0.25) -> np.ndarray:
    """The radius grid 0, step, ... up to the largest certified radius (the grid papers report)."""
    largest = max((r["radius"] for r in records), default=0.0)
    return np.round(np.arange(0.0, largest + step, step), 10)


def radius_norm(records: Sequence[dict]) -> str:
    """The norm the records' radii are in (``"l2"`` for records that do not say, as every published log)."""
    norms = {r.get("norm", "l2") for r in records}
    if len(norms) > 1:
        raise ValueError(f"the records mix radii in {', '.join(sorted(norms))}: they cannot share one table")
    return norms.pop() if norms else "l2"


def summary_table(records: Sequence[dict], radii: Sequence[float] | None = None) -> str:
    """
    A plain-text table: certified accuracy (%) at each radius (the row says in which norm), ACR, abstention rate
    and input count.
    """
    radii = default_radii(records) if radii is None else np.asarray(radii, dtype=np.float64)
    acc = certified_accuracy(records, radii)
    head = [f"{NORM_LABELS[radius_norm(records)]} r"] + [f"{r:g}" for r in radii]
    row = ["cert. acc. (%)"] + [f"{100 * a:.1f}" for a in acc]
    widths = [max(len(h), len(v)) for h, v in zip(head, row)]
    lines = [
        "  ".join(h.rjust(w) for h, w in zip(head, widths)),
        "  ".join(v.rjust(w) for v, w in zip(row, widths)),
        f"ACR {average_certified_radius(records):.3f}   abstained {100 * abstention_rate(records):.1f}%   "
        f"inputs {len(records)}",
    ]
    if records and all("draws" in r for r in records):  # sequential CERTIFY: what it cost, and what it saved
        passes = np.mean([r["n0"] + r["draws"] for r in records])
        lines.append(f"forward passes per input {passes:,.0f} (n0 + estimation draws; fixed n: "
                     f"{np.mean([r['n0'] + r['n'] for r in records]):,.0f})")
    return "\n".join(lines)


def comparison_table(named_records: Sequence[tuple[str, Sequence[dict]]], radii: Sequence[float]) -> str:
    """
    Several record sets side by side, one row each: certified accuracy (%) at each radius, ACR, abstention rate
    and the number of inputs (e.g. art-some's records next to the authors' published log of the same model).
    """
    radii = np.asarray(radii, dtype=np.float64)
    norm = radius_norm([r for _, records in named_records for r in records])
    head = [f"records ({NORM_LABELS[norm]} radii)"] + [f"r={r:g}" for r in radii] + ["ACR", "abstain %", "inputs"]
    rows = [[name] + [f"{100 * a:.1f}" for a in certified_accuracy(records, radii)]
            + [f"{average_certified_radius(records):.3f}", f"{100 * abstention_rate(records):.1f}", str(len(records))]
            for name, records in named_records]
    widths = [max(len(row[c]) for row in [head, *rows]) for c in range(len(head))]
    return "\n".join("  ".join(v.ljust(w) if c == 0 else v.rjust(w) for c, (v, w) in enumerate(zip(row, widths)))
                     for row in [head, *rows])
