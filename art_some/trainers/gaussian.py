"""
Gaussian noise augmentation (Cohen et al. 2019): train the base classifier on x + delta, delta ~ N(0, sigma^2 I).

| Paper link: https://arxiv.org/abs/1902.02918
"""
from __future__ import annotations

from art_some.trainers.base import SmoothingTrainer


class GaussianAugmentationTrainer(SmoothingTrainer):
    """
    Cross-entropy on one noisy copy of each training input, noise added in raw input space before the
    estimator's preprocessing (the space in which the smoothed classifier is certified).

    | Paper link: https://arxiv.org/abs/1902.02918

    :param classifier: A :class:`~art_some.SmoothedClassifier` with an optimizer.
    :param sigma: Training noise level (default: the classifier's ``scale``; Cohen et al. train and certify
                  at the same sigma).
    :param seed: Seed of the noise and shuffling.
    """

    noises = None  # trains with whatever noise the classifier smooths with

    def training_loss(self, x, y, sigma=None):
        """
        :param sigma: Per-example noise levels ``(B,)`` (data-dependent smoothing) instead of the trainer's sigma.
        """
        import torch

        logits = self._classifier.logits(x + self.draw_noise(x, m=1, sigma=sigma)[0], training_mode=True)
        return torch.nn.functional.cross_entropy(logits, y)
