"""
Certificate records: one dict per input, JSONL append-and-flush with resume, the community TSV format, ACR and
certified accuracy at radii.

A record holds ``idx, label, predict, radius, correct, pA_lower, counts, n0, n, alpha, sigma, method,
seconds``, plus what the estimator adds (e.g. the noise mode and radius space of patch smoothing); ``counts`` maps
the top classes of the estimation counts to their votes. The community TSV keeps
``idx label predict radius correct time`` (time as ``H:MM:SS.ffffff``), as published by Cohen et al. and
the papers that followed.

A JSONL record file starts with a **header** line ``{"art_some_header": {...}}`` (see :func:`provenance`): the
schema version, the settings that determine the records, the model's weights hash, the estimator and its
parameters, the data set and split, and the art-some and torch versions. A writer resumes a file only when the
header of this run equals the file's (:func:`check_same_run`), and only one writer holds a file at a time. Readers
(:func:`read_jsonl`, :func:`read_records`) return the records alone, so header-less files of earlier versions
still read; :func:`read_header` returns the header.
"""
from __future__ import annotations

import errno
import hashlib
import json
import math
import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

try:
    import fcntl
except ImportError:  # not on Windows: writers are then not locked
    fcntl = None

TSV_COLUMNS = ("idx", "label", "predict", "radius", "correct", "time")
TOP_COUNTS = 2
HEADER_KEY = "art_some_header"
SCHEMA_VERSION = 1
# Header entries kept for the record but not compared on resume: where the model and data were read from (a moved
# checkpoint is the same model; its weights hash is what is compared).
UNCHECKED = frozenset({"source"})
# Estimator parameters that are not part of the header: objects that do not change certificates (loss,
# optimizer), the model (hashed instead), the batch size (results do not depend on it), the device (recorded as
# the device actually used) and those the header holds under their own name (sigma, seed).
_NOT_PARAMS = frozenset({"model", "loss", "optimizer", "device_type", "noise_batch_size", "scale", "seed"})
DEFAULT_HINT = "use another --output or remove the file"
MAX_SHOWN = 5  # differing fields named in a mismatch message


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
                **_sequential_fields(result, j),
            }
        )
    return records


def _sequential_fields(result, j: int) -> dict:
    """What sequential CERTIFY adds to input ``j``'s record: its draws, why it stopped, its fixed-radius answers."""
    fields = {}
    if getattr(result, "draws", None) is not None:
        fields.update(draws=int(result.draws[j]), stopped_by=str(result.stopped_by[j]))
    if getattr(result, "certified_at", None) is not None:
        fields["certified_at"] = {str(float(r)): bool(c) for r, c in zip(result.radii, result.certified_at[j])}
    return fields


def _json_value(value, j: int, n: int):
    """Input ``j``'s entry of a per-input array (length ``n``), or a value shared by all inputs, as plain JSON."""
    if isinstance(value, np.ndarray) and value.ndim >= 1 and len(value) == n:
        value = value[j]
    return value.tolist() if isinstance(value, (np.ndarray, np.generic)) else value


# ----------------------------------------------------------------------------------------------------------------
# Provenance: the header of a record file
# ----------------------------------------------------------------------------------------------------------------
def weights_hash(module) -> str:
    """
    SHA-256 over a torch module's ``state_dict`` (parameters and buffers): names in sorted order, each with its
    dtype, shape and raw bytes, so equal weights give equal hashes whatever the device or the insertion order.

    :param module: A ``torch.nn.Module``.
    :return: The hex digest.
    """
    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        tensor = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def input_hash(x) -> str:
    """A short content hash (16 hex digits of SHA-256) of one input as float32, stored in its record."""
    return hashlib.sha256(np.ascontiguousarray(x, dtype=np.float32).tobytes()).hexdigest()[:16]


def _qualname(obj) -> str:
    cls = type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def _jsonable(value, depth: int = 0):
    """
    A JSON form of an estimator parameter that changes when the parameter does: plain values as they are, small
    arrays as lists, large ones and torch modules as a hash, ART preprocessors by their own ``params``.
    """
    import torch

    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, torch.nn.Module):
        return {"class": _qualname(value), "sha256": weights_hash(value)}
    if isinstance(value, (np.ndarray, torch.Tensor)):
        array = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else value
        if array.size <= 64:
            return array.tolist()
        return {"shape": list(array.shape), "sha256": hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()}
    if depth >= 4:
        return _qualname(value)
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, depth + 1) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v, depth + 1) for k, v in value.items()}
    names = getattr(value, "params", None)  # ART's preprocessors and defences list their settings there
    if isinstance(names, (list, tuple)) and all(isinstance(p, str) for p in names):
        return {"class": _qualname(value), **{p: _jsonable(getattr(value, p, None), depth + 1) for p in names}}
    # Any other object (a sigma rule, ...) by its public attributes, and its private arrays: a kNN rule keeps its
    # reference data in ``_reference``, which decides the certificates (other private state may be a cache).
    fields = {k.lstrip("_"): v for k, v in sorted(getattr(value, "__dict__", {}).items())
              if not callable(v) and (not k.startswith("_") or isinstance(v, (np.ndarray, torch.Tensor)))}
    return {"class": _qualname(value), **{k: _jsonable(v, depth + 1) for k, v in fields.items()}}


def provenance(estimator, **settings) -> dict:
    """
    The header of a record file: what determines its records. From the estimator: its class and JSON-able
    parameters (``estimator_params``), sigma (``scale``), seed, the device its noise is drawn on and the SHA-256
    of its model's weights (:func:`weights_hash`); then the schema version, the art-some and torch versions, and
    ``settings`` (n, n0, alpha, the data set and split, ...; a ``source`` dict is recorded but never compared).

    Resuming requires the same header, versions included: a different schema cannot be read as the same run; a
    different art-some may change a certificate rule or the noise keying, and a different torch (or device) may
    draw other noise from the same seeds, so records of the two would not be one reproducible run. Finish a run
    with the versions that started it, or write a new file.

    :param estimator: A smoothed estimator (its ``model`` is hashed).
    :param settings: JSON-able settings of the run.
    :return: The header as it reads back from JSON (tuples as lists).
    """
    import torch

    from art_some import __version__

    model = getattr(estimator, "model", None)
    device = getattr(estimator, "device", None)
    params = estimator.get_params() if callable(getattr(estimator, "get_params", None)) else {}
    settings = dict(settings)
    source = settings.pop("source", None)
    header = {
        "schema": SCHEMA_VERSION,
        "art_some": __version__,
        "torch": torch.__version__,
        **settings,  # first, so that a mismatch message names the run's own settings before the estimator's
        "estimator": _qualname(estimator),
        "device": None if device is None else torch.device(device).type,
        "sigma": _jsonable(getattr(estimator, "scale", None)),
        "seed": _jsonable(getattr(estimator, "seed", None)),
        "model_sha256": weights_hash(model) if isinstance(model, torch.nn.Module) else None,
        "estimator_params": {k: _jsonable(v) for k, v in params.items() if k not in _NOT_PARAMS},
    }
    if source is not None:
        header["source"] = source
    return json.loads(json.dumps(header))


def check_same_run(saved: dict, now: dict) -> dict[str, tuple]:
    """
    The header fields in which two runs differ, mapped to ``(saved value, value now)``; entries of a dict field
    are compared one by one (``estimator_params.resize``); ``source`` is not compared. A different schema version
    is reported alone, as the rest cannot be compared.

    :param saved: The header of the file.
    :param now: The header of this run.
    :return: An empty dict when the runs are the same.
    """
    if saved.get("schema") != now.get("schema"):
        return {"schema": (saved.get("schema"), now.get("schema"))}
    differ = {}
    for key in [*now, *(k for k in saved if k not in now)]:
        if key in UNCHECKED:
            continue
        old, new = saved.get(key), now.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            for sub in [*new, *(k for k in old if k not in new)]:
                if old.get(sub) != new.get(sub):
                    differ[f"{key}.{sub}"] = (old.get(sub), new.get(sub))
        elif old != new:
            differ[key] = (old, new)
    return differ


def _show(value) -> str:
    """A value for an error message: hashes and long structures shortened."""
    if value is None:
        return "none"
    if isinstance(value, str):
        is_hash = len(value) == 64 and all(c in "0123456789abcdef" for c in value)
        return value[:12] + "..." if is_hash else value
    text = json.dumps(value)
    return text if len(text) <= 80 else text[:77] + "..."


def mismatch_message(path, differences: dict, hint: str = DEFAULT_HINT) -> str:
    """
    ``"r.jsonl was written with sigma 0.25, this run has sigma 0.5; <hint>"`` for the differences of
    :func:`check_same_run`.
    """
    if "schema" in differences and differences["schema"][0] is None:
        return (f"{path} has no art-some header (written by an older version), so the settings of its records "
                f"cannot be checked; {hint}")
    shown = list(differences.items())[:MAX_SHOWN]
    more = f" (and {len(differences) - MAX_SHOWN} more)" if len(differences) > MAX_SHOWN else ""
    then = ", ".join(f"{k} {_show(old)}" for k, (old, _) in shown)
    now = ", ".join(f"{k} {_show(new)}" for k, (_, new) in shown)
    return f"{path} was written with {then}{more}; this run has {now}; {hint}"


class RunMismatchError(ValueError):
    """A record file made by another run than this one: ``differences`` as :func:`check_same_run` gives them."""

    def __init__(self, path, differences: dict, hint: str = DEFAULT_HINT):
        super().__init__(mismatch_message(path, differences, hint))
        self.path, self.differences = Path(path), differences


class FileInUseError(ValueError):
    """Another process (or another open writer) is writing the same record file."""


# ----------------------------------------------------------------------------------------------------------------
# Writing and reading JSONL
# ----------------------------------------------------------------------------------------------------------------
class RecordWriter:
    """
    Appends records to a JSONL file, each line written with one unbuffered write and synced, so that a killed run
    loses at most the line it was writing. Opening an existing file resumes it: complete records are kept (see
    :attr:`done`), a torn last line is cut off, and records whose ``idx`` is already present are refused.

    The file is locked (``flock``) while the writer is open, so a second writer, in this process or another,
    is refused with :class:`FileInUseError`; the lock goes with the process if it is killed.

    :param path: The JSONL file (created with its parent folders if missing).
    :param header: This run's :func:`provenance`. Written as the first line of a new file; an existing file must
                   hold an equal header (else :class:`RunMismatchError`, naming the fields). None: no check.
    :param hint: The end of the mismatch message (what the user can do).
    """

    def __init__(self, path: str | os.PathLike, header: dict | None = None, hint: str = DEFAULT_HINT):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        existed = self.path.exists()
        self._fd = _os_call(os.open, self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o666)
        locked = False
        try:
            _lock(self._fd, self.path)
            locked = True
            self.header, self.records = self._resume()
            if header is not None:
                self._adopt(header, hint)
        except BaseException:
            os.close(self._fd)
            self._fd = None
            if locked and not existed and self.path.stat().st_size == 0:
                self.path.unlink(missing_ok=True)  # leave nothing behind when the header could not be written
            raise
        self.done = {r["idx"] for r in self.records}

    def _resume(self) -> tuple[dict | None, list[dict]]:
        """Read the header and complete records; cut a torn final line (an interrupted write) so appends stay valid."""
        with open(self.path, "rb") as f:
            data = f.read()
        keep = data.rfind(b"\n") + 1
        if keep < len(data):
            os.ftruncate(self._fd, keep)
        self._size = keep
        return _parse_jsonl(data[:keep].decode("utf-8").splitlines(), self.path)

    def _adopt(self, header: dict, hint: str) -> None:
        """Write ``header`` into a new file, or check it against the file's."""
        if self.header is None and not self.records:
            self._write(json.dumps({HEADER_KEY: header}) + "\n")
            self.header = header
            return
        differences = check_same_run(self.header or {}, header)
        if differences:
            raise RunMismatchError(self.path, differences, hint)

    def _write(self, text: str) -> None:
        """Append ``text`` with unbuffered writes and sync; on failure cut the file back to its last full line."""
        data = text.encode("utf-8")
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view):]
            os.fsync(self._fd)
        except OSError as err:
            try:
                os.ftruncate(self._fd, self._size)
            except OSError:
                pass
            raise OSError(err.errno, err.strerror, str(self.path)) from None
        self._size += len(data)

    def append(self, record: dict) -> None:
        """Write one record and flush it to disk."""
        if record["idx"] in self.done:
            raise ValueError(f"record for idx {record['idx']} is already in {self.path}")
        self._write(json.dumps(record, sort_keys=False) + "\n")
        self.records.append(record)
        self.done.add(record["idx"])

    def close(self) -> None:
        """Close the file and release its lock (closing twice is harmless)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "RecordWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        # A writer dropped without close() must not keep its lock for the rest of the process.
        if getattr(self, "_fd", None) is not None:
            self.close()


def write_atomically(path: str | os.PathLike, content) -> None:
    """
    Write a whole file through a temporary sibling and a rename, so that readers never see half of it; on failure
    (a full disk) the temporary file is removed and the OSError names ``path``.

    :param path: The file to write.
    :param content: Its text or bytes, or a function ``write(tmp_path)`` that writes it (``torch.save``, ...).
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        if callable(content):
            content(tmp)
        else:
            data = content.encode("utf-8") if isinstance(content, str) else bytes(content)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
            finally:
                os.close(fd)
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise OSError(err.errno, err.strerror, str(path)) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _os_call(function, path, *args):
    """``function(path, *args)`` with the path named in an OSError."""
    try:
        return function(path, *args)
    except OSError as err:
        raise OSError(err.errno, err.strerror, str(path)) from None


def _lock(fd: int, path: Path) -> None:
    """Take the writer's lock on ``fd`` or refuse: two writers would interleave and duplicate records."""
    if fcntl is None:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        if err.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            raise
        raise FileInUseError(f"{path} is being written by another art-some run; wait for it to finish or use "
                             "another output") from None


def _parse_jsonl(lines: Iterable[str], path) -> tuple[dict | None, list[dict]]:
    """(header or None, records) from the lines of a JSONL file, with a clear error naming the first bad line."""
    header, records, seen = None, [], set()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: line {number} is not valid JSON ({err.msg})") from None
        if isinstance(record, dict) and set(record) == {HEADER_KEY}:
            if header is not None or records or not isinstance(record[HEADER_KEY], dict):
                raise ValueError(f"{path}: line {number} is a header that is not the first line; the file is corrupt")
            header = record[HEADER_KEY]
            continue
        if not isinstance(record, dict) or not {"idx", "radius", "correct"} <= record.keys():
            raise ValueError(f"{path}: line {number} is not a certificate record")
        if record["idx"] in seen:
            raise ValueError(f"{path}: line {number} repeats idx {record['idx']}; the file is corrupt")
        seen.add(record["idx"])
        records.append(record)
    return header, records


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Read the records of a JSONL file (without its header), with a clear error naming the first bad line."""
    with open(path, encoding="utf-8") as f:
        return _parse_jsonl(f, path)[1]


def read_header(path: str | os.PathLike) -> dict | None:
    """
    The :func:`provenance` header of a JSONL record file: its first line, or for records that keep it in a
    sidecar ``<stem>_config.json`` (the audit's ``audit_config.json``) that file; None if there is none (a TSV
    log, a file from before headers).
    """
    path = Path(path)
    with open(path, encoding="utf-8") as f:
        first = f.readline()
    try:
        line = json.loads(first)
    except json.JSONDecodeError:
        line = None
    if isinstance(line, dict) and set(line) == {HEADER_KEY}:
        return line[HEADER_KEY]
    sidecar = path.with_name(f"{path.stem}_config.json")
    try:
        saved = json.loads(sidecar.read_text())
    except (OSError, ValueError):
        return None
    return saved if isinstance(saved, dict) and "schema" in saved else None


def describe_header(header: dict | None) -> str:
    """A few lines saying where records come from (for ``art-some report``)."""
    if header is None:
        return "provenance: none recorded (a TSV log, or JSONL from before art-some wrote headers)"
    source = header.get("source") or {}
    settings = ", ".join(f"{k} {_show(header[k])}" for k in ("sigma", "n0", "n", "alpha", "seed", "device", "attacks",
                                                            "verify_n") if k in header)
    data = " ".join(str(header[k]) for k in ("dataset", "split") if header.get(k) is not None) or "given by the caller"
    model = source.get("model", "model")
    lines = [
        f"provenance ({header.get('kind', 'records')}): art-some {header.get('art_some')}, "
        f"torch {header.get('torch')}, schema {header.get('schema')}",
        f"  {header.get('method') or header.get('estimator')} ({header.get('estimator')}): {settings}",
        f"  {model} (weights sha256 {_show(header.get('model_sha256'))}); data {data}",
    ]
    params = header.get("estimator_params") or {}
    if params:
        lines.append("  estimator parameters: " + ", ".join(f"{k} {_show(v)}" for k, v in sorted(params.items())))
    run = []
    if header.get("sequential"):
        options = header["sequential"]
        run.append(f"sequential CERTIFY, {options.get('mode', '').replace('_', '-')} mode "
                   + (f"at radii {_show(options.get('radii'))}" if options.get("radii")
                      else f"with tolerance {_show(options.get('tolerance'))}"))
    if header.get("shard"):
        run.append(f"shard {header['shard'][0]}/{header['shard'][1]} of {header.get('plan', {}).get('count')} inputs")
    if header.get("merged_from"):
        run.append(f"merged from {header['merged_from']} shards")
    if run:
        lines.append("  run: " + "; ".join(run))
    return "\n".join(lines)


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
    if records and all("draws" in r for r in records):  # sequential CERTIFY: what it cost, and what it saved
        passes = np.mean([r["n0"] + r["draws"] for r in records])
        lines.append(f"forward passes per input {passes:,.0f} (n0 + estimation draws; fixed n: "
                     f"{np.mean([r['n0'] + r['n'] for r in records]):,.0f})")
    return "\n".join(lines)


def comparison_table(named_records: Sequence[tuple[str, Sequence[dict]]], radii: Sequence[float]) -> str:
    """
    Several record sets side by side, one row each: certified accuracy (%) at each radius, ACR, abstention rate
    and the number of inputs (e.g. art-some's records next to the authors' published log of the same model).
    """
    radii = np.asarray(radii, dtype=np.float64)
    head = ["records"] + [f"r={r:g}" for r in radii] + ["ACR", "abstain %", "inputs"]
    rows = [[name] + [f"{100 * a:.1f}" for a in certified_accuracy(records, radii)]
            + [f"{average_certified_radius(records):.3f}", f"{100 * abstention_rate(records):.1f}", str(len(records))]
            for name, records in named_records]
    widths = [max(len(row[c]) for row in [head, *rows]) for c in range(len(head))]
    return "\n".join("  ".join(v.ljust(w) if c == 0 else v.rjust(w) for c, (v, w) in enumerate(zip(row, widths)))
                     for row in [head, *rows])
