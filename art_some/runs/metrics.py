"""
Metrics as functions of records: certified accuracy at radii, the average certified radius (ACR), the abstention
rate, PREDICT's accuracy, the largest radius a run could certify, and the tables ``art-some`` prints (one run's
summary, several runs side by side, as text, Markdown, CSV or LaTeX: :mod:`art_some.runs.tables`).

A **fixed-radius** run (``art-some certify --radii``: sequential CERTIFY deciding each input at the requested radii
only) stops drawing for an input once every requested radius is decided, so its ``radius`` field is no estimate of
how robust the input is: its tables hold the requested radii only, and no ACR.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from art_some.core.noise import NORM_LABELS
from art_some.runs.tables import Table, render

# The radii of certify's summary table (and report's, and the audit's tables): 0 to 2 in steps of 0.25.
RADIUS_STEP = 0.25
CERTIFY_RADII = tuple(RADIUS_STEP * k for k in range(9))


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
    """Fraction of inputs on which CERTIFY (or PREDICT) abstained."""
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


def radius_grid(top: float) -> np.ndarray:
    """
    Certify's table radii (:data:`CERTIFY_RADII`), continued in steps of 0.25 until they reach ``top`` (e.g. the
    largest radius or attack budget of an audit), so that tables of one model line up column by column.
    """
    steps = max(len(CERTIFY_RADII) - 1, math.ceil(float(top) / RADIUS_STEP - 1e-9))
    return np.round(RADIUS_STEP * np.arange(steps + 1), 10)


def requested_radii(records: Sequence[dict]) -> list[float] | None:
    """
    The radii a fixed-radius run was asked to decide (its records' ``certified_at``), or None for other records.
    Records of two fixed-radius runs with different radii cannot share one table.
    """
    asked = {tuple(sorted(float(r) for r in rec["certified_at"])) for rec in records if "certified_at" in rec}
    if not asked:
        return None
    if len(asked) > 1 or len(records) != sum("certified_at" in rec for rec in records):
        raise ValueError("the records mix fixed-radius runs at different radii (or with other runs); report them "
                         "one file at a time")
    return list(asked.pop())


def table_radii(records: Sequence[dict], radii: Sequence[float] | None = None) -> np.ndarray:
    """
    The radii a table of ``records`` shows: ``radii`` if given, else a fixed-radius run's requested radii, else
    :data:`CERTIFY_RADII`. A fixed-radius run answers only at its requested radii: other ``radii`` are refused.
    """
    asked = requested_radii(records)
    if radii is None:
        return np.asarray(CERTIFY_RADII if asked is None else asked, dtype=np.float64)
    radii = np.asarray(radii, dtype=np.float64)
    if asked is not None:
        missing = [r for r in radii if not np.isclose(asked, r, rtol=0, atol=1e-12).any()]
        if missing:
            raise ValueError(f"--radii: a fixed-radius run answers only at the radii it was asked to decide "
                             f"({', '.join(f'{r:g}' for r in asked)}), not at {', '.join(f'{r:g}' for r in missing)}; "
                             "leave --radii out or give some of those")
    return radii


def is_predict(records: Sequence[dict]) -> bool:
    """Whether ``records`` are PREDICT's (``art-some predict``: no radius) rather than certificates."""
    return bool(records) and all("radius" not in r for r in records)


def accuracy(records: Sequence[dict]) -> float:
    """PREDICT's accuracy: the fraction of inputs answered with the true label (an abstention counts as an error)."""
    return float(np.mean([r["correct"] for r in records])) if records else 0.0


def largest_certifiable_radius(records: Sequence[dict]) -> float | None:
    """
    The largest radius the records' run could certify at all: the noise's radius at the largest lower bound n draws
    can give at alpha, ``alpha ** (1 / n)`` (one-sided Clopper-Pearson with all n votes for the class), with each
    record's sigma (the largest over the records). None where the records do not say enough to compute it (a TSV
    log, a certificate whose radius is not the noise's own, L-infinity radii).
    """
    from art_some.core.stats import clopper_pearson_lower
    from art_some.runs.records import NOT_PLAIN, _noise_radius

    largest = None
    for r in records:
        norm = r.get("norm", "l2")
        radius_of = _noise_radius(r.get("noise", "gaussian" if norm == "l2" else None), norm)
        if (radius_of is None or NOT_PLAIN & r.keys() or r.get("radius_space", "input") != "input"
                or not all(isinstance(r.get(k), (int, float)) for k in ("n", "alpha", "sigma"))):
            return None
        top = float(radius_of(float(clopper_pearson_lower(r["n"], r["n"], r["alpha"])), r["sigma"]))
        largest = top if largest is None else max(largest, top)
    return largest


def summary_table(records: Sequence[dict], radii: Sequence[float] | None = None) -> str:
    """
    A plain-text table: certified accuracy (%) at each radius (the row says in which norm), ACR, abstention rate
    and input count; a fixed-radius run at its requested radii and without ACR (see :func:`table_radii`). PREDICT
    records get their accuracy and abstention rate.
    """
    if is_predict(records):
        answered = [r for r in records if r["predict"] >= 0]
        return (f"accuracy {100 * accuracy(records):.1f}% (abstentions count as errors)   abstained "
                f"{100 * abstention_rate(records):.1f}%   accuracy where it answered "
                f"{100 * accuracy(answered):.1f}%   inputs {len(records)}")
    radii = table_radii(records, radii)
    acc = certified_accuracy(records, radii)
    head = [f"{NORM_LABELS[radius_norm(records)]} r"] + [f"{r:g}" for r in radii]
    row = ["cert. acc. (%)"] + [f"{100 * a:.1f}" for a in acc]
    widths = [max(len(h), len(v)) for h, v in zip(head, row)]
    fixed = requested_radii(records) is not None
    acr = ("fixed-radius run: no ACR (an input stops drawing once its radii are decided)   " if fixed
           else f"ACR {average_certified_radius(records):.3f}   ")
    lines = [
        "  ".join(h.rjust(w) for h, w in zip(head, widths)),
        "  ".join(v.rjust(w) for v, w in zip(row, widths)),
        f"{acr}abstained {100 * abstention_rate(records):.1f}%   inputs {len(records)}",
    ]
    if records and all("draws" in r for r in records):  # sequential CERTIFY: what it cost, and what it saved
        levels = [r.get("levels_visited", 1) for r in records]  # a cascade draws n0 (and fixed n n) per level
        passes = np.mean([r["n0"] * k + r["draws"] for r, k in zip(records, levels)])
        lines.append(f"forward passes per input {passes:,.0f} (n0 + estimation draws; fixed n: "
                     f"{np.mean([(r['n0'] + r['n']) * k for r, k in zip(records, levels)]):,.0f})")
    return "\n".join(lines)


def comparison(named_records: Sequence[tuple[str, Sequence[dict]]], radii: Sequence[float] | None = None) -> Table:
    """
    Several certification runs, one row each: certified accuracy (%) at each radius, ACR (``-`` for a fixed-radius
    run), abstention rate and the number of inputs. Without ``radii``: the fixed-radius runs' requested radii if
    there are any, else :data:`CERTIFY_RADII`.
    """
    if radii is None:
        asked = [requested_radii(records) for _, records in named_records]
        radii = next((a for a in asked if a is not None), CERTIFY_RADII)
    columns = [table_radii(records, radii) for _, records in named_records]
    radii = columns[0] if columns else np.asarray(radii, dtype=np.float64)
    norm = radius_norm([r for _, records in named_records for r in records])
    head = [f"records ({NORM_LABELS[norm]} radii)"] + [f"r={r:g}" for r in radii] + ["ACR", "abstain %", "inputs"]
    rows = [[name] + [f"{100 * a:.1f}" for a in certified_accuracy(records, radii)]
            + ["-" if requested_radii(records) is not None else f"{average_certified_radius(records):.3f}",
               f"{100 * abstention_rate(records):.1f}", str(len(records))]
            for name, records in named_records]
    return Table(head, rows)


def comparison_table(named_records: Sequence[tuple[str, Sequence[dict]]], radii: Sequence[float] | None = None,
                     form: str = "text") -> str:
    """
    :func:`comparison` as text (e.g. art-some's records next to the authors' published log of the same model), in
    ``form``: ``text``, ``markdown``, ``csv`` or ``latex`` (:func:`art_some.runs.tables.render`).
    """
    return render(comparison(named_records, radii), form)


def predict_table(named_records: Sequence[tuple[str, Sequence[dict]]], form: str = "text") -> str:
    """
    PREDICT runs, one row each: accuracy (%, abstentions count as errors), abstention rate (%), accuracy where it
    answered (%) and the number of inputs, in ``form`` (:func:`art_some.runs.tables.render`).
    """
    head = ["records (PREDICT)", "accuracy %", "abstain %", "answered acc. %", "inputs"]
    rows = [[name, f"{100 * accuracy(records):.1f}", f"{100 * abstention_rate(records):.1f}",
             f"{100 * accuracy([r for r in records if r['predict'] >= 0]):.1f}", str(len(records))]
            for name, records in named_records]
    return render(Table(head, rows), form)
