"""
The report behind ``art-some report``: what record files and TSV logs say, certify's and PREDICT's alike, as text
(where the records come from, then a table per file and several side by side) or as tables to paste (Markdown, CSV,
LaTeX), and the certified-accuracy plot of the certification runs (Cohen et al.'s ``analyze.py``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from art_some.runs.header import describe_header
from art_some.runs.metrics import comparison_table, is_predict, predict_table, summary_table
from art_some.runs.records import read_header, read_records
from art_some.runs.tables import FORMATS

# What the figures can be saved as (matplotlib's Agg and vector back ends), by the file's suffix.
PLOT_SUFFIXES = (".png", ".pdf", ".svg")


def run_report(files: Sequence[str], radii: Sequence[float] | None = None, form: str = "text",
               plot: str | None = None) -> str:
    """
    The report on ``files`` (JSONL records of certify or predict runs, community TSV logs of either), every file
    read and checked before the plot is written.

    :param files: The record files and logs.
    :param radii: The radii of the certification tables (default: a fixed-radius run's requested radii, else 0 to 2
                  in steps of 0.25); a fixed-radius run refuses radii it was not asked to decide.
    :param form: ``text`` (provenance, a table per file, and several side by side) or ``markdown``, ``csv``,
                 ``latex``: only the tables, a row per file (certification runs, then PREDICT runs).
    :param plot: Also save the certified accuracy of the certification runs against radius here (PNG, PDF, SVG).
    :return: The report's text.
    """
    if form not in FORMATS:
        raise ValueError(f"--format must be one of {', '.join(FORMATS)}, got {form!r}")
    if plot is not None:
        check_plot_path(plot, others=files)
    loaded = []
    for path in files:
        if not Path(path).is_file():
            raise FileNotFoundError(f"no such file: {path}")
        # JSONL records are checked against themselves and their header, as merge does.
        loaded.append((path, read_header(path), read_records(path, check=True)))
    names = _labels([path for path, _, _ in loaded])
    certified = [(names[path], records) for path, _, records in loaded if not is_predict(records)]
    predicted = [(names[path], records) for path, _, records in loaded if is_predict(records)]
    if form == "text":
        parts = []
        for path, header, records in loaded:
            parts += [f"== {path}", describe_header(header), summary_table(records, radii)]
        if len(loaded) > 1:  # e.g. art-some's records next to the authors' published log of the same model
            parts.append("== side by side")
            parts += [comparison_table(certified, radii)] if certified else []
            parts += [predict_table(predicted)] if predicted else []
    else:
        parts = ([comparison_table(certified, radii, form)] if certified else []) + (
            [predict_table(predicted, form)] if predicted else [])
    if plot is not None:
        if not certified:
            raise ValueError("--plot draws certified accuracy against radius, but the files hold PREDICT records "
                             "only (no radius)")
        from art_some.evaluation.plots import plot_certified_accuracy  # imports torch: only for a plot

        plot_certified_accuracy(dict(certified), plot)
        parts += [f"plot: {plot}"] if form == "text" else []
    return ("\n\n" if form != "text" else "\n").join(parts)


def _labels(paths: Sequence[str]) -> dict[str, str]:
    """Each file's label in tables and plots: its name, or its path where two files share a name."""
    names = [Path(p).name for p in paths]
    return {p: name if names.count(name) == 1 else str(p) for p, name in zip(paths, names)}


def check_plot_path(path, option: str = "--plot", others: Sequence = ()) -> Path:
    """
    Refuse a plot path before anything is written: its suffix must be one of :data:`PLOT_SUFFIXES`, and it must
    not be one of the run's other outputs (``others``), since two outputs never share a path.
    """
    path = Path(path)
    if path.suffix.lower() not in PLOT_SUFFIXES:
        raise ValueError(f"{option} {path} must name a {', '.join(s[1:] for s in PLOT_SUFFIXES)} file "
                         f"(by its suffix)")
    for other in others:
        if Path(other).resolve() == path.resolve():
            raise ValueError(f"{option} {path} would overwrite {Path(other).name}, a file this command reads or "
                             "writes; give the plot another name")
    if path.exists() and path.is_dir():
        raise ValueError(f"{option} {path} is a folder; give a file name")
    return path
