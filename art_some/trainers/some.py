"""
SOME circular teaching (Fang et al.): train a multi-head network so that head k-1 picks, by self-paced learning
on noise-averaged losses, the samples head k trains on at full weight, with a squared-cosine constraint that
keeps the heads apart. Any of the base smoothing losses (Gaussian, Consistency, SmoothMix) plugs in.

| Paper link: https://arxiv.org/abs/2211.10882
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

from art_some.core.validate import integer
from art_some.models.multihead import unwrap
from art_some.trainers.base import SmoothingTrainer
from art_some.trainers.common import clip_range, kl_to_target, noisy_logits, stacked_logits, warmup_factor
from art_some.trainers.smoothmix import attack_smoothed, default_step_size, mixup

if TYPE_CHECKING:
    import torch

BASES = ("gaussian", "consistency", "smoothmix")

# The official per-sigma settings (EXPERIMENTS.md): lambda_last per base method, Consistency's lambda_c.
LAMBDA_LAST = {
    "gaussian": {0.25: 1.2, 0.5: 0.8, 1.0: 0.8},
    "consistency": {0.25: 1.0, 0.5: 0.8, 1.0: 1.0},
    "smoothmix": {0.25: 1.6, 0.5: 1.0, 1.0: 1.6},
}
CONSISTENCY_LBD = {0.25: 20.0, 0.5: 10.0, 1.0: 10.0}


def default_mix_step(sigma: float) -> int:
    """
    SOME's SmoothMix mix_step: 0 at sigma 0.25, 1 (the one-step adversary) at 0.5 and 1.0, from the SOME commands.
    This is SOME's choice; SmoothMix's own code defaults to 0 at every sigma, and so does
    :class:`~art_some.trainers.smoothmix.SmoothMixTrainer`.
    """
    return 0 if sigma <= 0.25 else 1


def some_defaults(base: str, sigma: float) -> dict:
    """
    The official hyperparameters of SOME for ``base`` at noise level ``sigma`` (0.25, 0.5 or 1.0): lambda_last,
    plus lbd (lambda_c) for Consistency and step_size / mix_step for SmoothMix.
    """
    if base not in BASES:
        raise ValueError(f"base must be one of {', '.join(BASES)}, got {base!r}")
    key = round(float(sigma), 6)
    if key not in LAMBDA_LAST[base]:
        raise ValueError(
            f"SOME has published defaults only for sigma in {sorted(LAMBDA_LAST[base])}, got {sigma!r}; "
            "pass lambda_last (and lbd for consistency) explicitly"
        )
    defaults = {"lambda_last": LAMBDA_LAST[base][key]}
    if base == "consistency":
        defaults["lbd"] = CONSISTENCY_LBD[key]
    if base == "smoothmix":
        defaults.update(step_size=default_step_size(key), mix_step=default_mix_step(key))
    return defaults


def lambda_schedule(epoch: int, total_epochs: int, num_classes: int, lambda_last: float) -> float:
    """
    The self-paced threshold of epoch t (1-based): lambda_t = -log10(a t + b), with 10^-lambda moving linearly
    from 10^-ln(C) at t = 1 to 10^-lambda_last at t = T (the official ``log10_scheduler``). Epochs past T keep
    lambda_last; with T = 1 (no room for a schedule) every epoch uses ln(C).
    """
    start = 10.0 ** (-math.log(num_classes))
    end = 10.0 ** (-float(lambda_last))
    if total_epochs <= 1:
        return math.log(num_classes)
    t = min(int(epoch), int(total_epochs))
    power = start + (end - start) * (t - 1) / (total_epochs - 1)  # a t + b, written so that t = T gives end
    return float(lambda_last) if t == total_epochs or power <= 0 else -math.log10(power)


def self_paced_weights(losses: "torch.Tensor", lam: float) -> "torch.Tensor":
    """
    Circular teaching's weights ``(M, B)`` from the heads' smoothed losses ``(M, B)``: head k-1 (mod M) teaches
    head k. Where the teacher's loss is below lambda the sample is easy and weighs 1; where it is above, the weight
    is the logistic self-paced weight of the *student's own* loss, (1 + e^-lambda) / (1 + e^(l_k - lambda));
    where it equals lambda neither mask is set and the weight is 0 (the official code's quirk). Constants: no
    gradient flows through them.
    """
    import torch

    with torch.no_grad():
        losses = losses.detach()
        teacher = losses.roll(1, dims=0)  # row k holds head k-1's losses
        hard_weight = (1 + math.exp(-lam)) / (1 + torch.exp(losses - lam))
        return torch.where(teacher < lam, torch.ones_like(losses),
                           torch.where(teacher > lam, hard_weight, torch.zeros_like(losses)))


class SOMETrainer(SmoothingTrainer):
    """
    Circular teaching with self-paced learning for a :class:`~art_some.MultiHeadSmoothedClassifier`, following
    the official code. Each loader batch is split into m = ``num_noise_vec`` mini-batches with one optimizer
    step each; each sample gets m noise draws and all m copies go through the network in one pass. Per step,
    with l_k(i) the CE of head k averaged over the draws and v_k(i) the :func:`self_paced_weights` at the epoch's
    lambda (:func:`lambda_schedule`):

        L = (1/M) sum_k mean_i v_k(i) l_k(i) + cosine_weight * sum_{i<j} cos^2(theta_i, theta_j) + R

    where R is the base method's regulariser averaged over heads and weighted by v_k:

    - ``gaussian``: none.
    - ``consistency``: mean_i v_k(i) [lbd (1/m) sum_j KL(p_bar_k || p_kj) + eta H(p_bar_k)], with p_bar_k the
      head's mean softmax over the draws, **detached** as in the official SOME code (so the entropy term has no
      gradient); ``detach_consistency_target=False`` gives Jeong & Shin's original (p_bar with gradient).
    - ``smoothmix``: the SmoothMix adversary on the head-averaged smoothed NLL, with the same noise draws; the CE
      term uses the mix_step iterate; the mixup target is the head- and draw-averaged softmax of that clean
      branch (not detached); the mixup term smoothmix_eta * w_t * (1/M) sum_k mean_i m_k(i) (1/m) sum_j KL(...)
      uses ``mix_mask``: ``"teaching"`` (m = v, the official SOME code) or ``"correct"`` (the original
      SmoothMix mask, 1 where the head-averaged smoothed prediction is right).

    Defaults per base method and sigma (0.25 / 0.5 / 1.0) come from the official commands (:func:`some_defaults`):
    lambda_last, Consistency's lbd 20 / 10 / 10, SmoothMix's step 2 sigma and mix_step 0 / 1 / 1 (SOME's choice by
    sigma, :func:`default_mix_step`; the SmoothMix code's own default is 0 everywhere); eta 0.5,
    smoothmix_eta 5, 4 attack steps, warm-up 10 epochs, m = 2. The schedule runs over ``total_epochs`` (the
    official 150; default: the epochs of the first ``fit`` call).

    | Paper link: https://arxiv.org/abs/2211.10882

    :param classifier: A :class:`~art_some.MultiHeadSmoothedClassifier` with an optimizer.
    :param sigma: Training noise level (default: the classifier's ``scale``).
    :param base: ``"gaussian"``, ``"consistency"`` or ``"smoothmix"``.
    :param num_noise_vec: m, noise draws per sample and mini-batches per loader batch.
    :param lambda_last: Final self-paced threshold (default from :func:`some_defaults`).
    :param total_epochs: T of the lambda schedule.
    :param cosine_weight: Weight of the cosine constraint (1 in the official code).
    :param lbd: Consistency's lambda_c.
    :param eta: Consistency's entropy weight (0.5, fixed in the official code).
    :param detach_consistency_target: Detach p_bar (official SOME) or not (Jeong & Shin).
    :param smoothmix_eta: Weight of the mixup term.
    :param num_steps: SmoothMix attack steps T.
    :param step_size: SmoothMix attack step alpha.
    :param mix_step: SmoothMix's clean-side iterate s (default: SOME's 0 at sigma 0.25, 1 above).
    :param warmup: SmoothMix's warm-up epochs W (w_t = min(1, t / W)).
    :param mix_mask: ``"teaching"`` or ``"correct"`` (see above).
    :param detach_mix_target: Detach the mixup target (not done by either official code).
    :param seed: Seed of the noise, the mixup coefficients and the shuffling.
    """

    noises = None  # trains with whatever noise the classifier smooths with

    def __init__(self, classifier, sigma=None, base: str = "gaussian", num_noise_vec: int = 2,
                 lambda_last: float | None = None, total_epochs: int | None = None, cosine_weight: float = 1.0,
                 lbd: float | None = None, eta: float = 0.5, detach_consistency_target: bool = True,
                 smoothmix_eta: float = 5.0, num_steps: int = 4, step_size: float | None = None,
                 mix_step: int | None = None, warmup: int = 10, mix_mask: str = "teaching",
                 detach_mix_target: bool = False, seed: int = 0):
        super().__init__(classifier, sigma=sigma, seed=seed)
        if not callable(getattr(unwrap(classifier.model), "head_logits", None)):
            raise ValueError("SOMETrainer needs a multi-head network (art_some.models.MultiHeadNet) as the model")
        if base not in BASES:
            raise ValueError(f"base must be one of {', '.join(BASES)}, got {base!r}")
        if mix_mask not in ("teaching", "correct"):
            raise ValueError(f"mix_mask must be 'teaching' or 'correct', got {mix_mask!r}")
        integer("num_noise_vec", num_noise_vec, 1)
        integer("num_steps", num_steps, 0)
        integer("warmup", warmup, 1)
        if total_epochs is not None:
            integer("total_epochs", total_epochs, 1)
        # SmoothMix's step and mix_step follow the official rule at any sigma; lambda_last and lambda_c exist
        # only for the published sigmas.
        needed = {"lambda_last": lambda_last, "lbd": lbd if base == "consistency" else 0.0,
                  "step_size": default_step_size(self.sigma) if step_size is None else step_size,
                  "mix_step": default_mix_step(self.sigma) if mix_step is None else mix_step}
        if any(value is None for value in needed.values()):
            defaults = some_defaults(base, self.sigma)
            needed = {key: defaults[key] if value is None else value for key, value in needed.items()}
        for name, value in (("cosine_weight", cosine_weight), ("eta", eta), ("smoothmix_eta", smoothmix_eta)):
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value!r}")
        if needed["lambda_last"] <= 0:
            raise ValueError(f"lambda_last must be > 0, got {needed['lambda_last']!r}")
        integer("mix_step", needed["mix_step"], 0)
        if base == "smoothmix" and not 0 <= needed["mix_step"] <= num_steps:
            raise ValueError(f"mix_step must lie in [0, num_steps={num_steps}], got {needed['mix_step']!r}")
        if base == "smoothmix" and needed["step_size"] <= 0:
            raise ValueError(f"step_size must be > 0, got {needed['step_size']!r}")
        self.base = base
        self.num_noise_vec = self.num_minibatches = int(num_noise_vec)
        self.lambda_last = float(needed["lambda_last"])
        self.total_epochs = None if total_epochs is None else int(total_epochs)
        self.cosine_weight = float(cosine_weight)
        self.lbd, self.eta = float(needed["lbd"]), float(eta)
        self.detach_consistency_target = bool(detach_consistency_target)
        self.smoothmix_eta, self.num_steps = float(smoothmix_eta), int(num_steps)
        self.step_size, self.mix_step = float(needed["step_size"]), int(needed["mix_step"])
        self.warmup, self.mix_mask = int(warmup), mix_mask
        self.detach_mix_target = bool(detach_mix_target)
        self.lam = math.log(classifier.nb_classes)

    def fit(self, x, y=None, batch_size: int = 256, nb_epochs: int = 150, **kwargs) -> list[float]:
        """ART's ``fit``; the lambda schedule spans ``total_epochs`` (default: this call's epochs). See the base."""
        if self.total_epochs is None:
            self.total_epochs = self.epoch + int(nb_epochs)
        return super().fit(x, y, batch_size=batch_size, nb_epochs=nb_epochs, **kwargs)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "total_epochs": self.total_epochs}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.total_epochs = state.get("total_epochs", self.total_epochs)

    def start_epoch(self) -> None:
        self.lam = lambda_schedule(self.epoch, self.total_epochs or self.epoch, self._classifier.nb_classes,
                                   self.lambda_last)

    def training_loss(self, x, y):
        import torch
        import torch.nn.functional as F

        noise = self.draw_noise(x)
        x_clean = x
        if self.base == "smoothmix":
            w = warmup_factor(self.epoch, self.warmup)
            x_clean, x_adv = attack_smoothed(
                self._classifier, x, y, noise, step_size=self.step_size, num_steps=self.num_steps,
                mix_step=self.mix_step, mix_radius=self.step_size * self.mix_step * w, maxnorm=None,
                clip=clip_range(self._classifier))
        logits = noisy_logits(lambda v: stacked_logits(self._classifier, v, True), x_clean, noise)
        heads, m, b, _ = logits.shape
        ce = F.cross_entropy(logits.flatten(0, 2), y.repeat(heads * m), reduction="none").view(heads, m, b).mean(1)
        weights = self_paced_weights(ce, self.lam)
        loss = (weights * ce).mean()
        if self.cosine_weight and heads > 1:
            loss = loss + self.cosine_weight * unwrap(self._classifier.model).cosine_loss()
        if self.base == "consistency":
            loss = loss + (weights * self._consistency_terms(logits)).mean()
        if self.base == "smoothmix":
            target = torch.softmax(logits, dim=-1).mean(dim=(0, 1))
            mask = weights if self.mix_mask == "teaching" else (target.argmax(dim=1) == y).float().expand(heads, b)
            if self.detach_mix_target:
                target = target.detach()
            x_mix, y_mix, _ = mixup(x_clean, x_adv, target, self.generator(x.device))
            mixed = noisy_logits(lambda v: stacked_logits(self._classifier, v, True), x_mix, noise)
            loss = loss + self.smoothmix_eta * w * (mask * kl_to_target(y_mix, mixed)).mean()
        return loss

    def _consistency_terms(self, logits):
        """lbd * (1/m) sum_j KL(p_bar || p_j) + eta * H(p_bar) per head and sample, ``(M, B)``."""
        import torch

        p_bar = torch.softmax(logits, dim=-1).mean(dim=1)
        if self.detach_consistency_target:
            p_bar = p_bar.detach()
        entropy = -(p_bar * torch.log(p_bar.clamp_min(1e-20))).sum(dim=-1)
        return self.lbd * kl_to_target(p_bar, logits) + self.eta * entropy
