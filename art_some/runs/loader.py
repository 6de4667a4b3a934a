"""
One model loader for every command, after timm's ``create_model``: a name resolves to a registered architecture
(randomly initialised), a file to an art-some checkpoint (:func:`art_some.models.load_checkpoint`), to a
checkpoint the community released (:func:`art_some.models.load_published`, in its authors' format), or to a plain
state dict of a registered model (``--arch``) or of the user's own class (``--model-module``;
:mod:`art_some.models.own`).
"""
from __future__ import annotations

import os
from pathlib import Path

from art_some.runs.checkpoints import is_checkpoint

NAMED_SOURCES = ("timm", "hf", "torchvision")  # art_some.models.classifiers.SOURCES, without importing torch here


def load_model(name_or_path: str | os.PathLike | None, *, num_classes: int | None = None,
               in_channels: int | None = None, arch: str | None = None, model_module: str | None = None,
               device: str = "cpu", published: bool = True, **kwargs):
    """
    The model that ``--model`` names: ``(model, meta)``, meta being the checkpoint's metadata ({} for a name).

    :param name_or_path: A registered model name, a checkpoint file, or a library's classifier by name
                         (``timm:NAME``, ``hf:FOLDER_OR_ID``, ``torchvision:NAME``; :func:`load_named`); None with
                         ``model_module`` (a randomly initialised model of the user's class).
    :param num_classes: The classes of a model built by name, by ``arch`` or from ``model_module``.
    :param in_channels: The data's channels, for an ``arch`` or ``model_module`` constructor that takes them.
    :param arch: What the weights in the file are for, where the file does not say: a registered model (a plain
                 state dict) or a published checkpoint's architecture (:func:`art_some.models.published_architectures`).
    :param model_module: The user's own class or factory, ``pkg.mod:factory`` or ``path/file.py:factory``
                         (:mod:`art_some.models.own`).
    :param device: Where a checkpoint's weights go (a model built by name stays on the CPU).
    :param published: Whether released checkpoints are accepted (train starts only from art-some's own).
    :param kwargs: Constructor arguments of a model built by name (e.g. ``num_heads``).
    :raises ValueError: for a name that is neither a file nor registered, naming the registered models; for a file
                        that no option makes loadable, naming the formats that load.
    """
    from art_some.models import create_model, load_checkpoint, load_published
    from art_some.models.published import is_published

    ref = None if name_or_path is None else str(name_or_path)
    own = {"num_classes": num_classes, "in_channels": in_channels, "device": device}
    if model_module is not None:
        if arch is not None:
            raise ValueError("give --arch (a registered model or published architecture) or --model-module (your "
                             "own class), not both")
        if ref is not None and not Path(ref).is_file():
            raise ValueError(f"--model {ref!r} is not a file: with --model-module, --model names the file of its "
                             "weights (leave it out for a randomly initialised model)")
        return _load_own(ref, model_module=model_module, **own)
    if ref is None:
        raise ValueError("give --model: a registered model (art-some plugins lists them) or a checkpoint file; or "
                         "--model-module pkg.mod:factory for your own class")
    if is_named(ref):
        return load_named(ref, num_classes=num_classes, device=device, **kwargs)
    if arch is not None and not Path(ref).is_file():
        raise ValueError(f"--arch {arch} names what the weights in --model FILE are for, but --model {ref!r} is not "
                         "a file")
    if not is_checkpoint(ref):
        check_registered(ref)
        return create_model(ref, **({} if num_classes is None else {"num_classes": num_classes}), **kwargs), {}
    released = arch is not None or is_published(ref)  # a torch dict without art-some metadata, or --arch
    layout = published_layout(ref) if released else None
    arch = arch if arch is not None else (layout or {}).get("arch")
    if own_architecture(arch, layout):
        return _load_own(ref, arch=arch, **own)
    if published and released:
        return load_published(ref, arch=arch, device=device)
    return load_checkpoint(ref, device=device)


def published_layout(ref) -> dict | None:
    """
    What a torch file holds, when it is a dict in a released layout: its ``arch`` field and whether its weights are
    those of ``Sequential(NormalizeLayer, network)`` (keys under ``1.``) or MACER's ``net``; None for anything else.
    """
    from art_some.models.published import _read

    try:
        blob = _read(Path(ref)) if Path(ref).suffix != ".safetensors" else None
    except ValueError:
        return None
    if not isinstance(blob, dict):
        return None
    state = blob.get("state_dict")
    keys = [k for k in state if isinstance(k, str)] if isinstance(state, dict) else []
    wrapped = "net" in blob or any(k.startswith(("1.", "module.1.")) for k in keys)
    return {"arch": blob.get("arch") if isinstance(blob.get("arch"), str) else None, "wrapped": wrapped}


def own_architecture(arch, layout: dict | None) -> bool:
    """
    Whether ``arch`` names a registered model whose plain weights the file holds, rather than a published
    architecture (three names are both: the file's layout decides, a released one keeping its normalize layer).
    """
    from art_some.models.published import ALIASES, ARCHITECTURES
    from art_some.plugins import registered

    if arch is None or arch not in registered("models"):
        return False
    return ALIASES.get(arch, arch) not in ARCHITECTURES or not (layout or {}).get("wrapped", False)


def _load_own(ref, *, arch=None, model_module=None, num_classes=None, in_channels=None, device="cpu"):
    """A plain state dict (or an art-some file) in ``arch`` or ``model_module``: its recorded metadata kept."""
    from art_some.models.own import load_own

    recorded = recorded_meta(ref) if ref is not None else {}
    model, meta = load_own(ref, arch=arch, model_module=model_module, num_classes=num_classes,
                           in_channels=in_channels, device=device, model_kwargs=recorded.get("model_kwargs"))
    return model, {**recorded, **meta}


def recorded_meta(path) -> dict:
    """The art-some metadata of a safetensors file ({} for a plain one, or another kind of file)."""
    import json

    from art_some.models import METADATA_KEY

    if Path(path).suffix != ".safetensors":
        return {}
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get(METADATA_KEY, "{}"))
    except Exception:
        return {}  # the weights' own read says what is wrong with the file
    return meta if isinstance(meta, dict) else {}


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


def check_fits(clf, data, dataset: str, *, compile: bool = False, data_options=()) -> None:
    """
    Vote once on the data set's first input (one draw of the PREDICT stream; records do not depend on it), so that
    a model that does not fit the data (channels, size, classes) or a ``--compile`` that cannot work here fails in
    one line naming the shapes, before any file is written, rather than with a traceback from inside the model.

    :param data_options: The data options ``dataset``'s loader takes (what the message may suggest).
    :raises ValueError: naming the model's and the data's shapes, and what to pass.
    """
    import numpy as np

    if not len(data):
        raise ValueError(f"--dataset {dataset} holds no inputs")
    x = np.asarray(data[0][0], dtype=np.float32)
    from art_some.core.errors import NonFiniteError

    try:
        clf.predict_counts(x[None], n=1)
    except NonFiniteError:
        return  # a model that fits the data but gives no finite logits here: the run refuses it for that input
    except Exception as err:
        shape = "x".join(str(d) for d in x.shape)
        text = str(err).strip()
        first = (text.splitlines()[0] if text else "")[:300]
        mismatch = layer_mismatch(clf.model, x.shape, dataset, data_options)
        if mismatch:
            raise ValueError(mismatch) from None
        if compile:
            raise ValueError(f"--compile: torch.compile cannot compile the network here ({type(err).__name__}"
                             f"{': ' + first if first else ''}); run without --compile") from None
        advice = "; resize the images (--resize)" if "resize" in data_options else ""
        raise ValueError(f"the model fails on one input of --dataset {dataset} ({shape} images, {clf.nb_classes} "
                         f"classes): {type(err).__name__}: {first}{advice}") from None


def layer_mismatch(model, shape: tuple, dataset: str, data_options=()) -> str | None:
    """
    What the model's first layer says it expects, when the data's ``(C, H, W)`` inputs cannot be it: the channels of
    its first convolution, or the features of a first linear layer; None when it says nothing against them.
    """
    import math

    import torch

    images = f"--dataset {dataset} gives {'x'.join(str(d) for d in shape)} images"
    for module in model.modules():
        if isinstance(module, torch.nn.modules.conv._ConvNd):
            expects = module.in_channels
            if expects == shape[0]:
                return None
            advice = (f"pass --channels {expects}" if "channels" in data_options and expects in (1, 3)
                      else f"give a model for {shape[0]}-channel inputs")
            return f"the model expects {expects}-channel inputs but {images}; {advice}"
        if isinstance(module, torch.nn.Linear):
            if module.in_features == math.prod(shape):
                return None
            advice = "; resize them (--resize)" if "resize" in data_options else ""
            return (f"the model's first layer takes {module.in_features} values per input but {images} "
                    f"({math.prod(shape)} values){advice}")
    return None
