"""
Certify a data set with any smoothed estimator, many inputs per engine call when n is small, appending each record
to a JSONL file so an interrupted run resumes where it stopped (records are keyed by dataset index, and noise by
index too, so a resumed run writes exactly the records an uninterrupted one would).

The file's header (:func:`~art_some.core.results.provenance`) holds what determines the records; a run with other
settings, another model or other data is refused instead of being mixed into the file.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm.auto import tqdm

from art_some.core.results import (
    DEFAULT_HINT,
    RecordWriter,
    RunMismatchError,
    input_hash,
    provenance,
    records_from_result,
    write_atomically,
    write_tsv,
)

CHECKED_INPUTS = 8  # recorded inputs compared with the data set on resume (a cheap check that it is the same data)


def certify_dataset(
    estimator,
    dataset,
    indices: Sequence[int],
    output: str | os.PathLike,
    *,
    n: int,
    n0: int | None = None,
    alpha: float | None = None,
    batch_size: int | None = None,
    method: str = "smoothed",
    progress: bool = True,
    run_info: dict | None = None,
    hint: str = DEFAULT_HINT,
    echo=None,
) -> list[dict]:
    """
    Certify ``dataset[i]`` for each ``i`` in ``indices`` and append the records to ``output`` (JSONL); skips
    indices already recorded there; writes the community TSV beside it at the end.

    The file's header records this run (estimator, its parameters and weights hash, n, n0, alpha, method and
    ``run_info``); resuming a file with another header raises
    :class:`~art_some.core.results.RunMismatchError` naming the fields, and so does a recorded input that differs
    from the data set's (the first few are compared). Each record stores its input's hash (``input_sha256``).
    A second writer of the same file is refused (:class:`~art_some.core.results.FileInUseError`).

    :param estimator: A smoothed estimator with ``certify_detailed``.
    :param dataset: A torch Dataset of ``(x, label)``.
    :param indices: Dataset indices to certify.
    :param output: JSONL path (created or resumed).
    :param n: Estimation draws; ``n0``, ``alpha``, ``batch_size`` default to the estimator's.
    :param method: Method name stored in each record.
    :param progress: Show a progress bar.
    :param run_info: JSON-able header entries the caller knows (the command line's data set, split and model
                     reference); a ``source`` entry is recorded but not compared.
    :param hint: The end of a mismatch message (what to do instead).
    :param echo: Where the line saying that a run resumes goes (a callable taking a string; default: standard
                 error when ``progress`` is on).
    :return: All records in the file, sorted by index.
    """
    header = provenance(
        estimator,
        kind="certify",
        method=method,
        n=int(n),
        n0=int(getattr(estimator, "sample_size", 0) if n0 is None else n0),
        alpha=float(getattr(estimator, "alpha", 0.0) if alpha is None else alpha),
        **(run_info or {}),
    )
    with RecordWriter(output, header=header, hint=hint) as writer:
        _check_recorded_inputs(writer, dataset, hint)
        todo = [int(i) for i in indices if int(i) not in writer.done]
        if writer.records:
            resume_note(echo, progress, output, len(indices) - len(todo), len(indices), "certified")
        per_call = inputs_per_call(estimator, n, n0, batch_size)
        with tqdm(desc="certify", disable=not progress, initial=len(indices) - len(todo), total=len(indices),
                  unit="input") as bar:
            for start in range(0, len(todo), per_call):
                chunk = todo[start : start + per_call]
                items = [dataset[i] for i in chunk]
                x = np.stack([np.asarray(item[0], dtype=np.float32) for item in items])
                labels = [int(item[1]) for item in items]
                result = estimator.certify_detailed(x, n=n, n0=n0, alpha=alpha, batch_size=batch_size,
                                                    indices=chunk)
                for record, x_i in zip(records_from_result(result, labels, chunk, method), x):
                    writer.append({**record, "input_sha256": input_hash(x_i)})
                bar.update(len(chunk))
        records = sorted(writer.records, key=lambda r: r["idx"])
        # Under the writer's lock, so that two runs cannot interleave their logs either.
        write_atomically(Path(output).with_suffix(".tsv"), lambda tmp: write_tsv(records, tmp))
    return records


def inputs_per_call(estimator, n: int, n0: int | None, batch_size: int | None) -> int:
    """
    How many inputs one engine call certifies: enough to fill a noisy batch when n is small (n = 100 with batches
    of 1,000 packs 10 inputs per forward pass), one when n alone fills batches. Records do not depend on it: every
    input's noise comes from its own stream (keyed by its index), and each record is written when its call ends.
    """
    batch = int(batch_size or getattr(estimator, "noise_batch_size", 1))
    draws = max(int(n), int(getattr(estimator, "sample_size", 1) if n0 is None else n0))
    return max(1, batch // draws)


def resume_note(echo, progress: bool, path, done: int, total: int, verb: str) -> None:
    """Say that a run resumes and from where (to ``echo``, else to standard error with the progress bar)."""
    message = f"Resuming {Path(path).name}: {done} of {total} inputs already {verb}"
    if echo is not None:
        echo(message)
    elif progress:
        print(message, file=sys.stderr)


def _check_recorded_inputs(writer: RecordWriter, dataset, hint: str) -> None:
    """Compare the first recorded inputs with the data set's, so records of other data are not extended."""
    for record in [r for r in writer.records if "input_sha256" in r][:CHECKED_INPUTS]:
        idx = int(record["idx"])
        now = input_hash(np.asarray(dataset[idx][0], dtype=np.float32)) if 0 <= idx < len(dataset) else None
        if now != record["input_sha256"]:
            raise RunMismatchError(writer.path, {f"input {idx} (sha256)": (record["input_sha256"], now)}, hint)

