"""
The predict run behind ``art-some predict`` (Cohen et al.'s ``predict.py``), as a library function over a config
dataclass: ``run_predict(PredictConfig(model="runs/model.safetensors", output="p.jsonl", n=1000))`` builds the
smoothed estimator as certify does (:func:`~art_some.runs.estimator.smoothed_estimator`) and runs PREDICT over
the data set into resumable JSONL records and Cohen et al.'s predict log beside them
(:func:`art_some.evaluation.runner.predict_dataset`).

PREDICT answers a class, or abstains (-1) when a two-sided binomial test of the top two vote counts cannot tell them
apart at alpha; the probability that an answer differs from the smoothed classifier's prediction is at most alpha.
``art-some report`` reads the records (or the log) and gives the accuracy, counting abstentions as errors, and the
abstention rate.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, replace

from art_some.runs.certify import check_output
from art_some.runs.estimator import SmoothingConfig, note, run_info, smoothed_estimator


@dataclass(kw_only=True)
class PredictConfig(SmoothingConfig):
    """What a predict run is: the smoothing options, PREDICT's draws per input, and where the records go."""

    output: str  # the JSONL records (resumed if present); Cohen's predict log goes beside them (.tsv)
    n: int = 100_000  # PREDICT's draws per input (Cohen et al.'s default)
    n0: int | None = None  # PREDICT has no selection draws: must stay None
    max_inputs: int | None = None


def run_predict(config: PredictConfig, echo=note, progress: bool = True) -> list[dict]:
    """
    PREDICT on ``config.dataset`` (every ``skip``-th input, at most ``max_inputs``) into ``config.output``, with
    ``config.n`` draws per input and the test at ``config.alpha``.

    :param config: The run.
    :param echo: Where notes and warnings go (a callable taking a line; default standard error).
    :param progress: Show a progress bar.
    :return: The records of the whole file, sorted by index.
    """
    from art_some.core.validate import positive_int
    from art_some.evaluation.runner import predict_dataset

    if config.n0 is not None:
        raise ValueError(f"n0 is {config.n0}, but PREDICT has no selection draws: give n (its draws per input) only")
    positive_int("n", config.n)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError("art-some predict runs in one process: run it without torchrun")
    check_output(config.output)
    # ART's convention, kept by every estimator: sample_size is PREDICT's number of draws.
    clf, data, estimator = smoothed_estimator(replace(config, n0=config.n), echo)
    indices = list(range(0, len(data), config.skip))[:config.max_inputs]
    return predict_dataset(clf, data, indices, config.output, method=estimator, echo=echo, progress=progress,
                           run_info=run_info(config.dataset, config.split, config.model, config.data_root))
