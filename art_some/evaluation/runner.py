"""
Certify a data set with any smoothed estimator, one input at a time, appending each record to a JSONL file so
an interrupted run resumes where it stopped (records are keyed by dataset index, and noise by index too, so a
resumed run writes exactly the records an uninterrupted one would).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm.auto import tqdm

from art_some.core.results import RecordWriter, records_from_result, write_tsv


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
) -> list[dict]:
    """
    Certify ``dataset[i]`` for each ``i`` in ``indices`` and append the records to ``output`` (JSONL); skips
    indices already recorded there; writes the community TSV beside it at the end.

    :param estimator: A smoothed estimator with ``certify_detailed``.
    :param dataset: A torch Dataset of ``(x, label)``.
    :param indices: Dataset indices to certify.
    :param output: JSONL path (created or resumed).
    :param n: Estimation draws; ``n0``, ``alpha``, ``batch_size`` default to the estimator's.
    :param method: Method name stored in each record.
    :param progress: Show a progress bar.
    :return: All records in the file, sorted by index.
    """
    with RecordWriter(output) as writer:
        todo = [int(i) for i in indices if int(i) not in writer.done]
        for i in tqdm(todo, desc="certify", disable=not progress, initial=len(indices) - len(todo), total=len(indices)):
            x, label = dataset[i]
            x = np.asarray(x, dtype=np.float32)[None]
            result = estimator.certify_detailed(x, n=n, n0=n0, alpha=alpha, batch_size=batch_size, indices=[i])
            writer.append(records_from_result(result, [int(label)], [i], method)[0])
        records = sorted(writer.records, key=lambda r: r["idx"])
    tsv = Path(output).with_suffix(".tsv")
    tmp = tsv.with_suffix(".tsv.tmp")
    write_tsv(records, tmp)
    os.replace(tmp, tsv)
    return records
