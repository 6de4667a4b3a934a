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

from art_some.core.certify import ABSTAIN, CertifyResult, check_finite_inputs
from art_some.core.errors import name_indices, user_stacklevel, warn_unsound
from art_some.core.noise import PREDICTION, NoiseModel, argmax_votes, check_indices
from art_some.core.rules import CohenRule
from art_some.core.sequential import DEFAULT_BOUND, DEFAULT_GROWTH, DEFAULT_START, DEFAULT_TOLERANCE
from art_some.core.smoothing import Cascade, Smooth
from art_some.core.speed import check_speed_options, with_speed_options
from art_some.core.validate import positive_int, probability
from art_some.estimators.gradients import SmoothedGradientsMixin

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)


class SmoothedClassifier(SmoothedGradientsMixin, PyTorchRandomizedSmoothing):
    """
    Gaussian randomized smoothing g(x) = argmax_c P(f(x + delta) = c), delta ~ N(0, scale^2 I), with a fast
    streaming CERTIFY/PREDICT and gradients of the smoothed soft classifier, so that ART's attacks attack g.

    A subclass of ART's :class:`PyTorchRandomizedSmoothing` with the same leading arguments. Differences that
    matter:

    - noise is added in raw input space, before ``preprocessing``, in ``fit``, ``predict`` and ``certify``
      alike (ART adds it after preprocessing in ``fit``, so it trains and certifies different sigmas);
    - ``certify`` streams noise batches on the device and only counts leave it (ART materialises n copies);
    - ``predict`` returns ART's rows (one-hot of the smoothed prediction, all zeros = abstain), so code written for
      ``PyTorchRandomizedSmoothing`` works unchanged; ``output="counts"`` gives the vote counts out of
      ``sample_size`` draws instead (the same argmax and abstain rows), which give score-based attacks a signal;
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

    # ``predict``'s default for ``is_abstain``. An abstaining row is all zeros, which ART's attacks read as class 0;
    # the attack audit runs attacks on a shallow copy with this off (evaluation.audit.attack_view), so that they see
    # the smoothed classifier's top class while the caller's estimator stays as it was.
    predict_abstains = True
    # ``predict``'s default ``output``: ART's one-hot rows. The audit's attack view asks for the vote counts.
    predict_output = "onehot"

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
        "noise",
        "norm",
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
        noise: str = "gaussian",
        norm: str | None = None,
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
        :param noise: The noise family, a registered noise model (``"gaussian"``, ``"laplace"``, ``"uniform"``;
                      ``art-some plugins`` lists them), with standard deviation ``scale`` per coordinate; it is drawn
                      everywhere the estimator draws noise (certify, predict, gradients, its trainers).
        :param norm: The norm of the certified radii, one the family certifies (``"l2"``, ``"l1"``, ``"linf"``;
                     default the family's first: L2 for Gaussian, L1 for Laplace and uniform).
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
        check_speed_options(precision, channels_last, compile)
        self.noise, self.norm = noise, norm
        self.make_noise(self.scale)  # an unknown family or a norm it does not certify fails here, not at certify
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
            check_speed_options(self.precision, self.channels_last, self.compile)
            self.make_noise(self.scale)
            _check_model_dtype(self._model)
        except Exception:
            for key, value in backup.items():
                try:
                    super().set_params(**{key: value})
                except Exception:  # the backup itself may not pass a subclass's combined checks mid-restore
                    setattr(self, key, value)
            raise

    # ----------------------------------------------------------------------------------------------------------
    # The smoothed classifier this estimator certifies: a vote function, a noise model and a certificate rule.
    # ----------------------------------------------------------------------------------------------------------
    def smoothing(self, x: "torch.Tensor | None" = None, indices: np.ndarray | None = None,
                  **settings) -> Smooth | Cascade:
        """
        The engine's smoothed classifier for the raw inputs ``x`` (global ``indices``): here the base classifier's
        votes, the estimator's noise (:meth:`make_noise`; Gaussian by default) with sigma = ``scale`` in raw input
        space and Cohen et al.'s rule (its radius the noise's). Every method of
        art-some overrides this one method (its vote function, a noise per input, its rule, or a
        :class:`~art_some.core.smoothing.Cascade` of levels); CERTIFY, PREDICT, the audit's counts and the EOT
        gradients all go through it.

        :param settings: ``batch_size`` and ``verbose`` for this call (see :meth:`smooth`).
        """
        return self.smooth(self.vote, self.make_noise(self.scale), CohenRule(), soft=self.soft_scores, **settings)

    def make_noise(self, sigma, dimension: int | None = None) -> NoiseModel:
        """
        The estimator's noise model (the registered family ``noise`` in ``norm``) at standard deviation ``sigma``
        (a number, or one per input), over ``dimension`` coordinates (default: the input size).
        """
        from art_some.plugins import get

        family = get("noise_models", self.noise)
        return family(sigma, norm=self.norm, dimension=dimension or int(np.prod(self.input_shape)))

    @property
    def radius_norm(self) -> str:
        """The norm of the certified radii (``"l2"``, ``"l1"`` or ``"linf"``): what attacks must measure in."""
        return self.make_noise(self.scale).norm

    def smooth(self, vote, noise, rule=None, *, level: int = 0, soft=None, batch_size: int | None = None,
               verbose: bool | None = False) -> Smooth:
        """
        A :class:`~art_some.core.smoothing.Smooth` over ``vote`` (run with this estimator's speed options), ``noise``
        and ``rule``, counting with this estimator's seed, device and ``noise_batch_size`` (or ``batch_size``).
        """
        return Smooth(self.voting(vote), noise, rule, num_classes=self.nb_classes,
                      batch_size=self._batch_size(batch_size), seed=self.seed, verbose=verbose, level=level,
                      soft=soft)

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
        when asked (:func:`~art_some.core.speed.with_speed_options`). The noise the engine adds stays float32.
        """
        return with_speed_options(vote_fn, self.precision, self.channels_last, self._device.type)

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


    def _noise_space(self, x_t: "torch.Tensor", indices: np.ndarray, invalid: np.ndarray | None):
        """
        The finite inputs' positions, the inputs as the noise sees them, and the smoothed classifier for them; the
        others raise, or are marked in ``invalid``.
        """
        import torch

        finite = torch.isfinite(x_t.flatten(1)).all(dim=1).cpu().numpy()
        if invalid is None:
            check_finite_inputs(x_t, indices)  # before the noise-space map, which may spread a NaN to other inputs
        else:
            invalid |= ~finite
        rows = np.flatnonzero(finite)
        with torch.inference_mode():
            z0 = self.to_noise_space(x_t[rows])
        return rows, z0

    def _batch_size(self, batch_size) -> int:
        """``batch_size`` or the default ``noise_batch_size`` (0 is an error, not the default)."""
        return self.noise_batch_size if batch_size is None else batch_size

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
        n = positive_int("n", self.sample_size if n is None else n)
        x_t = self._as_input_tensor(x)
        indices = check_indices(indices, len(x_t))
        rows, z0 = self._noise_space(x_t, indices, invalid)
        g = self.smoothing(x_t[rows], indices[rows], batch_size=batch_size)
        sub = None if invalid is None else np.zeros(len(rows), dtype=bool)
        tally = g.levels[level].counts(z0, n, stage, indices=indices[rows], squares=squares, invalid=sub)
        if sub is not None:
            invalid[rows] |= sub
        if squares:
            return _scatter(tally.counts, rows, len(x_t)), _scatter(tally.squares, rows, len(x_t))
        return _scatter(tally.counts, rows, len(x_t))

    def predict_decisions(self, x, indices=None, invalid: np.ndarray | None = None, abstain: bool = True):
        """
        PREDICT with ``sample_size`` draws per input by the smoothed classifier's rule: ``(classes, scores, level)``,
        -1 where it abstains, the scores behind the decisions (the vote counts for Cohen's rule) and the index of
        the level that answered (0 unless a cascade; -1 for none). With ``abstain=False``, the smoothed classifier's
        top class (a point estimate), never -1. ``invalid`` as in :meth:`predict_counts` (marked inputs get -1 and
        zero scores).
        """
        x_t = self._as_input_tensor(x)
        indices = check_indices(indices, len(x_t))
        marks = np.zeros(len(x_t), dtype=bool)
        rows, z0 = self._noise_space(x_t, indices, None if invalid is None else marks)
        sub = None if invalid is None else np.zeros(len(rows), dtype=bool)
        g = self.smoothing(x_t[rows], indices[rows])
        classes, scores, level = g.predict(z0, n=self.sample_size, alpha=self.alpha, indices=indices[rows],
                                           invalid=sub, abstain=abstain)
        classes, scores, level = (_scatter(a, rows, len(x_t)) for a in (classes, scores, level))
        if sub is not None:
            marks[rows] |= sub
            invalid |= marks
            classes, level = np.where(marks, ABSTAIN, classes), np.where(marks, -1, level)
            scores[marks] = 0
        return classes.astype(np.int64), scores, level

    def predict_classes(self, x, indices=None, invalid: np.ndarray | None = None, abstain: bool = True):
        """:meth:`predict_decisions` without the levels: ``(classes, scores)``."""
        classes, scores, _ = self.predict_decisions(x, indices, invalid, abstain)
        return classes, scores

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
        :param is_abstain: If False, never abstain (rows always hold the top class); default ``predict_abstains``.
        :param output: ``"onehot"`` (default, ``predict_output``): ART's form, a one-hot row of the predicted class
                       or all zeros; ``"counts"``: each row holds the vote counts, all zeros where it abstains.
        :return: float32 array ``(N, nb_classes)``.
        """
        is_abstain = kwargs.get("is_abstain", self.predict_abstains)
        output = kwargs.get("output", self.predict_output)
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
        return self._certify_with(x, n, n0=n0, alpha=alpha, batch_size=batch_size, indices=indices)

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
        growth: float | None = DEFAULT_GROWTH,
        bound: str | None = DEFAULT_BOUND,
        **options,
    ) -> CertifyResult:
        """
        Sequential CERTIFY (:mod:`art_some.core.sequential`): estimation draws in geometric rounds up to ``n``,
        lower bounds from a confidence sequence (``bound``), and each input stopped once decided: early abstention,
        every radius of ``radii`` decided (fixed-radius mode), or (radius mode) when the rest of the draws could add
        at most ``tolerance`` of the radius reachable at n.

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
        :param growth: Growth factor of the cumulative draws per round (None: the bound's own).
        :param bound: ``"mixture"``, ``"betting"`` or ``"union-cp"`` (None: ``"mixture"`` in fixed-radius mode,
                      ``"union-cp"`` in radius mode)
                      (:func:`~art_some.core.sequential.sequential_certify`).
        :param options: ``spending``, ``final_share``, ``futility`` (the same function's).
        :return: a :class:`~art_some.core.certify.CertifyResult` with ``draws`` and ``stopped_by`` per input (and
                 ``radii``, ``certified_at`` in fixed-radius mode).
        """
        options = dict(radii=radii, tolerance=tolerance, start=start, growth=growth, bound=bound, **options)
        return self._certify_with(x, n, n0=n0, alpha=alpha, batch_size=batch_size, indices=indices,
                                  sequential=options)

    def certify_at(self, x, radii, n: int, n0: int | None = None, alpha: float | None = None,
                   batch_size: int | None = None, indices=None, start: int = DEFAULT_START,
                   growth: float | None = DEFAULT_GROWTH, bound: str | None = DEFAULT_BOUND) -> np.ndarray:
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
                                         radii=radii, start=start, growth=growth, bound=bound)
        return result.certified_at


    def _certify_with(self, x, n: int, n0=None, alpha=None, batch_size=None, indices=None,
                      sequential: dict | None = None, smoothing=None) -> CertifyResult:
        """
        CERTIFY with this estimator's smoothed classifier (or ``smoothing(x, indices, **settings)``), sequential
        CERTIFY with the options ``sequential``; warns on every use of an unsound rule.
        """
        import torch

        x_t = self._as_input_tensor(x)
        indices = check_indices(indices, len(x_t))
        check_finite_inputs(x_t, indices)  # before the noise-space map, which may spread a NaN to other inputs
        g = (smoothing or self.smoothing)(x_t, indices, batch_size=batch_size, verbose=self.verbose)
        if not g.sound:
            warn_unsound(g.warning or f"{g!r} is not a sound certificate")
        with torch.inference_mode():
            z0 = self.to_noise_space(x_t)
        options = dict(n0=self.sample_size if n0 is None else n0, n=n, alpha=self.alpha if alpha is None else alpha,
                       indices=indices)
        if sequential is None:
            result = g.certify(z0, **options)
        else:
            result = g.certify_sequential(z0, **options, **sequential)
        result.extra.update(self.certificate_info(), precision=self.precision)  # the certificate is of this vote
        return result

    def audit_counts(self, x, n: int, indices=None) -> np.ndarray:
        """
        What the attack audit compares with a certified class: ``n`` fresh votes at ``x`` (PREDICT's streams under
        ``indices``); for a cascade, the votes of the level it answers at
        (:meth:`~art_some.core.smoothing.Cascade.audit_counts`).
        """
        n = positive_int("n", n)
        x_t = self._as_input_tensor(x)
        indices = check_indices(indices, len(x_t))
        rows, z0 = self._noise_space(x_t, indices, None)
        return self.smoothing(x_t, indices).audit_counts(z0, n=n, indices=indices)

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


def _scatter(values: np.ndarray, rows: np.ndarray, n: int) -> np.ndarray:
    """``values`` for the inputs at ``rows``, placed in an (n, ...) array of zeros."""
    if len(rows) == n:
        return values
    out = np.zeros((n, *values.shape[1:]), dtype=values.dtype)
    out[rows] = values
    return out
