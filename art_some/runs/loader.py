"""
One model loader for every command, after timm's ``create_model``: a name resolves to a registered architecture
(randomly initialised), a file to an art-some checkpoint (:func:`art_some.models.load_checkpoint`) or to a
checkpoint the community released (:func:`art_some.models.load_published`, in its authors' format).
"""
from __future__ import annotations

import os
from pathlib import Path

from art_some.runs.checkpoints import is_checkpoint

NAMED_SOURCES = ("timm", "hf", "torchvision")  # art_some.models.classifiers.SOURCES, without importing torch here


def load_model(name_or_path: str | os.PathLike, *, num_classes: int | None = None, arch: str | None = None,
               device: str = "cpu", published: bool = True, **kwargs):
    """
    The model that ``--model`` names: ``(model, meta)``, meta being the checkpoint's metadata ({} for a name).

    :param name_or_path: A registered model name, a checkpoint file, or a library's classifier by name
                         (``timm:NAME``, ``hf:FOLDER_OR_ID``, ``torchvision:NAME``; :func:`load_named`).
    :param num_classes: The classes of a model built by name.
    :param arch: A published checkpoint's architecture (see :func:`art_some.models.published_architectures`);
                 default: what the file says.
    :param device: Where a checkpoint's weights go (a model built by name stays on the CPU).
    :param published: Whether released checkpoints are accepted (train starts only from art-some's own).
    :param kwargs: Constructor arguments of a model built by name (e.g. ``num_heads``).
    :raises ValueError: for a name that is neither a file nor registered, naming the registered models.
    """
    from art_some.models import create_model, load_checkpoint, load_published
    from art_some.models.published import is_published

    ref = str(name_or_path)
    if is_named(ref):
        return load_named(ref, num_classes=num_classes, device=device, **kwargs)
    if arch is not None and not Path(ref).is_file():
        raise ValueError(f"--arch {arch} names a published checkpoint's architecture, but --model {ref!r} is not a "
                         "file")
    if not is_checkpoint(ref):
        check_registered(ref)
        return create_model(ref, **({} if num_classes is None else {"num_classes": num_classes}), **kwargs), {}
    if published and (arch is not None or is_published(ref)):
        return load_published(ref, arch=arch, device=device)
    return load_checkpoint(ref, device=device)


def check_registered(name: str) -> None:
    """Refuse a ``--model`` that is neither a checkpoint file nor a registered model, naming those registered."""
    from art_some.plugins import registered

    if name not in registered("models"):
        known = ", ".join(sorted(registered("models")))
        raise ValueError(f"--model {name!r} is neither a checkpoint file nor a registered model ({known})")


def folder_note(name: str) -> str | None:
    """
    What to say when ``--model`` names a registered model and also a folder here (an earlier ``--output-dir``):
    every command takes the registered model, and the note says which file holds the folder's weights.
    """
    folder = Path(name)
    if is_checkpoint(name) or not folder.is_dir():
        return None
    inside = folder / "model.safetensors"
    where = f"; for the weights trained there give --model {inside}" if inside.is_file() else ""
    return f"--model {name}: the registered model {name!r}, not the folder {name}/ here{where}"


def default_estimator(model, meta: dict | None = None, model_name: str | None = None) -> str:
    """
    The estimator a model is smoothed with by default: its checkpoint's, else what the model's registration declares
    (:func:`art_some.plugins.default_estimator`: the registered ``model_name``'s ``estimator``, else ``some`` for a
    multi-head network, else ``smoothed``).
    """
    from art_some.plugins import default_estimator as declared

    recorded = (meta or {}).get("estimator")
    if recorded:
        return recorded
    return declared((meta or {}).get("model") or model_name, model)


def is_named(ref) -> bool:
    """Whether ``--model`` names a library's classifier (``timm:``, ``hf:``, ``torchvision:``)."""
    source, sep, name = str(ref).partition(":")
    return bool(sep) and source in NAMED_SOURCES and bool(name)


def load_named(ref: str, *, num_classes: int | None = None, device: str = "cpu", **kwargs):
    """
    A library's classifier by name (``timm:NAME[@FILE|@pretrained]``, ``hf:FOLDER_OR_ID``,
    ``torchvision:NAME[@FILE|@pretrained]``; :func:`art_some.models.classifiers.load_classifier`): ``(model, meta)``,
    ``meta`` holding its input size and normalisation, which :func:`named_preprocessing` makes the estimator's.
    """
    from art_some.models.classifiers import load_classifier

    return load_classifier(ref, num_classes=num_classes, device=device, **kwargs)


def named_preprocessing(meta: dict, info: dict, device: str = "cpu") -> tuple[dict, dict]:
    """
    The data conventions and estimator options of a named classifier on a data set (``info``): the model's mean
    and std as the preprocessing, a resize to its input size (bicubic, antialiased) as a preprocessing defence;
    both are estimator parameters, so the header records them.

    :return: ``(info, options)``.
    :raises ValueError: when the classifier's classes or channels are not the data set's.
    """
    from art_some.models.classifiers import classifier_preprocessing

    if int(meta["num_classes"]) != int(info["num_classes"]):
        raise ValueError(f"--model {meta['model']} has {meta['num_classes']} classes but the data set has "
                         f"{info['num_classes']}")
    if int(meta["model_input_size"][0]) != int(info["input_shape"][0]):
        raise ValueError(f"--model {meta['model']} takes {meta['model_input_size'][0]} channels but the data set has "
                         f"{info['input_shape'][0]}")
    options = classifier_preprocessing(meta, info["input_shape"], "gpu" if str(device).startswith("cuda") else "cpu")
    mean, std = options.pop("preprocessing")
    return {**info, "mean": mean.ravel().tolist(), "std": std.ravel().tolist()}, options
