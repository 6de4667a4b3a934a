"""
One model loader for every command, after timm's ``create_model``: a name resolves to a registered architecture
(randomly initialised), a file to an art-some checkpoint (:func:`art_some.models.load_checkpoint`) or to a
checkpoint the community released (:func:`art_some.models.load_published`, in its authors' format).
"""
from __future__ import annotations

import os
from pathlib import Path

from art_some.runs.checkpoints import is_checkpoint


def load_model(name_or_path: str | os.PathLike, *, num_classes: int | None = None, arch: str | None = None,
               device: str = "cpu", published: bool = True, **kwargs):
    """
    The model that ``--model`` names: ``(model, meta)``, meta being the checkpoint's metadata ({} for a name).

    :param name_or_path: A registered model name, or a checkpoint file.
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
