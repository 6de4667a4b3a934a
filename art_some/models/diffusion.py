"""
One-shot diffusion denoisers for denoised smoothing (Carlini et al. 2023; Jeong & Shin 2023), on diffusers.

A denoiser is any module called as ``denoiser(z, sigma)``: ``z`` holds noisy images in the classifier's input
space (the smoothing engine has already added N(0, sigma^2 I) there) and the result is a denoised image in the
same space and range. The noise is never drawn here: it is the certified noise, drawn by the engine.

| Paper link: https://arxiv.org/abs/2206.10550 (Carlini et al., diffusion denoised smoothing)
| Paper link: https://arxiv.org/abs/2310.16779 (Jeong & Shin, multi-scale diffusion denoised smoothing)
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch
from torch import nn


def diffusion_sigmas(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """sigma_t = sqrt((1 - abar_t) / abar_t): the noise std of x_t / sqrt(abar_t) in the model's [-1, 1] units."""
    a = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
    return ((1.0 - a) / a).sqrt()


def timestep_for_noise(alphas_cumprod: torch.Tensor, noise_std: float) -> int:
    """
    t*: the first timestep whose sigma_t reaches ``noise_std`` (in the model's [-1, 1] units), i.e. the smallest
    t with abar_t <= 1 / (1 + noise_std^2). Both official codes pick this t (one scans sqrt(abar_t), the other
    counts up while sigma_t < s).

    :raises ValueError: if the schedule never gets that noisy.
    """
    if not math.isfinite(noise_std) or noise_std <= 0:
        raise ValueError(f"noise_std must be a finite number > 0, got {noise_std!r}")
    reached = torch.nonzero(diffusion_sigmas(alphas_cumprod) >= noise_std)
    if len(reached) == 0:
        top = float(diffusion_sigmas(alphas_cumprod)[-1])
        raise ValueError(f"the diffusion schedule's largest noise std is {top:.3g} < {noise_std:.3g} (model units)")
    return int(reached[0])


class IdentityDenoiser(nn.Module):
    """The identity ``denoiser(z, sigma) = z``: plain Gaussian smoothing of the classifier (tests, baselines)."""

    def forward(self, z: torch.Tensor, sigma: float) -> torch.Tensor:
        return z


class DiffusionDenoiser(nn.Module):
    """
    One denoising step of a DDPM-trained epsilon-prediction UNet at the timestep t* that matches the certified
    noise (the recipe of the multi-scale code; Carlini et al. found one step beats multi-step sampling):

    1. map ``z`` to the model's [-1, 1] range: y = 2 (z - lo) / (hi - lo) - 1, whose noise std is
       s = 2 sigma / (hi - lo) (the factor 2 of the [-1, 1] range);
    2. t* = the first t with sigma_t >= s (:func:`timestep_for_noise`), x_in = sqrt(abar_t*) y;
    3. eps = UNet(x_in, t*), keeping the first C channels of a learned-variance (2C-channel) output;
    4. x0 = (x_in - sqrt(1 - abar_t*) eps) / sqrt(abar_t*), clipped to [-1, 1] (``clip_denoised``);
    5. map back to [lo, hi]; optionally resize for the classifier.

    The denoiser is a deterministic function of the noisy input, so the gap sigma_t* >= s (at most 0.7% on the
    linear schedule) leaves certificates exact. The scheduler never draws noise here (the ethz code's
    ``q_sample`` at t* would add std sigma_t* instead of s, a conservative but inexact certificate).

    Geometry: ``pad`` reflection-pads each side before the UNet and crops the centre back (the multi-scale
    ImageNet setting, 224 + 2 x 16 = 256); ``output_size`` resizes the denoised image for the classifier (Carlini
    et al.'s CIFAR-10 setting, 32 -> 224 bicubic; 224 -> 512 for BEiT). ``timestep_scale`` multiplies t* before it
    reaches the UNet: a 4000-step improved-diffusion model converted with ``rescale_timesteps=True`` needs
    1000 / 4000 (``rescale_timesteps=True`` here sets it).

    | Paper link: https://arxiv.org/abs/2206.10550

    :param unet: A diffusers ``UNet2DModel`` (or any module called as ``unet(x, t)`` returning a tensor or an
                 object with ``.sample``) predicting epsilon.
    :param alphas_cumprod: The training schedule's cumulative alphas (e.g. ``DDPMScheduler.alphas_cumprod``).
    :param input_range: ``(lo, hi)`` of the images the classifier sees (default ``(0, 1)``).
    :param clip_denoised: Clip x0 to [-1, 1] (the official default).
    :param timestep_scale: Factor applied to t* before the UNet call.
    :param rescale_timesteps: Set ``timestep_scale`` to 1000 / T (improved-diffusion's convention).
    :param pad: Reflection padding in pixels on each side before the UNet.
    :param output_size: ``(H, W)`` (or one int) to resize the denoised image to, or None.
    :param output_mode: Interpolation for ``output_size`` (``"bicubic"``, ``"bilinear"``, ``"nearest"``).
    """

    def __init__(
        self,
        unet: nn.Module,
        alphas_cumprod,
        *,
        input_range: tuple[float, float] = (0.0, 1.0),
        clip_denoised: bool = True,
        timestep_scale: float = 1.0,
        rescale_timesteps: bool = False,
        pad: int = 0,
        output_size=None,
        output_mode: str = "bicubic",
    ):
        super().__init__()
        alphas = torch.as_tensor(alphas_cumprod, dtype=torch.float64).flatten()
        if alphas.numel() < 2 or not bool(((alphas > 0) & (alphas < 1)).all()):
            raise ValueError("alphas_cumprod must hold at least two values in (0, 1)")
        if not bool((alphas[1:] <= alphas[:-1]).all()):
            raise ValueError("alphas_cumprod must be non-increasing (abar_t falls as t grows)")
        lo, hi = (float(v) for v in input_range)
        if not hi > lo:
            raise ValueError(f"input_range must be (lo, hi) with hi > lo, got {input_range!r}")
        if int(pad) != pad or pad < 0:
            raise ValueError(f"pad must be an integer >= 0, got {pad!r}")
        if output_mode not in ("bicubic", "bilinear", "nearest"):
            raise ValueError(f"output_mode must be 'bicubic', 'bilinear' or 'nearest', got {output_mode!r}")
        if rescale_timesteps:
            timestep_scale = 1000.0 / alphas.numel()
        if not timestep_scale > 0:
            raise ValueError(f"timestep_scale must be > 0, got {timestep_scale!r}")
        self.unet = unet
        # float64 on the CPU: t* must not depend on the device or dtype the UNet runs in.
        self.alphas_cumprod = alphas
        self.input_range = (lo, hi)
        self.clip_denoised = bool(clip_denoised)
        self.timestep_scale = float(timestep_scale)
        self.pad = int(pad)
        self.output_size = None if output_size is None else _pair(output_size)
        self.output_mode = output_mode

    @property
    def num_train_timesteps(self) -> int:
        return int(self.alphas_cumprod.numel())

    def model_noise_std(self, sigma: float) -> float:
        """The std in the model's [-1, 1] units of noise with std ``sigma`` in input units: 2 sigma / (hi - lo)."""
        lo, hi = self.input_range
        return 2.0 * float(sigma) / (hi - lo)

    def timestep(self, sigma: float) -> int:
        """t* for certified noise ``sigma`` in input units."""
        return timestep_for_noise(self.alphas_cumprod, self.model_noise_std(sigma))

    def predict_noise(self, x_in: torch.Tensor, t: int) -> torch.Tensor:
        """The UNet's epsilon for ``x_in`` at timestep ``t`` (before rescaling), learned-variance channels dropped."""
        param = next(self.unet.parameters(), None)
        dtype = param.dtype if param is not None else x_in.dtype
        timestep = t * self.timestep_scale
        if self.timestep_scale == 1.0:
            timestep = int(t)
        steps = torch.full((len(x_in),), timestep, device=x_in.device,
                           dtype=torch.long if isinstance(timestep, int) else torch.float32)
        out = self.unet(x_in.to(dtype), steps)
        eps = getattr(out, "sample", out)
        channels = x_in.shape[1]
        if eps.shape[1] == 2 * channels:
            eps = eps[:, :channels]  # learned variance: epsilon first, then the variance interpolation
        elif eps.shape[1] != channels:
            raise ValueError(f"the UNet returned {eps.shape[1]} channels for a {channels}-channel input")
        return eps.float()

    def forward(self, z: torch.Tensor, sigma: float, clip: bool | str | None = None) -> torch.Tensor:
        """
        Denoise noisy images ``z`` ``(B, C, H, W)`` (input units) carrying Gaussian noise of std ``sigma``.

        :param clip: Override ``clip_denoised``: True, False, or ``"straight_through"`` (training: the clipped
                     values, as certification sees them, with the gradient of the unclipped x0, since clipping
                     zeroes the gradient on clipped pixels).
        :return: The x0 estimate in input units, ``(B, C, H, W)`` or ``(B, C, *output_size)``.
        """
        t = self.timestep(sigma)
        abar = float(self.alphas_cumprod[t])
        lo, hi = self.input_range
        y = (z.float() - lo) * (2.0 / (hi - lo)) - 1.0
        if self.pad:
            y = nn.functional.pad(y, (self.pad,) * 4, mode="reflect")
        x_in = math.sqrt(abar) * y
        eps = self.predict_noise(x_in, t)
        x0 = (x_in - math.sqrt(1.0 - abar) * eps) / math.sqrt(abar)
        if self.pad:
            x0 = x0[..., self.pad:-self.pad, self.pad:-self.pad]
        clip = self.clip_denoised if clip is None else clip
        if clip not in (True, False, "straight_through"):
            raise ValueError(f"clip must be True, False or 'straight_through', got {clip!r}")
        if clip == "straight_through":
            x0 = x0 + (x0.clamp(-1.0, 1.0) - x0).detach()
        elif clip:
            x0 = x0.clamp(-1.0, 1.0)
        out = (x0 + 1.0) * ((hi - lo) / 2.0) + lo
        if self.output_size is not None and tuple(out.shape[-2:]) != self.output_size:
            out = nn.functional.interpolate(out, size=self.output_size, mode=self.output_mode,
                                            **({} if self.output_mode == "nearest" else {"align_corners": False}))
            if clip:  # bicubic overshoots
                out = out.clamp(lo, hi)
        return out

    def noise_prediction_loss(self, x: torch.Tensor, generator: torch.Generator | None = None,
                              max_sigma: float | None = None) -> torch.Tensor:
        """
        The DDPM training loss E ||eps - UNet(sqrt(abar_t) x + sqrt(1 - abar_t) eps, t)||^2 on clean images ``x``
        (input units, padded like :meth:`forward` pads), t uniform over the schedule (or up to t* of ``max_sigma``,
        the timesteps one-shot denoising at sigma <= max_sigma uses): trains a denoiser from scratch or anchors a
        fine-tuned one. ``generator`` (on ``x``'s device) makes the draws reproducible.
        """
        lo, hi = self.input_range
        x_m = (x.float() - lo) * (2.0 / (hi - lo)) - 1.0
        if self.pad:
            x_m = nn.functional.pad(x_m, (self.pad,) * 4, mode="reflect")
        top = self.num_train_timesteps if max_sigma is None else self.timestep(max_sigma) + 1
        t = torch.randint(0, top, (len(x),), generator=generator, device=x.device)
        abar = self.alphas_cumprod.to(x.device)[t].float().view(-1, *([1] * (x.dim() - 1)))
        eps = torch.randn(x_m.shape, generator=generator, device=x.device)
        x_t = abar.sqrt() * x_m + (1 - abar).sqrt() * eps
        steps = t.float() * self.timestep_scale if self.timestep_scale != 1.0 else t
        param = next(self.unet.parameters())
        out = self.unet(x_t.to(param.dtype), steps)
        pred = getattr(out, "sample", out)[:, : x.shape[1]].float()
        return nn.functional.mse_loss(pred, eps)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, **kwargs) -> "DiffusionDenoiser":
        """
        Load a local diffusers folder: a pipeline folder with ``unet/`` and ``scheduler/`` (as ``DDPMPipeline``
        saves it), or a bare ``UNet2DModel`` folder plus scheduler settings in ``scheduler`` (a dict of
        ``DDPMScheduler`` arguments; default linear, T = 1000). Nothing is downloaded.

        :param kwargs: ``scheduler`` and the constructor's keyword arguments.
        :raises ValueError: naming the file when the folder is incomplete or corrupt (bad ``config.json``, missing,
                            truncated or mismatched weights); :class:`~art_some.core.errors.NonFiniteError` for NaN
                            or inf weights.
        """
        path = Path(path)
        if path.is_file():
            raise ValueError(f"denoiser path {path} is a file: pass a diffusers folder as path=, or a weights file "
                             "as checkpoint= with unet_config=")
        if not path.is_dir():
            raise FileNotFoundError(f"{path} is not a local diffusers folder")
        scheduler_args = kwargs.pop("scheduler", None)
        pipeline = (path / "unet").is_dir()
        if not pipeline and not (path / "config.json").exists():
            raise ValueError(f"{path} is neither a diffusers pipeline folder (no unet/) nor a UNet2DModel folder "
                             "(no config.json)")
        unet = _load_unet_folder(path / "unet" if pipeline else path)
        if scheduler_args is None and pipeline and (path / "scheduler").is_dir():
            scheduler = _load_scheduler_folder(path / "scheduler")
        else:
            scheduler = _scheduler(scheduler_args)
        return cls(unet.eval(), scheduler.alphas_cumprod, **kwargs)

    @classmethod
    def from_checkpoint(cls, file: str | os.PathLike, unet_config, **kwargs) -> "DiffusionDenoiser":
        """
        Build a ``UNet2DModel`` from ``unet_config`` (a dict or a JSON file) and load the weights in ``file``
        (``.safetensors``, or a torch state dict loaded with ``weights_only=True``).

        :param kwargs: ``scheduler`` (``DDPMScheduler`` arguments) and the constructor's keyword arguments.
        :raises ValueError: naming the file when the config cannot build a UNet or the weights are truncated, corrupt
                            or not this UNet's; :class:`~art_some.core.errors.NonFiniteError` for NaN or inf weights.
        """
        from diffusers import UNet2DModel

        if isinstance(unet_config, dict):
            config, where = unet_config, "unet_config"
        elif not Path(unet_config).is_file():
            raise FileNotFoundError(f"unet_config file not found: {unet_config}")
        else:
            config, where = _read_json(Path(unet_config), "unet_config"), f"unet_config {unet_config}"
        _check_unet_class(config, where)
        try:
            unet = UNet2DModel.from_config(config)
        except Exception as err:  # diffusers raises ValueError/TypeError/KeyError for bad settings
            raise ValueError(f"{where} cannot build a UNet2DModel ({_summary(err)})") from None
        file = Path(file)
        if not file.is_file():
            raise FileNotFoundError(f"denoiser checkpoint not found: {file}")
        where = f"denoiser checkpoint {file}"
        _load_state_strictly(unet, _read_state(file), where)
        _check_finite(unet, where)
        return cls(unet.eval(), _scheduler(kwargs.pop("scheduler", None)).alphas_cumprod, **kwargs)


WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")


def _load_unet_folder(folder: Path) -> nn.Module:
    """A ``UNet2DModel`` from a diffusers model folder, refusing what diffusers would only log."""
    from diffusers import UNet2DModel
    from diffusers.utils import is_accelerate_available

    where = f"denoiser folder {folder}"
    _check_unet_class(_read_json(folder / "config.json", where), str(folder / "config.json"))
    present = [name for name in WEIGHT_FILES if (folder / name).is_file()]
    sharded = any(folder.glob("diffusion_pytorch_model*.index.json"))
    if not present and not sharded:
        raise ValueError(f"{where} has no weights: expected {' or '.join(WEIGHT_FILES)}")
    if WEIGHT_FILES[0] in present:
        _check_safetensors(folder / WEIGHT_FILES[0])  # diffusers' own message does not say what is wrong
    try:
        unet, info = UNet2DModel.from_pretrained(
            folder, local_files_only=True, output_loading_info=True,
            # Asking for the weights file that exists spares diffusers' "falling back to .bin" messages.
            use_safetensors=(WEIGHT_FILES[0] in present) if present else None,
            # Without accelerate diffusers turns this off anyway, after a 5-line "install accelerate" notice.
            low_cpu_mem_usage=is_accelerate_available(),
        )
    except Exception as err:  # OSError for unreadable weights, RuntimeError for shape mismatches, ...
        raise ValueError(f"{where}: cannot load the UNet ({_summary(err)})") from None
    # diffusers only logs missing weights and initialises them at random: that is a corrupt denoiser.
    _refuse_key_mismatch(info.get("missing_keys", []), info.get("unexpected_keys", []), where)
    _check_finite(unet, where)
    return unet


def _load_scheduler_folder(folder: Path):
    from diffusers import DDPMScheduler

    file = folder / "scheduler_config.json"
    config = _read_json(file, f"scheduler folder {folder}")
    try:
        return DDPMScheduler.from_config(config)
    except Exception as err:
        raise ValueError(f"{file} is not a valid DDPMScheduler config ({_summary(err)})") from None


def _scheduler(args):
    """A ``DDPMScheduler`` from the ``scheduler`` argument (a dict of its keyword arguments, or None)."""
    from diffusers import DDPMScheduler

    if args is not None and not isinstance(args, dict):
        raise ValueError(f"scheduler must be a dict of DDPMScheduler arguments, got {args!r}")
    try:
        return DDPMScheduler(**(args or {}))
    except Exception as err:
        raise ValueError(f"scheduler={args!r} is not valid DDPMScheduler arguments ({_summary(err)})") from None


def _check_safetensors(file: Path) -> None:
    """Read the header and the layout of a safetensors file only: enough to tell a truncated one."""
    from safetensors import safe_open

    try:
        with safe_open(str(file), framework="pt"):
            pass
    except Exception as err:
        raise ValueError(f"{file} is truncated or not a safetensors file ({_summary(err)})") from None


def _read_json(file: Path, where: str) -> dict:
    """A JSON object from ``file``, with one-line errors naming it."""
    if not file.is_file():
        raise ValueError(f"{where}: {file} is missing")
    try:
        data = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{file} is not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{file} must hold a JSON object of settings, got {type(data).__name__}")
    return data


def _check_unet_class(config: dict, where: str) -> None:
    name = config.get("_class_name", "UNet2DModel")
    if name != "UNet2DModel":
        raise ValueError(f"{where} describes model class {name!r}, not a UNet2DModel")


def _read_state(file: Path) -> dict:
    try:
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(file))
        else:
            state = torch.load(file, map_location="cpu", weights_only=True)
            state = state.get("state_dict", state.get("model", state)) if isinstance(state, dict) else state
    except Exception as err:  # SafetensorError, pickle's errors, zip errors: all mean an unreadable file
        raise ValueError(f"denoiser checkpoint {file} is truncated, corrupt or not a safetensors/torch file "
                         f"({_summary(err)})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"denoiser checkpoint {file} holds no state dict (a dict of tensor names to tensors)")
    return state


def _load_state_strictly(unet: nn.Module, state: dict, where: str) -> None:
    try:
        result = unet.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatches raise even when not strict
        raise ValueError(f"{where} does not fit this UNet ({_summary(err)})") from None
    _refuse_key_mismatch(result.missing_keys, result.unexpected_keys, where)


def _refuse_key_mismatch(missing, unexpected, where: str) -> None:
    def some(keys) -> str:
        return ", ".join(keys[:3]) + (", ..." if len(keys) > 3 else "")

    problems = []
    if missing:
        problems.append(f"{len(missing)} UNet tensor(s) missing ({some(list(missing))})")
    if unexpected:
        problems.append(f"{len(unexpected)} tensor(s) the UNet does not have ({some(list(unexpected))})")
    if problems:
        raise ValueError(f"{where} is not a checkpoint of this UNet: {'; '.join(problems)}")


def _summary(err: Exception) -> str:
    """The first problem of a long torch/diffusers message (state-dict errors list every tensor)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].startswith("Error(s) in loading state_dict"):
        lines = lines[1:]
    if not lines:
        return type(err).__name__
    return lines[0] + (f" (and {len(lines) - 1} more)" if len(lines) > 1 else "")


def _check_finite(unet: nn.Module, where: str) -> None:
    from art_some.models import check_finite_weights  # the package imports this module first

    check_finite_weights(unet, where)


def _pair(size) -> tuple[int, int]:
    pair = (size, size) if isinstance(size, int) else tuple(size)
    if len(pair) != 2 or any(int(s) != s or s < 1 for s in pair):
        raise ValueError(f"output_size must be an int or (H, W) of positive ints, got {size!r}")
    return int(pair[0]), int(pair[1])


def tiny_unet(channels: int = 1, sample_size: int = 8, widths=(16, 32)) -> nn.Module:
    """A small randomly initialised ``UNet2DModel`` (two resolutions, one block each) for tests and the digits demo."""
    from diffusers import UNet2DModel

    return UNet2DModel(
        sample_size=sample_size,
        in_channels=channels,
        out_channels=channels,
        block_out_channels=tuple(widths),
        layers_per_block=1,
        norm_num_groups=4,
        down_block_types=("DownBlock2D",) * len(widths),
        up_block_types=("UpBlock2D",) * len(widths),
    )


def _diffusion(path=None, checkpoint=None, unet_config=None, **kwargs) -> DiffusionDenoiser:
    """A :class:`DiffusionDenoiser` from a local diffusers folder (``path``) or a weights file (``checkpoint``)."""
    if (path is None) == (checkpoint is None):
        raise ValueError("the 'diffusion' denoiser needs exactly one of path= (a diffusers folder) or checkpoint=")
    if path is not None:
        return DiffusionDenoiser.from_pretrained(path, **kwargs)
    if unet_config is None:
        raise ValueError("checkpoint= needs unet_config= (a dict or a JSON file of UNet2DModel arguments)")
    return DiffusionDenoiser.from_checkpoint(checkpoint, unet_config, **kwargs)


def _tiny_diffusion(channels: int = 1, sample_size: int = 8, widths=(16, 32), scheduler=None, **kwargs):
    """A :class:`DiffusionDenoiser` around a randomly initialised :func:`tiny_unet` (tests, demos)."""
    from diffusers import DDPMScheduler

    unet = tiny_unet(channels, sample_size, widths)
    return DiffusionDenoiser(unet, DDPMScheduler(**(scheduler or {})).alphas_cumprod, **kwargs)


# ------------------------------------------------------------------------------------------------------------------
# OpenAI's ADM checkpoints (improved-diffusion, guided-diffusion), on art-some's own UNet (art_some.models.adm)
# ------------------------------------------------------------------------------------------------------------------
def load_adm(path: str | os.PathLike, config=None, **kwargs) -> DiffusionDenoiser:
    """
    A :class:`DiffusionDenoiser` over a released ADM checkpoint (improved-diffusion's ``cifar10_uncond_50M_500K.pt``,
    guided-diffusion's ``256x256_diffusion_uncond.pt``, or a fine-tuned one in their layout), with the checkpoint's
    schedule (linear T = 1000; cosine T = 4000) and timestep convention (improved-diffusion's
    ``rescale_timesteps``: the UNet sees t* x 1000 / T). One-shot denoising at t* as for every
    :class:`DiffusionDenoiser`; the learned-sigma half of the output is dropped. The file is read with
    ``weights_only=True`` (or as safetensors); fp16 weights load as fp32 (the estimator's ``precision`` runs the vote
    in bf16/fp16 under autocast).

    | Paper link: https://arxiv.org/abs/2206.10550

    :param path: The checkpoint file (a state dict; ``{"state_dict": ...}`` / ``{"model": ...}`` and a
                 DistributedDataParallel ``module.`` prefix are unwrapped).
    :param config: A released config's name (:data:`art_some.models.adm.RELEASED`: ``adm-cifar10-uncond-50m``,
                   ``adm-imagenet256-uncond``), a dict of the research code's options (``family``, ``image_size``,
                   ``num_channels``, ...; see :class:`~art_some.models.adm.ADMConfig`), JSON text of one, or a
                   JSON/YAML file; None: detected from the file's keys and shapes (the released layouts).
    :param kwargs: :class:`DiffusionDenoiser`'s keyword arguments (``input_range``, ``pad``, ``output_size``, ...).
    :raises FileNotFoundError: for a missing file.
    :raises ValueError: in one line naming the file: unreadable or truncated, not an ADM layout it can name, or
                        missing/unexpected/misshapen keys for ``config`` (the first few named).
    """
    from art_some.models import adm

    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"ADM checkpoint not found: {file}")
    where = f"ADM checkpoint {file}"
    state = _read_state(file)
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    if config is None:
        config = adm.detect_config(state)
        if config is None:
            keys = list(state)
            raise ValueError(f"{where} does not have the layout of a released ADM model ({', '.join(adm.RELEASED)}); "
                             f"its first keys are {', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''}: if it is an "
                             "ADM checkpoint, name its config (config=, --denoiser-config)")
    cfg = adm_config(config)
    with torch.device("meta"):  # no second copy of the weights: the file's tensors become the parameters
        unet = adm.ADMUNet(cfg)
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    try:
        result = unet.load_state_dict(state, strict=False, assign=True)
    except RuntimeError as err:  # shape mismatches raise even when not strict
        raise ValueError(f"{where} does not fit ADM config {_config_name(config)} ({_summary(err)})") from None
    _refuse_key_mismatch(result.missing_keys, result.unexpected_keys, f"{where} (config {_config_name(config)})")
    _check_finite(unet, where)
    den = DiffusionDenoiser(unet.eval(), adm.adm_alphas_cumprod(cfg.noise_schedule, cfg.diffusion_steps),
                            rescale_timesteps=cfg.rescale_timesteps, **kwargs)
    den.adm_config = cfg.as_dict()
    return den


def adm_config(config):
    """An :class:`~art_some.models.adm.ADMConfig` from a released name, a dict, JSON text or a JSON/YAML file."""
    from art_some.models import adm

    if isinstance(config, adm.ADMConfig):
        return config
    if isinstance(config, str):
        text = config.strip()
        if text in adm.RELEASED:
            return adm.released_config(text)
        if text.startswith("{"):
            try:
                config = json.loads(text)
            except json.JSONDecodeError as err:
                raise ValueError(f"ADM config is not valid JSON ({err})") from None
        elif Path(text).is_file():
            import yaml

            config = yaml.safe_load(Path(text).read_text())
        else:
            raise ValueError(f"ADM config {text!r} is neither a released config ({', '.join(adm.RELEASED)}), JSON, "
                             "nor a file")
    if not isinstance(config, dict):
        raise ValueError(f"ADM config must be a released name, a dict of options, JSON or a file, got {config!r}")
    return adm.ADMConfig.from_options(config)


def _config_name(config) -> str:
    return config if isinstance(config, str) and not config.lstrip().startswith("{") else "given"


def _adm(path=None, config=None, **kwargs) -> DiffusionDenoiser:
    """The ``adm`` denoiser: :func:`load_adm` of ``path`` (a released or fine-tuned ADM checkpoint)."""
    if path is None:
        raise ValueError("the 'adm' denoiser needs path= (an ADM checkpoint file, e.g. cifar10_uncond_50M_500K.pt)")
    return load_adm(path, config, **kwargs)


def tiny_adm_config(**options) -> dict:
    """A small guided-diffusion config (32 channels, two resolutions, attention at the lower) for tests and demos."""
    return {"family": "guided", "image_size": 8, "num_channels": 32, "num_res_blocks": 1, "channel_mult": (1, 2),
            "attention_resolutions": "4", "num_heads": 2, "learn_sigma": True, "in_channels": 1,
            "use_scale_shift_norm": True, "diffusion_steps": 1000, "noise_schedule": "linear", **options}


def _tiny_adm(channels: int = 1, sample_size: int = 8, seed: int | None = 0, **kwargs) -> DiffusionDenoiser:
    """A :class:`DiffusionDenoiser` over a small ADM UNet; random weights from ``seed`` (None: ADM's init, eps = 0)."""
    from art_some.models import adm

    options = {k: kwargs.pop(k) for k in list(kwargs) if k in {f for f in adm.ADMConfig.__dataclass_fields__}}
    cfg = adm.ADMConfig.from_options(tiny_adm_config(in_channels=channels, image_size=sample_size, **options))
    unet = adm.ADMUNet(cfg)
    if seed is not None:
        randomize(unet, seed)
    return DiffusionDenoiser(unet.eval(), adm.adm_alphas_cumprod(cfg.noise_schedule, cfg.diffusion_steps),
                             rescale_timesteps=cfg.rescale_timesteps, **kwargs)


def randomize(module: nn.Module, seed: int = 0, scale: float = 0.1) -> nn.Module:
    """
    Fill every parameter from N(0, scale^2), norms' weights around 1 (tests, benchmarks): the zero-initialised
    output convolutions of a fresh ADM UNet come alive.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in module.modules():
            for name, p in mod.named_parameters(recurse=False):
                one = isinstance(mod, nn.GroupNorm) and name == "weight"
                p.copy_(torch.randn(p.shape, generator=gen) * scale + (1.0 if one else 0.0))
    return module


def register_builtin_denoisers(register) -> None:
    register("diffusion", _diffusion, description="one-shot DDPM denoising with a local diffusers UNet")
    register("tiny_diffusion", _tiny_diffusion, description="DDPM denoiser on a small random UNet (tests, demos)")
    register("identity", IdentityDenoiser, description="no denoising (plain Gaussian smoothing)")


def create_denoiser(name: str, **config) -> nn.Module:
    """Build the registered denoiser ``name`` with ``config`` (timm-style factory)."""
    from art_some.plugins import get

    return get("denoisers", name)(**config)
