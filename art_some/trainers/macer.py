"""
MACER (Zhai et al., ICLR 2020): attack-free certified training that maximises a soft certified radius. With k
noise draws per input and the soft smoothed prediction p = (1/k) sum_j softmax f(x + delta_j):

    loss = NLL(log p, y) + lambda * hinge on the soft radius of the correctly classified inputs.

Two forms, both in use:

- ``form="macer"`` (MACER's code, which ART follows): the hinge term uses a beta-tempered p_beta; on the inputs
  whose top class under p_beta is y, with gap = Phi^-1(p_beta,1) - Phi^-1(p_beta,2), it adds
  sigma / 2 * (gamma - gap) where gap <= gamma (the paper's max(gamma - gap, 0)); loss = (sum NLL + lambda *
  sum hinge) / B.
- ``form="ddrs"`` (the MACER variant of data-dependent smoothing, Alfarra et al.): no temperature, p clamped to
  [0.02, 0.98], the hinge on the radius, relu(gamma - sigma / 2 * gap), averaged over the correctly classified
  inputs; loss = mean NLL + lambda * that mean.

| Paper link: https://arxiv.org/abs/2001.02378
"""
from __future__ import annotations

from art_some.core.noise import soft_smoothed
from art_some.core.validate import integer
from art_some.trainers.base import SmoothingTrainer

FORMS = ("macer", "ddrs")


def default_lbd(sigma: float) -> float:
    """MACER's CIFAR-10 lambda: 12 at sigma 0.25 and 0.5, 4 at sigma 1.0 (Zhai et al., Sec. 4)."""
    return 4.0 if sigma >= 1.0 else 12.0


def macer_loss(logits, y, sigma, *, lbd: float, gamma: float, beta: float, form: str = "macer"):
    """
    The MACER loss from logits ``(k, B, C)`` of k noisy copies (copy, sample, class).

    :param sigma: The noise level: a number or one value per example ``(B,)`` (data-dependent smoothing).
    :param form: ``"macer"`` or ``"ddrs"`` (see the module docstring).
    :return: The scalar loss.
    """
    import torch
    import torch.nn.functional as F

    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}, got {form!r}")
    b = logits.shape[1]
    p = soft_smoothed(logits)
    nll = F.nll_loss(torch.log(p + 1e-10), y, reduction="none")
    sigma = torch.as_tensor(sigma, dtype=p.dtype, device=p.device).reshape(-1).expand(b)
    normal = torch.distributions.Normal(0.0, 1.0)
    if form == "macer":
        top, idx = soft_smoothed(beta * logits).topk(2, dim=1)
        with torch.no_grad():
            gap = normal.icdf(top[:, 0]) - normal.icdf(top[:, 1])
            # MACER's code keeps finite gaps inside the hinge window (outside it the hinge is flat); the gap is
            # recomputed on those rows only, so that p = 0 or 1 elsewhere cannot put NaN into the gradient.
            keep = (idx[:, 0] == y) & torch.isfinite(gap) & (gap <= gamma)
        gap = normal.icdf(top[keep, 0]) - normal.icdf(top[keep, 1])
        hinge = (sigma[keep] / 2 * (gamma - gap)).sum()
        return (nll.sum() + lbd * hinge) / b
    top, idx = p.topk(2, dim=1)
    top = top.clamp(0.02, 0.98)
    radius = sigma / 2 * (normal.icdf(top[:, 0]) - normal.icdf(top[:, 1]))
    correct = (idx[:, 0] == y).float()
    hinge = (torch.relu(gamma - radius) * correct).sum() / correct.sum().clamp_min(1.0)
    return nll.mean() + lbd * hinge


class MACERTrainer(SmoothingTrainer):
    """
    MACER: the loss of :func:`macer_loss` on ``num_noise_vec`` noisy copies of each input, one optimizer step per
    batch. Defaults are MACER's CIFAR-10 setting (k = 16, beta = 16, gamma = 8, lambda 12 / 4 by sigma).

    ART's PyTorchMACER follows MACER's code too but assumes 4-D inputs and names its draws ``gauss_num`` in
    ``estimator_params`` and ``gaussian_samples`` as the attribute; this trainer takes any input shape.

    | Paper link: https://arxiv.org/abs/2001.02378

    :param classifier: A :class:`~art_some.SmoothedClassifier` with an optimizer.
    :param sigma: Training noise level (default: the classifier's ``scale``).
    :param num_noise_vec: k, noise draws per input (MACER's ``gauss_num``; 64 in the DDRS MACER runs).
    :param lbd: lambda, weight of the radius term (default: 12 below sigma 1, 4 at sigma >= 1).
    :param gamma: Hinge threshold (on the gap for ``form="macer"``, on the radius for ``"ddrs"``).
    :param beta: Softmax temperature of the radius term (``form="macer"`` only).
    :param form: ``"macer"`` (MACER's code) or ``"ddrs"`` (the data-dependent smoothing variant).
    :param seed: Seed of the noise and shuffling.
    """

    def __init__(self, classifier, sigma=None, num_noise_vec: int = 16, lbd: float | None = None, gamma: float = 8.0,
                 beta: float = 16.0, form: str = "macer", seed: int = 0):
        super().__init__(classifier, sigma=sigma, seed=seed)
        integer("num_noise_vec", num_noise_vec, 1)
        if form not in FORMS:
            raise ValueError(f"form must be one of {FORMS}, got {form!r}")
        lbd = default_lbd(self.sigma) if lbd is None else lbd
        if not lbd >= 0 or not gamma > 0 or not beta > 0:
            raise ValueError(f"need lbd >= 0, gamma > 0 and beta > 0, got lbd={lbd!r}, gamma={gamma!r}, beta={beta!r}")
        self.num_noise_vec = int(num_noise_vec)
        self.lbd, self.gamma, self.beta, self.form = float(lbd), float(gamma), float(beta), form

    def training_loss(self, x, y, sigma=None):
        """
        :param sigma: Per-example noise levels ``(B,)`` (data-dependent smoothing) instead of the trainer's sigma.
        """
        noise = self.draw_noise(x, sigma=sigma)
        k, b = noise.shape[:2]
        logits = self._classifier.logits((x.unsqueeze(0) + noise).flatten(0, 1), training_mode=True).view(k, b, -1)
        return macer_loss(logits, y, self.sigma if sigma is None else sigma, lbd=self.lbd, gamma=self.gamma,
                          beta=self.beta, form=self.form)
