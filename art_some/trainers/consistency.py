"""
Consistency regularisation (Jeong & Shin, NeurIPS 2020): cross-entropy on m noisy copies plus a KL term pulling
each copy's prediction towards their mean, and an entropy term on that mean.

| Paper link: https://arxiv.org/abs/2006.04062
"""
from __future__ import annotations

from art_some.trainers.base import SmoothingTrainer


class ConsistencyTrainer(SmoothingTrainer):
    """
    Loss per batch, with m = ``num_noise_vec`` noisy copies x + delta_j of each input and p_j = softmax f(x + delta_j):

        (1/m) sum_j CE(f(x + delta_j), y) + lbd * (1/m) sum_j KL(p_bar || p_j) + eta * H(p_bar),

    where p_bar = (1/m) sum_j p_j keeps its gradient (as in Jeong & Shin's code; SOME detaches it, see the SOME
    trainer). As in the official ``train_consistency.py`` (``_chunk_minibatch``), each loader batch is split into m
    equal chunks (remainder dropped) with one optimizer step each, so an epoch takes m times as many steps as the
    loader has batches, each on B/m inputs times m noisy copies (a forward pass of B inputs). Defaults m=2, lbd=10,
    eta=0.5 are the authors' CIFAR-10 setting whose certification logs are in
    ``shared/data/published_logs/consistency_cifar10_r110`` (they use lbd=20 at sigma=0.25 in some tables).

    | Paper link: https://arxiv.org/abs/2006.04062

    :param classifier: A :class:`~art_some.SmoothedClassifier` with an optimizer.
    :param sigma: Training noise level (default: the classifier's ``scale``).
    :param num_noise_vec: m, noisy copies per input (>= 2 for the KL term to matter).
    :param lbd: Weight of the consistency (KL) term (>= 0).
    :param eta: Weight of the entropy term (>= 0).
    :param seed: Seed of the noise and shuffling.
    """

    noises = None  # trains with whatever noise the classifier smooths with

    def __init__(self, classifier, sigma=None, num_noise_vec: int = 2, lbd: float = 10.0, eta: float = 0.5, seed=0):
        super().__init__(classifier, sigma=sigma, seed=seed)
        if int(num_noise_vec) != num_noise_vec or num_noise_vec < 1:
            raise ValueError(f"num_noise_vec must be an integer >= 1, got {num_noise_vec!r}")
        if lbd < 0 or eta < 0:
            raise ValueError(f"lbd and eta must be >= 0, got lbd={lbd!r}, eta={eta!r}")
        self.num_noise_vec = self.num_minibatches = int(num_noise_vec)
        self.lbd = float(lbd)
        self.eta = float(eta)

    def training_loss(self, x, y):
        # Copy j of the whole batch is chunk j, so chunk j lines up with y.
        noisy = (x.unsqueeze(0) + self.draw_noise(x)).flatten(0, 1)
        logits = self._classifier.logits(noisy, training_mode=True).view(self.num_noise_vec, len(x), -1)
        return consistency_loss(logits, y, self.lbd, self.eta)


def consistency_loss(logits, y, lbd: float, eta: float):
    """
    Jeong & Shin's loss from logits of shape ``(m, B, C)`` (copy, sample, class) and labels ``(B,)``.
    """
    import torch
    import torch.nn.functional as F

    m = logits.shape[0]
    ce = torch.stack([F.cross_entropy(logits[j], y) for j in range(m)]).mean()
    log_p = F.log_softmax(logits, dim=2)
    p_bar = log_p.exp().mean(dim=0)
    log_p_bar = torch.log(p_bar.clamp_min(1e-20))
    kl = (p_bar.unsqueeze(0) * (log_p_bar.unsqueeze(0) - log_p)).sum(dim=2).mean()
    entropy = -(p_bar * log_p_bar).sum(dim=1).mean()
    return ce + lbd * kl + eta * entropy
