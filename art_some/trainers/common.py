"""
Helpers the noise-augmented trainers share (SmoothMix, SmoothAdv, SOME, DDRS, MACER): logits of noisy copies in
one pass, the soft smoothed classifier in log space, the KL to a target, L2 projection, the input domain and the
warm-up. Logits are tensors of shape ``(M, m, B, C)``: head, noise draw, sample, class; a single network is the
case M = 1.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable

from art_some.models.multihead import unwrap

if TYPE_CHECKING:
    import torch


def warmup_factor(epoch: int, warmup: int = 10) -> float:
    """w_e = min(1, epoch / warmup) for a 1-based epoch (the official ``(epoch + 1) / W`` with 0-based epochs)."""
    return min(1.0, epoch / warmup)


def noisy_logits(forward: Callable, x: "torch.Tensor", noise: "torch.Tensor") -> "torch.Tensor":
    """
    Logits ``(M, m, B, C)`` of the m noisy copies ``x + noise[j]`` in one forward pass; chunk j of the pass is
    draw j of the whole batch, so it lines up with the labels.

    :param forward: Maps a batch to stacked head logits ``(M, N, C)``.
    :param x: Inputs ``(B, ...)``.
    :param noise: Scaled noise ``(m, B, ...)``.
    """
    m, b = noise.shape[:2]
    logits = forward((x.unsqueeze(0) + noise).flatten(0, 1))
    return logits.view(logits.shape[0], m, b, -1)


def soft_log_proba(logits: "torch.Tensor") -> "torch.Tensor":
    """log F_hat, the soft smoothed classifier (mean over draws of softmax), per head: ``(M, m, B, C) -> (M, B, C)``."""
    import torch

    return torch.logsumexp(torch.log_softmax(logits, dim=-1), dim=1) - math.log(logits.shape[1])


def kl_to_target(target: "torch.Tensor", logits: "torch.Tensor") -> "torch.Tensor":
    """
    (1/m) sum_j KL(target || softmax(logits[:, j])) per head and sample: ``(B, C)`` or ``(M, B, C)`` target and
    ``(M, m, B, C)`` logits give ``(M, B)``. The KL is taken on each noisy copy, not on their average.
    """
    import torch

    if target.dim() == 2:
        target = target.unsqueeze(0)
    target = target.unsqueeze(1)
    log_target = torch.log(target.clamp_min(1e-20))
    return (target * (log_target - torch.log_softmax(logits, dim=-1))).sum(dim=-1).mean(dim=1)


def project(x: "torch.Tensor", center: "torch.Tensor", radius: float) -> "torch.Tensor":
    """Project each row of ``x`` into the L2 ball of ``radius`` around ``center``."""
    delta = (x - center).flatten(1)
    scale = (radius / delta.norm(dim=1).clamp_min(1e-12)).clamp(max=1.0)
    return center + (delta * scale.unsqueeze(1)).view_as(x)


def stacked_logits(classifier, z: "torch.Tensor", training: bool, bare: bool | None = None) -> "torch.Tensor":
    """
    Head logits ``(M, N, C)`` of raw inputs ``z`` (M = 1 for a single network). Training passes go through the
    classifier's model (a DDP wrapper included); eval passes, used by the adversary, go to the bare module so
    that no gradient synchronisation is expected.

    :param bare: Use the bare module whatever the mode (default: only in eval mode); for train-mode passes that
                 have no parameter backward, such as DDRS's sigma search.
    """
    import torch

    model = unwrap(classifier.model) if (not training if bare is None else bare) else classifier.model
    z = classifier.preprocess(z, training_mode=training)
    if callable(getattr(unwrap(model), "head_logits", None)):
        return torch.stack(model(z, per_head=True))
    return model(z).unsqueeze(0)


def clip_range(classifier) -> tuple[float, float]:
    """The input domain the adversary clamps to: the classifier's clip_values, else [0, 1]."""
    clip = classifier.clip_values
    return (0.0, 1.0) if clip is None else (float(clip[0]), float(clip[1]))


def check_clip(x: "torch.Tensor", clip: tuple[float, float]) -> None:
    """SmoothMix clamps its iterates to the input domain, so the inputs must already lie in it."""
    lo, hi = clip
    if float(x.min()) < lo or float(x.max()) > hi:
        raise ValueError(f"SmoothMix needs inputs in the classifier's clip_values [{lo}, {hi}] (raw input space)")


def smoothed_nll(log_p: "torch.Tensor", y: "torch.Tensor") -> "torch.Tensor":
    """Per-sample NLL of per-head smoothed log-probabilities ``(M, B, C)``, averaged over heads: ``(B,)``."""
    import torch.nn.functional as F

    nll = F.nll_loss(log_p.flatten(0, 1), y.repeat(log_p.shape[0]), reduction="none")
    return nll.view(log_p.shape[0], -1).mean(dim=0)
