"""
Shards of a run and their merge, one for certify's record files and the audit's folders.

A shard ``(i, k)`` takes every k-th input (or chunk) from the i-th; its header records the shard and the run's
whole index list (:func:`shard_plan`), so that :func:`merge_shards` can check the shards against each other (one
run: the same header but for the shard), for completeness (every shard once and finished) and for overlap (no
index twice). A :class:`Layout` says where a run keeps its records: a JSONL file with its header in the first line
(certify), or a folder holding the records and a header file (the audit).
"""
from __future__ import annotations

import errno
import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from art_some.runs.header import check_same_run, data_fingerprint, show
from art_some.runs.records import ReadLock, RecordWriter, read_checked, read_header, read_jsonl

SHARD_KEYS = ("shard", "shard_inputs", "merged_from")  # what differs between the shards of one run and its merge
MAX_NAMED = 5  # missing shards named in a refusal


@dataclass(frozen=True)
class Layout:
    """
    Where a run keeps its records. ``records`` None: the run's path is its JSONL file (header in the first line);
    else the run's path is a folder holding the file ``records`` and the header file ``header``.
    """

    records: str | None = None
    header: str | None = None
    # Messages, formatted with the path: a shard that is not there, an output in the way, an output that an
    # earlier run left and that is not this run's merge.
    noun: str = "record files"
    missing: str = "no such file: {}"
    exists: str = "{} exists: merge writes a new file (give another --output or remove it)"
    not_merged: str = "{} exists and does not hold the merged records of this run; give another --output or remove it"

    def records_path(self, where) -> Path:
        return Path(where) if self.records is None else Path(where) / self.records

    def header_path(self, where) -> Path | None:
        return None if self.header is None else Path(where) / self.header

    def shard_path(self, output, shard: tuple[int, int]) -> Path:
        """The file (or folder) of shard ``(i, k)`` of a run whose merged records go to ``output``."""
        output = Path(output)
        if self.records is not None:
            return output.with_name(f"{output.name}.shard{shard[0]}of{shard[1]}")
        return output.with_name(f"{output.stem}.shard{shard[0]}of{shard[1]}{output.suffix or '.jsonl'}")


RECORD_FILE = Layout()


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
    return hashlib.sha256(np.asarray(indices, dtype=np.int64).tobytes()).hexdigest()


def shard_plan(indices: Sequence[int], shard, hashes: dict | None = None) -> dict:
    """
    The header entries of shard ``(i, k)`` of a run over ``indices``: the shard, and the run's whole index list
    (its length and the hash of the sorted list, which the merged records must match) and data (``data_sha256``,
    the :func:`~art_some.runs.header.data_fingerprint` of ``hashes``, every input's hash, which the records' hashes
    must match).
    """
    i, k = check_shard(shard)
    check_shard_count(k, len(indices), "inputs")
    plan = {"count": len(indices), "sha256": _indices_hash(sorted(int(j) for j in indices))}
    if hashes is not None:
        plan["data_sha256"] = data_fingerprint(hashes)
    return {"shard": [i, k], "plan": plan}


def check_shard_count(k: int, units: int, what: str) -> None:
    """Refuse more shards than ``units`` (inputs, or an audit's chunks): the rest would be empty, and a merge of K
    shards must not have to count to an absurd K."""
    if k > max(1, units):
        raise ValueError(f"--shard I/K: K is {k}, but the run has {units} {what}; K must be at most {max(1, units)}")


def shard_path(output: str | os.PathLike, shard: tuple[int, int]) -> Path:
    """The record file of shard ``(i, k)`` of a certify run whose merged records go to ``output``."""
    return RECORD_FILE.shard_path(output, shard)


def without_shard(header: dict, *also: str) -> dict:
    """A run's header without what says which shard (or merge) a file holds (and without the keys ``also``)."""
    return {k: v for k, v in header.items() if k not in SHARD_KEYS + also}


def check_shards(paths, headers, parts) -> tuple[dict, list[dict]]:
    """
    Check that the record lists ``parts`` (read from ``paths``, with their ``headers``) are the finished shards of
    one run; return its header (the first shard's) and the records merged and sorted by index. A shard holds
    ``header["shard_inputs"]`` inputs where its header says so, else every k-th of the run's list.
    """
    for path, header in zip(paths, headers):
        if not header or "shard" not in header:
            raise ValueError(f"{path} is not the record file of a shard (its header has no shard)")
    base = without_shard(headers[0])
    for path, header in zip(paths[1:], headers[1:]):
        differences = check_same_run(base, without_shard(header))
        if differences:
            shown = "; ".join(f"{key} {show(new)} there, {show(old)} in {paths[0]}"
                              for key, (old, new) in list(differences.items())[:5])
            raise ValueError(f"{path} is not a shard of the same run as {paths[0]}: {shown}")
    plan = headers[0].get("plan", {})
    total = int(plan.get("count", -1))
    k = headers[0]["shard"][1]
    if not isinstance(k, int) or not 1 <= k <= max(1, total):
        raise ValueError(f"{paths[0]}: field shard says {k!r} shards of {total} inputs")
    seen: dict[int, str] = {}
    for path, header in zip(paths, headers):
        i = header["shard"][0]
        if header["shard"][1] != k:
            raise ValueError(f"{path} is shard {i}/{header['shard'][1]}, but {paths[0]} is one of {k} shards")
        if not isinstance(i, int) or not 0 <= i < k:
            raise ValueError(f"{path}: field shard says shard {i!r} of {k}")
        if i in seen:
            raise ValueError(f"shard {i}/{k} is given twice: {seen[i]} and {path}")
        seen[i] = str(path)
    if len(seen) < k:  # named without enumerating all K
        first = [i for i in range(k) if i not in seen][:MAX_NAMED]
        more = f" and {k - len(seen) - len(first)} more" if k - len(seen) > len(first) else ""
        raise ValueError(f"shard(s) {', '.join(f'{i}/{k}' for i in first)}{more} missing: give all {k} record files")
    owner: dict[int, str] = {}
    for path, records in zip(paths, parts):
        for record in records:
            if record["idx"] in owner:
                raise ValueError(f"index {record['idx']} is in {owner[record['idx']]} and in {path}")
            owner[record["idx"]] = str(path)
    for path, header, records in zip(paths, headers, parts):
        expected = int(header.get("shard_inputs", len(range(header["shard"][0], total, k))))
        if len(records) != expected:
            raise ValueError(f"{path} holds {len(records)} of its shard's {expected} inputs: resume that shard with "
                             "the same command before merging")
    merged = sorted((r for records in parts for r in records), key=lambda r: r["idx"])
    if _indices_hash([r["idx"] for r in merged]) != plan.get("sha256"):
        raise ValueError(f"the indices of {', '.join(map(str, paths))} are not the run's index list (plan.sha256)")
    check_fingerprint(paths, headers[0], merged)
    return headers[0], merged


def check_fingerprint(paths, header: dict, records: list[dict]) -> None:
    """The inputs the records say they certified must be the data the header fingerprints (``plan.data_sha256``)."""
    expected = (header.get("plan") or {}).get("data_sha256")
    if expected is None:
        return
    hashes = {r["idx"]: r.get("input_sha256") for r in records}
    if data_fingerprint(hashes) != expected:
        raise ValueError(f"the inputs recorded in {', '.join(map(str, paths))} (input_sha256) are not the data "
                         "their headers fingerprint (plan.data_sha256)")


def merge_shards(sources: Sequence[str | os.PathLike], output: str | os.PathLike, layout: Layout = RECORD_FILE,
                 finish: Callable[[dict, list[dict], Path], None] | None = None) -> tuple[dict, list[dict]]:
    """
    Merge the shards of a run (``--shard I/K``, or the ranks of a ``torchrun`` run) into ``output`` after the checks
    of :func:`check_shards`; every refusal names the file and the field or index. The merged header is the shards'
    without the shard, with ``merged_from``.

    :param sources: The shards' files (or folders, per ``layout``).
    :param output: A new file (or folder).
    :param layout: Where a run keeps its records.
    :param finish: ``finish(header, records, where)``, called before the merged records are put in place at
                   ``output`` (``where``: their staged file or folder): the TSV, the audit's reports.
    :return: The run's header (the first shard's) and the merged records, sorted by index.
    """
    if not sources:
        raise ValueError(f"merge needs the {layout.noun} of every shard")
    headers, parts, locks = [], [], []
    try:
        for source in sources:
            records = layout.records_path(source)
            header_file = layout.header_path(source)
            if not records.is_file() or (header_file is not None and not header_file.is_file()):
                raise FileNotFoundError(layout.missing.format(source))
            locks.append(ReadLock(records, "shard"))  # a shard still being written is not finished
            headers.append(read_header(records))
            parts.append(read_checked(records, headers[-1])[1])  # every record against itself and its header
        base, merged = check_shards([layout.records_path(s) for s in sources], headers, parts)
        if layout.records_path(output).exists():
            raise ValueError(layout.exists.format(output))
        header = {**without_shard(base), "merged_from": len(sources)}
        _write_merge(output, layout, header, merged, lambda where: finish(base, merged, where) if finish else None)
    finally:
        for lock in locks:
            lock.close()
    return base, merged


def _write_merge(output, layout: Layout, header: dict, records: list[dict], finish) -> None:
    """
    Write the merged records (and what ``finish`` adds) under a temporary name, then put them in place in one step,
    never over an existing output: an interrupted merge (SIGINT, a full disk) leaves no file that looks finished.
    """
    output = Path(output)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".merging", dir=output.parent))
    staged = tmp / output.name
    try:
        if layout.records is not None:
            staged.mkdir()
        with RecordWriter(layout.records_path(staged), header=header,
                          header_file=layout.header_path(staged)) as writer:
            for record in records:
                writer.append(record)
            finish(staged)
        _put_in_place(staged, output)
    except FileExistsError:
        raise ValueError(layout.exists.format(output)) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _put_in_place(staged: Path, output: Path) -> None:
    """Move a staged file or folder to ``output`` in one step, never over an existing file or a folder with files."""
    try:
        if staged.is_dir():
            os.rename(staged, output)  # replaces an empty folder only
        else:
            os.link(staged, output)  # unlike a rename, refuses an existing output
    except OSError as err:
        if err.errno in (errno.ENOTEMPTY, errno.EEXIST):
            raise FileExistsError(output) from None
        if staged.is_dir() or output.exists():
            raise
        os.replace(staged, output)  # a file system without hard links


def merged_before(output, first_shard, layout: Layout = RECORD_FILE) -> list[dict]:
    """
    The records of an ``output`` merged by an earlier run, if that run is this one (the same header as its first
    shard's, and every input), else a clear error: a finished torchrun run started again reads them back.
    """
    merged = read_header(layout.records_path(output)) or {}
    shard = read_header(layout.records_path(first_shard)) or {}
    # The whole run identity, the index list (plan) and the data fingerprint included: an earlier run of other
    # inputs of the same count is another run.
    differences = check_same_run(without_shard(merged), without_shard(shard))
    records = read_jsonl(layout.records_path(output))
    if "plan" not in merged or "plan" not in shard or differences \
            or _indices_hash([r["idx"] for r in records]) != shard["plan"].get("sha256"):
        raise ValueError(layout.not_merged.format(output))
    return records


def merge_ranks(output, rank, layout: Layout = RECORD_FILE, merge=None, read_back=None):
    """
    After every rank of a torchrun run has written its shard: rank 0 merges the shards into ``output`` (or reads
    back an ``output`` that an earlier identical run merged) while the others wait. Rank 0 returns the merged
    records (or what ``merge`` / ``read_back`` return), the other ranks None.

    :param rank: ``(rank, world size)``.
    :param merge: ``merge(shards, output)``; default: :func:`merge_records`.
    :param read_back: ``read_back(output, first_shard)``; default: :func:`merged_before`.
    """
    from art_some.runs.distributed import on_rank_zero_after_all

    def work():
        shards = [layout.shard_path(output, (i, rank[1])) for i in range(rank[1])]
        if layout.records_path(output).exists():
            return (read_back or (lambda out, first: merged_before(out, first, layout)))(output, shards[0])
        return (merge or merge_records)(shards, output)

    return on_rank_zero_after_all(rank, work)


def merge_records(paths: Sequence[str | os.PathLike], output: str | os.PathLike) -> list[dict]:
    """
    Merge the record files of a sharded certify run (``certify_dataset(..., shard=(i, k))``, ``art-some certify
    --shard``, or the ranks of a ``torchrun`` run) into one JSONL file and its TSV (:func:`merge_shards`).

    :return: The merged records, sorted by index.
    """
    from art_some.runs.records import tsv_path, write_atomically, write_tsv

    def tsv(header, records, where):
        write_atomically(tsv_path(output), lambda tmp: write_tsv(records, tmp))

    return merge_shards(paths, output, RECORD_FILE, finish=tsv)[1]
