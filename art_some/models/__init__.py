"""
Model factory (names map to constructors, as in timm) and safe checkpoints.

``create_model(name, **kwargs)`` builds a registered architecture, randomly initialised (no weights are ever
downloaded). Checkpoints are safetensors files whose metadata records the architecture and the data
conventions, so ``load_checkpoint`` rebuilds the model without executing pickled code.
"""
from __future__ import annotations

import inspect
import json
import os
from pathlib import Path

from art_some.core.errors import NonFiniteError
from art_some.models.cifar_resnet import CifarResNet
from art_some.models.diffusion import DiffusionDenoiser, IdentityDenoiser, create_denoiser, load_adm
from art_some.models.multihead import (
    MultiHeadNet,
    cifar_resnet_multihead,
    cosine_loss,
    digits_cnn_multihead,
    resnet50_multihead,
)
from art_some.models.published import load_published, torch_load
from art_some.models.small import DigitsCNN
from art_some.models.video import ChunkAveragedClip, TinyVideoCNN

__all__ = [
    "ChunkAveragedClip",
    "CifarResNet",
    "DiffusionDenoiser",
    "DigitsCNN",
    "IdentityDenoiser",
    "create_denoiser",
    "load_adm",
    "MultiHeadNet",
    "cifar_resnet_multihead",
    "cosine_loss",
    "digits_cnn_multihead",
    "resnet50_multihead",
    "create_model",
    "load_checkpoint",
    "load_published",
    "save_checkpoint",
    "TinyVideoCNN",
]

METADATA_KEY = "art_some"


def create_model(name: str, **kwargs):
    """Build the registered model ``name`` with ``kwargs`` (e.g. ``num_classes``)."""
    from art_some.plugins import get

    return get("models", name)(**kwargs)


def save_checkpoint(path: str | os.PathLike, model, model_name: str, model_kwargs: dict | None = None, **meta) -> None:
    """
    Save ``model``'s weights as safetensors with the metadata needed to rebuild it.

    :param path: Output file (``.safetensors``).
    :param model: The torch module.
    :param model_name: Its registered name (see :func:`create_model`).
    :param model_kwargs: Constructor arguments (e.g. ``{"num_classes": 10}``).
    :param meta: JSON-serialisable extras: ``input_shape``, ``nb_classes``, ``mean``, ``std``, ``sigma``, ...
    """
    from safetensors.torch import save_model

    info = {"model": model_name, "model_kwargs": model_kwargs or {}, **meta}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_model(model, str(path), metadata={METADATA_KEY: json.dumps(info)})
    # safetensors creates its file with mode 0600; give checkpoints the permissions of every other output.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def load_checkpoint(path: str | os.PathLike, device: str = "cpu"):
    """
    Rebuild a model saved by :func:`save_checkpoint` (safetensors), or from a torch file holding
    ``{"state_dict": ..., "meta": {...}}`` read with ``weights_only=True``.

    :return: ``(model, meta)`` with the model in eval mode.
    :raises ValueError: naming the file (and the metadata field) when the file is corrupt, its metadata cannot
                        rebuild the model, or its weights do not fit that model.
    :raises NonFiniteError: when a weight is NaN or infinite (such a model votes garbage with confident radii).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    state, meta = _read_checkpoint(path, device)
    name, constructor, kwargs = _model_spec(path, meta)
    try:
        model = constructor(**kwargs)
    except Exception as err:  # whatever the constructor says, the metadata asked for it
        raise ValueError(f"checkpoint {path}: field 'model_kwargs' {kwargs!r} cannot build model {name!r} "
                         f"({type(err).__name__}: {err})") from None
    try:
        if state is None:
            from safetensors.torch import load_model

            load_model(model, str(path), device=device)
        else:
            model.load_state_dict(state)
    except Exception as err:  # RuntimeError for missing/unexpected/misshapen tensors, SafetensorError for bad data
        raise ValueError(f"checkpoint {path} does not match model {name!r}: {err}") from None
    check_finite_weights(model, f"checkpoint {path}")
    return model.to(device).eval(), meta


def _read_checkpoint(path: Path, device: str) -> tuple[dict | None, dict]:
    """The state dict (None for safetensors, which loads into the model directly) and the metadata of ``path``."""
    try:
        if path.suffix in (".pt", ".pth"):
            blob = torch_load(path, map_location=device, unreadable="is corrupt or not a safetensors/torch file")
            if not isinstance(blob, dict) or not {"state_dict", "meta"} <= set(blob):
                raise KeyError("an art-some torch checkpoint is a dict with 'state_dict' and 'meta' {'model': NAME}")
            state, meta = blob["state_dict"], blob["meta"]
        else:
            from safetensors import safe_open

            state = None
            with safe_open(str(path), framework="pt") as f:
                header = f.metadata() or {}
            if METADATA_KEY not in header:
                raise KeyError(f"no {METADATA_KEY!r} metadata field")
            meta = json.loads(header[METADATA_KEY])
    except KeyError as err:
        from art_some.models.own import FORMATS

        raise ValueError(f"checkpoint {path} has no art-some metadata ({err.args[0]}); give {FORMATS}") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"checkpoint {path}: metadata field {METADATA_KEY!r} is not valid JSON ({err})") from None
    except ValueError as err:
        if str(err).startswith(f"checkpoint {path}"):  # torch_load's own one line
            raise
        raise ValueError(f"checkpoint {path} is corrupt or not a safetensors/torch file ({_first_line(err)})") from None
    except Exception as err:
        raise ValueError(f"checkpoint {path} is corrupt or not a safetensors/torch file ({_first_line(err)})") from None
    if not isinstance(meta, dict):
        raise ValueError(f"checkpoint {path}: its metadata must be a JSON object, got {type(meta).__name__}")
    return state, dict(meta)


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _model_spec(path: Path, meta: dict):
    """``(name, constructor, kwargs)`` from the metadata, each field checked before anything is built."""
    from art_some.plugins import registered

    name = meta.get("model")
    models = registered("models")
    if isinstance(meta.get("model_module"), str):  # the user's own class: imported only when the user names it
        raise ValueError(f"checkpoint {path} holds a model of your own class {meta['model_module']}; pass "
                         f"--model-module {meta['model_module']} (art-some imports no code that a file names)")
    if not isinstance(name, str) or name not in models:
        raise ValueError(f"checkpoint {path}: field 'model' is {name!r}, not a registered model; "
                         f"registered: {', '.join(sorted(models))}")
    kwargs = meta.get("model_kwargs") or {}
    if not isinstance(kwargs, dict):
        raise ValueError(f"checkpoint {path}: field 'model_kwargs' must be a JSON object of constructor arguments, "
                         f"got {kwargs!r}")
    _check_kwargs(path, name, models[name], kwargs)
    return name, models[name], kwargs


def _check_kwargs(path: Path, name: str, constructor, kwargs: dict) -> None:
    """Unknown keywords and values of another type than a parameter's default, in words rather than a TypeError."""
    try:
        params = inspect.signature(constructor).parameters
    except (TypeError, ValueError):
        return  # no signature to check against (a builtin): the constructor call will tell
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        accepted = [n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        unknown = sorted(set(kwargs) - set(accepted))
        if unknown:
            raise ValueError(f"checkpoint {path}: field 'model_kwargs' has unknown argument(s) {', '.join(unknown)} "
                             f"for model {name!r}; it takes: {', '.join(accepted) or 'none'}")
    for key, value in kwargs.items():
        default = params[key].default if key in params else inspect.Parameter.empty
        if type(default) in (bool, int, float, str) and not _same_kind(value, default):
            raise ValueError(f"checkpoint {path}: field 'model_kwargs' gives {key}={value!r}; model {name!r} "
                             f"expects {type(default).__name__} (default {default!r})")


def _same_kind(value, default) -> bool:
    """Loose on purpose: any number for a numeric default (``dropout=0`` may take 0.5), None for anything."""
    if value is None:
        return True
    if isinstance(default, bool) or isinstance(value, bool):
        return type(value) is type(default)
    if isinstance(default, (int, float)):
        return isinstance(value, (int, float))
    return isinstance(value, str)


def check_finite_weights(module, where: str) -> None:
    """
    Refuse a module with NaN or inf weights, naming its tensors: a NaN network still votes (argmax of NaN is
    class 0), so nothing downstream would notice.

    :param where: What was loaded, for the message (e.g. ``"checkpoint model.safetensors"``).
    :raises NonFiniteError: if any floating-point parameter or buffer is not finite.
    """
    import torch

    bad = []
    for key, tensor in module.state_dict().items():
        if not (tensor.is_floating_point() or tensor.is_complex()):
            continue
        finite = torch.isfinite(tensor)
        if not bool(finite.all()):
            nan = int(torch.isnan(tensor).sum())
            inf = int((~finite).sum()) - nan
            counts = [f"{count} {what}" for count, what in ((nan, "NaN"), (inf, "inf")) if count]
            bad.append(f"{key} ({', '.join(counts)})")
    if bad:
        shown = ", ".join(bad[:10]) + (f" and {len(bad) - 10} more tensors" if len(bad) > 10 else "")
        raise NonFiniteError(f"{where} has non-finite weights in {shown}; refusing to load it")
