"""
The checkpoint metadata that ``art-some train`` writes into ``model.safetensors`` and that ``certify`` and
``evaluate`` read back, both sides in one place: the noise level, the data conventions, the estimator and its
options (a cascade's denoiser and levels, its files relative to the checkpoint's folder).
"""
from __future__ import annotations

import os
from pathlib import Path

CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth")
MODEL_FILE = "model.safetensors"
DENOISER_DIR = "denoiser"  # the denoised methods' denoiser, when its weights are not the user's own folder
# The entries of a denoiser spec that name files: absolute when the user's own, else relative to the checkpoint.
DENOISER_FILES = ("path", "checkpoint", "unet_config")
PUBLISHED_FORMATS = ("cohen", "some", "macer")  # art_some.models.published's formats


def is_checkpoint(ref: str | os.PathLike) -> bool:
    """Whether ``--model`` names a checkpoint file rather than a registered model."""
    return Path(ref).suffix in CHECKPOINT_SUFFIXES or Path(ref).is_file()


# ----------------------------------------------------------------------------------------------------------------
# Written by train
# ----------------------------------------------------------------------------------------------------------------
def training_meta(*, sigma: float, dataset: str, info: dict, estimator: str, method: str, epoch: int,
                  trainer_kwargs: dict, estimator_options: dict | None = None) -> dict:
    """
    What a trained checkpoint records besides its architecture (:func:`art_some.models.save_checkpoint` adds the
    model's name and constructor arguments): its noise level, data conventions (classes, input shape, and the mean
    and std standardising its inputs after the noise), estimator, method and epoch, and
    the estimator's options when certify needs them to rebuild it (a cascade's denoiser, with
    :func:`absolute_denoiser`'s paths or a folder beside the checkpoint, and its levels).
    """
    meta = {"sigma": sigma, "dataset": dataset, "num_classes": info["num_classes"],
            "input_shape": list(info["input_shape"]), "estimator": estimator, "method": method, "epoch": epoch,
            "trainer_kwargs": trainer_kwargs}
    for key in ("mean", "std"):  # certify refuses other data conventions (check_dataset)
        if key in info:
            meta[key] = [float(v) for v in info[key]]
    if estimator_options:
        meta["estimator_options"] = estimator_options
    return meta


def absolute_denoiser(spec: dict) -> dict:
    """A denoiser spec with its files as absolute paths, so that certify finds them from any folder."""
    return {k: str(Path(v).resolve()) if k in DENOISER_FILES and isinstance(v, str) else v for k, v in spec.items()}


# ----------------------------------------------------------------------------------------------------------------
# Read by certify and evaluate
# ----------------------------------------------------------------------------------------------------------------
def check_dataset(meta: dict, info: dict, dataset: str) -> None:
    """
    Refuse a checkpoint whose classes, input shape or standardisation (where it records them) are not the data
    set's, saying which data option gives the checkpoint's.
    """
    for key in ("num_classes", "input_shape", "mean", "std"):
        if key in meta and _text(meta[key], key) != _text(info[key], key):
            raise ValueError(f"--model checkpoint has {key} {_text(meta[key], key)} but dataset {dataset!r} has "
                             f"{_text(info[key], key)}{_advice(key, meta[key], info[key])}")


def _text(value, key: str) -> str:
    if key in ("mean", "std"):
        return str([float(v) for v in value])
    return str(list(value) if key == "input_shape" else value)


def _advice(key: str, recorded, given) -> str:
    """The data option that gives the checkpoint's value (for the data sets that take it)."""
    if key in ("mean", "std"):
        return f"; pass --{key} {','.join(f'{float(v):g}' for v in recorded)}"
    if key == "input_shape" and list(recorded)[0] != list(given)[0]:
        return f"; pass --channels {list(recorded)[0]}"
    if key == "input_shape" and list(recorded)[1:] != list(given)[1:]:
        return f"; pass --resize {','.join(str(v) for v in list(recorded)[1:])}"
    return ""


def recorded_options(meta: dict, path: str | os.PathLike, sigma_given: bool) -> dict:
    """
    The estimator options a checkpoint records (a cascade's denoiser and levels, from art-some train), its
    denoiser's files relative to the checkpoint's folder; an explicit --sigma replaces the recorded levels.
    """
    options = dict(meta.get("estimator_options") or {})
    if sigma_given:
        options.pop("sigmas", None)
    denoiser = options.get("denoiser")
    if isinstance(denoiser, dict):
        folder = Path(path).parent
        options["denoiser"] = {k: str(folder / v) if k in DENOISER_FILES and isinstance(v, str) else v
                               for k, v in denoiser.items()}
    return options


def preprocessing(meta: dict, info: dict) -> dict:
    """The data conventions to smooth under: a published network's own normalisation, else the data set's."""
    if meta.get("format") in PUBLISHED_FORMATS:
        return {**info, "mean": meta["mean"], "std": meta["std"]}
    return info
