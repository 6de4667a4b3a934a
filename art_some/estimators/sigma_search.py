"""
Data-dependent sigma (Alfarra et al., UAI 2022): per input, gradient ascent on the soft certified radius

    R~(x, sigma) = sigma / 2 * (Phi^-1(psi_A(sigma)) - Phi^-1(psi_B(sigma))),   psi(sigma) = E[softmax f(x + sigma eps)]

with psi_A >= psi_B its two largest entries. No label is used, so the same routine runs on test points. The
network is not differentiated (only sigma is), so its parameters need no freezing.

| Paper link: https://arxiv.org/abs/2012.04351
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from art_some.core.noise import per_example, soft_smoothed

if TYPE_CHECKING:
    import torch


def soft_radius(forward: Callable, x: "torch.Tensor", sigma: "torch.Tensor", eps: "torch.Tensor",
                prob_clamp=(0.02, 0.98)) -> "torch.Tensor":
    """
    R~(x, sigma) per input from given standard-normal draws; differentiable in ``sigma`` (reparameterisation).

    :param forward: Maps raw inputs ``(K, ...)`` to logits ``(K, C)``.
    :param x: Inputs ``(B, ...)``.
    :param sigma: One sigma per input ``(B,)``.
    :param eps: Standard-normal draws ``(n, B, ...)``.
    :param prob_clamp: psi_A and psi_B are clamped to this range before Phi^-1 (official script [0.02, 0.98];
                       the ddsmoothing package [0.001, 0.999]), so a confident input keeps a finite radius.
    :return: ``(B,)`` soft radii.
    """
    import torch

    n, b = eps.shape[:2]
    z = x.unsqueeze(0) + per_example(sigma, eps, dim=1) * eps
    psi = soft_smoothed(forward(z.flatten(0, 1)).view(n, b, -1))
    top = psi.topk(2, dim=1).values.clamp(*prob_clamp)
    return sigma / 2 * (torch.special.ndtri(top[:, 0]) - torch.special.ndtri(top[:, 1]))


def optimize_sigma(forward: Callable, x: "torch.Tensor", sigma0, *, lr: float, num_steps: int, num_samples: int,
                   prob_clamp=(0.02, 0.98), sigma_range=(1e-3, 2.0), generator: "torch.Generator | None" = None,
                   eps: "torch.Tensor | None" = None) -> "torch.Tensor":
    """
    DDRS's Algorithm 1: start at ``sigma0`` and take ``num_steps`` plain gradient-ascent steps
    ``sigma <- clamp(sigma + lr * dR~/dsigma, lo, hi)``, each on ``num_samples`` fresh draws (or, for common
    random numbers, on the fixed ``eps`` every step). Examples are independent: the summed objective separates.

    What is guaranteed: nothing statistical; sigma is a heuristic choice. A certificate computed at the returned
    sigma certifies the fixed-sigma smoothed classifier at that input, not a classifier that re-optimises sigma at
    every input (see :class:`~art_some.estimators.DataDependentSmoothedClassifier`).

    :param forward: Maps raw inputs ``(K, ...)`` to logits ``(K, C)``, with the model in the mode wanted: eval mode
                    at test time; DDRS's training searches in train mode, as its official scripts do (see
                    :class:`~art_some.trainers.ddrs.DDRSTrainer`).
    :param x: Inputs ``(B, ...)``.
    :param sigma0: Starting sigma: a number or one per input.
    :param lr: Step size (the official script: 1e-4; the ddsmoothing package: 0.04).
    :param num_steps: K (script: 100; package: 900). 0 returns sigma0.
    :param num_samples: n, draws per step (script: 1; package: 100).
    :param prob_clamp: Clamp of psi before Phi^-1.
    :param sigma_range: sigma is kept in ``[lo, hi]`` (the official code has no clamp; a port needs one).
    :param generator: Generator of the fresh draws.
    :param eps: Fixed draws ``(num_samples, B, ...)`` reused at every step (common random numbers).
    :return: ``(B,)`` detached sigmas.
    """
    import torch

    lo, hi = (float(v) for v in sigma_range)
    if not 0 < lo <= hi:
        raise ValueError(f"sigma_range must satisfy 0 < lo <= hi, got {sigma_range!r}")
    if int(num_steps) != num_steps or num_steps < 0 or int(num_samples) != num_samples or num_samples < 1:
        raise ValueError(f"num_steps must be an integer >= 0 and num_samples >= 1, got {num_steps!r}, {num_samples!r}")
    if not float(lr) >= 0:
        raise ValueError(f"lr must be >= 0, got {lr!r}")
    if not 0 < prob_clamp[0] < prob_clamp[1] < 1:
        raise ValueError(f"prob_clamp must satisfy 0 < lo < hi < 1, got {prob_clamp!r}")
    sigma = torch.as_tensor(sigma0, dtype=x.dtype, device=x.device).reshape(-1).expand(len(x)).clone()
    if not bool(torch.isfinite(sigma).all()) or bool((sigma <= 0).any()):
        raise ValueError(f"sigma0 must be finite and > 0, got {sigma0!r}")
    sigma = sigma.clamp(lo, hi)
    for _ in range(int(num_steps)):
        draws = eps if eps is not None else torch.randn((int(num_samples), *x.shape), generator=generator,
                                                         device=x.device, dtype=x.dtype)
        sigma.requires_grad_(True)
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(soft_radius(forward, x, sigma, draws, prob_clamp).sum(), sigma)
        sigma = (sigma.detach() + lr * grad).clamp(lo, hi)
    return sigma.detach()
