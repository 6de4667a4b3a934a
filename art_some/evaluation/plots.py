"""Certified-accuracy-versus-radius plots (matplotlib, no display needed)."""
from __future__ import annotations

import os
from typing import Mapping, Sequence

import numpy as np

from art_some.runs.metrics import average_certified_radius, certified_accuracy


def plot_certified_accuracy(runs: Mapping[str, Sequence[dict]], path: str | os.PathLike, title: str = "") -> None:
    """
    Plot certified accuracy against radius for one or more runs and save it (PNG by extension).

    :param runs: Label -> records.
    :param path: Output image path.
    :param title: Figure title.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=120)
    largest = max((r["radius"] for recs in runs.values() for r in recs), default=0.0)
    radii = np.linspace(0.0, max(largest * 1.05, 1e-3), 200)
    for label, records in runs.items():
        acc = certified_accuracy(records, radii)
        ax.plot(radii, 100 * acc, label=f"{label} (ACR {average_certified_radius(records):.3f})")
    ax.set_xlabel("L2 radius")
    ax.set_ylabel("certified accuracy (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
