"""
Model factory (names map to constructors, as in timm) and safe checkpoints.

``create_model(name, **kwargs)`` builds a registered architecture, randomly initialised (no weights are ever
downloaded). Checkpoints are safetensors files whose metadata records the architecture and the data
conventions, so ``load_checkpoint`` rebuilds the model without executing pickled code.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from art_some.hookspecs import hookimpl
from art_some.models.cifar_resnet import CifarResNet
from art_some.models.diffusion import DiffusionDenoiser, IdentityDenoiser, create_denoiser, register_builtin_denoisers
from art_some.models.multihead import (
    MultiHeadNet,
    cifar_resnet_multihead,
    cosine_loss,
    digits_cnn_multihead,
    resnet50_multihead,
)
from art_some.models.small import DigitsCNN
from art_some.models.video import ChunkAveragedClip, TinyVideoCNN

__all__ = [
    "ChunkAveragedClip",
    "CifarResNet",
    "DiffusionDenoiser",
    "DigitsCNN",
    "IdentityDenoiser",
    "create_denoiser",
    "MultiHeadNet",
    "cosine_loss",
    "create_model",
    "load_checkpoint",
    "save_checkpoint",
    "TinyVideoCNN",
]

METADATA_KEY = "art_some"


def _cifar_resnet(depth: int):
    def build(num_classes: int = 10, in_channels: int = 3):
        return CifarResNet(depth=depth, num_classes=num_classes, in_channels=in_channels)

    build.__doc__ = f"CIFAR ResNet-{depth} (randomly initialised)."
    return build


def _torchvision(name: str):
    def build(num_classes: int = 1000, **kwargs):
        import torchvision

        return torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kwargs)

    build.__doc__ = f"torchvision's {name} (randomly initialised; no weights are downloaded)."
    return build


@hookimpl
def register_models(register):
    register("digits_cnn", DigitsCNN, description="small CNN for 1x8x8 digits")
    register("tiny_video_cnn", TinyVideoCNN, description="two-layer 3D CNN for (C, T, H, W) clips (tests)")
    register("cifar_resnet20", _cifar_resnet(20), description="CIFAR ResNet-20")
    register("cifar_resnet110", _cifar_resnet(110), description="CIFAR ResNet-110 (Cohen et al.)")
    register("resnet50", _torchvision("resnet50"), description="torchvision ResNet-50 for ImageNet")
    register("some_digits_cnn", digits_cnn_multihead, description="multi-head DigitsCNN (SOME), num_heads=5")
    register("some_cifar_resnet20", lambda **kw: cifar_resnet_multihead(depth=20, **kw),
             description="multi-head CIFAR ResNet-20 (SOME), num_heads=5")
    register("some_cifar_resnet110", lambda **kw: cifar_resnet_multihead(depth=110, **kw),
             description="multi-head CIFAR ResNet-110 (SOME), num_heads=5")
    register("some_resnet50", resnet50_multihead, description="multi-head ResNet-50 (SOME), num_heads=5")


@hookimpl
def register_denoisers(register):
    register_builtin_denoisers(register)


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


def load_checkpoint(path: str | os.PathLike, device: str = "cpu"):
    """
    Rebuild a model saved by :func:`save_checkpoint` (safetensors), or from a torch file holding
    ``{"state_dict": ..., "meta": {...}}`` read with ``weights_only=True``.

    :return: ``(model, meta)`` with the model in eval mode.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        if path.suffix in (".pt", ".pth"):
            blob = torch.load(path, map_location=device, weights_only=True)
            state, meta = blob["state_dict"], dict(blob["meta"])
        else:
            from safetensors import safe_open

            state = None
            with safe_open(str(path), framework="pt") as f:
                meta = json.loads((f.metadata() or {})[METADATA_KEY])
    except (KeyError, TypeError, json.JSONDecodeError) as err:
        raise ValueError(f"checkpoint {path} has no art-some metadata ({err})") from None
    except Exception as err:
        raise ValueError(f"checkpoint {path} is corrupt or not a safetensors/torch file ({err})") from None
    model = create_model(meta["model"], **meta.get("model_kwargs", {}))
    try:
        if state is None:
            from safetensors.torch import load_model

            load_model(model, str(path), device=device)
        else:
            model.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(f"checkpoint {path} does not match model {meta['model']!r}: {err}") from None
    return model.to(device).eval(), meta
