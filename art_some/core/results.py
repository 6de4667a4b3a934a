"""
Certificate records: one dict per input, JSONL append-and-flush with resume, the community TSV format, ACR and
certified accuracy at radii.

A record holds ``idx, label, predict, radius, correct, pA_lower, counts, n0, n, alpha, sigma, method,
seconds``, plus what the estimator adds (e.g. the noise mode and radius space of patch smoothing); ``counts`` maps
the top classes of the estimation counts to their votes. The community TSV keeps
``idx label predict radius correct time`` (time as ``H:MM:SS.ffffff``), as published by Cohen et al. and
the papers that followed.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

TSV_COLUMNS = ("idx", "label", "predict", "radius", "correct", "time")
TOP_COUNTS = 2


def records_from_result(result, labels: Sequence[int], indices: Sequence[int], method: str) -> list[dict]:
    """
    Per-input records from a :class:`~art_some.core.certify.CertifyResult`.

    :param result: The certification outcome for N inputs.
    :param labels: True labels (N,).
    :param indices: Dataset indices (N,).
    :param method: Name of the method or estimator, stored with each record.
    :return: list of N record dicts, JSON-serialisable.
    """
    records = []
    sigma = np.broadcast_to(np.asarray(result.sigma, dtype=np.float64), (len(result),))
    for j in range(len(result)):
        counts = result.counts_estimation[j]
        top = np.argsort(-counts, kind="stable")[:TOP_COUNTS]
        records.append(
            {
                "idx": int(indices[j]),
                "label": int(labels[j]),
                "predict": int(result.predict[j]),
                "radius": float(result.radius[j]),
                "correct": int(result.predict[j] == labels[j]),
                "pA_lower": float(result.p_lower[j]),
                "counts": {str(int(c)): int(counts[c]) for c in top},
                "n0": result.n0,
                "n": result.n,
                "alpha": result.alpha,
                "sigma": float(sigma[j]),
                "method": method,
                "seconds": float(result.seconds[j]) if len(result.seconds) else 0.0,
                **{key: _json_value(value, j, len(result)) for key, value in result.extra.items()},
            }
        )
    return records


def _json_value(value, j: int, n: int):
    """Input ``j``'s entry of a per-input array (length ``n``), or a value shared by all inputs, as plain JSON."""
    if isinstance(value, np.ndarray) and value.ndim >= 1 and len(value) == n:
        value = value[j]
    return value.tolist() if isinstance(value, (np.ndarray, np.generic)) else value


class RecordWriter:
    """
    Appends records to a JSONL file, flushing each line, so that a killed run loses at most the line it was
    writing. Opening an existing file resumes it: complete records are kept (see :attr:`done`), a torn last
    line is cut off, and records whose ``idx`` is already present are refused.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.records: list[dict] = []
        if self.path.exists():
            self.records = _read_jsonl_resumable(self.path)
        self.done = {r["idx"] for r in self.records}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")

    def append(self, record: dict) -> None:
        """Write one record and flush it to disk."""
        if record["idx"] in self.done:
            raise ValueError(f"record for idx {record['idx']} is already in {self.path}")
        self._file.write(json.dumps(record, sort_keys=False) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())
        self.records.append(record)
        self.done.add(record["idx"])

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "RecordWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _read_jsonl_resumable(path: Path) -> list[dict]:
    """Read complete records; truncate a torn final line (an interrupted write) so appending stays valid."""
    data = path.read_bytes()
    keep = data.rfind(b"\n") + 1
    if keep < len(data):
        with open(path, "r+b") as f:
            f.truncate(keep)
    return read_jsonl(path)


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Read records from a JSONL file, with a clear error naming the first bad line."""
    records, seen = [], set()
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}: line {number} is not valid JSON ({err.msg})") from None
            if not isinstance(record, dict) or not {"idx", "radius", "correct"} <= record.keys():
                raise ValueError(f"{path}: line {number} is not a certificate record")
            if record["idx"] in seen:
                raise ValueError(f"{path}: line {number} repeats idx {record['idx']}; the file is corrupt")
            seen.add(record["idx"])
            records.append(record)
    return records


def _format_time(seconds: float) -> str:
    """H:MM:SS.ffffff as ``str(timedelta)`` writes it below a day, with hours beyond 24 instead of days."""
    micro = int(round(float(seconds) * 1e6))
    hours, rest = divmod(micro, 3_600_000_000)
    minutes, rest = divmod(rest, 60_000_000)
    secs, micro = divmod(rest, 1_000_000)
    return f"{hours}:{minutes:02d}:{secs:02d}" + (f".{micro:06d}" if micro else "")


def _parse_time(text: str) -> float:
    hours, minutes, secs = text.split(":")
    return int(hours) * 3600 + int(minutes) * 60 + float(secs)


def _radius_text(radius: float) -> str:
    """Three decimals rounded *down*, so a log read back never claims a larger radius than was certified."""
    return f"{math.floor(float(radius) * 1000 + 1e-9) / 1000:.3f}"


def write_tsv(records: Iterable[dict], path: str | os.PathLike) -> None:
    """Write records in the community TSV format (``idx label predict radius correct time``)."""
    with open(path, "w", encoding="utf-8") as f:
        f.write("\t".join(TSV_COLUMNS) + "\n")
        for r in sorted(records, key=lambda r: r["idx"]):
            radius, time = _radius_text(r["radius"]), _format_time(r["seconds"])
            row = (r["idx"], r["label"], r["predict"], radius, r["correct"], time)
            f.write("\t".join(str(v) for v in row) + "\n")


def read_tsv(path: str | os.PathLike) -> list[dict]:
    """Read a community TSV log into records (``idx, label, predict, radius, correct, seconds``)."""
    with open(path, encoding="utf-8") as f:
        header = f.readline().rstrip("\n").split("\t")
        if tuple(header[:5]) != TSV_COLUMNS[:5]:
            raise ValueError(f"{path}: not a certification log; header must start with {' '.join(TSV_COLUMNS[:5])}")
        records = []
        for number, line in enumerate(f, 2):
            fields = line.rstrip("\n").split("\t")
            if not line.strip():
                continue
            try:
                records.append(
                    {
                        "idx": int(fields[0]),
                        "label": int(fields[1]),
                        "predict": int(fields[2]),
                        "radius": float(fields[3]),
                        "correct": int(fields[4]),
                        "seconds": _parse_time(fields[5]) if len(fields) > 5 else 0.0,
                    }
                )
            except (ValueError, IndexError):
                raise ValueError(f"{path}: line {number} is malformed: {line.strip()!r}") from None
    return records


def read_records(path: str | os.PathLike) -> list[dict]:
    """Read records from a ``.jsonl`` file or a community ``.tsv`` log (chosen by content, not name)."""
    with open(path, encoding="utf-8") as f:
        first = f.readline().lstrip()
    return read_jsonl(path) if first.startswith("{") else read_tsv(path)


def certified_accuracy(records: Sequence[dict], radii: Sequence[float]) -> np.ndarray:
    """Fraction of inputs that are correct with a certified radius >= r, for each r in ``radii``."""
    correct = np.array([r["correct"] for r in records], dtype=bool)
    radius = np.array([r["radius"] for r in records], dtype=np.float64)
    if len(records) == 0:
        return np.zeros(len(radii))
    return np.array([np.mean(correct & (radius >= r)) for r in radii])


def average_certified_radius(records: Sequence[dict]) -> float:
    """ACR: the mean over all inputs of ``correct * radius`` (abstentions and errors count as 0)."""
    if len(records) == 0:
        return 0.0
    return float(np.mean([r["correct"] * r["radius"] for r in records]))


def abstention_rate(records: Sequence[dict]) -> float:
    """Fraction of inputs on which CERTIFY abstained."""
    if len(records) == 0:
        return 0.0
    return float(np.mean([r["predict"] == -1 for r in records]))


def default_radii(records: Sequence[dict], step: float = 0.25) -> np.ndarray:
    """The radius grid 0, step, ... up to the largest certified radius (the grid papers report)."""
    largest = max((r["radius"] for r in records), default=0.0)
    return np.round(np.arange(0.0, largest + step, step), 10)


def summary_table(records: Sequence[dict], radii: Sequence[float] | None = None) -> str:
    """A plain-text table: certified accuracy (%) at each radius, ACR, abstention rate and input count."""
    radii = default_radii(records) if radii is None else np.asarray(radii, dtype=np.float64)
    acc = certified_accuracy(records, radii)
    head = ["r"] + [f"{r:g}" for r in radii]
    row = ["cert. acc. (%)"] + [f"{100 * a:.1f}" for a in acc]
    widths = [max(len(h), len(v)) for h, v in zip(head, row)]
    lines = [
        "  ".join(h.rjust(w) for h, w in zip(head, widths)),
        "  ".join(v.rjust(w) for v, w in zip(row, widths)),
        f"ACR {average_certified_radius(records):.3f}   abstained {100 * abstention_rate(records):.1f}%   "
        f"inputs {len(records)}",
    ]
    return "\n".join(lines)
