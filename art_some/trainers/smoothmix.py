"""
SmoothMix (Jeong et al., NeurIPS 2021): train on mixups between each input and an unrestricted adversarial
point of the *soft* smoothed classifier, with targets pulled towards uniform.

The adversary and the mixup here are shared with the SOME trainer, which runs the same adversary on the
head-averaged smoothed loss; the helpers every trainer uses are in :mod:`art_some.trainers.common`.

| Paper link: https://arxiv.org/abs/2111.09277
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from art_some.core.validate import integer
from art_some.trainers.base import SmoothingTrainer
from art_some.trainers.common import (  # noqa: F401 (warmup_factor and the others are also read from here)
    check_clip,
    clip_range,
    kl_to_target,
    noisy_logits,
    project,
    smoothed_nll,
    soft_log_proba,
    stacked_logits,
    warmup_factor,
)

if TYPE_CHECKING:
    import torch



def default_step_size(sigma: float) -> float:
    """alpha = 2 sigma: the official CIFAR-10 step (0.5 / 1.0 / 2.0 at sigma 0.25 / 0.5 / 1.0)."""
    return 2.0 * sigma


def smoothmix_adversary(objective: Callable, x: "torch.Tensor", *, step_size: float, num_steps: int, mix_step: int,
                        mix_radius: float | None = None, maxnorm: float | None = None,
                        clip: tuple[float, float] | None = (0.0, 1.0)):
    """
    SmoothMix's adversary: ``num_steps`` normalised L2 ascent steps x <- clip(x + alpha * g / ||g||_2) on the
    batch-summed per-sample ``objective`` (the smoothed NLL), no outer ball unless ``maxnorm`` is set.

    The caller fixes the noise draws and puts the model in eval mode; only the input is differentiated, so no
    parameter gradient is accumulated.

    :param objective: Maps inputs ``(B, ...)`` to per-sample losses ``(B,)``.
    :param mix_step: s; the "clean" end point is the iterate x^(s) (s = 0: the input itself), projected into
                     the L2 ball of ``mix_radius`` around x (the official alpha * s * warm-up).
    :return: ``(x_clean, x_adv)``, both detached.
    """
    import torch

    if not 0 <= mix_step <= num_steps:
        raise ValueError(f"mix_step must lie in [0, num_steps={num_steps}], got {mix_step!r}")
    x0 = x.detach()
    x_adv, x_clean = x0.clone(), x0
    for step in range(num_steps):
        if step == mix_step:
            x_clean = x_adv
        x_adv = x_adv.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(objective(x_adv).sum(), x_adv)
        norm = grad.flatten(1).norm(dim=1).view(-1, *([1] * (x.dim() - 1)))
        x_adv = x_adv.detach() + step_size * grad / (norm + 1e-8)
        if maxnorm is not None:
            x_adv = project(x_adv, x0, maxnorm)
        if clip is not None:
            x_adv = x_adv.clamp(*clip)
    if mix_step == num_steps:
        x_clean = x_adv
    if mix_radius is not None:
        x_clean = project(x_clean, x0, mix_radius)
    return x_clean.detach(), x_adv.detach()


def mixup(x_clean: "torch.Tensor", x_adv: "torch.Tensor", target: "torch.Tensor", generator: "torch.Generator"):
    """
    SmoothMix's mixup: u ~ U[0, 1/2] per sample, x_mix = (1-u) x_clean + u x_adv and
    y_mix = (1-u) target + u / C (the target pulled towards uniform).

    :return: ``(x_mix, y_mix, u)``.
    """
    import torch

    u = 0.5 * torch.rand(len(x_clean), generator=generator, device=x_clean.device)
    u_x = u.view(-1, *([1] * (x_clean.dim() - 1)))
    x_mix = (1 - u_x) * x_clean + u_x * x_adv
    y_mix = (1 - u.unsqueeze(1)) * target + u.unsqueeze(1) / target.shape[1]
    return x_mix, y_mix, u


def attack_smoothed(classifier, x, y, noise, *, step_size, num_steps, mix_step, mix_radius, maxnorm, clip):
    """
    :func:`smoothmix_adversary` on the classifier's soft smoothed NLL (averaged over heads for a multi-head
    network, as in SOME), with the model in eval mode and the given noise draws ``(m, B, ...)``.
    """
    check_clip(x, clip)

    def objective(z):
        return smoothed_nll(soft_log_proba(noisy_logits(lambda v: stacked_logits(classifier, v, False), z, noise)), y)

    return smoothmix_adversary(objective, x, step_size=step_size, num_steps=num_steps, mix_step=mix_step,
                               mix_radius=mix_radius, maxnorm=maxnorm, clip=clip)


class SmoothMixTrainer(SmoothingTrainer):
    """
    SmoothMix as in the official code. Each loader batch is split into m = ``num_noise_vec`` chunks with one
    optimizer step each; each chunk draws m noise tensors used by the adversary and by both loss terms:

        L = mean_{b,j} CE(f(x_c + delta_j), y)
            + eta * w_e * mean_{b,j} 1{argmax F_hat(x_c) = y} KL(y_mix || softmax f(x_mix + delta_j))

    with F_hat the soft smoothed classifier over the m draws, x_c the mix_step iterate of the adversary,
    x_mix / y_mix the mixup towards the adversarial point and the uniform distribution, and w_e the warm-up.
    The step size of the attack is its own parameter (ART's PyTorchSmoothMix reuses the certification alpha).

    | Paper link: https://arxiv.org/abs/2111.09277

    :param classifier: A :class:`~art_some.SmoothedClassifier` with an optimizer.
    :param sigma: Training noise level (default: the classifier's ``scale``).
    :param num_noise_vec: m (2 on CIFAR-10, 4 on MNIST in the official runs).
    :param num_steps: T, attack steps (4 on CIFAR-10).
    :param step_size: alpha, the L2 length of each step (default 2 sigma, the official CIFAR-10 setting).
    :param eta: Weight of the mixup term (5 on CIFAR-10).
    :param mix_step: s, the adversary iterate used as the clean side (default 0, the clean input: the default of
                     the official ``train.py`` at every sigma; its EXPERIMENTS.MD also lists runs with 1, the
                     one-step adversary, e.g. the CIFAR-10 sigma 0.5 ``_adv`` logs; choosing 0 / 1 / 1 by sigma is
                     SOME's setting, see :class:`~art_some.trainers.some.SOMETrainer`).
    :param warmup: W, epochs of the linear warm-up of eta and the one-step ball.
    :param maxnorm: Optional L2 bound of the adversary (None: unrestricted, the default).
    :param detach_target: Detach the mixup target F_hat(x_c) (the official code does not).
    :param seed: Seed of the noise, the mixup coefficients and the shuffling.
    """

    def __init__(self, classifier, sigma=None, num_noise_vec: int = 2, num_steps: int = 4,
                 step_size: float | None = None, eta: float = 5.0, mix_step: int = 0, warmup: int = 10,
                 maxnorm: float | None = None, detach_target: bool = False, seed: int = 0):
        super().__init__(classifier, sigma=sigma, seed=seed)
        integer("num_noise_vec", num_noise_vec, 1)
        integer("num_steps", num_steps, 0)
        integer("warmup", warmup, 1)
        if eta < 0:
            raise ValueError(f"eta must be >= 0, got {eta!r}")
        self.num_noise_vec = self.num_minibatches = int(num_noise_vec)
        self.num_steps = int(num_steps)
        self.step_size = float(default_step_size(self.sigma) if step_size is None else step_size)
        if self.step_size <= 0:
            raise ValueError(f"step_size must be > 0, got {step_size!r}")
        integer("mix_step", mix_step, 0)
        self.mix_step = int(mix_step)
        if self.mix_step > self.num_steps:
            raise ValueError(f"mix_step must be <= num_steps ({self.num_steps}), got {self.mix_step}")
        self.eta = float(eta)
        self.warmup = int(warmup)
        self.maxnorm = maxnorm
        self.detach_target = bool(detach_target)

    def adversary(self, x, y, noise, warmup: float):
        """The adversary's ``(x_clean, x_adv)`` for this chunk and its noise draws."""
        return attack_smoothed(self._classifier, x, y, noise, step_size=self.step_size, num_steps=self.num_steps,
                               mix_step=self.mix_step, mix_radius=self.step_size * self.mix_step * warmup,
                               maxnorm=self.maxnorm, clip=clip_range(self._classifier))

    def training_loss(self, x, y):
        import torch
        import torch.nn.functional as F

        w = warmup_factor(self.epoch, self.warmup)
        noise = self.draw_noise(x)
        x_clean, x_adv = self.adversary(x, y, noise, w)
        logits = noisy_logits(lambda v: stacked_logits(self._classifier, v, True), x_clean, noise)
        m, b = noise.shape[:2]
        ce = F.cross_entropy(logits.flatten(0, 2), y.repeat(logits.shape[0] * m))
        target = torch.softmax(logits, dim=-1).mean(dim=(0, 1))
        correct = (target.argmax(dim=1) == y).float()
        if self.detach_target:
            target = target.detach()
        x_mix, y_mix, _ = mixup(x_clean, x_adv, target, self.generator(x.device))
        kl = kl_to_target(y_mix, noisy_logits(lambda v: stacked_logits(self._classifier, v, True), x_mix, noise))
        return ce + self.eta * w * (correct * kl).mean()


