"""
Classifiers by the names the field uses: ``timm:NAME`` (timm's ``create_model``), ``hf:FOLDER_OR_ID`` (transformers'
``AutoModelForImageClassification``, logits out) and ``torchvision:NAME`` (``torchvision.models.get_model``), each
optionally ``@FILE`` (a local weights file, loaded strictly with ``weights_only``) or ``@pretrained`` (the
library's own download, where there is internet). The model's input size and normalisation come back in the
metadata; :func:`classifier_preprocessing` turns them into the estimator's preprocessing (a bicubic, antialiased
resize as in Carlini et al.'s code, then the model's mean and std), so noise is still added to the raw images and
the header records both.

timm and transformers are optional extras: ``pip install "art-some[timm]"``, ``"art-some[hf]"``.

| Paper link: https://arxiv.org/abs/2206.10550 (Carlini et al.: off-the-shelf classifiers for denoised smoothing)
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from art.defences.preprocessor.preprocessor import PreprocessorPyTorch
from torch import nn

SOURCES = ("timm", "hf", "torchvision")
EXTRAS = {"timm": "timm", "hf": "transformers"}  # extra -> the module it installs
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
HF_DEFAULT_MEAN = HF_DEFAULT_STD = (0.5, 0.5, 0.5)  # transformers' IMAGENET_STANDARD_*, ViTImageProcessor's default


def is_named(ref) -> bool:
    """Whether ``--model`` names a classifier of a library (``timm:``, ``hf:``, ``torchvision:``)."""
    source, sep, name = str(ref).partition(":")
    return bool(sep) and source in SOURCES and bool(name)


def parse_name(ref: str) -> tuple[str, str, str | None]:
    """``"timm:vit_base_patch16_224@w.safetensors"`` -> ``("timm", "vit_base_patch16_224", "w.safetensors")``."""
    source, _, rest = str(ref).partition(":")
    if source not in SOURCES or not rest:
        raise ValueError(f"--model {ref!r}: a classifier by name is timm:NAME, hf:FOLDER_OR_ID or torchvision:NAME "
                         "(optionally @FILE or @pretrained)")
    name, _, weights = rest.partition("@")
    return source, name, weights or None


def load_classifier(ref: str, num_classes: int | None = None, device: str = "cpu", interpolation: str = "bicubic",
                    antialias: bool = True, **kwargs):
    """
    The classifier ``ref`` names and its metadata: ``(model, meta)``; ``meta`` holds ``mean``, ``std``,
    ``model_input_size`` (``[C, H, W]``), ``interpolation``, ``antialias``, ``num_classes`` and ``pretrained``
    (the weights file, ``"pretrained"``, or None for random weights).

    :param ref: ``timm:NAME[@FILE|@pretrained]``, ``hf:FOLDER_OR_ID`` or ``torchvision:NAME[@FILE|@pretrained]``.
    :param num_classes: Classes of a timm/torchvision model (an hf model has its own; default timm's/1000).
    :param device: Where the model goes.
    :param interpolation: Of the resize to the model's input size (``"bicubic"`` as the DDS code).
    :param antialias: Antialias the resize (as the DDS code).
    :param kwargs: Passed to the library's constructor (e.g. timm's ``pretrained_cfg_overlay=dict(file=...)``).
    :raises MissingExtraError: (an ImportError) in one line naming the extra to install.
    :raises FileNotFoundError: for a weights file or folder that does not exist.
    :raises ValueError: in one line for an unknown name or weights that do not fit.
    """
    source, name, weights = parse_name(ref)
    if weights not in (None, "pretrained") and not Path(weights).is_file():
        raise FileNotFoundError(f"--model {ref}: weights file not found: {weights}")
    build = {"timm": _timm, "hf": _hf, "torchvision": _torchvision}[source]
    model, meta = build(name, weights, num_classes, **kwargs)
    if weights not in (None, "pretrained"):
        load_weights(model, weights, f"--model {ref}: weights {weights}")
    meta = {"model": str(ref), "format": "named", "pretrained": weights, "interpolation": interpolation,
            "antialias": bool(antialias), **meta}
    return model.to(device).eval(), meta


class MissingExtraError(ImportError, ValueError):
    """An optional extra is not installed (a ValueError too, so commands print it as one line)."""


def need(extra: str):
    """Import the module of an optional extra, or one line naming ``pip install "art-some[extra]"``."""
    import importlib

    module = EXTRAS[extra]
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtraError(f"{extra}: models need the optional package {module}: "
                                f"pip install \"art-some[{extra}]\"") from None


def _timm(name, weights, num_classes, **kwargs):
    timm = need("timm")
    if not timm.is_model(name) and not kwargs.get("pretrained_cfg_overlay"):
        close = timm.list_models(f"*{name.split('_')[0]}*")[:5]
        raise ValueError(f"timm has no model {name!r}" + (f" (similar: {', '.join(close)})" if close else ""))
    pretrained = weights == "pretrained" or "pretrained_cfg_overlay" in kwargs
    args = {} if num_classes is None else {"num_classes": int(num_classes)}
    try:
        model = timm.create_model(name, pretrained=pretrained, **args, **kwargs)
    except Exception as err:  # timm raises RuntimeError/ValueError/OSError for unknown names or failed downloads
        raise ValueError(f"timm:{name}: {_line(err)}") from None
    cfg = timm.data.resolve_model_data_config(model)
    size = list(cfg["input_size"])
    built = getattr(getattr(model, "patch_embed", None), "img_size", None)  # img_size= overrides the config's
    if built is not None:
        size[-2:] = [int(s) for s in built]
    return model, {"source": "timm", "mean": list(cfg["mean"]), "std": list(cfg["std"]), "model_input_size": size,
                   "num_classes": int(model.num_classes)}


class LogitsOf(nn.Module):
    """A transformers image classifier called on pixel values, returning its logits (a plain tensor)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(pixel_values=x).logits


def _hf(name, weights, num_classes, **kwargs):
    transformers = need("hf")
    if weights is not None:
        raise ValueError(f"hf:{name}@{weights}: an hf model's weights are its folder (hf:FOLDER)")
    folder = Path(name)
    local = folder.is_dir()
    if not local and (name.startswith((".", "/", "~")) or folder.suffix or name.count("/") > 1):
        raise FileNotFoundError(f"hf:{name}: no such folder")
    try:
        model = transformers.AutoModelForImageClassification.from_pretrained(name, local_files_only=local, **kwargs)
    except Exception as err:  # OSError (no config, no weights, offline), ValueError (not an image classifier)
        raise ValueError(f"hf:{name}: cannot load an image classifier ({_line(err)})") from None
    config = model.config
    mean, std, size = HF_DEFAULT_MEAN, HF_DEFAULT_STD, getattr(config, "image_size", 224)
    processor = folder / "preprocessor_config.json" if local else None
    if processor is not None and processor.is_file():
        try:
            settings = json.loads(processor.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{processor} is not valid JSON ({err})") from None
        mean, std = settings.get("image_mean", mean), settings.get("image_std", std)
        size = settings.get("size", size)
    height, width = _hw(size)
    channels = int(getattr(config, "num_channels", 3))
    if num_classes is not None and int(config.num_labels) != int(num_classes):
        raise ValueError(f"hf:{name} has {config.num_labels} labels but the data set has {num_classes} classes")
    return LogitsOf(model), {"source": "hf", "mean": list(mean), "std": list(std),
                             "model_input_size": [channels, height, width], "num_classes": int(config.num_labels)}


def _hw(size) -> tuple[int, int]:
    if isinstance(size, dict):
        if "height" in size:
            return int(size["height"]), int(size["width"])
        edge = size.get("shortest_edge", 224)
        return int(edge), int(edge)
    if isinstance(size, (list, tuple)):
        return int(size[0]), int(size[-1])
    return int(size), int(size)


def _torchvision(name, weights, num_classes, **kwargs):
    import torchvision

    if name not in torchvision.models.list_models():
        raise ValueError(f"torchvision has no model {name!r} (torchvision.models.list_models() lists them)")
    args = {} if num_classes is None else {"num_classes": int(num_classes)}
    try:
        model = torchvision.models.get_model(name, weights="DEFAULT" if weights == "pretrained" else None, **args,
                                             **kwargs)
    except Exception as err:
        raise ValueError(f"torchvision:{name}: {_line(err)}") from None
    mean, std, size = IMAGENET_MEAN, IMAGENET_STD, 224
    try:  # the release's own transform (its construction downloads nothing)
        preset = torchvision.models.get_model_weights(name).DEFAULT.transforms()
        mean, std, size = tuple(preset.mean), tuple(preset.std), int(preset.crop_size[0])
    except Exception:  # models without released weights: ImageNet's conventions
        pass
    out = getattr(model, "num_classes", None) or int(num_classes or 1000)
    return model, {"source": "torchvision", "mean": list(mean), "std": list(std), "model_input_size": [3, size, size],
                   "num_classes": int(out)}


def load_weights(model: nn.Module, file, where: str) -> None:
    """Load a state dict (safetensors, or torch with ``weights_only``) strictly, refusing in one line."""
    from art_some.models.diffusion import _refuse_key_mismatch, _summary

    file = Path(file)
    try:
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(file))
        else:
            state = torch.load(file, map_location="cpu", weights_only=True)
            if isinstance(state, dict):
                for key in ("state_dict", "model", "state_dict_ema", "model_ema"):
                    if isinstance(state.get(key), dict):
                        state = state[key]
                        break
    except Exception as err:
        raise ValueError(f"{where} is truncated, corrupt or not a safetensors/torch file ({_summary(err)})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{where} holds no state dict (a dict of tensor names to tensors)")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as err:
        raise ValueError(f"{where} does not fit the model ({_summary(err)})") from None
    _refuse_key_mismatch(result.missing_keys, result.unexpected_keys, where)


def _line(err: Exception) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


# ------------------------------------------------------------------------------------------------------------------
# Preprocessing
# ------------------------------------------------------------------------------------------------------------------
class ResizeInput(PreprocessorPyTorch):
    """
    An ART preprocessing defence (torch-native, differentiable) that resizes inputs to ``size`` (H, W) before the
    model (bicubic and antialiased as in Carlini et al.'s code): part of the estimator's preprocessing, so the header
    records it (``estimator_params.preprocessing_defences``).

    :param size: ``(H, W)`` of the classifier's input.
    :param interpolation: ``"bicubic"``, ``"bilinear"`` or ``"nearest"``.
    :param antialias: Antialias when shrinking.
    """

    params = ["size", "interpolation", "antialias"]

    def __init__(self, size, interpolation: str = "bicubic", antialias: bool = True, device_type: str = "cpu"):
        super().__init__(device_type=device_type, is_fitted=True, apply_fit=True, apply_predict=True)
        if interpolation not in ("bicubic", "bilinear", "nearest"):
            raise ValueError(f"interpolation must be 'bicubic', 'bilinear' or 'nearest', got {interpolation!r}")
        self.size = [int(s) for s in size]
        self.interpolation, self.antialias = interpolation, bool(antialias)

    def forward(self, x, y=None):
        if list(x.shape[-2:]) == self.size:
            return x, y
        extra = {} if self.interpolation == "nearest" else {"align_corners": False, "antialias": self.antialias}
        return nn.functional.interpolate(x, size=self.size, mode=self.interpolation, **extra), y


def classifier_preprocessing(meta: dict, input_shape, device_type: str = "cpu") -> dict:
    """
    The estimator arguments for a named classifier on inputs of ``input_shape`` ``(C, H, W)``: ``preprocessing``
    (the model's mean and std) and ``preprocessing_defences`` (the resize, when the sizes differ).
    """
    import numpy as np

    mean = np.asarray(meta["mean"], dtype=np.float32).reshape(-1, 1, 1)
    std = np.asarray(meta["std"], dtype=np.float32).reshape(-1, 1, 1)
    out = {"preprocessing": (mean, std)}
    size = list(meta["model_input_size"][-2:])
    if list(input_shape[-2:]) != size:
        out["preprocessing_defences"] = [ResizeInput(size, meta.get("interpolation", "bicubic"),
                                                     meta.get("antialias", True), device_type)]
    return out
