"""
Diffusion calibration (Jeong & Shin 2023): fine-tune the diffusion denoiser through a frozen classifier so that it
denoises consistently where the smoothed prediction is right (Brier loss) and diversely where it is wrong
(anti-consistency loss), and fine-tuning of the classifier on denoised images.

| Paper link: https://arxiv.org/abs/2310.16779
"""
from __future__ import annotations

import inspect

import numpy as np

from art_some.core.noise import per_example
from art_some.trainers.base import SmoothingTrainer

AC_FORMS = ("confidence", "collision", "diversity")


def _level_per_example(trainer: SmoothingTrainer, n: int, num_levels: int, device):
    """One level index per example, uniform over the classifier's levels, from the trainer's seeded generator."""
    import torch

    return torch.randint(0, num_levels, (n,), generator=trainer.generator(device), device=device)


def brier_score(probs, y):
    """(1/M) sum_i ||q_i - e_y||^2 per example, for class probabilities ``probs`` of shape (M, B, C)."""
    import torch

    onehot = torch.nn.functional.one_hot(y, probs.shape[-1]).to(probs.dtype)
    return ((probs - onehot.unsqueeze(0)) ** 2).sum(dim=2).mean(dim=0)


def anti_consistency(probs, form: str = "confidence"):
    """
    The anti-consistency term per example for ``probs`` (M, B, C), y_hat = argmax of the mean q_bar:
    ``"confidence"`` q_bar[y_hat], ``"collision"`` ||q_bar||^2, ``"diversity"`` -(1/M) sum_i ||q_i - q_bar||^2.
    """
    mean = probs.mean(dim=0)
    if form == "confidence":
        return mean.gather(1, mean.detach().argmax(dim=1)[:, None]).squeeze(1)
    if form == "collision":
        return (mean**2).sum(dim=1)
    if form == "diversity":
        return -((probs - mean.unsqueeze(0)) ** 2).sum(dim=2).mean(dim=0)
    raise ValueError(f"ac_form must be one of {', '.join(AC_FORMS)}, got {form!r}")


class DiffusionCalibrationTrainer(SmoothingTrainer):
    """
    Tune the denoiser of a :class:`~art_some.DenoisedMultiScaleClassifier` through its frozen classifier. For each
    training input (x, y), a level sigma drawn uniformly from the classifier's ``sigmas`` and M =
    ``num_noise_vec`` noise draws delta_i:

    - q_i = softmax(classifier(D(x + delta_i; sigma))), classifier in eval mode with its parameters frozen;
      q_bar = mean_i q_i and y_hat = argmax q_bar (the level's smoothed prediction, soft form);
    - where y_hat = y: Brier loss (1/M) sum_i ||q_i - e_y||^2 (bounded, unlike cross-entropy): consistent,
      confident denoising where the image is recoverable;
    - where y_hat != y: the anti-consistency loss, whose exact form in the paper is not public (the training code
      is not in the official repository); ``ac_form`` offers the three candidates:

      * ``"confidence"`` (default): q_bar[y_hat], the smoothed soft probability of the wrong class;
      * ``"collision"``: ||q_bar||^2, the collision probability (smallest for diverse outputs);
      * ``"diversity"``: -(1/M) sum_i ||q_i - q_bar||^2 (the negated consistency variance).

      The default is ``"confidence"`` because it lowers exactly the quantity that makes a level answer wrongly
      (p_sigma(x, y_hat) above p0), matching the authors' description of AC as penalising the denoiser when it
      confidently turns the input into another class. ``"collision"`` also rewards spreading mass over other
      wrong classes, and ``"diversity"`` can be satisfied by soft outputs that still all vote y_hat.

    Total: mean over the batch of brier_weight 1{y_hat = y} L_Brier + ac_weight 1{y_hat != y} L_AC, plus
    ``mse_weight`` times the usual epsilon-prediction loss as an anchor (an option, not confirmed as the paper's).
    The classifier sees the clipped x0, as in certification, with the gradient of the unclipped x0 (clipping
    zeroes gradients on clipped pixels) when the denoiser supports ``clip="straight_through"``. The classifier is
    frozen (eval mode, ``requires_grad`` off) for the duration of :meth:`fit`; call :meth:`training_loss` directly
    only with its parameters frozen, or its gradients accumulate too.

    | Paper link: https://arxiv.org/abs/2310.16779

    :param classifier: A :class:`~art_some.DenoisedMultiScaleClassifier` whose denoiser has parameters.
    :param optimizer: Optimizer over the denoiser's parameters (default Adam, lr 1e-5).
    :param num_noise_vec: M, noise draws per input.
    :param brier_weight: Weight of the Brier term.
    :param ac_weight: lambda, the weight of the anti-consistency term.
    :param ac_form: ``"confidence"``, ``"collision"`` or ``"diversity"``.
    :param mse_weight: Weight of the epsilon-prediction anchor (0 turns it off; needs a DiffusionDenoiser).
    :param seed: Seed of the noise, the levels and the shuffling.
    """

    def __init__(self, classifier, optimizer=None, num_noise_vec: int = 4, brier_weight: float = 1.0,
                 ac_weight: float = 1.0, ac_form: str = "confidence", mse_weight: float = 0.0, seed: int = 0):
        import torch

        denoiser = getattr(classifier, "denoiser", None)
        if not isinstance(denoiser, torch.nn.Module) or not any(True for _ in denoiser.parameters()):
            raise ValueError("diffusion calibration needs a DenoisedMultiScaleClassifier whose denoiser is a "
                             "torch module with parameters")
        if optimizer is None:
            optimizer = torch.optim.Adam(denoiser.parameters(), lr=1e-5)
        super().__init__(classifier, seed=seed, optimizer=optimizer)
        if isinstance(num_noise_vec, bool) or int(num_noise_vec) != num_noise_vec or num_noise_vec < 1:
            raise ValueError(f"num_noise_vec must be an integer >= 1, got {num_noise_vec!r}")
        if ac_form not in AC_FORMS:
            raise ValueError(f"ac_form must be one of {', '.join(AC_FORMS)}, got {ac_form!r}")
        for name, value in (("brier_weight", brier_weight), ("ac_weight", ac_weight), ("mse_weight", mse_weight)):
            if not np.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if mse_weight > 0 and not hasattr(denoiser, "noise_prediction_loss"):
            raise ValueError("mse_weight > 0 needs a denoiser with noise_prediction_loss (a DiffusionDenoiser)")
        self.num_noise_vec = int(num_noise_vec)
        self.brier_weight = float(brier_weight)
        self.ac_weight = float(ac_weight)
        self.ac_form = ac_form
        self.mse_weight = float(mse_weight)
        if ac_form == "diversity" and num_noise_vec < 2:
            raise ValueError("ac_form='diversity' needs num_noise_vec >= 2 (one draw has no spread)")
        self._straight_through = "clip" in inspect.signature(denoiser.forward).parameters
        self.last_terms: dict[str, float] = {}

    def calibration_terms(self, x, y):
        """
        Per-example Brier and AC terms and the correctness mask, on clean inputs ``x`` with labels ``y``.

        :return: ``(brier, ac, correct)``, each of shape ``(B,)``.
        """
        import torch

        est = self._classifier
        levels = est.levels
        level = _level_per_example(self, len(x), len(levels), x.device)
        m, num = self.num_noise_vec, len(x)
        eps = self.noise_like(x.unsqueeze(0).expand(m, *x.shape))  # (M, B, ...)
        sigma = torch.as_tensor(levels, dtype=x.dtype, device=x.device)[level]
        noisy = x.unsqueeze(0) + sigma.view(1, -1, *([1] * (x.dim() - 1))) * eps
        probs = torch.empty(m, num, est.nb_classes, device=x.device)
        for k, s in enumerate(levels):
            rows = torch.nonzero(level == k).flatten()
            if len(rows) == 0:
                continue
            z = noisy[:, rows].reshape(-1, *x.shape[1:])
            kwargs = {"clip": "straight_through"} if self._straight_through else {}
            logits = est.logits(est.denoise(z, s, **kwargs), training_mode=False)
            probs[:, rows] = torch.softmax(logits.float(), dim=1).view(m, len(rows), -1)
        y_hat = probs.detach().mean(dim=0).argmax(dim=1)
        return brier_score(probs, y), anti_consistency(probs, self.ac_form), y_hat == y

    def training_loss(self, x, y):
        import torch

        brier, ac, correct = self.calibration_terms(x, y)
        loss = torch.where(correct, self.brier_weight * brier, self.ac_weight * ac).mean()
        brier, ac = brier.detach(), ac.detach()
        terms = {"brier": float(brier[correct].mean()) if correct.any() else 0.0,
                 "ac": float(ac[~correct].mean()) if (~correct).any() else 0.0,
                 "correct": float(correct.float().mean())}
        if self.mse_weight > 0:
            mse = self._classifier.denoiser.noise_prediction_loss(x, generator=self.generator(x.device),
                                                                  max_sigma=max(self._classifier.sigmas))
            loss = loss + self.mse_weight * mse
            terms["mse"] = float(mse.detach())
        self.last_terms = terms
        return loss

    def fit(self, x, y=None, batch_size: int = 128, nb_epochs: int = 10, **kwargs) -> list[float]:
        """
        Tune the denoiser (train mode) with the classifier frozen (eval mode, ``requires_grad`` off for the run).

        :return: The mean loss of each epoch.
        """
        model = self._classifier.model
        denoiser = self._classifier.denoiser
        flags = [p.requires_grad for p in model.parameters()]
        for p in model.parameters():
            p.requires_grad_(False)
        denoiser.train()
        try:
            return super().fit(x, y, batch_size=batch_size, nb_epochs=nb_epochs, **kwargs)
        finally:
            for p, flag in zip(model.parameters(), flags):
                p.requires_grad_(flag)
            denoiser.eval()
            model.eval()


class DenoisedClassifierTrainer(SmoothingTrainer):
    """
    Fine-tune the classifier of a :class:`~art_some.DenoisedMultiScaleClassifier` on denoised noisy images:
    cross-entropy of classifier(D(x + delta; sigma)) with the denoiser frozen and a level sigma drawn uniformly
    per example (Jeong & Shin's rebuttal reports this helps on top of diffusion calibration). Without a denoiser
    (the identity), this is Gaussian augmentation over several sigmas.

    :param classifier: A :class:`~art_some.DenoisedMultiScaleClassifier` with an optimizer for its classifier.
    :param seed: Seed of the noise, the levels and the shuffling.
    """

    def __init__(self, classifier, seed: int = 0, optimizer=None):
        super().__init__(classifier, seed=seed, optimizer=optimizer)

    def training_loss(self, x, y):
        import torch

        est = self._classifier
        levels = est.levels
        level = _level_per_example(self, len(x), len(levels), x.device)
        sigma = torch.as_tensor(levels, dtype=x.dtype, device=x.device)[level]
        noisy = x + per_example(sigma, x) * self.noise_like(x)
        parts = []
        with torch.no_grad():
            for k, s in enumerate(levels):
                rows = torch.nonzero(level == k).flatten()
                if len(rows):
                    parts.append((rows, est.denoise(noisy[rows], s)))
        denoised = torch.empty((len(x), *parts[0][1].shape[1:]), device=x.device, dtype=parts[0][1].dtype)
        for rows, out in parts:
            denoised[rows] = out
        logits = est.logits(denoised, training_mode=True)
        return torch.nn.functional.cross_entropy(logits, y)
