"""
Record files: one dict per input (:func:`records_from_result`, whose certificate fields the audit's records share),
JSONL append-and-flush with resume and a lock, the community TSV format.

A record holds ``idx, label, predict, radius, correct, pA_lower, counts, n0, n, alpha, sigma, method,
seconds``, plus what the estimator adds (e.g. the noise mode and radius space of patch smoothing); ``counts`` maps
every class with a non-zero estimation count to its votes, the largest first. ``seconds`` is the input's own share
of the time: inputs certified together in one engine call (small n packs several into one batch of noisy inputs)
divide the call's time evenly among them, so the times of a file add up to the time spent certifying it. The
community TSV keeps ``idx label predict radius correct time`` (time as ``H:MM:SS.ffffff``, per input), as
published by Cohen et al. and the papers that followed.

A PREDICT run (``art-some predict``, header ``kind`` ``"predict"``) writes records without a radius (``idx, label,
predict, correct, counts, n, alpha, method, seconds``; ``predict`` -1 where PREDICT abstains) and the TSV of Cohen
et al.'s ``predict.py``: ``idx label predict correct time``.

A JSONL record file starts with a **header** line ``{"art_some_header": {...}}`` (see
:func:`~art_some.runs.header.run_header`), or keeps it in a JSON file beside it (the audit's
``audit_config.json``). A writer resumes a file only when the header of this run equals the file's
(:func:`~art_some.runs.header.check_same_run`), and only one writer holds a file at a time. Readers
(:func:`read_jsonl`, :func:`read_records`) return the records alone, so header-less files of earlier versions
still read; :func:`read_header` returns the header.
"""
from __future__ import annotations

import errno
import json
import math
import os
import sys
import tempfile
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from art_some.runs.header import DEFAULT_HINT, RunMismatchError, check_same_run

try:
    import fcntl
except ImportError:  # not on Windows: writers are then not locked
    fcntl = None

TSV_COLUMNS = ("idx", "label", "predict", "radius", "correct", "time")
PREDICT_TSV_COLUMNS = ("idx", "label", "predict", "correct", "time")  # Cohen et al.'s predict.py log
HEADER_KEY = "art_some_header"
NOT_COMPARED = object()  # what RecordWriter.changed_input's hash_now says of an index the run does not hold


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
        records.append(
            {
                **certificate_fields(result, j, labels[j], indices[j]),
                "pA_lower": float(result.p_lower[j]),
                "counts": nonzero_counts(result.counts_estimation[j]),
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


def nonzero_counts(counts) -> dict[str, int]:
    """
    A record's ``counts``: every class with a non-zero count, mapped to its count, the largest first (ties by class),
    so that a reader can redo any bound or test from the record alone.

    :param counts: One input's vote counts ``(C,)``.
    """
    counts = np.asarray(counts)
    order = np.argsort(-counts, kind="stable")
    return {str(int(c)): int(counts[c]) for c in order if counts[c] != 0}


def certificate_fields(result, j: int, label, idx) -> dict:
    """
    The fields that open every record, certify's and the audit's: ``idx, label, predict, radius, correct`` of
    input ``j`` of a certification result.

    :param result: A :class:`~art_some.core.certify.CertifyResult` (or anything with ``predict`` and ``radius``).
    :param j: The input's row in ``result``.
    :param label: Its true label.
    :param idx: Its data-set index.
    """
    predict = result.predict[j]
    return {"idx": int(idx), "label": int(label), "predict": int(predict), "radius": float(result.radius[j]),
            "correct": int(predict == label)}


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
    :param header: This run's :func:`~art_some.runs.header.run_header`. Written as the first line of a new file;
                   an existing file must hold an equal header (else :class:`RunMismatchError`, naming the fields).
                   None: no check.
    :param hint: The end of the mismatch message (what the user can do).
    :param header_file: Keep the header in this JSON file beside the records instead of in their first line (the
                        audit's ``audit_config.json``): compared when the records file holds records, and written
                        (atomically) once it matches.
    :param check: ``check(writer)``, the caller's resume check (e.g. :meth:`changed_input`), run once the header
                  is compared and before anything is written; what it raises is raised.
    """

    def __init__(self, path: str | os.PathLike, header: dict | None = None, hint: str = DEFAULT_HINT,
                 header_file: str | os.PathLike | None = None, check=None):
        self.path = Path(path)
        self.header_file = None if header_file is None else Path(header_file)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        existed = self.path.exists()
        self.created = not existed
        self._fd = _os_call(os.open, self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o666)
        locked = False
        try:
            _lock(self._fd, self.path)
            locked = True
            self.header, self.records = self._resume()
            self.done = {r["idx"] for r in self.records}
            if header is not None:
                self._compare(header, hint)
            if check is not None:
                check(self)
            if header is not None:
                self._adopt(header)
        except BaseException:
            os.close(self._fd)
            self._fd = None
            if locked and not existed and self.path.stat().st_size == 0:
                self.path.unlink(missing_ok=True)  # leave nothing behind when the header could not be written
            raise

    def _resume(self) -> tuple[dict | None, list[dict]]:
        """
        Read the header and complete records; cut a torn final line (an interrupted write) so appends stay valid.
        Everything is read before anything is cut: a file that is not a record file (a checkpoint, notes, a link to
        one) is refused untouched.
        """
        with open(self.path, "rb") as f:
            data = f.read()
        keep = data.rfind(b"\n") + 1
        if keep == 0 and data:  # not one complete line: a torn first line is a record file's only if it looks it
            if not data.startswith(b'{"'):
                raise ValueError(f"{self.path} is not an art-some record file (no JSON lines); refusing to write "
                                 "into it: give another --output")
        try:
            text = data[:keep].decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError(f"{self.path} is not an art-some record file (binary data); refusing to write into it: "
                             "give another --output") from None
        parsed = _parse_jsonl(text.splitlines(), self.path)
        if keep < len(data):
            os.ftruncate(self._fd, keep)
        self._size = keep
        return parsed

    def _compare(self, header: dict, hint: str) -> None:
        """Refuse to extend records that another run wrote (a file without records takes any header)."""
        if self.header_file is not None:
            if self.records:  # records without their header file were written by another run
                saved = json.loads(self.header_file.read_text()) if self.header_file.exists() else {}
                differences = check_same_run(saved, header)
                if differences:
                    raise RunMismatchError(self.header_file, differences, hint)
        elif self.header is not None or self.records:
            differences = check_same_run(self.header or {}, header)
            if differences:
                raise RunMismatchError(self.path, differences, hint)

    def _adopt(self, header: dict) -> None:
        """Write ``header`` (it matches): into a new file's first line, or into the header file."""
        if self.header_file is not None:
            # Rewritten on resume too: it then differs only in what is not compared (where the model was read from).
            write_atomically(self.header_file, json.dumps(header, indent=1, sort_keys=True))
            self.header = header
        elif self.header is None and not self.records:
            self._write(json.dumps({HEADER_KEY: header}) + "\n")
            self.header = header

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

    def changed_input(self, hash_now, limit: int | None = None) -> tuple[int, str, str | None] | None:
        """
        The first recorded input that this run holds differently (the resume check that records of other data are
        not extended): ``(idx, recorded hash, hash now)``, or None when all agree.

        :param hash_now: ``hash_now(idx)``: the :func:`~art_some.runs.header.input_hash` of this run's input at
                         ``idx``; :data:`NOT_COMPARED` where this run does not hold that index.
        :param limit: Compare only the first ``limit`` recorded inputs (a cheap check).
        """
        for record in [r for r in self.records if "input_sha256" in r][:limit]:
            now = hash_now(int(record["idx"]))
            if now is not NOT_COMPARED and now != record["input_sha256"]:
                return int(record["idx"]), record["input_sha256"], now
        return None

    def discard_if_empty(self) -> None:
        """
        Close, and remove the file if it holds no record and this writer created it (a run refused after its header
        was written must not leave a file that blocks the corrected run).
        """
        if self._fd is not None and self.created and not self.records:
            self.path.unlink(missing_ok=True)
            if self.header_file is not None:
                self.header_file.unlink(missing_ok=True)
        self.close()

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
    Write a whole file through a fresh temporary sibling (``mkstemp``: never a fixed name, which a planted link
    could redirect) and a rename, so that readers never see half of it; on failure (a full disk) the temporary file
    is removed and the OSError names ``path``. A writer's own error for a failed write (torch's "file write
    failed", safetensors') is an OSError too.

    :param path: The file to write.
    :param content: Its text or bytes, or a function ``write(tmp_path)`` that writes it (``torch.save``, ...).
    """
    path = Path(path)
    fd, name = _os_call(lambda folder: tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder),
                        path.parent)
    tmp = Path(name)
    try:
        if callable(content):
            os.close(fd)
            fd = None
            content(tmp)
        else:
            data = content.encode("utf-8") if isinstance(content, str) else bytes(content)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual permissions
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise OSError(err.errno, err.strerror, str(path)) from None
    except Exception as err:
        tmp.unlink(missing_ok=True)
        failed = _write_failure(err)
        if failed is None:
            raise
        raise OSError(failed, os.strerror(failed), str(path)) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        if fd is not None:
            os.close(fd)


def _write_failure(err: Exception) -> int | None:
    """The errno of a library's failed write (torch's and safetensors' errors are not OSErrors), else None."""
    text = str(err).lower()
    if "no space" in text or "file write failed" in text or "unexpected pos" in text:
        return errno.ENOSPC
    if type(err).__name__ == "SafetensorError" and ("write" in text or "i/o" in text or "os error" in text):
        return errno.EIO
    return None


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def tsv_path(output: str | os.PathLike) -> Path:
    """
    The community TSV beside a JSONL record file: ``r.jsonl`` -> ``r.tsv``; a name without the ``.jsonl`` suffix
    keeps its whole name (``res_s0.25`` -> ``res_s0.25.tsv``, not ``res_s0.tsv``, which ``res_s0.5`` would share).
    """
    output = Path(output)
    return output.with_suffix(".tsv") if output.suffix == ".jsonl" else output.with_name(output.name + ".tsv")


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


class ReadLock:
    """
    A shared lock on a record file while it is read whole (a merge): refused with :class:`FileInUseError` while a
    writer holds the file (a shard still being certified), and keeping writers out until released.
    """

    def __init__(self, path: str | os.PathLike, what: str = "record file"):
        self.path = Path(path)
        self._fd = _os_call(os.open, self.path, os.O_RDONLY)
        if fcntl is None:
            return
        try:
            fcntl.flock(self._fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as err:
            os.close(self._fd)
            self._fd = None
            if err.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            raise FileInUseError(f"{self.path}: this {what} is still being written by an art-some run; merge once "
                                 "it has finished") from None

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


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
        needed = ("idx", "predict", "correct") if is_predict_header(header) else ("idx", "radius", "correct")
        if not isinstance(record, dict) or not set(needed) <= record.keys():
            what = "PREDICT record" if is_predict_header(header) else "certificate record"
            raise ValueError(f"{path}: line {number} is not a {what} (it needs {', '.join(needed)})")
        if record["idx"] in seen:
            raise ValueError(f"{path}: line {number} repeats idx {record['idx']}; the file is corrupt")
        seen.add(record["idx"])
        records.append(record)
    return header, records


# Record keys that say the radius is not the noise's own (sigma * Phi^-1(pA_lower) for Gaussian noise): another
# certificate, a cascade's levels, a patch radius divided down. Such records get the bound, not the equality.
NOT_PLAIN = frozenset({"certificate", "sigmas", "radius_divisor", "sigma_rule"})
RADIUS_TOLERANCE = 1e-9  # relative: what float64 arithmetic may move a recomputed radius
# Fields a record shares with its header, which must agree.
SHARED_FIELDS = ("n", "n0", "alpha", "method")


def is_predict_header(header: dict | None) -> bool:
    """Whether a record file's header is a PREDICT run's (``art-some predict``: records without a radius)."""
    return isinstance(header, dict) and header.get("kind") == "predict"


def check_record(path, number: int, record: dict, header: dict | None) -> None:
    """
    Refuse a record that contradicts itself or its header, naming the file, line and field: mistyped or non-finite
    fields, ``correct`` that is not ``predict == label``, a radius that ``pA_lower`` and sigma do not give (plain
    Cohen records: exactly; other Gaussian certificates: at most sigma * Phi^-1(pA_lower)), settings that are not
    the header's (n, n0, alpha, method, sigma). A PREDICT run's records have no radius to check.

    :param path: The file, for the message.
    :param number: The record's line.
    :param record: The record.
    :param header: The file's header (None: the record is checked on its own).
    """
    where = f"{path}: line {number}"
    for key in ("idx", "label", "predict", "correct"):
        value = record.get(key)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{where}: field {key} is {value!r}, not an integer")
    if record["idx"] < 0 or record["predict"] < -1 or record["correct"] not in (0, 1):
        raise ValueError(f"{where}: idx must be >= 0, predict >= -1 and correct 0 or 1, got idx {record['idx']}, "
                         f"predict {record['predict']}, correct {record['correct']}")
    predict_run = is_predict_header(header)
    for key in ("radius", "pA_lower", "sigma", "seconds"):
        if key in record or (key == "radius" and not predict_run):
            value = record.get(key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{where}: field {key} is {value!r}, not a finite number >= 0")
    if record["correct"] != int(record["predict"] == record["label"]):
        raise ValueError(f"{where}: field correct is {record['correct']} but predict {record['predict']} and label "
                         f"{record['label']} say {int(record['predict'] == record['label'])}")
    header = header or {}
    for key in SHARED_FIELDS:
        if key in record and header.get(key) is not None and record[key] != header[key]:
            raise ValueError(f"{where}: field {key} is {record[key]!r}, but the file's header says {header[key]!r}")
    if not predict_run:
        _check_radius(where, record, header)


def _check_radius(where: str, record: dict, header: dict) -> None:
    """The radius against what ``pA_lower`` and sigma certify (see :func:`check_record`)."""
    keys = set(record) | set(header.get("certificate") or {})
    norm = record.get("norm", header.get("norm", "l2"))
    family = record.get("noise", "gaussian" if norm == "l2" else None)
    radius_of = _noise_radius(family, norm)
    plain = not keys & NOT_PLAIN and radius_of is not None
    sigma = record.get("sigma", header.get("sigma"))
    if plain and "sigma" in record and isinstance(header.get("sigma"), (int, float)) and sigma != header["sigma"]:
        raise ValueError(f"{where}: field sigma is {sigma!r}, but the file's header says {header['sigma']!r}")
    if record["predict"] < 0:
        if record["radius"] != 0:
            raise ValueError(f"{where}: field radius is {record['radius']!r} for an abstention (predict -1); it must "
                             "be 0")
        return
    in_input_space = record.get("radius_space", "input") == "input"
    if ("pA_lower" not in record or not isinstance(sigma, (int, float)) or "sigmas" in keys or radius_of is None
            or not in_input_space or (not plain and "sigma" not in record)):
        return
    if plain:
        _check_p_lower(where, record)
    bound = float(radius_of(record["pA_lower"], sigma))
    slack = RADIUS_TOLERANCE * max(1.0, bound)
    if record["radius"] > bound + slack or (plain and abs(record["radius"] - bound) > slack):
        raise ValueError(f"{where}: field radius is {record['radius']!r}, but pA_lower {record['pA_lower']!r} and "
                         f"sigma {sigma!r} certify {bound!r}")


def _noise_radius(family, norm):
    """
    ``radius(p_lower, sigma)`` of a built-in noise family in ``norm``, or None where the record does not say enough
    to recompute it (another family; L-infinity, whose radius needs the input dimension).
    """
    from art_some.core.noise import GaussianNoise, LaplaceNoise, UniformNoise

    families = {"gaussian": GaussianNoise, "laplace": LaplaceNoise, "uniform": UniformNoise}
    if family not in families or norm not in families[family].norms or norm == "linf":
        return None
    return lambda p_lower, sigma: families[family](sigma, norm=norm).radius(p_lower)


def _check_p_lower(where: str, record: dict) -> None:
    """Fixed-n CERTIFY's pA_lower is Clopper-Pearson's bound on the predicted class's count out of n, at alpha."""
    from art_some.core.stats import clopper_pearson_lower

    counts = record.get("counts")
    if "draws" in record or not isinstance(counts, dict) or not {"n", "alpha"} <= record.keys():
        return  # sequential CERTIFY spends alpha over rounds; older records keep no counts
    count = counts.get(str(record["predict"]))
    if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= record["n"]:
        raise ValueError(f"{where}: field counts holds no count of the predicted class {record['predict']} out of n "
                         f"{record['n']}: {counts}")
    bound = float(clopper_pearson_lower(count, record["n"], record["alpha"]))
    if abs(bound - record["pA_lower"]) > RADIUS_TOLERANCE:
        raise ValueError(f"{where}: field pA_lower is {record['pA_lower']!r}, but {count} of {record['n']} votes at "
                         f"alpha {record['alpha']} give {bound!r}")


def read_checked(path: str | os.PathLike, header: dict | None = None) -> tuple[dict | None, list[dict]]:
    """
    The header and records of a JSONL record file, every record checked against itself and the header
    (:func:`check_record`): what merge and report read.

    :param header: The header to check against when the file keeps it beside it (the audit's); default the file's.
    """
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    first, records = _parse_jsonl(lines, path)
    header = first if header is None else header
    numbers = [number for number, line in enumerate(lines, 1) if line.strip()][first is not None:]
    for number, record in zip(numbers, records):
        check_record(path, number, record, header)
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


def write_tsv(records: Iterable[dict], path: str | os.PathLike, columns: Sequence[str] = TSV_COLUMNS) -> None:
    """
    Write records as a community TSV log: ``idx label predict radius correct time`` for certificates (the default),
    :data:`PREDICT_TSV_COLUMNS` for PREDICT records. Radii are rounded down to three decimals, times (each input's
    ``seconds``) written as ``H:MM:SS.ffffff``.
    """
    text = {"radius": lambda r: _radius_text(r["radius"]), "time": lambda r: _format_time(r["seconds"])}
    with open(path, "w", encoding="utf-8") as f:
        f.write("\t".join(columns) + "\n")
        for r in sorted(records, key=lambda r: r["idx"]):
            f.write("\t".join(text[c](r) if c in text else str(r[c]) for c in columns) + "\n")


def read_tsv(path: str | os.PathLike) -> list[dict]:
    """
    Read a community TSV log into records: a certification log (``idx label predict radius correct [time]``) into
    ``idx, label, predict, radius, correct, seconds``; a PREDICT log (``idx label predict correct [time]``, Cohen et
    al.'s predict.py) into the same without ``radius``.
    """
    with open(path, encoding="utf-8") as f:
        header = tuple(f.readline().rstrip("\n").split("\t"))
        for columns in (TSV_COLUMNS, PREDICT_TSV_COLUMNS):
            if header[: len(columns) - 1] == columns[:-1]:
                break
        else:
            raise ValueError(f"{path}: not a certification or PREDICT log; its header must start with "
                             f"{' '.join(TSV_COLUMNS[:5])} or {' '.join(PREDICT_TSV_COLUMNS[:4])}")
        parse = {"radius": float, "time": _parse_time}
        records = []
        for number, line in enumerate(f, 2):
            fields = line.rstrip("\n").split("\t")
            if not line.strip():
                continue
            try:
                record = {c: parse.get(c, int)(fields[k]) for k, c in enumerate(columns[:-1])}
                record["seconds"] = _parse_time(fields[len(columns) - 1]) if len(fields) >= len(columns) else 0.0
            except (ValueError, IndexError):
                raise ValueError(f"{path}: line {number} is malformed: {line.strip()!r}") from None
            records.append(record)
    return records


def read_records(path: str | os.PathLike, check: bool = False) -> list[dict]:
    """
    Read records from a ``.jsonl`` file or a community ``.tsv`` log (chosen by content, not name).

    :param check: Check JSONL records against themselves and their header (:func:`read_checked`).
    """
    with open(path, encoding="utf-8") as f:
        first = f.readline().lstrip()
    if not first.startswith("{"):
        return read_tsv(path)
    return read_checked(path)[1] if check else read_jsonl(path)


def resume_note(echo, progress: bool, path, done: int, total: int, verb: str) -> None:
    """Say that a run resumes and from where (to ``echo``, else to standard error with the progress bar)."""
    message = f"Resuming {Path(path).name}: {done} of {total} inputs already {verb}"
    if echo is not None:
        echo(message)
    elif progress:
        print(message, file=sys.stderr)
