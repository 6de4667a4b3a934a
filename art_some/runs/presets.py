"""
The papers' pipelines in one command: ``art-some certify --preset dds-cifar10 --sigma 0.25 --denoiser FILE
--model hf:FOLDER --data-root DIR``. A preset fills the run's settings (data set, estimator, n, n0, alpha, skip,
batch, the cascade's levels and p0, the denoiser's config and geometry) from the paper and its code; every option
given on the command line or in ``--config`` overrides it. The published figures are in ``docs/denoised.rst``.

Also here: ``--denoiser adm:FILE`` / ``--denoiser-config NAME_OR_JSON`` for certify, as the denoiser spec the
estimator builds (:func:`art_some.models.diffusion.create_denoiser`).

| Paper link: https://arxiv.org/abs/2206.10550 (Carlini et al., ICLR 2023: diffusion denoised smoothing)
| Paper link: https://arxiv.org/abs/2310.16779 (Jeong & Shin, NeurIPS 2023: multi-scale cascade)
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import click

from art_some.runs.config import parse_denoiser

WEIGHT_SUFFIXES = (".pt", ".pth", ".safetensors", ".bin")


@dataclass(frozen=True)
class Preset:
    """A paper's pipeline: the certify options it sets, the estimator options, the denoiser it expects."""

    description: str
    values: dict  # certify's options (dataset, estimator, n, n0, alpha, skip, batch_size, sigma)
    options: dict = field(default_factory=dict)  # the estimator's own (sigmas, p0, ...)
    denoiser_config: str | None = None  # art_some.models.adm.RELEASED
    denoiser_options: dict = field(default_factory=dict)  # DiffusionDenoiser geometry (pad, ...)
    denoiser_file: str = ""  # the released file a user downloads
    model_hint: str = ""  # what --model the paper used
    paper_sigmas: tuple = ()  # the noise levels the paper reports, one run each (DDS)


PRESETS = {
    "dds-cifar10": Preset(
        description="Carlini et al. (ICLR 2023) on CIFAR-10: improved-diffusion's ADM + a ViT-B/16 at 224 px, one "
                    "sigma per run (0.25, 0.5 or 1.0), N = 100,000, every 20th test image",
        values={"dataset": "cifar10", "estimator": "denoised_multiscale", "n": 100_000, "n0": 100, "alpha": 0.001,
                "skip": 20, "batch_size": 1000},
        denoiser_config="adm-cifar10-uncond-50m", denoiser_file="cifar10_uncond_50M_500K.pt",
        model_hint="hf:FOLDER of aaraki/vit-base-patch16-224-in21k-finetuned-cifar10", paper_sigmas=(0.25, 0.5, 1.0)),
    "dds-imagenet": Preset(
        description="Carlini et al. (ICLR 2023) on ImageNet: guided-diffusion's 256x256 unconditional ADM + BEiT-L/16 "
                    "at 512 px, one sigma per run (0.25, 0.5 or 1.0), N = 10,000, every 50th validation image",
        values={"dataset": "imagenet", "estimator": "denoised_multiscale", "n": 10_000, "n0": 100, "alpha": 0.001,
                "skip": 50, "batch_size": 32},
        denoiser_config="adm-imagenet256-uncond", denoiser_options={"pad": 16},
        denoiser_file="256x256_diffusion_uncond.pt", model_hint="timm:beit_large_patch16_512@FILE",
        paper_sigmas=(0.25, 0.5, 1.0)),
    "multiscale-cifar10": Preset(
        description="Jeong & Shin (NeurIPS 2023) on CIFAR-10: the cascade over sigma 1.0, 0.5, 0.25 (p0 0.5) with "
                    "improved-diffusion's ADM, N = 10,000 per level, the whole test set",
        values={"dataset": "cifar10", "estimator": "denoised_multiscale", "n": 10_000, "n0": 100, "alpha": 0.001,
                "skip": 1, "batch_size": 1000, "sigma": 1.0},
        options={"sigmas": [1.0, 0.5, 0.25], "p0": 0.5},
        denoiser_config="adm-cifar10-uncond-50m", denoiser_file="cifar10_uncond_50M_500K.pt",
        model_hint="a CLIP ViT-B/16 fine-tuned on CIFAR-10 (timm:vit_base_patch16_clip_224@FILE)"),
}


def pipeline_options(command):
    """Add ``--preset``, ``--denoiser`` and ``--denoiser-config`` to a click command (certify)."""
    options = [
        click.option("--preset", type=click.Choice(sorted(PRESETS)), default=None,
                     help="A paper's pipeline (docs/denoised.rst): its data set, n, n0, alpha, skip, batch, levels "
                          "and denoiser config; options given here or in --config override it."),
        click.option("--denoiser", default=None,
                     help="The denoiser of denoised smoothing: adm:FILE (an OpenAI ADM checkpoint; FILE.pt alone "
                          "means the same), a diffusers folder, a registered denoiser or a JSON dict with a 'name'. "
                          "Implies --estimator denoised_multiscale."),
        click.option("--denoiser-config", default=None, metavar="NAME_OR_JSON",
                     help="The ADM checkpoint's config: adm-cifar10-uncond-50m, adm-imagenet256-uncond, or JSON of "
                          "the research code's options (image_size, num_channels, ...); default: detected."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def resolve_pipeline(ctx: click.Context, values: dict) -> tuple[dict, dict]:
    """
    The command's values with ``preset``, ``denoiser`` and ``denoiser_config`` resolved: the preset's settings
    where the option was left at its default, and the estimator options they imply (the denoiser spec, the levels).

    :return: ``(values, options)``: certify's values without the three, and estimator options (``--option``'s
             override them).
    """
    values = dict(values)
    name, text, config = values.pop("preset", None), values.pop("denoiser", None), values.pop("denoiser_config", None)
    preset = PRESETS.get(name)
    options: dict = {}
    if preset is not None:
        for key, value in preset.values.items():
            if key in values and _defaulted(ctx, key):
                values[key] = value
        options.update(preset.options)
        if text is None:
            raise ValueError(f"--preset {name} needs --denoiser FILE (the released {preset.denoiser_file})")
        if preset.paper_sigmas and values.get("sigma") is None:
            raise ValueError(f"--preset {name} needs --sigma: the paper certifies sigma "
                             f"{', '.join(map(str, preset.paper_sigmas))}, one run each")
    if text is None:
        if config is not None:
            raise ValueError("--denoiser-config names an ADM checkpoint's config: give --denoiser adm:FILE with it")
        return values, options
    spec = denoiser_spec(text, config, preset)
    options["denoiser"] = spec
    if values.get("estimator") is None:
        values["estimator"] = "denoised_multiscale"
    return values, options


def denoiser_spec(text: str, config=None, preset: Preset | None = None) -> dict:
    """
    ``--denoiser`` as a spec for :func:`~art_some.models.diffusion.create_denoiser`: ``adm:FILE`` or a weights file
    (``.pt``, ``.pth``, ``.safetensors``) is an ADM checkpoint, a folder a diffusers one, else a registered name or
    JSON; ``config`` (``--denoiser-config``) and a preset's config and geometry go with an ADM file.
    """
    if text.startswith("adm:") or (Path(text).suffix in WEIGHT_SUFFIXES and not text.lstrip().startswith("{")):
        path = text[len("adm:"):] if text.startswith("adm:") else text
        if not Path(path).is_file():
            raise FileNotFoundError(f"--denoiser {text}: ADM checkpoint not found: {path}")
        spec = {"name": "adm", "path": str(Path(path).resolve())}
        if preset is not None:
            spec.update(preset.denoiser_options)
        if config is not None or (preset is not None and preset.denoiser_config):
            spec["config"] = _config_value(config) if config is not None else preset.denoiser_config
        return spec
    if config is not None:
        raise ValueError(f"--denoiser-config is for ADM checkpoints (--denoiser adm:FILE), not --denoiser {text}")
    if Path(text).is_dir():
        return {"name": "diffusion", "path": str(Path(text).resolve())}
    return parse_denoiser(text)


def _config_value(text: str):
    """--denoiser-config: a released name, or JSON of options (kept as a dict, so the header shows it)."""
    if text.lstrip().startswith("{"):
        try:
            return json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"--denoiser-config is not valid JSON ({err})") from None
    return text


def _defaulted(ctx: click.Context, name: str) -> bool:
    source = ctx.get_parameter_source(name)
    return source in (None, click.core.ParameterSource.DEFAULT)
