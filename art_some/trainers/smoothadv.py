"""
SmoothAdv (Salman et al., NeurIPS 2019): adversarial training of the *smoothed* classifier. An L2 PGD attack on
the soft smoothed classifier F_hat(x) = (1/m) sum_j softmax f(x + delta_j) finds x_adv within epsilon of x, and the
base classifier is trained with cross-entropy on the noisy copies x_adv + delta_j (the same draws).

| Paper link: https://arxiv.org/abs/1906.04584
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from art_some.core.validate import integer
from art_some.trainers.base import SmoothingTrainer
from art_some.trainers.common import (
    check_clip,
    clip_range,
    noisy_logits,
    project,
    smoothed_nll,
    soft_log_proba,
    stacked_logits,
)

if TYPE_CHECKING:
    import torch


def pgd_l2(objective: Callable, x: "torch.Tensor", *, epsilon: float, num_steps: int,
           clip: tuple[float, float] | None = (0.0, 1.0), generator: "torch.Generator | None" = None):
    """
    Salman et al.'s L2 PGD (the DDN-style ``PGD_L2`` of their code): delta starts at 0; each of ``num_steps`` steps
    moves by 2 epsilon / num_steps along the L2-normalised gradient of the batch-summed per-sample ``objective``
    (a zero gradient is replaced by an unnormalised standard-normal draw, as in the official code), then clamps
    x + delta to ``clip`` and renormalises delta into the epsilon ball (clamping first keeps the point in the box:
    the ball projection only shrinks delta).

    The caller fixes the noise draws inside ``objective`` and puts the model in eval mode; only the input is
    differentiated.

    :return: ``x + delta``, detached, with ``||delta||_2 <= epsilon``.
    """
    import torch

    x0 = x.detach()
    delta = torch.zeros_like(x0)
    step = 2.0 * epsilon / num_steps if num_steps else 0.0
    for _ in range(num_steps):
        delta.requires_grad_(True)
        (grad,) = torch.autograd.grad(objective(x0 + delta).sum(), delta)
        flat = grad.flatten(1)
        norm = flat.norm(dim=1, keepdim=True)
        direction = flat / norm.clamp_min(1e-30)
        dead = norm[:, 0] == 0
        if bool(dead.any()):
            direction[dead] = torch.randn(direction[dead].shape, generator=generator, device=flat.device,
                                          dtype=flat.dtype)
        delta = delta.detach() + step * direction.view_as(x0)
        if clip is not None:
            delta = (x0 + delta).clamp(*clip) - x0
        delta = project(x0 + delta, x0, epsilon) - x0
    return (x0 + delta).detach()


class SmoothAdvTrainer(SmoothingTrainer):
    """
    SmoothAdv (PGD variant) as in Salman et al.'s code: each loader batch is split into m = ``num_noise_vec``
    chunks with one optimizer step each; each chunk draws m noise tensors; the attack maximises the NLL of the soft
    smoothed classifier over those draws (model in eval mode, L2 PGD of ``num_steps`` steps of 2 epsilon / T within
    the epsilon ball, inputs kept in ``clip_values``); the loss is the mean cross-entropy on x_adv + delta_j.
    epsilon is warmed up linearly over the first ``warmup`` epochs: eps_e = epsilon * min(1, e / warmup).

    This is the official ``--train-multi-noise`` mode (the one SmoothMix and DDRS build on); the code's other mode
    (one step per batch, the loss on the first draw only) is not offered.

    Unlike ART's PyTorchSmoothAdv (L-inf PGD on the base classifier with one draw, no epsilon-ball projection,
    a warm-up that its attack never reads), this is the paper's attack.

    | Paper link: https://arxiv.org/abs/1906.04584

    :param classifier: A :class:`~art_some.SmoothedClassifier` with an optimizer.
    :param sigma: Training noise level (default: the classifier's ``scale``).
    :param epsilon: L2 radius of the attack in raw input units (default 0.25 = 64/256, the DDRS SmoothAdv runs;
                    Salman et al. sweep 0.25-2).
    :param num_steps: T, PGD steps (default 2, as in DDRS; Salman et al. sweep 1-10).
    :param num_noise_vec: m, noise draws per input in the attack and the loss (default 1).
    :param warmup: Epochs of the linear epsilon warm-up (default 1: the full epsilon from the first epoch).
    :param seed: Seed of the noise and shuffling.
    """

    def __init__(self, classifier, sigma=None, epsilon: float = 0.25, num_steps: int = 2, num_noise_vec: int = 1,
                 warmup: int = 1, seed: int = 0):
        super().__init__(classifier, sigma=sigma, seed=seed)
        integer("num_steps", num_steps, 1)
        integer("num_noise_vec", num_noise_vec, 1)
        integer("warmup", warmup, 1)
        if not float(epsilon) >= 0:
            raise ValueError(f"epsilon must be >= 0, got {epsilon!r}")
        self.epsilon = float(epsilon)
        self.num_steps = int(num_steps)
        self.num_noise_vec = self.num_minibatches = int(num_noise_vec)
        self.warmup = int(warmup)

    def current_epsilon(self) -> float:
        """The warmed-up attack radius of the current (1-based) epoch."""
        return self.epsilon * min(1.0, max(self.epoch, 1) / self.warmup)

    def adversary(self, x, y, noise):
        """x_adv: L2 PGD on the soft smoothed NLL over the given noise draws ``(m, B, ...)``."""
        clf = self._classifier
        clip = clip_range(clf)
        check_clip(x, clip)

        def objective(z):
            return smoothed_nll(soft_log_proba(noisy_logits(lambda v: stacked_logits(clf, v, False), z, noise)), y)

        return pgd_l2(objective, x, epsilon=self.current_epsilon(), num_steps=self.num_steps, clip=clip,
                      generator=self.generator(x.device))

    def training_loss(self, x, y, sigma=None):
        """
        :param sigma: Per-example noise levels ``(B,)`` (data-dependent smoothing) instead of the trainer's sigma.
        """
        import torch.nn.functional as F

        noise = self.draw_noise(x, sigma=sigma)
        x_adv = self.adversary(x, y, noise)
        logits = noisy_logits(lambda v: stacked_logits(self._classifier, v, True), x_adv, noise)
        return F.cross_entropy(logits.flatten(0, 2), y.repeat(logits.shape[0] * noise.shape[0]))
