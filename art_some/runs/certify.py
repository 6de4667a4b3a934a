"""
The certify run behind ``art-some certify``, as a library function over a config dataclass:
``run_certify(CertifyConfig(model="runs/model.safetensors", output="r.jsonl", n=10_000))`` builds the smoothed
estimator (:func:`~art_some.runs.estimator.smoothed_estimator`), certifies the data set into resumable JSONL and
TSV records (:func:`art_some.evaluation.certify_dataset`), one shard of it with ``shard``, and under ``torchrun``
each rank its own shard, rank 0 merging them into ``output``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from art_some.runs.estimator import SmoothingConfig, note, run_info, shard_of_run, smoothed_estimator, warn_small_n


@dataclass(kw_only=True)
class CertifyConfig(SmoothingConfig):
    """What a certify run is: the smoothing options, and how and where to certify."""

    output: str  # the JSONL records (resumed if present); the TSV goes beside them
    n: int = 100_000
    max_inputs: int | None = None
    radii: list | None = None  # fixed-radius mode of sequential CERTIFY at these radii
    sequential: bool = False  # radius mode of sequential CERTIFY
    tolerance: float | None = None  # the radius mode's stopping tolerance
    bound: str | None = None  # sequential CERTIFY's confidence sequence (None: the rule's first)
    shard: tuple | str | None = None  # (i, k) or "i/k": certify only shard i of k
    plot: str | None = None  # also save certified accuracy against radius here (PNG, PDF or SVG)

    def sequential_plan(self) -> dict | None:
        """Sequential CERTIFY's options (None for fixed-n CERTIFY), checked against each other."""
        if self.radii is not None and self.sequential:
            raise ValueError("give --radii (fixed-radius mode) or --sequential (radius mode), not both")
        plan = {"radii": list(self.radii)} if self.radii is not None else {} if self.sequential else None
        if self.tolerance is not None:
            if plan is None or "radii" in plan:
                raise ValueError("--tolerance is the radius mode's stopping rule: give it with --sequential (and "
                                 "without --radii)")
            plan["tolerance"] = self.tolerance
        if self.bound is not None:
            if plan is None:
                raise ValueError("--bound is sequential CERTIFY's: give it with --radii or --sequential")
            plan["bound"] = self.bound
        return plan


def run_certify(config: CertifyConfig, echo=note, progress: bool = True) -> list[dict] | None:
    """
    Certify ``config.dataset`` (every ``skip``-th input, at most ``max_inputs``) into ``config.output``.

    :param config: The run.
    :param echo: Where notes and warnings go (a callable taking a line; default standard error).
    :param progress: Show a progress bar.
    :return: The records, sorted by index: of the whole run, or of the shard with ``config.shard``; under torchrun
             rank 0 returns the merged records and the other ranks None. With ``config.plot``, the records'
             certified accuracy against radius is saved there too (by rank 0 under torchrun).
    """
    from art_some.evaluation.plots import plot_certified_accuracy
    from art_some.evaluation.runner import certify_dataset
    from art_some.runs.records import tsv_path
    from art_some.runs.report import check_plot_path
    from art_some.runs.shards import merge_ranks, shard_path

    plan = config.sequential_plan()
    check_output(config.output)
    if config.plot is not None:
        check_plot_path(config.plot, others=[config.output, tsv_path(config.output), config_path(config.output)])
    shard, ranked = shard_of_run(config.shard, config.device)
    clf, data, estimator = smoothed_estimator(config, echo)
    warn_small_n(config.n, config.n0, clf.scale, config.alpha, echo)
    indices = list(range(0, len(data), config.skip))[:config.max_inputs]
    header_info = run_info(config.dataset, config.split, config.model, config.data_root, config)
    output = config.output if ranked is None else shard_path(config.output, ranked)
    records = certify_dataset(clf, data, indices, output, n=config.n, method=estimator, run_info=header_info,
                              echo=echo, progress=progress, shard=shard or ranked, sequential=plan)
    if ranked is not None:
        records = merge_ranks(config.output, ranked)
    if records is not None and config.plot is not None:
        plot_certified_accuracy({Path(config.output).name: records}, config.plot)
    return records


def check_output(output) -> None:
    """
    ``--output`` names the JSONL records, whose community TSV goes beside them: a ``.tsv`` name (what Cohen et al.'s
    scripts write) would put records where a reader of TSV logs expects a table, so it is refused in one line.
    """
    if Path(output).suffix.lower() == ".tsv":
        stem = Path(output).with_suffix("")
        raise ValueError(f"--output {output} names the JSONL records; give {stem}.jsonl and the community TSV is "
                         f"written beside it as {stem}.tsv")


def config_path(output) -> Path:
    """
    Where a certify run's resolved configuration goes: beside its records, ``r.jsonl`` -> ``r.config.yaml``; a name
    without ``.jsonl`` keeps its whole name (``res_s0.25`` -> ``res_s0.25.config.yaml``), as its TSV does.
    """
    output = Path(output)
    return output.with_suffix(".config.yaml") if output.suffix == ".jsonl" else output.with_name(
        output.name + ".config.yaml")
