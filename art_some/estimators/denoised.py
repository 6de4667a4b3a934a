"""
DenoisedMultiScaleClassifier: diffusion denoised smoothing (Carlini et al. 2023) and its cascade over several
noise levels (multi-scale smoothing, Jeong & Shin 2023), on the shared streaming engine.

| Paper link: https://arxiv.org/abs/2310.16779
"""
from __future__ import annotations

import logging
from functools import partial
from typing import TYPE_CHECKING

import numpy as np

from art_some.core.cascade import ALPHA_SPLITS, PREDICT_RULES, failure_bound
from art_some.core.rules import CohenRule
from art_some.core.smoothing import Cascade
from art_some.estimators.smoothed import SmoothedClassifier

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

# Level s of the cascade (0 = the largest sigma) draws from level_stage(stage, s) (art_some.core.streams), so every
# level gets fresh noise and a single level uses exactly the streams of a plain SmoothedClassifier.


class DenoisedMultiScaleClassifier(SmoothedClassifier):
    """
    Denoise-and-classify smoothing at one or several noise levels.

    The base classifier of level sigma is f_sigma(z) = classifier(denoiser(z, sigma)): a one-shot diffusion
    denoiser (:class:`~art_some.models.diffusion.DiffusionDenoiser`) followed by an off-the-shelf classifier.

    - One sigma: diffusion denoised smoothing (Carlini et al.), Cohen's CERTIFY and PREDICT exactly.
    - Several sigmas: the cascade of Jeong & Shin. CERTIFY visits the largest sigma first with fresh n0 + n draws
      per level, answers at the first level whose lower bound reaches ``p0``, passes on when a level confidently
      abstains (every class's upper bound below ``p0``) and abstains when a level is inconclusive. The radius is
      the answering level's sigma (Phi^-1(p_lower) - Phi^-1(p0)), capped by each higher level's
      sigma' (Phi^-1(p0) - Phi^-1(p_bar)), p_bar a simultaneous Clopper-Pearson upper bound over the classes other
      than the answer (:func:`~art_some.core.cascade.cascade_certify`).

    Choices that differ from the official code, on purpose: the off-class upper bounds are per-class
    Clopper-Pearson bounds with a Bonferroni split (not Goodman intervals with pooled small counts, and without
    the fallback to 1 - p_lower that the code uses for two groups); alpha is split as alpha / K per level by
    default (``alpha_split="uniform"``), because the stopping level is chosen by the data (the code's
    alpha / (s + 1) is available as ``"sequential"``; its failure probability is only bounded by
    alpha (1 + 1/2 + ... + 1/K), which every record states as ``failure_bound``); within a level that is not the
    last, half the budget goes to the lower bound and half to the upper bounds, since either may be used.

    PREDICT (``predict``): ``predict_rule="cascade"`` is the cascade with a guarantee (see
    :func:`~art_some.core.cascade.cascade_predict`); ``"hybrid"`` is the official predict_mdds.py (first level with
    vote share >= p0, then argmax(clean logits + log((1 - w) votes / n + w / C)), clean logits when no level
    qualifies): empirical accuracy without a guarantee, never abstains.

    Gradients (for ART's attacks) are EOT estimates of log of the mean over levels of the soft smoothed
    classifiers E[softmax f_sigma(x + delta)] (``gradient_level=None``), or of one level's.

    Noise is added in raw input space (the classifier's, typically [0, 1]); radii are in the same units. The
    denoiser converts to the diffusion model's [-1, 1] range (noise std 2 sigma there) itself.

    | Paper link: https://arxiv.org/abs/2310.16779
    | Paper link: https://arxiv.org/abs/2206.10550
    """

    sigma_parameter = "sigmas"
    estimator_params = [p for p in SmoothedClassifier.estimator_params if p != "scale"] + [
        "denoiser",
        "sigmas",
        "p0",
        "alpha_split",
        "predict_rule",
        "hybrid_weight",
        "gradient_level",
    ]

    def __init__(
        self,
        model: "torch.nn.Module",
        loss: "torch.nn.modules.loss._Loss" | None,
        input_shape: tuple[int, ...],
        nb_classes: int,
        optimizer: "torch.optim.Optimizer" | None = None,
        channels_first: bool = True,
        clip_values=None,
        preprocessing_defences=None,
        postprocessing_defences=None,
        preprocessing=(0.0, 1.0),
        device_type: str = "gpu",
        sample_size: int = 100,
        alpha: float = 0.001,
        noise_batch_size: int = 1000,
        seed: int = 0,
        gradient_samples: int | None = None,
        *,
        denoiser,
        sigmas=(0.25, 0.5, 1.0),
        p0: float = 0.5,
        alpha_split: str = "uniform",
        predict_rule: str = "cascade",
        hybrid_weight: float = 0.1,
        gradient_level: float | None = None,
        verbose: bool | None = None,
        precision: str = "fp32",
        channels_last: bool = False,
        compile: bool = False,
    ):
        """
        Create a denoised (multi-scale) smoothed classifier. The leading arguments are ART's (``model, loss,
        input_shape, nb_classes, optimizer, ...``); the denoiser and the levels come by keyword.

        :param model: The classifier (logits) on clean images in the raw input space; it is never given noise.
        :param loss: Loss of ``fit`` (None: cross-entropy).
        :param input_shape: Shape of one input.
        :param nb_classes: Number of classes.
        :param denoiser: ``denoiser(z, sigma) -> images`` (a module such as
                         :class:`~art_some.models.diffusion.DiffusionDenoiser`), a registered denoiser name, or a
                         dict ``{"name": ..., **config}`` for :func:`~art_some.models.diffusion.create_denoiser`.
        :param sigmas: The noise levels (one for plain denoised smoothing); the paper cascades (0.25, 0.5, 1.0).
        :param p0: A level answers when its top class has probability above ``p0``, in [0.5, 1) (paper: 0.5).
        :param optimizer: Optimizer of the classifier (``fit``).
        :param channels_first: Whether inputs are channels first.
        :param clip_values: ``(min, max)`` of valid inputs (read by attacks).
        :param preprocessing_defences: ART preprocessing defences, applied to the denoised images.
        :param postprocessing_defences: ART postprocessing defences on the classifier's outputs before voting.
        :param preprocessing: The classifier's ``(subtrahend, divisor)`` standardisation, applied after denoising.
        :param device_type: ``"gpu"`` or ``"cpu"``.
        :param sample_size: n0 for ``certify`` and n per level for ``predict`` (official: 100 and 200).
        :param alpha: Failure probability.
        :param noise_batch_size: Noisy inputs per forward pass.
        :param seed: Base seed of every noise stream.
        :param gradient_samples: Noise draws per level and input for EOT gradients (default ``sample_size``).
        :param alpha_split: ``"uniform"`` (alpha / K per level, sound) or ``"sequential"`` (official alpha / (s+1)).
        :param predict_rule: ``"cascade"`` (with a guarantee, may abstain) or ``"hybrid"`` (official, empirical).
        :param hybrid_weight: w of the hybrid rule, in [0, 1] (official 0.1).
        :param gradient_level: None to differentiate the mean over levels, or one of ``sigmas``.
        :param verbose: Progress bars for ``certify`` (None: when standard error is a terminal).
        :param precision: ``"fp32"``, ``"bf16"`` or ``"fp16"`` for the vote (denoiser and classifier), as in
                          :class:`~art_some.SmoothedClassifier`.
        :param channels_last: Channels-last memory format for the vote's models.
        :param compile: :func:`torch.compile` the classifier for the vote (as in :class:`~art_some.SmoothedClassifier`).
        """
        import torch

        from art_some.models.diffusion import DiffusionDenoiser, IdentityDenoiser

        if loss is not None and (not isinstance(loss, torch.nn.Module)
                                 or isinstance(loss, (DiffusionDenoiser, IdentityDenoiser))):
            raise ValueError(f"loss must be a torch loss or None, got {type(loss).__name__}: "
                             "DenoisedMultiScaleClassifier takes ART's leading arguments (model, loss, input_shape, "
                             "nb_classes); give the denoiser and the levels as denoiser=... and sigmas=...")
        sigmas = _check_sigmas(sigmas)
        super().__init__(
            model=model,
            loss=torch.nn.CrossEntropyLoss() if loss is None else loss,
            input_shape=input_shape,
            nb_classes=nb_classes,
            optimizer=optimizer,
            channels_first=channels_first,
            clip_values=clip_values,
            preprocessing_defences=preprocessing_defences,
            postprocessing_defences=postprocessing_defences,
            preprocessing=preprocessing,
            device_type=device_type,
            sample_size=sample_size,
            scale=max(sigmas),
            alpha=alpha,
            noise_batch_size=noise_batch_size,
            seed=seed,
            gradient_samples=gradient_samples,
            verbose=verbose,
            precision=precision,
            channels_last=channels_last,
            compile=compile,
        )
        self._sigmas = sigmas
        self.denoiser = denoiser
        self.p0 = p0
        self.alpha_split = alpha_split
        self.predict_rule = predict_rule
        self.hybrid_weight = hybrid_weight
        self.gradient_level = gradient_level
        self._check_cascade_params()

    # ----------------------------------------------------------------------------------------------------------
    # Parameters
    # ----------------------------------------------------------------------------------------------------------
    @property
    def sigmas(self) -> tuple[float, ...]:
        """The noise levels in the cascade's order, largest first (the one order used everywhere, records included)."""
        return self._sigmas

    @sigmas.setter
    def sigmas(self, value) -> None:
        self._sigmas = _check_sigmas(value)
        self.scale = max(self._sigmas)

    @property
    def levels(self) -> tuple[float, ...]:
        """The same as :attr:`sigmas`: the noise levels in the cascade's order, largest first."""
        return self._sigmas

    @property
    def denoiser(self):
        return self._denoiser

    @denoiser.setter
    def denoiser(self, value) -> None:
        import torch

        if isinstance(value, str):
            value = {"name": value}
        if isinstance(value, dict):
            from art_some.models.diffusion import create_denoiser

            config = dict(value)
            if "name" not in config:
                raise ValueError("a denoiser dict needs a 'name' (a registered denoiser) and its config")
            value = create_denoiser(config.pop("name"), **config)
        if not callable(value):
            raise ValueError(f"denoiser must be callable as denoiser(z, sigma), a registered name or a dict, "
                             f"got {type(value).__name__}")
        if isinstance(value, torch.nn.Module):
            value = value.to(self._device).eval()
        denoiser_range = getattr(value, "input_range", None)
        if denoiser_range is not None and self.clip_values is not None:
            lo, hi = float(np.min(self.clip_values[0])), float(np.max(self.clip_values[1]))
            if (lo, hi) != tuple(float(v) for v in denoiser_range):
                raise ValueError(
                    f"the denoiser's input_range {tuple(denoiser_range)} differs from clip_values {(lo, hi)}: the "
                    f"noise level it expects would not be the certified sigma; give it input_range={(lo, hi)}"
                )
        self._denoiser = value

    def _check_cascade_params(self) -> None:
        if (self.noise, self.radius_norm) != ("gaussian", "l2"):
            raise ValueError(f"the cascade's certificate holds for gaussian noise in l2 only (the denoiser is trained "
                             f"for Gaussian noise), not noise={self.noise!r}, norm={self.norm!r}")
        if isinstance(self.p0, bool) or not 0.5 <= float(self.p0) < 1.0:
            raise ValueError(f"p0 must be a number in [0.5, 1), got {self.p0!r}")
        if self.alpha_split not in ALPHA_SPLITS:
            raise ValueError(f"alpha_split must be one of {', '.join(ALPHA_SPLITS)}, got {self.alpha_split!r}")
        if self.predict_rule not in PREDICT_RULES:
            raise ValueError(f"predict_rule must be one of {', '.join(PREDICT_RULES)}, got {self.predict_rule!r}")
        if isinstance(self.hybrid_weight, bool) or not 0.0 <= float(self.hybrid_weight) <= 1.0:
            raise ValueError(f"hybrid_weight must be a number in [0, 1], got {self.hybrid_weight!r}")
        if self.gradient_level is not None and float(self.gradient_level) not in self._sigmas:
            raise ValueError(
                f"gradient_level must be None or one of sigmas {self._sigmas}, got {self.gradient_level!r}"
            )

    def set_params(self, **kwargs) -> None:
        """Set parameters and re-check them; nothing changes if the new combination is invalid."""
        if "scale" in kwargs:
            raise ValueError("set sigmas=..., not scale: scale is the largest of sigmas")
        backup = {key: getattr(self, key) for key in kwargs if hasattr(self, key)}
        try:
            super().set_params(**kwargs)
            self._check_cascade_params()
        except Exception:
            for key, value in backup.items():
                setattr(self, key, value)
            raise

    # ----------------------------------------------------------------------------------------------------------
    # The parts: per level, the vote function is classifier(denoiser(z, sigma)) and the noise N(0, sigma^2 I).
    # ----------------------------------------------------------------------------------------------------------
    def denoise(self, z: "torch.Tensor", sigma: float, **kwargs) -> "torch.Tensor":
        """The denoiser's output for noisy inputs ``z`` at level ``sigma`` (differentiable outside inference)."""
        out = self._denoiser(z, float(sigma), **kwargs)
        if tuple(out.shape[:1]) != tuple(z.shape[:1]):
            raise ValueError(f"the denoiser returned {tuple(out.shape)} for {tuple(z.shape)} inputs")
        return out

    def level_logits(self, z: "torch.Tensor", sigma: float, training_mode: bool = False) -> "torch.Tensor":
        """Logits of the base classifier of level ``sigma``: the classifier on the denoised ``z``."""
        return self.logits(self.denoise(z, sigma), training_mode=training_mode)

    def level_vote(self, z: "torch.Tensor", sigma: float) -> "torch.Tensor":
        """The vote function of level ``sigma``."""
        return super().vote(self.denoise(z, sigma))

    def vote(self, z: "torch.Tensor") -> "torch.Tensor":
        """The vote function of the top level (the single level when there is one sigma)."""
        return self.level_vote(z, self.scale)

    def soft_scores(self, z: "torch.Tensor", training_mode: bool = False, sigma: float | None = None):
        """Softmax of the base classifier of level ``sigma`` (default the top level); differentiable."""
        import torch

        sigma = self.scale if sigma is None else sigma
        return torch.softmax(self.level_logits(z, sigma, training_mode=training_mode).float(), dim=1)

    def certificate_info(self) -> dict:
        return {
            "sigmas": list(self.levels),
            "p0": float(self.p0),
            "denoiser": type(self._denoiser).__name__,
        }

    def smoothing(self, x=None, indices=None, **settings) -> Cascade:
        """
        The cascade (:class:`~art_some.core.smoothing.Cascade`; plain CERTIFY for one sigma): at each level, largest
        sigma first, the vote function classifier(denoiser(z, sigma)) under N(0, sigma^2 I) with Cohen's rule, its
        soft scores for the gradients (all levels, or ``gradient_level`` alone).

        Guarantee: with probability at least 1 - alpha (``alpha_split="uniform"``), a returned class is the
        cascade's prediction everywhere within the returned L2 radius (raw input units); records carry
        ``level_sigma`` (the level that answered, None when abstaining), ``levels_visited`` and ``failure_bound``.
        """
        levels = [self.smooth(partial(self.level_vote, sigma=sigma), self.make_noise(sigma), CohenRule(), level=k,
                              soft=partial(self.soft_scores, sigma=sigma), **settings)
                  for k, sigma in enumerate(self.levels)]
        used = [k for k, sigma in enumerate(self.levels)
                if self.gradient_level is None or float(self.gradient_level) == sigma]
        return Cascade(levels, p0=float(self.p0), alpha_split=self.alpha_split, predict_rule=self.predict_rule,
                       hybrid_weight=float(self.hybrid_weight), gradient_levels=used, clean_logits=self._clean_logits)

    def _clean_logits(self, z0: "torch.Tensor") -> np.ndarray:
        """The base model's logits on the clean inputs, in chunks (N full-size images may not fit at once)."""
        import torch

        with torch.inference_mode():
            chunks = [self.logits(z0[i : i + self.noise_batch_size]).float().cpu().numpy()
                      for i in range(0, len(z0), self.noise_batch_size)]
        return np.concatenate(chunks) if chunks else np.zeros((0, self.nb_classes))

    def predict_levels(self, x, indices=None, invalid=None, abstain: bool = True):
        """
        :meth:`predict_classes` plus the sigma of the level that answered per input (NaN: none). With
        ``abstain=False`` and the cascade rule, the cascade's point estimate, which never abstains
        (:func:`~art_some.core.cascade.cascade_point_estimate`).
        """
        classes, scores, level = self.predict_decisions(x, indices, invalid, abstain)
        return classes, scores, np.array([self.levels[k] if k >= 0 else np.nan for k in level])

    def failure_bound(self, alpha: float | None = None) -> float:
        """The proven failure probability of a certificate under the configured ``alpha_split``."""
        return failure_bound(self.alpha if alpha is None else alpha, len(self._sigmas), self.alpha_split)

    # ----------------------------------------------------------------------------------------------------------
    # Gradients and training
    # ----------------------------------------------------------------------------------------------------------
    def fit(self, x, y, batch_size: int = 128, nb_epochs: int = 10, **kwargs) -> None:  # type: ignore[override]
        """
        Fine-tune the classifier on denoised noisy images (the denoiser frozen; one level drawn per batch), which
        Jeong & Shin report helps on top of diffusion calibration, through
        :class:`~art_some.trainers.diffusion_calibration.DenoisedClassifierTrainer`.

        :param kwargs: ``scheduler``, ``verbose``, ``seed`` for the trainer.
        """
        from art_some.trainers.diffusion_calibration import DenoisedClassifierTrainer

        DenoisedClassifierTrainer(self, seed=kwargs.pop("seed", self.seed)).fit(
            x, y, batch_size=batch_size, nb_epochs=nb_epochs, **kwargs
        )


def _check_sigmas(sigmas) -> tuple[float, ...]:
    values = [sigmas] if np.ndim(sigmas) == 0 else list(np.asarray(sigmas, dtype=np.float64).ravel())
    if not values or any(not np.isfinite(s) or s <= 0 for s in values):
        raise ValueError(f"sigmas must be one or more finite numbers > 0, got {sigmas!r}")
    if len(set(values)) != len(values):
        raise ValueError(f"sigmas must be distinct, got {sigmas!r}")
    return tuple(sorted((float(s) for s in values), reverse=True))  # the cascade's order: largest sigma first
