"""
Certify a data set with any smoothed estimator, many inputs per engine call when n is small, appending each record
to a JSONL file so an interrupted run resumes where it stopped (records are keyed by dataset index, and noise by
index too, so a resumed run writes exactly the records an uninterrupted one would).

The file's header (:func:`~art_some.core.results.provenance`) holds what determines the records; a run with other
settings, another model or other data is refused instead of being mixed into the file.
"""
from __future__ import annotations

import functools
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
from art_some.core.validate import positive_int, probability

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
    shard: tuple[int, int] | None = None,
    sequential: dict | None = None,
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
    :param sequential: Certify with sequential CERTIFY (the estimator's ``certify_sequential``) and these options:
                       ``{}`` for radius mode, ``{"radii": [...]}`` for fixed-radius mode, ``tolerance``, ``start``,
                       ``growth``. Records then say each input's ``draws`` and ``stopped_by`` (and
                       ``certified_at``); the header records the options.
    :param shard: ``(i, k)``: certify only shard i of k (every k-th of ``indices``, from the i-th), for a run spread
                  over processes or machines; the header records the shard and the whole index list, so that
                  :func:`merge_records` can check the shards against each other and for completeness.
    :return: All records in the file, sorted by index.
    """
    indices = [int(i) for i in indices]
    if sequential is not None and not callable(getattr(estimator, "certify_sequential", None)):
        raise ValueError(f"{type(estimator).__name__} has no certify_sequential: sequential certification (--radii, "
                         "--sequential) needs an estimator built on art_some.SmoothedClassifier")
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
        plan = shard_plan(indices, shard)
        i, k = plan["shard"]
        indices = indices[i::k]
    header = provenance(
        estimator,
        kind="certify",
        method=method,
        n=int(n),
        n0=int(getattr(estimator, "sample_size", 0) if n0 is None else n0),
        alpha=float(getattr(estimator, "alpha", 0.0) if alpha is None else alpha),
        **(run_info or {}),
        **plan,
        **({} if checked is None else {"sequential": checked}),
    )
    with RecordWriter(output, header=header, hint=hint) as writer:
        _check_recorded_inputs(writer, dataset, hint)
        todo = [int(i) for i in indices if int(i) not in writer.done]
        if writer.records:
            resume_note(echo, progress, output, len(indices) - len(todo), len(indices), "certified")
        per_call = inputs_per_call(estimator, n, n0, batch_size, sequential)
        with tqdm(desc="certify" if shard is None else f"certify shard {plan['shard'][0]}/{plan['shard'][1]}",
                  position=0 if shard is None else plan["shard"][0], disable=not progress,
                  initial=len(indices) - len(todo), total=len(indices), unit="input",
                  mininterval=bar_interval()) as bar:
            for start in range(0, len(todo), per_call):
                chunk = todo[start : start + per_call]
                items = [dataset[i] for i in chunk]
                x = np.stack([np.asarray(item[0], dtype=np.float32) for item in items])
                labels = [int(item[1]) for item in items]
                certify = estimator.certify_detailed if checked is None else functools.partial(
                    estimator.certify_sequential, **{k: v for k, v in checked.items() if k != "mode"})
                result = certify(x, n=n, n0=n0, alpha=alpha, batch_size=batch_size, indices=chunk)
                for record, x_i in zip(records_from_result(result, labels, chunk, method), x):
                    writer.append({**record, "input_sha256": input_hash(x_i)})
                bar.update(len(chunk))
        records = sorted(writer.records, key=lambda r: r["idx"])
        # Under the writer's lock, so that two runs cannot interleave their logs either.
        write_atomically(Path(output).with_suffix(".tsv"), lambda tmp: write_tsv(records, tmp))
    return records


def inputs_per_call(estimator, n: int, n0: int | None, batch_size: int | None, sequential: dict | None = None) -> int:
    """
    How many inputs one engine call certifies: enough to fill a noisy batch when n is small (n = 100 with batches
    of 1,000 packs 10 inputs per forward pass), one when n alone fills batches; sequential CERTIFY packs by its
    first round's draws, since most inputs stop after a few rounds. Records do not depend on it: every input's
    noise comes from its own stream (keyed by its index), and each record is written when its call ends.
    """
    from art_some.core.sequential import DEFAULT_START

    batch = int(batch_size or getattr(estimator, "noise_batch_size", 1))
    first = int(n) if sequential is None else min(int(n), int(sequential.get("start", DEFAULT_START)))
    draws = max(first, int(getattr(estimator, "sample_size", 1) if n0 is None else n0))
    return max(1, batch // draws)


def _sequential_options(options: dict) -> dict:
    """Sequential CERTIFY's options, checked, as the header records them (all of them, defaults included)."""
    from art_some.core.sequential import (
        DEFAULT_GROWTH,
        DEFAULT_START,
        DEFAULT_TOLERANCE,
        check_radii,
        check_tolerance,
        draw_schedule,
    )
    from art_some.core.validate import positive_int

    unknown = sorted(set(options) - {"radii", "tolerance", "start", "growth"})
    if unknown:
        raise ValueError(f"sequential takes radii, tolerance, start and growth, got {', '.join(unknown)}")
    radii = options.get("radii")
    start, growth = positive_int("start", options.get("start", DEFAULT_START)), options.get("growth", DEFAULT_GROWTH)
    draw_schedule(start + 1, start, growth)  # checks growth
    return {"mode": "radius" if radii is None else "fixed_radius",
            "radii": None if radii is None else check_radii(radii).tolist(),
            "tolerance": check_tolerance(options.get("tolerance", DEFAULT_TOLERANCE)),
            "start": start, "growth": float(growth)}


def bar_interval() -> float:
    """Seconds between progress updates: often on a terminal, every half minute in a log file (a SLURM job's)."""
    return 0.5 if sys.stderr.isatty() else 30.0


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



def check_shard(shard) -> tuple[int, int]:
    """``(i, k)`` with 0 <= i < k, or a clear error (``"1/4"`` as text is accepted too)."""
    if isinstance(shard, str):
        left, sep, right = shard.partition("/")
        if not sep or not left.strip().isdigit() or not right.strip().isdigit():
            raise ValueError(f"--shard must look like I/K with 0 <= I < K, e.g. 0/4, got {shard!r}")
        shard = (int(left), int(right))
    i, k = (int(v) for v in shard)
    if not 0 <= i < k:
        raise ValueError(f"--shard must look like I/K with 0 <= I < K, e.g. 0/4, got {i}/{k}")
    return i, k


def _indices_hash(indices) -> str:
    import hashlib

    return hashlib.sha256(np.asarray(indices, dtype=np.int64).tobytes()).hexdigest()


def merge_records(paths: Sequence[str | os.PathLike], output: str | os.PathLike) -> list[dict]:
    """
    Merge the record files of a sharded run (``certify_dataset(..., shard=(i, k))``, ``art-some certify --shard``,
    or the ranks of a ``torchrun`` run) into one JSONL file and its TSV, after checking that they are one run:
    the same header but for the shard (settings, model, data, estimator, versions), shards 0..k-1 each once, no
    index twice, and together exactly the run's index list. Every refusal names the file and the field or index.

    :return: The merged records, sorted by index.
    """
    from art_some.core.results import read_header, read_jsonl

    if not paths:
        raise ValueError("merge needs the record files of every shard")
    headers, parts = [], []
    for path in paths:
        if not Path(path).is_file():
            raise FileNotFoundError(f"no such file: {path}")
        headers.append(read_header(path))
        parts.append(read_jsonl(path))
    base, merged = check_shards(paths, headers, parts)
    if Path(output).exists():
        raise ValueError(f"{output} exists: merge writes a new file (give another --output or remove it)")
    header = {**without_shard(base, "plan"), "merged_from": len(paths)}
    with RecordWriter(output, header=header) as writer:
        for record in merged:
            writer.append(record)
        write_atomically(Path(output).with_suffix(".tsv"), lambda tmp: write_tsv(merged, tmp))
    return merged


SHARD_KEYS = ("shard", "shard_inputs", "merged_from")  # what differs between the shards of one run and its merge


def without_shard(header: dict, *also: str) -> dict:
    """A run's header without what says which shard (or merge) a file holds (and without the keys ``also``)."""
    return {k: v for k, v in header.items() if k not in SHARD_KEYS + also}


def check_shards(paths, headers, parts) -> tuple[dict, list[dict]]:
    """
    Check that the record lists ``parts`` (read from ``paths``, with their ``headers``) are the finished shards of
    one run; return its header (the first shard's) and the records merged and sorted by index. A shard holds
    ``header["shard_inputs"]`` inputs where its header says so, else every k-th of the run's list.
    """
    from art_some.core.results import _show, check_same_run

    for path, header in zip(paths, headers):
        if not header or "shard" not in header:
            raise ValueError(f"{path} is not the record file of a shard (its header has no shard)")
    base = without_shard(headers[0])
    for path, header in zip(paths[1:], headers[1:]):
        differences = check_same_run(base, without_shard(header))
        if differences:
            shown = "; ".join(f"{key} {_show(new)} there, {_show(old)} in {paths[0]}"
                              for key, (old, new) in list(differences.items())[:5])
            raise ValueError(f"{path} is not a shard of the same run as {paths[0]}: {shown}")
    k = headers[0]["shard"][1]
    seen: dict[int, str] = {}
    for path, header in zip(paths, headers):
        i = header["shard"][0]
        if header["shard"][1] != k:
            raise ValueError(f"{path} is shard {i}/{header['shard'][1]}, but {paths[0]} is one of {k} shards")
        if i in seen:
            raise ValueError(f"shard {i}/{k} is given twice: {seen[i]} and {path}")
        seen[i] = str(path)
    missing = sorted(set(range(k)) - set(seen))
    if missing:
        raise ValueError(f"shard(s) {', '.join(f'{i}/{k}' for i in missing)} missing: give all {k} record files")
    owner: dict[int, str] = {}
    for path, records in zip(paths, parts):
        for record in records:
            if record["idx"] in owner:
                raise ValueError(f"index {record['idx']} is in {owner[record['idx']]} and in {path}")
            owner[record["idx"]] = str(path)
    plan = headers[0].get("plan", {})
    total = int(plan.get("count", -1))
    for path, header, records in zip(paths, headers, parts):
        expected = int(header.get("shard_inputs", len(range(header["shard"][0], total, k))))
        if len(records) != expected:
            raise ValueError(f"{path} holds {len(records)} of its shard's {expected} inputs: resume that shard with "
                             "the same command before merging")
    merged = sorted((r for records in parts for r in records), key=lambda r: r["idx"])
    if _indices_hash([r["idx"] for r in merged]) != plan.get("sha256"):
        raise ValueError(f"the indices of {', '.join(map(str, paths))} are not the run's index list (plan.sha256)")
    return headers[0], merged


def shard_plan(indices: Sequence[int], shard) -> dict:
    """
    The header entries of shard ``(i, k)`` of a run over ``indices``: the shard, and the run's whole index list
    (its length and the hash of the sorted list, which the merged records must match).
    """
    i, k = check_shard(shard)
    return {"shard": [i, k], "plan": {"count": len(indices), "sha256": _indices_hash(sorted(int(j) for j in indices))}}


def torchrun_shard() -> tuple[int, int] | None:
    """
    ``(rank, world size)`` when launched by ``torchrun`` with more than one process (the process group is
    initialised once, with gloo: certification only needs a barrier, and gloo runs beside CUDA too), else None.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo")
    return dist.get_rank(), dist.get_world_size()


def shard_path(output: str | os.PathLike, shard: tuple[int, int]) -> Path:
    """The record file of shard ``(i, k)`` of a run whose merged records go to ``output``."""
    output = Path(output)
    return output.with_name(f"{output.stem}.shard{shard[0]}of{shard[1]}{output.suffix or '.jsonl'}")


def merge_torchrun_shards(output: str | os.PathLike, shard: tuple[int, int]) -> list[dict] | None:
    """
    After every rank has certified its shard: rank 0 merges the shard files into ``output`` (checked as
    :func:`merge_records` checks them) while the others wait; every rank then returns the merged records (rank
    0) or None. A finished ``output`` from an earlier identical run is read back instead of merged again.
    """
    def merge():
        paths = [shard_path(output, (i, shard[1])) for i in range(shard[1])]
        return _merged_before(output, paths[0]) if Path(output).exists() else merge_records(paths, output)

    return on_rank_zero_after_all(shard, merge)


def on_rank_zero_after_all(shard: tuple[int, int], work):
    """
    Once every rank has reached this point, rank 0 runs ``work`` while the others wait; rank 0 returns its
    result, the other ranks None (the merge step of a torchrun run: certify's records, evaluate's audit).
    """
    import torch.distributed as dist

    dist.barrier()
    result = work() if shard[0] == 0 else None
    dist.barrier()
    return result


def _merged_before(output, first_shard) -> list[dict]:
    """The records of an ``output`` merged by an earlier run, if that run is this one (else a clear error)."""
    from art_some.core.results import check_same_run, read_header, read_jsonl

    merged, shard = read_header(output) or {}, read_header(first_shard) or {}
    differences = check_same_run(without_shard(merged, "plan"), without_shard(shard, "plan"))
    records = read_jsonl(output)
    if differences or len(records) != shard.get("plan", {}).get("count"):
        raise ValueError(f"{output} exists and does not hold the merged records of this run; give another --output "
                         "or remove it")
    return records
