"""
DenoisedMultiScaleClassifier: diffusion denoised smoothing (Carlini et al. 2023) and its cascade over several
noise levels (multi-scale smoothing, Jeong & Shin 2023), on the shared streaming engine.

| Paper link: https://arxiv.org/abs/2310.16779
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np

from art_some.core.cascade import ALPHA_SPLITS, cascade_certify, cascade_predict, failure_bound, hybrid_predict
from art_some.core.certify import ABSTAIN, CertifyResult, check_finite_inputs
from art_some.core.noise import PREDICTION, GaussianNoise, check_indices, count_votes, non_finite_output_error
from art_some.core.stats import _check_alpha
from art_some.core.streams import CHOICE, LEVEL_STRIDE, level_stage
from art_some.estimators.smoothed import SmoothedClassifier, _check_positive_int, _scatter

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

# Level s of the cascade (0 = the largest sigma) draws from level_stage(stage, s) (art_some.core.streams), so every
# level gets fresh noise and a single level uses exactly the streams of a plain SmoothedClassifier.
LEVEL_STAGE_STRIDE = LEVEL_STRIDE  # kept for callers of the old name
PREDICT_RULES = ("cascade", "hybrid")


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
        denoiser,
        sigmas=(0.25, 0.5, 1.0),
        p0: float = 0.5,
        loss: "torch.nn.modules.loss._Loss" | None = None,
        *,
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
        alpha_split: str = "uniform",
        predict_rule: str = "cascade",
        hybrid_weight: float = 0.1,
        gradient_level: float | None = None,
        verbose: bool | None = None,
    ):
        """
        Create a denoised (multi-scale) smoothed classifier.

        :param model: The classifier (logits) on clean images in the raw input space; it is never given noise.
        :param denoiser: ``denoiser(z, sigma) -> images`` (a module such as
                         :class:`~art_some.models.diffusion.DiffusionDenoiser`), a registered denoiser name, or a
                         dict ``{"name": ..., **config}`` for :func:`~art_some.models.diffusion.create_denoiser`.
        :param sigmas: The noise levels (one for plain denoised smoothing); the paper cascades (0.25, 0.5, 1.0).
        :param p0: A level answers when its top class has probability above ``p0``, in [0.5, 1) (paper: 0.5).
        :param loss: Loss of ``fit`` (default cross-entropy).
        :param input_shape: Shape of one input.
        :param nb_classes: Number of classes.
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
        """
        import torch

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
        """The noise levels, ascending."""
        return self._sigmas

    @sigmas.setter
    def sigmas(self, value) -> None:
        self._sigmas = _check_sigmas(value)
        self.scale = max(self._sigmas)

    @property
    def levels(self) -> tuple[float, ...]:
        """The noise levels in the cascade's order: largest first."""
        return tuple(sorted(self._sigmas, reverse=True))

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

    def _counter(self, z0: "torch.Tensor", indices, batch_size: int | None, invalid: np.ndarray | None = None,
                 verbose: bool | None = False):
        """
        The engine's count function for level s (0 = largest sigma), keyed on the level's own streams. With
        ``invalid`` (length N), inputs with non-finite outputs are marked there (zero counts) instead of raising.
        """
        import torch

        indices = check_indices(indices, len(z0))
        levels = self.levels

        def count(level: int, stage: int, positions: np.ndarray, num: int) -> np.ndarray:
            sigma = levels[level]
            marks = None if invalid is None else np.zeros(len(positions), dtype=bool)
            counts = count_votes(
                lambda z: self.level_vote(z, sigma), z0[torch.as_tensor(positions, device=z0.device)], num,
                GaussianNoise(sigma), num_classes=self.nb_classes, batch_size=self._batch_size(batch_size),
                seed=self.seed, stage=level_stage(stage, level), indices=indices[positions], invalid=marks,
                verbose=verbose, desc=f"sigma {sigma:g}",
            )
            if marks is not None:
                invalid[positions] |= marks
            return counts

        return count

    # ----------------------------------------------------------------------------------------------------------
    # CERTIFY and PREDICT
    # ----------------------------------------------------------------------------------------------------------
    def certify_detailed(self, x, n: int, n0: int | None = None, alpha: float | None = None,
                         batch_size: int | None = None, indices=None) -> CertifyResult:
        """
        Cascaded CERTIFY (plain CERTIFY for one sigma): per input the class, the radius, and in ``extra`` the level
        that answered (``level_sigma``, None when abstaining) and how many levels were visited.

        Guarantee: with probability at least 1 - alpha (``alpha_split="uniform"``), a returned class is the
        cascade's prediction everywhere within the returned L2 radius (raw input units).

        :param x: Inputs ``(N, *input_shape)``.
        :param n: Estimation draws per level.
        :param n0: Selection draws per level (default ``sample_size``).
        :param alpha: Failure probability (default the estimator's).
        :param batch_size: Noisy inputs per forward pass.
        :param indices: Global indices that key each input's noise.
        """
        import torch

        n0 = self.sample_size if n0 is None else n0
        _check_positive_int("n", n)
        _check_positive_int("n0", n0)
        alpha = _check_alpha(self.alpha if alpha is None else alpha)
        with torch.inference_mode():
            z0 = self._as_input_tensor(x)
        check_finite_inputs(z0, check_indices(indices, len(z0)))
        result = cascade_certify(
            self._counter(z0, indices, batch_size, verbose=self.verbose), self.levels, len(z0), n0=int(n0), n=int(n),
            alpha=alpha, p0=float(self.p0), alpha_split=self.alpha_split, num_classes=self.nb_classes,
        )
        result.extra.update(self.certificate_info())
        return result

    def predict_counts(self, x, n: int | None = None, batch_size: int | None = None, indices=None,
                       squares: bool = False, sigma: float | None = None, invalid: np.ndarray | None = None,
                       stage: int = PREDICTION):
        """
        Vote counts of one level (default the top level) over ``n`` draws (default ``sample_size``) from the level's
        ``stage`` streams (PREDICTION; the audit's level choice draws from CHOICE); non-finite inputs and outputs
        raise, or are marked in ``invalid``, as in :meth:`SmoothedClassifier.predict_counts`.
        """
        import torch

        sigma = self.scale if sigma is None else float(sigma)
        if sigma not in self._sigmas:
            raise ValueError(f"sigma must be one of {self._sigmas}, got {sigma!r}")
        n = self.sample_size if n is None else n
        _check_positive_int("n", n)
        with torch.inference_mode():
            z0 = self._as_input_tensor(x)
        indices = check_indices(indices, len(z0))
        rows = self._finite_rows(z0, indices, invalid)
        marks = None if invalid is None else np.zeros(len(rows), dtype=bool)
        out = count_votes(
            lambda z: self.level_vote(z, sigma), z0[rows], int(n), GaussianNoise(sigma), num_classes=self.nb_classes,
            batch_size=self._batch_size(batch_size), seed=self.seed,
            stage=level_stage(stage, self.levels.index(sigma)), indices=indices[rows], squares=squares,
            invalid=marks,
        )
        if marks is not None:
            invalid[rows] |= marks
        return tuple(_scatter(part, rows, len(z0)) for part in out) if squares else _scatter(out, rows, len(z0))

    def predict_classes(self, x, indices=None, invalid=None, abstain: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """
        PREDICT by ``predict_rule``: the classes (-1 = abstain) and, per row, the answering level's vote counts
        (``"cascade"``) or ``sample_size`` times the hybrid softmax (``"hybrid"``, whose argmax is the label).
        ``abstain=False`` (what attacks see): the cascade's own top class, see :meth:`predict_levels`.
        """
        classes, scores, _ = self.predict_levels(x, indices=indices, invalid=invalid, abstain=abstain)
        return classes, scores

    def predict_levels(self, x, indices=None, invalid=None, abstain: bool = True):
        """
        :meth:`predict_classes` plus the sigma of the level that answered per input (NaN: none).

        With ``abstain=False`` and the cascade rule, the cascade's point estimate, which never abstains: from the
        largest sigma down, the first level whose top class has a vote share of at least p0 answers with it; when
        none does, the smallest sigma's top class (where the cascade would end). Inputs holding NaN or inf, or with
        non-finite outputs, raise, or are marked in ``invalid`` (class -1, zero scores, level NaN).
        """
        import torch

        with torch.inference_mode():
            z0 = self._as_input_tensor(x)
        indices = check_indices(indices, len(z0))
        marks = np.zeros(len(z0), dtype=bool)
        rows = self._finite_rows(z0, indices, marks if invalid is not None else None)
        sub = None if invalid is None else np.zeros(len(rows), dtype=bool)
        count = self._counter(z0[rows], indices[rows], None, sub)
        if self.predict_rule == "cascade" and abstain:
            classes, scores, level = cascade_predict(
                count, self.levels, len(rows), n=self.sample_size, alpha=self.alpha, p0=float(self.p0),
                alpha_split=self.alpha_split, num_classes=self.nb_classes,
            )
        elif self.predict_rule == "cascade":
            classes, scores, level = _cascade_point_estimate(count, len(self.levels), len(rows), self.sample_size,
                                                             float(self.p0))
        else:
            with torch.inference_mode():  # in chunks: N clean images at full size may not fit at once
                chunks = [self.logits(z0[rows][i : i + self.noise_batch_size]).float().cpu().numpy()
                          for i in range(0, len(rows), self.noise_batch_size)]
            clean = np.concatenate(chunks) if chunks else np.zeros((0, self.nb_classes))
            bad = ~np.isfinite(clean).all(axis=1)
            if bad.any():
                if invalid is None:
                    raise non_finite_output_error(indices[rows][bad])
                marks[rows[bad]] = True
                clean[bad] = 0.0
            with np.errstate(divide="ignore"):
                classes, logits, level = hybrid_predict(
                    count, self.levels, clean, n=self.sample_size, p0=float(self.p0), weight=float(self.hybrid_weight)
                )
            shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
            scores = self.sample_size * shifted / shifted.sum(axis=1, keepdims=True)
        classes, level = _scatter(classes, rows, len(z0)), _scatter(level, rows, len(z0))
        scores = _scatter(scores, rows, len(z0))
        if sub is not None:
            marks[rows] |= sub
        if invalid is not None:
            invalid |= marks
            classes, level = np.where(marks, ABSTAIN, classes), np.where(marks, -1, level)
            scores[marks] = 0
        sigma = np.array([self.levels[k] if k >= 0 else np.nan for k in level])
        return classes, scores, sigma

    def audit_counts(self, x, n: int, indices=None) -> np.ndarray:
        """
        What the attack audit compares with a certified class: ``n`` votes of the level the cascade answers at. The
        level is chosen on separate draws (the CHOICE stage of each level): the first, from the largest sigma, whose
        top class has a vote share of at least p0 (a point estimate of the cascade's rule); no such level is an
        abstention (all-zero counts, which confirm no flip). The returned votes are fresh draws at that level.
        """
        indices = check_indices(indices, len(x))
        choose = np.stack([self.predict_counts(x, n=n, indices=indices, sigma=s, stage=CHOICE) for s in self.levels])
        answers = choose.max(axis=2) >= float(self.p0) * n
        level = np.where(answers.any(axis=0), answers.argmax(axis=0), -1)
        counts = np.zeros((len(level), self.nb_classes), dtype=np.int64)
        for k, sigma in enumerate(self.levels):
            rows = np.flatnonzero(level == k)
            if len(rows):
                counts[rows] = self.predict_counts(x[rows], n=n, indices=indices[rows], sigma=sigma)
        return counts

    def failure_bound(self, alpha: float | None = None) -> float:
        """The proven failure probability of a certificate under the configured ``alpha_split``."""
        return failure_bound(self.alpha if alpha is None else alpha, len(self._sigmas), self.alpha_split)

    # ----------------------------------------------------------------------------------------------------------
    # Gradients and training
    # ----------------------------------------------------------------------------------------------------------
    def smoothed_log_proba(self, x: "torch.Tensor", training_mode: bool = False) -> "torch.Tensor":
        """
        log of the mean over levels of G_sigma(x) = E[softmax f_sigma(x + delta)] (or of one level's G with
        ``gradient_level``), estimated from ``gradient_samples`` draws per level; differentiable in ``x``.
        """
        import torch

        levels = self.levels if self.gradient_level is None else (float(self.gradient_level),)
        probs = sum(
            self.expected_scores(x, GaussianNoise(sigma),
                                 lambda z, s=sigma: self.soft_scores(z, training_mode=training_mode, sigma=s))
            for sigma in levels
        ) / len(levels)
        return torch.log(probs.clamp_min(1e-20))

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


def _cascade_point_estimate(count, num_levels: int, num_inputs: int, n: int, p0: float):
    """The cascade's rule on estimated probabilities (no abstention): ``(classes, counts, level index)``."""
    from art_some.core.noise import PREDICTION

    positions = np.arange(num_inputs)
    per_level = [count(s, PREDICTION, positions, n) for s in range(num_levels)] if num_inputs else []
    if not per_level:
        return np.zeros(0, dtype=np.int64), np.zeros((0, 0), dtype=np.int64), np.zeros(0, dtype=np.int64)
    stacked = np.stack(per_level)  # (K, N, C)
    answers = stacked.max(axis=2) >= p0 * n
    level = np.where(answers.any(axis=0), answers.argmax(axis=0), num_levels - 1)
    counts = stacked[level, positions]
    return counts.argmax(axis=1).astype(np.int64), counts, level.astype(np.int64)


def _check_sigmas(sigmas) -> tuple[float, ...]:
    values = [sigmas] if np.ndim(sigmas) == 0 else list(np.asarray(sigmas, dtype=np.float64).ravel())
    if not values or any(not np.isfinite(s) or s <= 0 for s in values):
        raise ValueError(f"sigmas must be one or more finite numbers > 0, got {sigmas!r}")
    if len(set(values)) != len(values):
        raise ValueError(f"sigmas must be distinct, got {sigmas!r}")
    return tuple(sorted(float(s) for s in values))
