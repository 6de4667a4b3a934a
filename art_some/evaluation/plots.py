"""
Plots of records (matplotlib, drawn off-screen on a figure of their own, so no display is needed and pyplot's
global state is left alone):

- :func:`plot_certified_accuracy`: certified accuracy against radius, a line per run (Cohen et al.'s
  ``analyze.py``), with n and alpha in the title and the largest radius each run could certify marked;
  ``art-some certify --plot`` and ``art-some report --plot`` draw it;
- :func:`plot_audit`: the audit's certified and empirical robust accuracy (``audit.png``).

Curves stay off the frame: the axes reach a little beyond 0 and 100 % and beyond the radii drawn.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from art_some.core.noise import NORM_LABELS
from art_some.runs.metrics import (
    average_certified_radius,
    certified_accuracy,
    is_predict,
    largest_certifiable_radius,
    radius_norm,
    requested_radii,
)

MARGIN = 0.03  # of each axis' span, between the curves and the frame


def _figure(size=(5.5, 3.8)):
    """A figure with one axes that draws without pyplot (no display, no global state)."""
    try:
        from matplotlib.figure import Figure
    except ImportError:  # a dependency, but an environment may lack it
        raise ImportError("plots need the matplotlib package: pip install matplotlib") from None
    fig = Figure(figsize=size, dpi=120)
    return fig, fig.add_subplot()


def _keep_off_frame(ax, x_max: float) -> None:
    """Axis limits a margin beyond the data (0 to ``x_max``, 0 to 100 %), so no curve runs along the frame."""
    x_max = max(float(x_max), 1e-3)
    ax.set_xlim(-MARGIN * x_max, (1 + MARGIN) * x_max)
    ax.set_ylim(-MARGIN * 100, (1 + MARGIN) * 100)


def _save(fig, path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path)


def _settings(runs: Mapping[str, Sequence[dict]]) -> dict[str, str]:
    """Each run's ``n = ..., alpha = ...`` (empty for records that do not say, as TSV logs)."""
    out = {}
    for label, records in runs.items():
        pairs = {(r.get("n"), r.get("alpha")) for r in records}
        n, alpha = pairs.pop() if len(pairs) == 1 else (None, None)
        out[label] = "" if n is None or alpha is None else f"n = {n:,}, alpha = {alpha:g}"
    return out


def plot_certified_accuracy(runs: Mapping[str, Sequence[dict]], path: str | os.PathLike | None = None,
                            title: str = ""):
    """
    Certified accuracy against radius, one line per run labelled with its name (and ACR), as in Cohen et al.'s
    ``analyze.py``; a fixed-radius run (``certify --radii``) is drawn at its requested radii only, as points. The
    title holds n and alpha when the runs share them (else each label does); a dotted vertical line in the run's
    colour marks the largest radius it could certify (:func:`~art_some.runs.metrics.largest_certifiable_radius`:
    the noise's radius at ``alpha ** (1 / n)``, where all n votes agree), where its records say enough.

    :param runs: Label -> certification records (JSONL records or a TSV log's).
    :param path: Where to save the figure (PNG, PDF or SVG by the suffix); None: only return it.
    :param title: The figure's title, before n and alpha.
    :return: The matplotlib ``Figure`` (its axes hold one labelled line per run).
    """
    runs = {label: list(records) for label, records in runs.items()}
    predicts = [label for label, records in runs.items() if is_predict(records)]
    if predicts or not runs:
        raise ValueError("a certified-accuracy plot needs certification records"
                         + (f"; {', '.join(predicts)} hold PREDICT records (no radius)" if predicts else ""))
    fig, ax = _figure()
    caps = {label: largest_certifiable_radius(records) for label, records in runs.items()}
    largest = max([r["radius"] for records in runs.values() for r in records]
                  + [c for c in caps.values() if c is not None] + [0.0])
    grid = np.linspace(0.0, max(largest * 1.05, 1e-3), 400)
    settings = _settings(runs)
    shared = set(settings.values())
    shared = shared.pop() if len(shared) == 1 else ""
    for label, records in runs.items():
        asked = requested_radii(records)
        say = label if shared or not settings[label] else f"{label} ({settings[label]})"
        if asked is None:
            line, = ax.plot(grid, 100 * certified_accuracy(records, grid),
                            label=f"{say}, ACR {average_certified_radius(records):.3f}")
        else:
            line, = ax.plot(asked, 100 * certified_accuracy(records, asked), marker="o", label=f"{say}, fixed radii")
        if caps[label] is not None:
            ax.axvline(caps[label], color=line.get_color(), ls=":", lw=1, gid="largest certifiable radius")
    _keep_off_frame(ax, grid[-1])
    ax.set_xlabel(f"{NORM_LABELS[radius_norm([r for recs in runs.values() for r in recs])]} radius")
    ax.set_ylabel("certified accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize=7)
    note = "dotted: largest certifiable radius" if any(c is not None for c in caps.values()) else ""
    ax.set_title("; ".join(t for t in (title, shared, note) if t), fontsize=9)
    if path is not None:
        _save(fig, path)
    return fig


def plot_audit(result, path: str | os.PathLike | None = None):
    """
    The audit's figure (``audit.png``): certified and empirical robust accuracy against the radius in the
    certificate's norm, one line per attack and the best of all, violations as red vertical lines.

    :param result: An :class:`~art_some.evaluation.audit.AuditResult`.
    :param path: Where to save it; None: only return it.
    :return: The matplotlib ``Figure``.
    """
    from art_some.evaluation.audit import empirical_robust_accuracy

    fig, ax = _figure((5, 3.5))
    top = max([float(result.radii.max()) if len(result.radii) else 1.0]
              + [v["distance"] for v in result.violations])
    radii = np.linspace(0.0, top, 200)
    ax.plot(radii, 100 * certified_accuracy(result.records, radii), label="certified correct", color="k", lw=2)
    for name in [*result.attacks, "best"]:
        acc = empirical_robust_accuracy(result.records, radii, None if name == "best" else name)
        ax.plot(radii, 100 * acc, label="best attack" if name == "best" else name,
                ls="--" if name == "best" else "-", lw=1)
    for v in result.violations:
        ax.axvline(v["distance"], color="r", alpha=0.3)
    _keep_off_frame(ax, top)
    ax.set_xlabel(f"{NORM_LABELS[result.norm]} radius")
    ax.set_ylabel("accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(f"certified vs empirical ({len(result.violations)} violations)")
    if path is not None:
        _save(fig, path)
    return fig
