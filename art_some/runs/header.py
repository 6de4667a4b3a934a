"""
The header of a record file: what determines its records (settings, the estimator and its parameters, the model's
weights hash, the data, versions), how two headers are compared, and how a difference is put in words.

A writer resumes a file only when the header of this run equals the file's (:func:`check_same_run`); the audit,
certify and their merges all build their headers with :func:`run_header`.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

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


def data_fingerprint(hashes: dict) -> str:
    """
    The header's ``data_sha256``: SHA-256 over the run's index list with each input's :func:`input_hash` (what its
    record carries), so that two copies of a data set that differ anywhere in the run are two runs.

    :param hashes: ``{index: input_hash}`` over the run's whole index list.
    """
    digest = hashlib.sha256()
    for idx in sorted(hashes):
        digest.update(f"{int(idx)}:{hashes[idx]}\n".encode())
    return digest.hexdigest()


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

    from art_some._version import __version__
    from art_some.estimators.protocol import check_estimator

    check_estimator(estimator, "a record header")
    model, device, params = estimator.model, estimator.device, estimator.get_params()
    settings = dict(settings)
    source = settings.pop("source", None)
    header = {
        "schema": SCHEMA_VERSION,
        "art_some": __version__,
        "torch": torch.__version__,
        **settings,  # first, so that a mismatch message names the run's own settings before the estimator's
        "estimator": _qualname(estimator),
        "device": None if device is None else torch.device(device).type,
        "sigma": _jsonable(estimator.scale),
        "seed": _jsonable(estimator.seed),
        "model_sha256": weights_hash(model) if isinstance(model, torch.nn.Module) else None,
        "estimator_params": {k: _jsonable(v) for k, v in params.items() if k not in _NOT_PARAMS},
    }
    if source is not None:
        header["source"] = source
    return json.loads(json.dumps(header))


def run_header(estimator, kind: str, *, run_info: dict | None = None, plan: dict | None = None,
               extra: dict | None = None, **settings) -> dict:
    """
    The header of a run's records, certify's and the audit's alike: :func:`provenance` with the entries in this
    order: ``kind``, the run's ``settings``, what only the caller knows (``run_info``: the data set and split, and
    a ``source`` that is recorded, not compared), the shard ``plan`` (:func:`~art_some.runs.shards.shard_plan`) and
    ``extra`` entries. Values that JSON cannot hold are recorded as text.

    :param estimator: The smoothed estimator of the run.
    :param kind: ``"certify"`` or ``"audit"``.
    :return: The header as it reads back from JSON.
    """
    entries = {"kind": kind, **settings, **(run_info or {}), **(plan or {}), **(extra or {})}
    return provenance(estimator, **json.loads(json.dumps(entries, default=str)))


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


def show(value) -> str:
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
    then = ", ".join(f"{k} {show(old)}" for k, (old, _) in shown)
    now = ", ".join(f"{k} {show(new)}" for k, (_, new) in shown)
    return f"{path} was written with {then}{more}; this run has {now}; {hint}"


class RunMismatchError(ValueError):
    """A record file made by another run than this one: ``differences`` as :func:`check_same_run` gives them."""

    def __init__(self, path, differences: dict, hint: str = DEFAULT_HINT):
        super().__init__(mismatch_message(path, differences, hint))
        self.path, self.differences = Path(path), differences



# ART's mixed-precision training settings (apex AMP), which every estimator inherits and nothing here uses, at ART's
# defaults: the header keeps them, the description leaves them out unless they differ.
ART_AMP_DEFAULTS = {"use_amp": False, "opt_level": "O1", "loss_scale": "dynamic"}


def describe_header(header: dict | None) -> str:
    """
    A few lines saying where records come from (for ``art-some report``), each thing once: the method and the
    estimator's class (the class alone when they are one), the settings, the estimator's other parameters (not
    those the settings line shows, nor ART's unused AMP settings at their defaults).
    """
    if header is None:
        return "provenance: none recorded (a TSV log, or JSONL from before art-some wrote headers)"
    source = header.get("source") or {}
    settings = ", ".join(f"{k} {show(header[k])}" for k in ("sigma", "n0", "n", "alpha", "seed", "device", "attacks",
                                                            "verify_n") if k in header)
    data = " ".join(str(header[k]) for k in ("dataset", "split") if header.get(k) is not None) or "given by the caller"
    model = source.get("model", "model")
    method, cls = header.get("method"), header.get("estimator")
    named = cls if method in (None, cls) else f"{method} ({cls})"
    lines = [
        f"provenance ({header.get('kind', 'records')}): art-some {header.get('art_some')}, "
        f"torch {header.get('torch')}, schema {header.get('schema')}",
        f"  {named}: {settings}",
        f"  {model} (weights sha256 {show(header.get('model_sha256'))}); data {data}",
    ]
    shown = {"alpha": header.get("alpha"), "sample_size": header.get("n0", header.get("n"))}
    params = {k: v for k, v in (header.get("estimator_params") or {}).items()
              if not (k in shown and v == shown[k]) and not (k in ART_AMP_DEFAULTS and v == ART_AMP_DEFAULTS[k])}
    if params:
        lines.append("  estimator parameters: " + ", ".join(f"{k} {show(v)}" for k, v in sorted(params.items())))
    run = []
    if header.get("sequential"):
        options = header["sequential"]
        run.append(f"sequential CERTIFY, {options.get('mode', '').replace('_', '-')} mode "
                   + (f"at radii {show(options.get('radii'))}" if options.get("radii")
                      else f"with tolerance {show(options.get('tolerance'))}"))
    if header.get("shard"):
        run.append(f"shard {header['shard'][0]}/{header['shard'][1]} of {header.get('plan', {}).get('count')} inputs")
    if header.get("merged_from"):
        run.append(f"merged from {header['merged_from']} shards")
    if run:
        lines.append("  run: " + "; ".join(run))
    return "\n".join(lines)
