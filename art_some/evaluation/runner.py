"""
Certify a data set (or PREDICT on it) with any smoothed estimator, many inputs per engine call when n is small,
appending each record to a JSONL file so an interrupted run resumes where it stopped (records are keyed by dataset
index, and noise by index too, so a resumed run writes exactly the records an uninterrupted one would). Certify and
predict runs share one loop (:func:`record_dataset`).

The file's header (:func:`~art_some.runs.header.run_header`) holds what determines the records; a run with other
settings, another model or other data is refused instead of being mixed into the file. Record files, shards,
merges and torchrun are :mod:`art_some.runs`'; the command's policy (which model, which estimator) is
:func:`art_some.runs.certify.run_certify`.
"""
from __future__ import annotations

import contextlib
import functools
import os
import time
from typing import Sequence

import numpy as np

from art_some.core.validate import positive_int, probability
from art_some.estimators.protocol import check_estimator
from art_some.runs.header import DEFAULT_HINT, RunMismatchError, input_hash, run_header
from art_some.runs.progress import progress as progress_of
from art_some.runs.records import (
    PREDICT_TSV_COLUMNS,
    TSV_COLUMNS,
    RecordWriter,
    nonzero_counts,
    records_from_result,
    resume_note,
    tsv_path,
    write_atomically,
    write_tsv,
)
from art_some.runs.shards import shard_plan


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
    shard: tuple[int, int] | None = None,
    sequential: dict | None = None,
) -> list[dict]:
    """
    Certify ``dataset[i]`` for each ``i`` in ``indices`` and append the records to ``output`` (JSONL); skips
    indices already recorded there; writes the community TSV beside it at the end.

    The file's header records this run (estimator, its parameters and weights hash, n, n0, alpha, method and
    ``run_info``); resuming a file with another header raises
    :class:`~art_some.runs.header.RunMismatchError` naming the fields, and so does a recorded input that differs
    from the data set's (every recorded input is compared). Each record stores its input's hash (``input_sha256``);
    a shard's header also fingerprints the whole run's inputs (``plan.data_sha256``).
    A second writer of the same file is refused (:class:`~art_some.runs.records.FileInUseError`).

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
    :param sequential: Certify with sequential CERTIFY (the estimator's ``certify_sequential``) and these options:
                       ``{}`` for radius mode, ``{"radii": [...]}`` for fixed-radius mode, ``tolerance``, ``start``,
                       ``growth``. Records then say each input's ``draws`` and ``stopped_by`` (and
                       ``certified_at``); the header records the options.
    :param shard: ``(i, k)``: certify only shard i of k (every k-th of ``indices``, from the i-th), for a run spread
                  over processes or machines; the header records the shard and the whole index list, so that
                  :func:`~art_some.runs.shards.merge_shards` can check the shards against each other and for
                  completeness.
    :return: All records in the file, sorted by index.
    """
    indices = [int(i) for i in indices]
    check_estimator(estimator, "certify_dataset")
    # Everything checked before the file is opened: a typo must not leave a header that the corrected run then
    # does not match.
    positive_int("n", n)
    if n0 is not None:
        positive_int("n0", n0)
    if alpha is not None:
        probability("alpha", alpha)
    checked = None if sequential is None else _sequential_options(sequential)
    plan = {}
    if shard is not None:
        # Every shard fingerprints the whole run's inputs, so that shards of two copies of a data set do not merge.
        plan = shard_plan(indices, shard, {i: _input_hash(dataset, i) for i in indices})
        i, k = plan["shard"]
        indices = indices[i::k]
    header = run_header(
        estimator,
        "certify",
        method=method,
        n=int(n),
        n0=int(estimator.sample_size if n0 is None else n0),
        alpha=float(estimator.alpha if alpha is None else alpha),
        run_info=run_info,
        plan=plan,
        extra=None if checked is None else {"sequential": checked},
    )
    certify = estimator.certify_detailed if checked is None else functools.partial(
        estimator.certify_sequential, **{k: v for k, v in checked.items() if k != "mode"},
        pool=sequential_pool(estimator, n, batch_size, checked))

    def records_of(x, labels, chunk):
        result = certify(x, n=n, n0=n0, alpha=alpha, batch_size=batch_size, indices=chunk)
        return records_from_result(result, labels, chunk, method)

    per_call = inputs_per_call(estimator, n, n0, batch_size, sequential)
    return record_dataset(dataset, indices, output, header, records_of, per_call, verb=("certify", "certified"),
                          hint=hint, echo=echo, progress=progress, shard=plan.get("shard"))


def predict_dataset(
    estimator,
    dataset,
    indices: Sequence[int],
    output: str | os.PathLike,
    *,
    method: str = "smoothed",
    progress: bool = True,
    run_info: dict | None = None,
    hint: str = DEFAULT_HINT,
    echo=None,
) -> list[dict]:
    """
    PREDICT (Cohen et al.) on ``dataset[i]`` for each ``i`` in ``indices``, with the estimator's ``sample_size``
    draws per input and its ``alpha`` (ART's convention: ``sample_size`` is PREDICT's n), each record appended to
    ``output`` (JSONL, resumable with the same header, lock and input checks as :func:`certify_dataset`), and Cohen
    et al.'s ``predict.py`` log beside it (``idx label predict correct time``, -1 where PREDICT abstains).

    Guarantee: each returned class differs from the smoothed classifier's prediction with probability at most
    ``alpha``. The noise of input ``i`` is keyed by ``i``, so records do not depend on how inputs are batched.

    :param estimator: A smoothed estimator.
    :return: All records in the file, sorted by index: ``idx, label, predict, correct, counts, n, alpha, method,
             seconds`` (``counts``: the votes of the classes that received any, for rules whose scores are vote
             counts; ``scores`` otherwise; ``seconds``: the input's share of its engine call's time).
    """
    indices = [int(i) for i in indices]
    check_estimator(estimator, "predict_dataset")
    n, alpha = int(estimator.sample_size), float(estimator.alpha)
    header = run_header(estimator, "predict", method=method, n=n, alpha=alpha, run_info=run_info)

    def records_of(x, labels, chunk):
        began = time.perf_counter()
        classes, scores, _ = estimator.predict_decisions(x, indices=chunk)
        seconds = (time.perf_counter() - began) / len(chunk)  # the call's time, shared evenly by its inputs
        return [predict_record(idx, label, int(c), row, n, alpha, method, seconds)
                for idx, label, c, row in zip(chunk, labels, classes, scores)]

    per_call = max(1, int(estimator.noise_batch_size) // n)  # small n: many inputs per batch of noisy inputs
    return record_dataset(dataset, indices, output, header, records_of, per_call, verb=("predict", "predicted"),
                          hint=hint, echo=echo, progress=progress, tsv_columns=PREDICT_TSV_COLUMNS)


def predict_record(idx: int, label: int, predicted: int, scores, n: int, alpha: float, method: str,
                   seconds: float) -> dict:
    """One PREDICT record; the rule's scores as ``counts`` when they are vote counts, else as ``scores``."""
    scores = np.asarray(scores)
    votes = {"counts": nonzero_counts(scores.astype(np.int64))} if np.all(scores == np.round(scores)) else \
        {"scores": {str(c): float(scores[c]) for c in np.flatnonzero(scores)}}
    return {"idx": int(idx), "label": int(label), "predict": predicted, "correct": int(predicted == label), **votes,
            "n": int(n), "alpha": float(alpha), "method": method, "seconds": float(seconds)}


def record_dataset(dataset, indices: Sequence[int], output, header: dict, records_of, per_call: int, *,
                   verb: tuple[str, str],
                   hint: str = DEFAULT_HINT, echo=None, progress: bool = True, shard: Sequence[int] | None = None,
                   tsv_columns: Sequence[str] = TSV_COLUMNS) -> list[dict]:
    """
    The one loop of certify and predict runs: open ``output`` with ``header`` (resumed, locked, its recorded inputs
    compared with the data set's), then for each chunk of at most ``per_call`` inputs not yet recorded append
    ``records_of(x, labels, chunk)`` with each input's hash, and write the TSV log (``tsv_columns``) beside it.

    :param records_of: ``records_of(x, labels, chunk) -> records`` for the inputs ``x`` at indices ``chunk``.
    :param verb: What the run does and did (``("certify", "certified")``): the progress bar's name, the resume note.
    :param shard: ``(i, k)`` of a sharded run, for the progress bar.
    :return: All records in the file, sorted by index.
    """
    with RecordWriter(output, header=header, hint=hint,
                      check=lambda writer: _check_recorded_inputs(writer, dataset, hint)) as writer, \
            _discarded_if_empty(writer):
        todo = [int(i) for i in indices if int(i) not in writer.done]
        if writer.records:
            resume_note(echo, progress, output, len(indices) - len(todo), len(indices), verb[1])
        with progress_of(len(indices), len(indices) - len(todo), enabled=progress,
                         desc=verb[0] if shard is None else f"{verb[0]} shard {shard[0]}/{shard[1]}",
                         position=0 if shard is None else shard[0]) as bar:
            for start in range(0, len(todo), per_call):
                chunk = todo[start : start + per_call]
                items = [dataset[i] for i in chunk]
                x = np.stack([np.asarray(item[0], dtype=np.float32) for item in items])
                labels = [int(item[1]) for item in items]
                for record, x_i in zip(records_of(x, labels, chunk), x):
                    writer.append({**record, "input_sha256": input_hash(x_i)})
                bar.update(len(chunk))
        records = sorted(writer.records, key=lambda r: r["idx"])
        # Under the writer's lock, so that two runs cannot interleave their logs either.
        write_atomically(tsv_path(output), lambda tmp: write_tsv(records, tmp, tsv_columns))
    return records


def _input_hash(dataset, idx: int) -> str:
    """The :func:`~art_some.runs.header.input_hash` of ``dataset[idx]``, or a clear error for an index it lacks."""
    if not 0 <= idx < len(dataset):
        raise ValueError(f"index {idx} is not in the data set ({len(dataset)} inputs)")
    return input_hash(np.asarray(dataset[idx][0], dtype=np.float32))


@contextlib.contextmanager
def _discarded_if_empty(writer: RecordWriter):
    """On any failure before the first record, remove the file this run created (its header would block a rerun)."""
    try:
        yield
    except BaseException:
        writer.discard_if_empty()
        raise


def inputs_per_call(estimator, n: int, n0: int | None, batch_size: int | None, sequential: dict | None = None) -> int:
    """
    How many inputs one engine call certifies: enough to fill a noisy batch when n is small (n = 100 with batches
    of 1,000 packs 10 inputs per forward pass), one when n alone fills batches. Sequential CERTIFY takes
    :data:`SEQUENTIAL_CALL_POOLS` pools of :func:`sequential_pool` inputs per call, so that inputs which stop early
    free their places to others in the same batches. Records do not depend on it: every input's noise comes from
    its own stream (keyed by its index and round), and each record is written when its call ends.
    """
    batch = int(batch_size or estimator.noise_batch_size)
    draws = max(int(n) if sequential is None else 1, int(estimator.sample_size if n0 is None else n0))
    if sequential is not None:
        return max(1, batch // draws, SEQUENTIAL_CALL_POOLS * sequential_pool(estimator, n, batch_size, sequential))
    return max(1, batch // draws)


SEQUENTIAL_CALL_POOLS = 2  # more packs fuller batches but writes records later (a kill loses a call)


def sequential_pool(estimator, n: int, batch_size: int | None, sequential: dict) -> int:
    """The inputs in flight at once in sequential CERTIFY: as many as fill one batch with their first rounds."""
    from art_some.core.sequential import DEFAULT_START

    first = min(int(n), int(sequential.get("start", DEFAULT_START)))
    return max(1, int(batch_size or estimator.noise_batch_size) // first)


def _sequential_options(options: dict) -> dict:
    """Sequential CERTIFY's options, checked, as the header records them (all of them, defaults included)."""
    from art_some.core import sequential as seq
    from art_some.core.validate import positive_int

    known = ("radii", "tolerance", "start", "growth", "bound", "spending", "final_share", "futility")
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ValueError(f"sequential takes {', '.join(known)}, got {', '.join(unknown)}")
    radii = options.get("radii")
    start = positive_int("start", options.get("start", seq.DEFAULT_START))
    bound = options.get("bound", seq.DEFAULT_BOUND)
    if bound is not None and bound not in seq.BOUNDS:
        raise ValueError(f"bound must be one of {', '.join(seq.BOUNDS)}, got {bound!r}")
    growth = options.get("growth", seq.DEFAULT_GROWTH)  # None: the bound's own, which each record names
    if growth is not None:
        seq.draw_schedule(start + 1, start, growth)  # checks growth
    chosen = {"spending": options.get("spending", seq.DEFAULT_SPENDING),
              "final_share": options.get("final_share", seq.DEFAULT_FINAL_SHARE),
              "futility": options.get("futility", seq.DEFAULT_FUTILITY)}
    seq.check_sequence_options(**chosen)
    return {"mode": "radius" if radii is None else "fixed_radius",
            "radii": None if radii is None else seq.check_radii(radii).tolist(),
            "tolerance": seq.check_tolerance(options.get("tolerance", seq.DEFAULT_TOLERANCE)),
            "start": start, "growth": None if growth is None else float(growth), "bound": bound, **chosen,
            "final_share": float(chosen["final_share"]), "futility": float(chosen["futility"])}


def _check_recorded_inputs(writer: RecordWriter, dataset, hint: str) -> None:
    """Compare every recorded input with the data set's, so records of other data are not extended."""
    def hash_now(idx):
        if not 0 <= idx < len(dataset):
            return None  # an index this data set does not have: other data
        return input_hash(np.asarray(dataset[idx][0], dtype=np.float32))

    changed = writer.changed_input(hash_now)
    if changed is not None:
        idx, recorded, now = changed
        raise RunMismatchError(writer.path, {f"input {idx} (sha256)": (recorded, now)}, hint)
