"""
SmoothedClassifier: Cohen et al.'s Gaussian randomized smoothing as a drop-in ART estimator, on the shared
streaming engine of :mod:`art_some.core`.

| Paper link: https://arxiv.org/abs/1902.02918
"""
from __future__ import annotations

import logging
import warnings
from typing import TYPE_CHECKING

import numpy as np
from art.config import ART_NUMPY_DTYPE
from art.estimators.certification.randomized_smoothing.pytorch import PyTorchRandomizedSmoothing

from art_some.core.cascade import (
    CascadeRule,
    Level,
    cascade_certify,
    cascade_point_estimate,
    cascade_predict,
    hybrid_predict,
)
from art_some.core.certify import (
    ABSTAIN,
    CertifyResult,
    check_finite_inputs,
)
from art_some.core.certify import certify as certify_votes
from art_some.core.errors import name_indices, user_stacklevel, warn_unsound
from art_some.core.noise import (
    PREDICTION,
    GaussianNoise,
    argmax_votes,
    check_indices,
    count_votes,
    expected_scores,
    non_finite_output_error,
    seed_for,
)
from art_some.core.rules import CertificateRule, CohenRule
from art_some.core.sequential import DEFAULT_GROWTH, DEFAULT_START, DEFAULT_TOLERANCE, sequential_certify
from art_some.core.streams import CHOICE, GRADIENT, level_stage
from art_some.core.validate import positive_int, probability

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

GRADIENT_STAGE = GRADIENT  # kept for callers of the old name


class SmoothedClassifier(PyTorchRandomizedSmoothing):
    """
    Gaussian randomized smoothing g(x) = argmax_c P(f(x + delta) = c), delta ~ N(0, scale^2 I), with a fast
    streaming CERTIFY/PREDICT and gradients of the smoothed soft classifier, so that ART's attacks attack g.

    A subclass of ART's :class:`PyTorchRandomizedSmoothing` with the same leading arguments. Differences that
    matter:

    - noise is added in raw input space, before ``preprocessing``, in ``fit``, ``predict`` and ``certify``
      alike (ART adds it after preprocessing in ``fit``, so it trains and certifies different sigmas);
    - ``certify`` streams noise batches on the device and only counts leave it (ART materialises n copies);
    - ``predict`` returns, per row, the vote counts out of ``sample_size`` draws (all zeros = abstain). The
      argmax and the abstain rows are exactly ART's one-hot convention (``output="onehot"`` gives that
      form); counts also give score-based attacks a signal and are not mistaken for probabilities by APGD;
    - ``loss_gradient``, ``compute_loss`` and ``class_gradient`` are Monte-Carlo (EOT) estimates over
      ``gradient_samples`` noise draws of the soft smoothed classifier G(x) = E[softmax f(x + delta)]
      (Salman et al. 2019): the loss is -log G_y(x), and ``class_gradient`` is the gradient of
      ``sample_size * G_c(x)``, the soft relaxation of the vote counts that ``predict`` returns;
    - ``predict`` and ``certify`` draw noise from generators seeded from ``(seed, stage, input index)``, so they
      are reproducible and ``predict`` uses common random numbers across calls (verify attacks with a fresh
      seed); gradients draw fresh noise on each call from one generator seeded from ``seed``, so a sequence of
      calls is reproducible and EOT averages over new draws at every attack step.

    | Paper link: https://arxiv.org/abs/1902.02918
    """

    # How the factory (create_estimator) passes one noise level: as ART's scale here, as one of sigmas in a cascade.
    sigma_parameter = "scale"

    estimator_params = PyTorchRandomizedSmoothing.estimator_params + [
        "noise_batch_size",
        "seed",
        "gradient_samples",
        "verbose",
        "precision",
        "channels_last",
        "compile",
    ]

    def __init__(
        self,
        model: "torch.nn.Module",
        loss: "torch.nn.modules.loss._Loss",
        input_shape: tuple[int, ...],
        nb_classes: int,
        optimizer: "torch.optim.Optimizer" | None = None,
        channels_first: bool = True,
        clip_values=None,
        preprocessing_defences=None,
        postprocessing_defences=None,
        preprocessing=(0.0, 1.0),
        device_type: str = "gpu",
        sample_size: int = 32,
        scale: float = 0.1,
        alpha: float = 0.001,
        noise_batch_size: int = 1000,
        seed: int = 0,
        gradient_samples: int | None = None,
        verbose: bool | None = None,
        precision: str = "fp32",
        channels_last: bool = False,
        compile: bool = False,
    ):
        """
        Create a smoothed classifier.

        :param model: PyTorch model returning logits; it is the base classifier f.
        :param loss: Loss used by ``fit`` (with integer class targets), e.g. ``torch.nn.CrossEntropyLoss()``.
        :param input_shape: Shape of one input.
        :param nb_classes: Number of classes.
        :param optimizer: Optimizer for ``fit`` and the trainers.
        :param channels_first: Whether inputs are channels first.
        :param clip_values: ``(min, max)`` of valid inputs; read by attacks, never applied to noisy inputs.
        :param preprocessing_defences: ART preprocessing defences (applied after the noise).
        :param postprocessing_defences: ART postprocessing defences applied to base predictions before voting.
        :param preprocessing: ``(subtrahend, divisor)`` standardisation applied after the noise.
        :param device_type: ``"gpu"`` (CUDA if available) or ``"cpu"``.
        :param sample_size: n for ``predict`` and n0 (selection draws) for ``certify``.
        :param scale: sigma, the standard deviation of the Gaussian noise (> 0).
        :param alpha: Failure probability of ``predict`` and ``certify``, in (0, 1).
        :param noise_batch_size: Noisy inputs per forward pass (the engine's batch size).
        :param seed: Base seed of every noise stream.
        :param gradient_samples: Noise draws per input for EOT gradients and losses (default: ``sample_size``).
        :param verbose: Progress bars for ``certify`` (True, False, or None: when standard error is a terminal); a
                        bar appears once a call has run for a second. ``predict`` stays quiet (attacks call it often).
        :param precision: The vote function's arithmetic: ``"fp32"`` (default), or autocast to ``"bf16"`` or
                          ``"fp16"`` for speed. Noise stays float32. A certificate holds for the classifier as it is
                          evaluated, so records say which precision voted; a non-finite half-precision logit is
                          refused like any other.
        :param channels_last: Run the vote function's model in channels-last memory format (4-D inputs).
        :param compile: Run the vote function's network through :func:`torch.compile` (the forward passes under
                        inference mode: votes and predictions; gradients and training stay eager). The first call
                        compiles (seconds to minutes); votes are those of the same network.
        """
        _check_smoothing_params(sample_size, scale, alpha, noise_batch_size, seed, gradient_samples, verbose)
        if isinstance(nb_classes, bool) or int(nb_classes) != nb_classes or int(nb_classes) < 2:
            raise ValueError(f"nb_classes must be an integer >= 2, got {nb_classes!r}")
        _check_model_dtype(model)
        super().__init__(
            model=model,
            loss=loss,
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
            scale=scale,
            alpha=alpha,
        )
        self.noise_batch_size = int(noise_batch_size)
        self.seed = int(seed)
        self.gradient_samples = None if gradient_samples is None else int(gradient_samples)
        self.verbose = verbose
        self.precision, self.channels_last, self.compile = precision, channels_last, compile
        _check_speed_options(precision, channels_last, compile)
        self._compiled = {}
        if self.channels_last:
            self._model.to(memory_format=_channels_last())
        self._gradient_generator = None

    def clone_for_refitting(self) -> "SmoothedClassifier":
        """
        A copy with the same settings and architecture, a fresh optimizer of the same kind and reset weights (ART's
        contract), for every estimator: the arguments a subclass adds to the constructor (a patch layout, a
        denoiser, a sigma rule) are passed to it, the others set afterwards. A denoiser is shared, not copied: it is
        a fixed part of the base classifier, not what is refit.
        """
        import copy
        import inspect

        if self._optimizer is None:
            raise ValueError("clone_for_refitting needs an optimizer to refit the model, but none was given")
        model = copy.deepcopy(self.model)
        optimizer = type(self._optimizer)(model.parameters(), **self._optimizer.defaults)
        params = {k: v for k, v in self.get_params().items() if k not in ("model", "optimizer")}
        own = set(inspect.signature(type(self).__init__).parameters) - set(
            inspect.signature(SmoothedClassifier.__init__).parameters)
        clone = type(self)(model, self._loss, self.input_shape, self.nb_classes, optimizer=optimizer,
                           device_type="cpu" if self._device.type == "cpu" else "gpu",
                           **{k: params.pop(k) for k in list(params) if k in own})
        clone.reset()
        clone.set_params(**params)
        return clone

    def set_params(self, **kwargs) -> None:
        """
        Set estimator parameters (ART's API) and check them: an invalid value (e.g. ``alpha`` outside (0, 1), which
        would void the guarantee) raises and leaves every parameter as it was.
        """
        backup = {key: getattr(self, key) for key in kwargs if key in self.estimator_params and hasattr(self, key)}
        try:
            super().set_params(**kwargs)
            _check_smoothing_params(self.sample_size, self.scale, self.alpha, self.noise_batch_size, self.seed,
                                    self.gradient_samples, self.verbose)
            _check_speed_options(self.precision, self.channels_last, self.compile)
            _check_model_dtype(self._model)
        except Exception:
            for key, value in backup.items():
                try:
                    super().set_params(**{key: value})
                except Exception:  # the backup itself may not pass a subclass's combined checks mid-restore
                    setattr(self, key, value)
            raise

    # ----------------------------------------------------------------------------------------------------------
    # The three parts every method supplies: noise model, vote function, certificate rule.
    # ----------------------------------------------------------------------------------------------------------
    @property
    def noise_model(self) -> GaussianNoise:
        """The noise model: isotropic Gaussian with sigma = ``scale`` in raw input space."""
        return GaussianNoise(self.scale)

    def noise_for(self, x: "torch.Tensor", indices: np.ndarray | None = None):
        """
        The noise model for the raw inputs ``x`` (with global ``indices``): :attr:`noise_model` for every input
        here; data-dependent smoothing returns one sigma per input.
        """
        return self.noise_model

    def smoothing_levels(self) -> tuple[Level, ...] | None:
        """
        Cascades only: the smoothing levels, largest sigma first (:class:`~art_some.core.cascade.Level`: sigma,
        vote function, soft scores), certified by a :class:`~art_some.core.cascade.CascadeRule`. None here: one
        smoothed classifier, with its noise from :meth:`noise_for` and its votes from :meth:`vote`.
        """
        return None

    @property
    def certificate_rule(self) -> CertificateRule:
        """The certificate rule: Cohen et al.'s Clopper-Pearson bound and radius sigma * Phi^-1(pA_lower)."""
        return CohenRule()

    def logits(self, x: "torch.Tensor", training_mode: bool = False) -> "torch.Tensor":
        """
        The base classifier's logits on raw inputs ``x`` (a tensor on the estimator's device): preprocessing,
        then the model. Differentiable when called outside ``inference_mode``.
        """
        out = self.network(self._model)(self.preprocess(x, training_mode))[-1]
        if out.dim() != 2 or out.shape[1] != self.nb_classes:
            raise ValueError(f"the model returns outputs of shape {tuple(out.shape)} but nb_classes is "
                             f"{self.nb_classes}: give nb_classes={out.shape[-1]} or a model with {self.nb_classes} "
                             "outputs")
        return out

    def network(self, module: "torch.nn.Module") -> "torch.nn.Module":
        """
        ``module`` as the vote runs it: compiled by :func:`torch.compile` once, when ``compile`` is on and the call
        is under inference mode (the engine's forward passes); the eager module otherwise (gradients, training).
        """
        import torch

        if not self.compile or not torch.is_inference_mode_enabled():
            return module
        compiled = getattr(self, "_compiled", None)
        if compiled is None:
            compiled = self._compiled = {}
        if id(module) not in compiled:  # the module is kept beside its compiled form, so its id stays its own
            compiled[id(module)] = (module, torch.compile(module))
        return compiled[id(module)][1]

    def preprocess(self, x: "torch.Tensor", training_mode: bool = False) -> "torch.Tensor":
        """
        The estimator's preprocessing (defences, then standardisation) applied to raw inputs ``x`` on the
        device, with the model put in the requested mode; differentiable for torch-native preprocessing.
        """
        import torch

        self._model.train(mode=training_mode)
        if self.all_framework_preprocessing:
            x_pre, _ = self._apply_preprocessing(x, y=None, fit=training_mode, no_grad=not torch.is_grad_enabled())
            return x_pre
        if torch.is_grad_enabled() and x.requires_grad:
            raise ValueError(
                "gradients of the smoothed classifier need torch-native preprocessing; the configured "
                "preprocessing_defences are numpy-only"
            )
        x_np, _ = self._apply_preprocessing(x.detach().cpu().numpy(), y=None, fit=training_mode)
        return torch.from_numpy(np.asarray(x_np, dtype=np.float32)).to(self._device)

    def to_noise_space(self, x: "torch.Tensor") -> "torch.Tensor":
        """
        The clean inputs as the noise model sees them (identity here; patch smoothing resizes and crops first).
        Linear and differentiable; certificates hold in this space unless the rule converts them back.
        """
        return x

    def soft_scores(self, z: "torch.Tensor", training_mode: bool = False) -> "torch.Tensor":
        """Class probabilities of the base classifier on noisy inputs ``z`` (softmax of the logits); differentiable."""
        import torch

        return torch.softmax(self.logits(z, training_mode=training_mode).float(), dim=1)

    @property
    def radii_in_input_space(self) -> bool:
        """Whether certified radii are L2 distances between raw inputs (what attacks measure); True here."""
        return True

    def certificate_info(self) -> dict:
        """What each certificate record should say beyond the counts and radius (nothing for plain smoothing)."""
        return {}

    def vote(self, z: "torch.Tensor") -> "torch.Tensor":
        """
        The vote function: the base classifier's class index for each noisy input in ``z``, or
        :data:`~art_some.core.noise.INVALID` where its logits (or postprocessed scores) are not finite.
        """
        import torch

        out = self.logits(z)
        if self.postprocessing_defences:
            post = self._apply_postprocessing(preds=out.float().cpu().numpy(), fit=False)
            post = torch.from_numpy(np.asarray(post, dtype=np.float32)).to(z.device)
            return argmax_votes(torch.where(torch.isfinite(out), post, torch.full_like(post, float("nan"))))
        return argmax_votes(out)

    def voting(self, vote_fn):
        """
        ``vote_fn`` as the engine runs it: under autocast for ``precision`` bf16/fp16 and on channels-last inputs
        when asked. The noise the engine adds stays float32.
        """
        import torch

        if self.precision == "fp32" and not self.channels_last:
            return vote_fn
        fn = vote_fn
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)

        def run(z):
            if self.channels_last and z.dim() == 4:
                z = z.contiguous(memory_format=torch.channels_last)
            if dtype is None:
                return fn(z)
            with torch.autocast(device_type=self._device.type, dtype=dtype):
                return fn(z)

        return run

    # ----------------------------------------------------------------------------------------------------------
    # PREDICT and CERTIFY
    # ----------------------------------------------------------------------------------------------------------
    def _as_input_tensor(self, x) -> "torch.Tensor":
        import torch

        raw_dtype = x.dtype if isinstance(x, (np.ndarray, torch.Tensor)) else None
        if isinstance(x, torch.Tensor):
            if x.dtype.is_complex or x.dtype == torch.bool:  # as for arrays: no silent cast
                raise ValueError(f"x must hold real numbers, got dtype {x.dtype}")
            x_t = x
        else:
            try:
                raw = np.asarray(x) if not isinstance(x, np.ndarray) else x
            except ValueError:  # a ragged nested list
                raise ValueError(f"x must be a numeric array of shape (N, {', '.join(map(str, self.input_shape))})"
                                 ) from None
            if raw.dtype.kind not in "fiu":  # complex, bool, strings, objects: no silent cast to float32
                raise ValueError(f"x must be a real-valued numeric array of shape (N, "
                                 f"{', '.join(map(str, self.input_shape))}), got dtype {raw.dtype}")
            x_t = torch.as_tensor(raw.astype(ART_NUMPY_DTYPE, copy=False))
        if tuple(x_t.shape[1:]) != tuple(self.input_shape):
            raise ValueError(f"x must have shape (N, {', '.join(map(str, self.input_shape))}), got {tuple(x_t.shape)}")
        x_t = x_t.to(self._device, dtype=torch.float32)
        self._warn_out_of_range(x_t, raw_dtype)
        return x_t

    def _warn_out_of_range(self, x_t: "torch.Tensor", raw_dtype) -> None:
        """Warn when inputs look like another scale than ``clip_values`` (uint8 0-255 images for a [0, 1] model)."""
        import torch

        if self.clip_values is None or x_t.numel() == 0:
            return
        lo, hi = float(np.min(self.clip_values[0])), float(np.max(self.clip_values[1]))
        finite = x_t[torch.isfinite(x_t)]
        if finite.numel() == 0:
            return
        width = hi - lo
        far = bool(finite.min() < lo - width) or bool(finite.max() > hi + width)
        if far or (str(raw_dtype) in ("uint8", "torch.uint8") and hi <= 1.0):
            warnings.warn(
                f"x holds values in [{float(finite.min()):g}, {float(finite.max()):g}]{' (uint8)' if not far else ''}"
                f", far outside clip_values ({lo:g}, {hi:g}): certificates are for the inputs as given; scale them "
                f"first (e.g. x / 255 for 8-bit images)", UserWarning, stacklevel=user_stacklevel())

    def predict_counts(
        self, x, n: int | None = None, batch_size: int | None = None, indices=None, squares: bool = False,
        invalid: np.ndarray | None = None, level: int = 0, stage: int = PREDICTION,
    ):
        """
        Vote counts ``(N, nb_classes)`` of the base classifier over ``n`` noisy draws per input (default
        ``sample_size``), from the PREDICT stream (``stage``); with ``squares`` also the sums of squared tallies.
        For a cascade, the counts of level ``level`` (0 = the largest sigma) from that level's streams.

        An input holding NaN or inf, or on whose noisy copies the base classifier's output is not finite, raises
        :class:`~art_some.core.errors.NonFiniteError` naming it, unless ``invalid`` (a boolean array of length N)
        is given: then such inputs are marked there and their count rows are zero.
        """
        import torch

        n = positive_int("n", self.sample_size if n is None else n)
        x_t = self._as_input_tensor(x)
        indices = check_indices(indices, len(x_t))
        rows = self._finite_rows(x_t, indices, invalid)
        with torch.inference_mode():
            z0 = self.to_noise_space(x_t[rows])
        sub = None if invalid is None else np.zeros(len(rows), dtype=bool)
        levels = self.smoothing_levels()
        if levels is None:
            vote, noise = self.vote, self.noise_for(x_t[rows], indices[rows])
        else:
            vote, noise = levels[level].vote, GaussianNoise(levels[level].sigma)
        out = count_votes(
            self.voting(vote), z0, n, noise, num_classes=self.nb_classes, batch_size=self._batch_size(batch_size),
            seed=self.seed,
            stage=level_stage(stage, level), indices=indices[rows], squares=squares, invalid=sub,
        )
        if sub is not None:
            invalid[rows] |= sub
        return tuple(_scatter(part, rows, len(x_t)) for part in out) if squares else _scatter(out, rows, len(x_t))

    def _finite_rows(self, x_t: "torch.Tensor", indices: np.ndarray, invalid: np.ndarray | None) -> np.ndarray:
        """Positions of the inputs that hold no NaN or inf; the others raise, or are marked in ``invalid``."""
        import torch

        finite = torch.isfinite(x_t.flatten(1)).all(dim=1).cpu().numpy()
        if invalid is None:
            check_finite_inputs(x_t, indices)
        else:
            invalid |= ~finite
        return np.flatnonzero(finite)

    def _batch_size(self, batch_size) -> int:
        """``batch_size`` or the default ``noise_batch_size`` (0 is an error, not the default)."""
        return self.noise_batch_size if batch_size is None else batch_size

    def predict_classes(self, x, indices=None, invalid: np.ndarray | None = None, abstain: bool = True):
        """
        PREDICT's decisions (-1 = abstain) by the certificate rule, ``sample_size`` draws per input, and the scores
        behind them (the vote counts for Cohen's rule). With ``abstain=False`` the smoothed classifier's top class
        (the argmax of the counts), never -1. ``invalid`` as in :meth:`predict_counts` (marked inputs get -1 and
        zero scores).
        """
        rule = self.certificate_rule
        if isinstance(rule, CascadeRule):
            classes, scores, _ = self._cascade_predict(rule, x, indices, invalid, abstain)
            return classes, scores
        if rule.needs_squares:
            counts, squares = self.predict_counts(x, indices=indices, invalid=invalid, squares=True)
        else:
            counts, squares = self.predict_counts(x, indices=indices, invalid=invalid), None
        classes = counts.argmax(axis=1)
        if abstain:
            drawn = np.flatnonzero(counts.sum(axis=1) > 0)  # inputs marked invalid have no votes
            classes = np.full(len(counts), ABSTAIN, dtype=np.int64)
            classes[drawn] = rule.predict(counts[drawn], self.alpha, None if squares is None else squares[drawn])
        return _unmark(classes.astype(np.int64), invalid), rule.scores(counts)

    def predict(  # type: ignore[override]
        self, x: np.ndarray, batch_size: int = 128, verbose: bool = False, **kwargs
    ) -> np.ndarray:
        """
        Cohen et al.'s PREDICT with ``sample_size`` draws per input: the top class if a two-sided binomial test
        of the top two vote counts rejects a tie at level ``alpha``, otherwise abstain.

        Guarantee: a returned class differs from the smoothed classifier's prediction with probability at
        most ``alpha``. An input holding NaN or inf, or on which the base classifier's output is not finite, gets a
        row of NaN (no vote is counted for it; ART's attacks reject such candidates, as for a plain classifier),
        with a warning.

        :param x: Inputs ``(N, *input_shape)``.
        :param batch_size: Kept for ART compatibility; noisy batches use ``noise_batch_size``.
        :param verbose: Unused; kept for ART compatibility.
        :param is_abstain: If False, never abstain (rows always hold the votes); default ``predict_abstains``.
        :param output: ``"counts"`` (default): each row holds the vote counts, all zeros where it abstains;
                       ``"onehot"``: ART's exact form, a one-hot row of the predicted class or all zeros.
        :return: float32 array ``(N, nb_classes)``.
        """
        is_abstain = kwargs.get("is_abstain", self.predict_abstains)
        output = kwargs.get("output", "counts")
        if output not in ("counts", "onehot"):
            raise ValueError(f"output must be 'counts' or 'onehot', got {output!r}")
        x_t = self._as_input_tensor(x)
        invalid = np.zeros(len(x_t), dtype=bool)
        classes, counts = self.predict_classes(x_t, invalid=invalid, abstain=bool(is_abstain))
        if output == "onehot":
            scores = np.zeros(counts.shape, dtype=ART_NUMPY_DTYPE)
            keep = classes >= 0
            scores[np.flatnonzero(keep), classes[keep]] = 1.0
        else:
            scores = np.where((classes >= 0)[:, None], counts, 0).astype(ART_NUMPY_DTYPE)
        if invalid.any():
            scores[invalid] = np.nan
            warnings.warn(
                f"predict: {int(invalid.sum())} of {len(invalid)} inputs (positions "
                f"{name_indices(np.flatnonzero(invalid))}) hold NaN or inf, or give non-finite logits; their rows are "
                "NaN (no votes counted)",
                RuntimeWarning, stacklevel=user_stacklevel())
        n_abstain = int(np.sum((classes < 0) & ~invalid))
        if n_abstain:
            logger.info("%d of %d predictions abstained", n_abstain, len(classes))
        return scores

    def certify_detailed(
        self,
        x,
        n: int,
        n0: int | None = None,
        alpha: float | None = None,
        batch_size: int | None = None,
        indices=None,
    ) -> CertifyResult:
        """
        CERTIFY with the full per-input outcome: class, radius, pA_lower, the selection and estimation counts,
        n0, n, alpha, sigma and seconds.

        Guarantee: for each input, the probability that the returned class is not the smoothed classifier's
        prediction everywhere within the returned L2 radius is at most ``alpha``.

        :param x: Inputs ``(N, *input_shape)`` in raw input space.
        :param n: Estimation draws.
        :param n0: Selection draws (default ``sample_size``).
        :param alpha: Failure probability (default the estimator's ``alpha``).
        :param batch_size: Noisy inputs per forward pass (default ``noise_batch_size``).
        :param indices: Global indices that key each input's noise (default ``0..N-1``).
        :return: a :class:`~art_some.core.certify.CertifyResult`.
        """
        return self._certify_with(self.certificate_rule, x, n, n0=n0, alpha=alpha, batch_size=batch_size,
                                  indices=indices)

    def certify_sequential(
        self,
        x,
        n: int,
        n0: int | None = None,
        alpha: float | None = None,
        batch_size: int | None = None,
        indices=None,
        radii=None,
        tolerance: float = DEFAULT_TOLERANCE,
        start: int = DEFAULT_START,
        growth: float = DEFAULT_GROWTH,
    ) -> CertifyResult:
        """
        Sequential CERTIFY (:mod:`art_some.core.sequential`): estimation draws in geometric rounds up to ``n``,
        Clopper-Pearson bounds with alpha spent evenly over the rounds, and each input stopped once decided: early
        abstention, every radius of ``radii`` decided (fixed-radius mode), or (radius mode) when the rest of the draws
        could add at most ``tolerance`` of the radius reachable at n.

        Guarantee: for each input, the probability that any claim about it is wrong (the class within the returned
        radius, or "certified at r" for any r of ``radii``) is at most ``alpha``, over all rounds and radii together.

        :param x: Inputs ``(N, *input_shape)`` in raw input space.
        :param n: The most estimation draws per input (the last round's total).
        :param n0: Selection draws (default ``sample_size``), independent of the estimation draws.
        :param alpha: Failure probability per input (default the estimator's ``alpha``).
        :param batch_size: Noisy inputs per forward pass (default ``noise_batch_size``).
        :param indices: Global indices that key each input's noise (default ``0..N-1``).
        :param radii: Fixed-radius mode: the radii to decide; None for radius mode.
        :param tolerance: Radius mode's stopping tolerance, a fraction in [0, 1).
        :param start: Estimation draws of the first round.
        :param growth: Growth factor of the cumulative draws per round.
        :return: a :class:`~art_some.core.certify.CertifyResult` with ``draws`` and ``stopped_by`` per input (and
                 ``radii``, ``certified_at`` in fixed-radius mode).
        """
        options = dict(radii=radii, tolerance=tolerance, start=start, growth=growth)
        return self._certify_with(self.certificate_rule, x, n, n0=n0, alpha=alpha, batch_size=batch_size,
                                  indices=indices, sequential=options)

    def certify_at(self, x, radii, n: int, n0: int | None = None, alpha: float | None = None,
                   batch_size: int | None = None, indices=None, start: int = DEFAULT_START,
                   growth: float = DEFAULT_GROWTH) -> np.ndarray:
        """
        Is each input certified at each radius of ``radii``? Sequential CERTIFY in fixed-radius mode: every input
        draws (in rounds, up to ``n``) until each radius is decided.

        Guarantee: for each input, the probability that any of its "certified" answers is wrong (the smoothed
        classifier's prediction is not constant within that radius) is at most ``alpha``, over all radii and rounds
        together. A False is no claim: the radius was not certified with at most n draws.

        :param x: Inputs ``(N, *input_shape)`` in raw input space.
        :param radii: L2 radii (>= 0).
        :param n: The most estimation draws per input.
        :return: bool array ``(N, len(radii))``; :meth:`certify_sequential` with ``radii`` gives the full outcome.
        """
        result = self.certify_sequential(x, n, n0=n0, alpha=alpha, batch_size=batch_size, indices=indices,
                                         radii=radii, start=start, growth=growth)
        return result.certified_at

    def _certify_with(self, rule: CertificateRule, x, n: int, n0=None, alpha=None, batch_size=None, indices=None,
                      sequential: dict | None = None):
        """
        CERTIFY with the parts of this estimator and ``rule`` (sequential CERTIFY with the options ``sequential``);
        warns on every use of an unsound rule.
        """
        import torch

        if not rule.sound:
            warn_unsound(rule.warning or f"{type(rule).__name__} is not a sound certificate")
        x_t = self._as_input_tensor(x)
        indices = check_indices(indices, len(x_t))
        check_finite_inputs(x_t, indices)  # before the noise-space map, which may spread a NaN to other inputs
        if isinstance(rule, CascadeRule):
            if sequential is not None:
                raise ValueError("sequential certification is not available for cascades yet (a cascade's levels "
                                 "would need their own confidence sequences); use fixed-n certify")
            return self._cascade_certify(rule, x_t, n, n0, alpha, batch_size, indices)
        noise = self.noise_for(x_t, indices)
        with torch.inference_mode():
            z0 = self.to_noise_space(x_t)
        procedure, options = (certify_votes, {}) if sequential is None else (sequential_certify, sequential)
        result = procedure(
            self.voting(self.vote),
            noise,
            z0,
            n0=self.sample_size if n0 is None else n0,
            n=n,
            alpha=self.alpha if alpha is None else alpha,
            num_classes=self.nb_classes,
            batch_size=self._batch_size(batch_size),
            seed=self.seed,
            indices=indices,
            rule=rule,
            verbose=self.verbose,
            **options,
        )
        if np.ndim(noise.sigma):  # a sigma per input: every record says its own
            result.extra["sigma"] = np.asarray(noise.sigma)
        result.extra.update(self.certificate_info(), precision=self.precision)  # the certificate is of this vote
        return result

    # ----------------------------------------------------------------------------------------------------------
    # Cascades: the same engine calls, level by level (art_some.core.cascade owns the control flow and statistics)
    # ----------------------------------------------------------------------------------------------------------
    def _level_counter(self, z0: "torch.Tensor", indices: np.ndarray, batch_size=None, invalid=None, verbose=False):
        """
        The engine's count function for level s of :meth:`smoothing_levels`, on the level's own streams. With
        ``invalid`` (length N), inputs with non-finite outputs are marked there (zero counts) instead of raising.
        """
        import torch

        levels = self.smoothing_levels()

        def count(level: int, stage: int, positions: np.ndarray, num: int) -> np.ndarray:
            marks = None if invalid is None else np.zeros(len(positions), dtype=bool)
            counts = count_votes(
                self.voting(levels[level].vote), z0[torch.as_tensor(positions, device=z0.device)], num,
                GaussianNoise(levels[level].sigma), num_classes=self.nb_classes,
                batch_size=self._batch_size(batch_size), seed=self.seed, stage=level_stage(stage, level),
                indices=indices[positions], invalid=marks, verbose=verbose, desc=f"sigma {levels[level].sigma:g}",
            )
            if marks is not None:
                invalid[positions] |= marks
            return counts

        return count

    def _cascade_certify(self, rule: CascadeRule, x_t, n, n0, alpha, batch_size, indices) -> CertifyResult:
        import torch

        n0 = positive_int("n0", self.sample_size if n0 is None else n0)
        n = positive_int("n", n)
        with torch.inference_mode():
            z0 = self.to_noise_space(x_t)
        levels = self.smoothing_levels()
        result = cascade_certify(
            self._level_counter(z0, indices, batch_size, verbose=self.verbose), [lv.sigma for lv in levels],
            len(z0), n0=n0, n=n, alpha=self.alpha if alpha is None else alpha, p0=float(rule.p0),
            alpha_split=rule.alpha_split, num_classes=self.nb_classes,
        )
        result.extra.update(self.certificate_info(), precision=self.precision)
        return result

    def _cascade_predict(self, rule: CascadeRule, x, indices=None, invalid=None, abstain: bool = True):
        """
        A cascade's PREDICT: ``(classes, scores, answering level)`` by ``rule.predict_rule``; with ``abstain=False``
        and the cascade rule, its point estimate (see :func:`~art_some.core.cascade.cascade_point_estimate`).
        Inputs holding NaN or inf, or with non-finite outputs, raise, or are marked in ``invalid`` (class -1, zero
        scores, level -1).
        """
        import torch

        x_t = self._as_input_tensor(x)
        indices = check_indices(indices, len(x_t))
        marks = np.zeros(len(x_t), dtype=bool)
        rows = self._finite_rows(x_t, indices, marks if invalid is not None else None)
        with torch.inference_mode():
            z0 = self.to_noise_space(x_t[rows])
        sub = None if invalid is None else np.zeros(len(rows), dtype=bool)
        count = self._level_counter(z0, indices[rows], None, sub)
        sigmas = [lv.sigma for lv in self.smoothing_levels()]
        if rule.predict_rule == "cascade" and abstain:
            classes, scores, level = cascade_predict(count, sigmas, len(rows), n=self.sample_size, alpha=self.alpha,
                                                     p0=float(rule.p0), alpha_split=rule.alpha_split,
                                                     num_classes=self.nb_classes)
        elif rule.predict_rule == "cascade":
            classes, scores, level = cascade_point_estimate(count, len(sigmas), len(rows), n=self.sample_size,
                                                            p0=float(rule.p0), num_classes=self.nb_classes)
        else:
            clean = self._clean_logits(z0)
            bad = ~np.isfinite(clean).all(axis=1)
            if bad.any():
                if invalid is None:
                    raise non_finite_output_error(indices[rows][bad])
                marks[rows[bad]] = True
                clean[bad] = 0.0
            with np.errstate(divide="ignore"):
                classes, logits, level = hybrid_predict(count, sigmas, clean, n=self.sample_size, p0=float(rule.p0),
                                                        weight=float(rule.hybrid_weight))
            shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
            scores = self.sample_size * shifted / shifted.sum(axis=1, keepdims=True)
        classes, level, scores = (_scatter(a, rows, len(x_t)) for a in (classes, level, scores))
        if sub is not None:
            marks[rows] |= sub
        if invalid is not None:
            invalid |= marks
            classes, level = np.where(marks, ABSTAIN, classes), np.where(marks, -1, level)
            scores[marks] = 0
        return classes, scores, level

    def _clean_logits(self, z0: "torch.Tensor") -> np.ndarray:
        """The base model's logits on the clean inputs, in chunks (N full-size images may not fit at once)."""
        import torch

        with torch.inference_mode():
            chunks = [self.logits(z0[i : i + self.noise_batch_size]).float().cpu().numpy()
                      for i in range(0, len(z0), self.noise_batch_size)]
        return np.concatenate(chunks) if chunks else np.zeros((0, self.nb_classes))

    def audit_counts(self, x, n: int, indices=None) -> np.ndarray:
        """
        What the attack audit compares with a certified class: ``n`` fresh votes at ``x`` (PREDICT's streams under
        ``indices``). For a cascade, the votes of the level it answers at: the level is chosen on separate draws
        (each level's CHOICE stage) as the first, from the largest sigma, whose top class has a vote share of at
        least p0 (a point estimate of the cascade's rule); no such level is an abstention (all-zero counts, which
        confirm no flip).
        """
        rule, levels = self.certificate_rule, self.smoothing_levels()
        if levels is None:
            return self.predict_counts(x, n=n, indices=indices)
        indices = check_indices(indices, len(x))
        choose = np.stack([self.predict_counts(x, n=n, indices=indices, level=k, stage=CHOICE)
                           for k in range(len(levels))])
        answers = choose.max(axis=2) >= float(rule.p0) * n
        level = np.where(answers.any(axis=0), answers.argmax(axis=0), -1)
        counts = np.zeros((len(level), self.nb_classes), dtype=np.int64)
        for k in range(len(levels)):
            rows = np.flatnonzero(level == k)
            if len(rows):
                counts[rows] = self.predict_counts(x[rows], n=n, indices=indices[rows], level=k)
        return counts

    def certify(  # type: ignore[override]
        self, x: np.ndarray, n: int, batch_size: int | None = None, **kwargs
    ) -> tuple[np.ndarray, np.ndarray]:
        """
        Cohen et al.'s CERTIFY in ART's form: ``sample_size`` selection draws, ``n`` estimation draws.

        :param x: Inputs ``(N, *input_shape)``.
        :param n: Estimation draws per input.
        :param batch_size: Noisy inputs per forward pass (default ``noise_batch_size``; ART's default of 32 would
                           only slow the stream down, the results do not depend on it).
        :param kwargs: ``n0``, ``alpha`` and ``indices`` as in :meth:`certify_detailed`.
        :return: ``(prediction, radius)``: int array with -1 for abstain, float array with 0.0 for abstain.
        """
        result = self.certify_detailed(x, n, batch_size=batch_size, **kwargs)
        return result.predict, result.radius

    # ----------------------------------------------------------------------------------------------------------
    # Gradients of the soft smoothed classifier (EOT)
    # ----------------------------------------------------------------------------------------------------------
    def reseed_gradients(self, stream: int = 0) -> None:
        """
        Restart the EOT gradient noise at stream ``stream`` (0 is where a new estimator starts): an attack run that
        begins with the same stream sees the same gradient noise, whatever ran before it.
        """
        self._gradient_stream = int(stream)
        self._gradient_generator = None

    _gradient_stream = 0
    # ``predict``'s default for ``is_abstain``. An abstaining row is all zeros, which ART's attacks read as class 0;
    # the attack audit runs attacks on a shallow copy with this off (evaluation.audit.attack_view), so that they see
    # the smoothed classifier's top class while the caller's estimator stays as it was.
    predict_abstains = True

    def _gradient_noise(self, shape, device) -> "torch.Tensor":
        import torch

        key = (self.seed, str(torch.device(device)))
        if self._gradient_generator is None or self._gradient_generator[0] != key:
            # (Re)seeded whenever the seed or device changes, e.g. through set_params(seed=...).
            generator = torch.Generator(device=device)
            generator.manual_seed(seed_for(self.seed, GRADIENT, self._gradient_stream))
            self._gradient_generator = (key, generator)
        return torch.randn(shape, generator=self._gradient_generator[1], device=device)

    def expected_scores(self, x: "torch.Tensor", noise, scores_fn) -> "torch.Tensor":
        """
        E[scores_fn(x + delta)] with delta from ``noise``, from ``gradient_samples`` fresh draws per input of the
        GRADIENT stream (in noise space; :func:`art_some.core.noise.expected_scores`); differentiable in ``x``.
        """
        num = self.gradient_samples or self.sample_size
        return expected_scores(scores_fn, self.to_noise_space(x), noise, num=num, batch_size=self.noise_batch_size,
                               draw=lambda shape: self._gradient_noise(shape, x.device))

    def smoothed_log_proba(self, x: "torch.Tensor", training_mode: bool = False) -> "torch.Tensor":
        """
        log G(x), with G(x) = E[soft_scores(x + delta)] (softmax of f for plain smoothing) estimated from
        ``gradient_samples`` draws per input; differentiable with respect to ``x`` (a tensor on the estimator's
        device).
        """
        import torch

        levels = self.smoothing_levels()
        if levels is None:
            noise = self.noise_for(x.detach())
            probs = self.expected_scores(x, noise, lambda z: self.soft_scores(z, training_mode=training_mode))
        else:  # a cascade: the mean over its (gradient) levels of their soft smoothed classifiers
            used = [lv for lv in levels if lv.in_gradient]
            probs = sum(
                self.expected_scores(x, GaussianNoise(lv.sigma),
                                     lambda z, lv=lv: lv.soft_scores(z, training_mode=training_mode))
                for lv in used
            ) / len(used)
        return torch.log(probs.clamp_min(1e-20))

    def _to_torch(self, x) -> tuple["torch.Tensor", bool]:
        import torch

        is_tensor = isinstance(x, torch.Tensor)
        x_t = x.detach() if is_tensor else torch.from_numpy(np.asarray(x, dtype=ART_NUMPY_DTYPE))
        if tuple(x_t.shape[1:]) != tuple(self.input_shape):
            raise ValueError(f"x must have shape (N, {', '.join(map(str, self.input_shape))}), got {tuple(x_t.shape)}")
        return x_t.to(self._device, dtype=torch.float32).clone().requires_grad_(True), is_tensor

    def _labels(self, y, n: int) -> "torch.Tensor":
        import torch

        y = y.detach().cpu().numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
        if y.ndim == 2 and y.shape[1] == 1:  # a column of class indices, as ART accepts
            y = y[:, 0]
        elif y.ndim == 2:
            if y.shape[1] != self.nb_classes:
                raise ValueError(f"one-hot y must have {self.nb_classes} columns, got {y.shape[1]}")
            y = y.argmax(axis=1)
        if y.shape != (n,):
            raise ValueError(f"y must be {n} class indices or one-hot rows, got shape {y.shape}")
        return torch.as_tensor(check_labels(y, self.nb_classes), device=self._device)

    def compute_loss(self, x, y, reduction: str = "none", **kwargs):
        """
        The smoothed cross-entropy -log G_y(x) (EOT estimate).

        :param x: Inputs (numpy or torch).
        :param y: Labels, indices or one-hot.
        :param reduction: ``"none"``, ``"mean"`` or ``"sum"``.
        :return: Loss values, numpy or torch matching ``x``.
        """
        import torch

        if reduction not in ("none", "mean", "sum"):
            raise ValueError(f"reduction must be 'none', 'mean' or 'sum', got {reduction!r}")
        x_t, is_tensor = self._to_torch(x)
        with torch.no_grad():
            log_proba = self.smoothed_log_proba(x_t)
            loss = torch.nn.functional.nll_loss(log_proba, self._labels(y, len(x_t)), reduction=reduction)
        return loss if is_tensor else loss.cpu().numpy()

    def loss_gradient(self, x, y, training_mode: bool = False, **kwargs):  # type: ignore[override]
        """
        Gradient with respect to ``x`` of the smoothed cross-entropy -log G_y(x) (EOT over
        ``gradient_samples`` draws; summed over inputs, so each row is that input's own gradient).

        :param x: Inputs (numpy or torch).
        :param y: Labels, indices or one-hot.
        :param training_mode: Model in training mode while differentiating.
        :return: Gradients of the same shape and type as ``x``.
        """
        import torch

        x_t, is_tensor = self._to_torch(x)
        loss = torch.nn.functional.nll_loss(
            self.smoothed_log_proba(x_t, training_mode=training_mode), self._labels(y, len(x_t)), reduction="sum"
        )
        (grad,) = torch.autograd.grad(loss, x_t)
        return grad if is_tensor else grad.cpu().numpy()

    def class_gradient(self, x, label=None, training_mode: bool = False, **kwargs):  # type: ignore[override]
        """
        Gradient of ``sample_size * G_c(x)`` (the soft relaxation of the vote counts ``predict`` returns) with
        respect to ``x``, by EOT.

        :param x: Inputs (numpy or torch).
        :param label: None for all classes, an int for one class, or one class per input.
        :param training_mode: Model in training mode while differentiating.
        :return: ``(N, nb_classes, *input_shape)`` for ``label=None``, else ``(N, 1, *input_shape)``.
        """
        import torch

        x_t, is_tensor = self._to_torch(x)
        n = len(x_t)
        if label is None:
            classes = None
        elif isinstance(label, (int, np.integer)):
            if not 0 <= int(label) < self.nb_classes:
                raise ValueError(f"label must lie in 0..{self.nb_classes - 1}, got {label}")
            classes = torch.full((n,), int(label), device=self._device)
        else:
            label_arr = np.asarray(label).reshape(-1)
            if label_arr.shape != (n,) or label_arr.min() < 0 or label_arr.max() >= self.nb_classes:
                raise ValueError(f"label must hold one class in 0..{self.nb_classes - 1} per input")
            classes = torch.as_tensor(label_arr.astype(np.int64), device=self._device)
        scores = self.sample_size * self.smoothed_log_proba(x_t, training_mode=training_mode).exp()
        if classes is not None:
            (grad,) = torch.autograd.grad(scores.gather(1, classes[:, None]).sum(), x_t)
            grads = grad[:, None]
        else:
            grads = torch.stack(
                [torch.autograd.grad(scores[:, c].sum(), x_t, retain_graph=True)[0] for c in range(self.nb_classes)],
                dim=1,
            )
        return grads if is_tensor else grads.cpu().numpy()

    # ----------------------------------------------------------------------------------------------------------
    # Training
    # ----------------------------------------------------------------------------------------------------------
    def fit(  # type: ignore[override]
        self, x, y, batch_size: int = 128, nb_epochs: int = 10, **kwargs
    ) -> None:
        """
        Train the base classifier with Gaussian noise augmentation at sigma = ``scale`` in raw input space
        (Cohen et al.), through :class:`~art_some.trainers.GaussianAugmentationTrainer`.

        :param x: Training inputs (ART coerces them to numpy; for a torch ``DataLoader`` use the trainer).
        :param y: Labels, indices or one-hot.
        :param batch_size: Batch size.
        :param nb_epochs: Epochs.
        :param kwargs: ``scheduler``, ``verbose``, ``seed`` for the trainer.
        """
        from art_some.trainers.gaussian import GaussianAugmentationTrainer

        GaussianAugmentationTrainer(self, seed=kwargs.pop("seed", self.seed)).fit(
            x, y, batch_size=batch_size, nb_epochs=nb_epochs, **kwargs
        )


def _check_smoothing_params(sample_size, scale, alpha, noise_batch_size, seed, gradient_samples,
                            verbose=None) -> None:
    """The checks shared by the constructor and ``set_params``."""
    positive_int("sample_size", sample_size)
    positive_int("noise_batch_size", noise_batch_size)
    if gradient_samples is not None:
        positive_int("gradient_samples", gradient_samples)
    if isinstance(scale, (bool, np.bool_)) or np.ndim(scale) != 0 or not np.isfinite(scale) or not scale > 0:
        raise ValueError(f"scale (sigma) must be a finite number > 0, got {scale!r}")
    if isinstance(alpha, (bool, np.bool_)):
        raise ValueError(f"alpha must lie in (0, 1), got {alpha!r}")
    probability("alpha", alpha)
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    if verbose not in (None, True, False):
        raise ValueError(f"verbose must be True, False or None (bars on a terminal only), got {verbose!r}")


PRECISIONS = ("fp32", "bf16", "fp16")


def _check_speed_options(precision, channels_last, compile=False) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(map(repr, PRECISIONS))}, got {precision!r}")
    for name, value in (("channels_last", channels_last), ("compile", compile)):
        if not isinstance(value, (bool, np.bool_)):
            raise ValueError(f"{name} must be True or False, got {value!r}")


def _channels_last():
    import torch

    return torch.channels_last


def _check_model_dtype(model) -> None:
    """The engine feeds float32 inputs: a float64 or half-precision model would fail or silently change dtype."""
    import torch

    if not isinstance(model, torch.nn.Module):
        return
    dtypes = {p.dtype for p in model.parameters() if p.dtype.is_floating_point}
    if dtypes - {torch.float32}:
        found = ", ".join(sorted(str(d).replace("torch.", "") for d in dtypes))
        raise ValueError(f"model has {found} parameters; art-some runs the model on float32 inputs: pass "
                         "model.float() (mixed precision belongs in autocast, not in the weights)")


def check_labels(y, nb_classes: int) -> np.ndarray:
    """Class indices as int64, or a clear error for labels outside 0..nb_classes-1 or non-integral floats."""
    y = np.asarray(y)
    if y.dtype.kind == "b" or y.dtype.kind not in "iuf":
        raise ValueError(f"labels must be integer class indices, got dtype {y.dtype}")
    if y.dtype.kind == "f" and (not np.all(np.isfinite(y)) or np.any(np.mod(y, 1) != 0)):
        raise ValueError("labels must be integer class indices; got non-integral or non-finite floats")
    if len(y) and (y.min() < 0 or y.max() >= nb_classes):
        raise ValueError(f"labels must lie in 0..{nb_classes - 1}, got values in {int(y.min())}..{int(y.max())}")
    return y.astype(np.int64)


def _scatter(values: np.ndarray, rows: np.ndarray, n: int) -> np.ndarray:
    """``values`` for the inputs at ``rows``, placed in an (n, ...) array of zeros."""
    if len(rows) == n:
        return values
    out = np.zeros((n, *values.shape[1:]), dtype=values.dtype)
    out[rows] = values
    return out


def _unmark(classes: np.ndarray, invalid: np.ndarray | None) -> np.ndarray:
    """No class for an input marked invalid (-1, as an abstention; ``predict`` makes its row NaN)."""
    if invalid is not None and invalid.any():
        classes = np.where(invalid, ABSTAIN, classes)
    return classes
