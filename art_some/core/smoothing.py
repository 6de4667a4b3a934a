"""
The smoothed classifier g = (vote function, noise model, certificate rule): Cohen et al.'s ``Smooth`` class,
generalised. Every method of art-some hands the engine one :class:`Smooth` (or a :class:`Cascade` of several) and
gets the paper's procedures as its methods:

- :meth:`Smooth.counts`: the vote tally of ``num`` noisy draws per input from one keyed stream (the hot loop);
- :meth:`Smooth.certify`: CERTIFY with fixed n (:func:`art_some.core.certify.certify`);
- :meth:`Smooth.certify_sequential`: sequential CERTIFY (:func:`art_some.core.sequential.sequential_certify`);
- :meth:`Smooth.predict`: PREDICT (:func:`art_some.core.certify.predict`);
- :meth:`Smooth.audit_counts`: the fresh votes at a point that the attack audit compares with a certificate.

Inputs are in the noise's space (estimators map raw inputs there first). All randomness comes from generators
keyed by ``(seed, stage, index)``; a cascade's level k draws from its own stages (``level_stage``).

| Paper link: https://arxiv.org/abs/1902.02918
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from art_some.core.cascade import (
    LevelCounter,
    cascade_certify,
    cascade_point_estimate,
    cascade_predict,
    hybrid_predict,
)
from art_some.core.cascade_sequential import cascade_certify_sequential
from art_some.core.certify import CertifyResult, certify, check_inputs, predict
from art_some.core.noise import check_indices, count_votes, non_finite_output_error
from art_some.core.rules import CertificateRule, CohenRule, Tally
from art_some.core.sequential import (
    DEFAULT_BOUND,
    DEFAULT_FINAL_SHARE,
    DEFAULT_FUTILITY,
    DEFAULT_GROWTH,
    DEFAULT_SPENDING,
    DEFAULT_START,
    DEFAULT_TOLERANCE,
    check_bound,
    check_radii,
    check_sequence_options,
    check_tolerance,
    draw_schedule,
    sequential_certify,
)
from art_some.core.streams import CHOICE, PREDICTION, level_stage, sequential_round_key
from art_some.core.validate import positive_int, probability

if TYPE_CHECKING:
    pass


class Smooth:
    """
    One smoothed classifier: ``vote`` maps noisy inputs to class indices (or per-class tallies), ``noise`` draws and
    adds the noise and owns the radius's geometry, ``rule`` turns tallies into decisions.

    :param vote: The vote function ``(B, *shape) -> (B,)`` class indices, or ``(B, C)`` tallies.
    :param noise: The noise model (``perturb``, ``radius``; ``subset`` for one scale per input).
    :param rule: The certificate rule (default :class:`~art_some.core.rules.CohenRule`).
    :param num_classes: C.
    :param batch_size: Noisy inputs per forward pass.
    :param seed: Base seed of every stream.
    :param device: Device for noise and forward passes (default: the inputs').
    :param verbose: Progress bars over the draws (None: when standard error is a terminal).
    :param level: The stream offset of a cascade's level (0 for a single smoothed classifier).
    :param soft: The soft base classifier ``(B, *shape) -> (B, C)`` probabilities (``soft(z, training_mode=...)``)
                 whose expectation under the noise the EOT gradients differentiate; None if there is none.
    """

    def __init__(self, vote: Callable, noise, rule: CertificateRule | None = None, *, num_classes: int,
                 batch_size: int = 1000, seed: int = 0, device=None, verbose: bool | None = False, level: int = 0,
                 soft: Callable | None = None):
        self.vote, self.noise, self.soft = vote, noise, soft
        self.rule = CohenRule() if rule is None else rule
        if not isinstance(self.rule, CertificateRule):
            raise ValueError(f"rule must be a CertificateRule, got {type(self.rule).__name__}")
        if vote is not None:  # a level only read for its statistics (tests) has no vote and any noise
            self.rule.check_noise(noise)
        self.num_classes, self.batch_size, self.seed = int(num_classes), batch_size, int(seed)
        self.device, self.verbose, self.level = device, verbose, int(level)

    def counts(self, x, num: int, stage: int, *, indices=None, squares: bool = False,
               invalid: np.ndarray | None = None, desc: str | None = None) -> Tally:
        """
        The tally of ``num`` noisy draws per input from stream ``stage`` (of this level), see
        :func:`~art_some.core.noise.count_votes` for the guarantees (``invalid`` marks inputs with non-finite
        outputs instead of raising).
        """
        num = int(num) if np.ndim(num) == 0 else np.asarray(num, dtype=np.int64)  # one per input: packed rounds
        out = count_votes(self.vote, x, num, self.noise, num_classes=self.num_classes,
                          batch_size=self.batch_size, seed=self.seed, stage=level_stage(stage, self.level),
                          indices=indices, device=self.device, squares=squares, invalid=invalid,
                          verbose=self.verbose, desc=desc or f"{self.noise!r} draws")
        counts, squared = out if squares else (out, None)
        return Tally(counts, num, squared)

    def subset(self, positions) -> "Smooth":
        """The same smoothed classifier for the inputs at ``positions`` (their own noise scales, if per input)."""
        noise = self.noise if np.ndim(getattr(self.noise, "sigma", 0.0)) == 0 else self.noise.subset(positions)
        return Smooth(self.vote, noise, self.rule, num_classes=self.num_classes, batch_size=self.batch_size,
                      seed=self.seed, device=self.device, verbose=self.verbose, level=self.level, soft=self.soft)

    @property
    def levels(self) -> tuple["Smooth"]:
        """The smoothing levels: this one (a :class:`Cascade` has several)."""
        return (self,)

    @property
    def gradient_levels(self) -> tuple["Smooth"]:
        """The levels whose soft smoothed classifiers the EOT gradients average: this one."""
        return (self,)

    @property
    def sound(self) -> bool:
        """Whether the certificate is sound (False for a rule a spec marks unsound; it warns on every use)."""
        return self.rule.sound

    @property
    def warning(self) -> str | None:
        return self.rule.warning

    def certify(self, x, *, n0: int, n: int, alpha: float, indices=None) -> CertifyResult:
        """CERTIFY with fixed n; see :func:`art_some.core.certify.certify` for the guarantee."""
        return certify(self, x, n0=n0, n=n, alpha=alpha, indices=indices)

    def certify_sequential(self, x, *, n0: int, n: int, alpha: float, indices=None, **options) -> CertifyResult:
        """
        Sequential CERTIFY; see :func:`art_some.core.sequential.sequential_certify` for the guarantee and the
        ``options`` (radii, tolerance, start, growth, bound, spending, final_share, futility).
        """
        return sequential_certify(self, x, n0=n0, n=n, alpha=alpha, indices=indices, **options)

    def predict(self, x, *, n: int, alpha: float, indices=None, invalid=None, abstain: bool = True):
        """
        PREDICT (:func:`art_some.core.certify.predict`, with its guarantee): ``(classes, scores, level)``, -1 where it
        abstains, the rule's scores per class (the vote counts for Cohen's rule) and the answering level (0). With
        ``abstain=False``, the top class of the counts, never -1 (no guarantee).
        """
        classes, tally = predict(self, x, n=n, alpha=alpha, indices=indices, invalid=invalid)
        if not abstain:
            classes = tally.counts.argmax(axis=1).astype(np.int64)
        return classes, self.rule.scores(tally.counts), np.zeros(len(classes), dtype=np.int64)

    def audit_counts(self, x, *, n: int, indices=None) -> np.ndarray:
        """``n`` fresh votes per input from the PREDICT streams: what the audit compares with a certified class."""
        return self.counts(x, n, PREDICTION, indices=indices).counts

    def __repr__(self) -> str:
        return f"Smooth(noise={self.noise!r}, rule={self.rule!r})"


class Cascade:
    """
    The multi-scale cascade of Jeong & Shin over smoothed classifiers ``levels`` (largest noise first, each with its
    own streams), with the same procedures as :class:`Smooth`; the statistics are each level's rule's, the control
    flow is :mod:`art_some.core.cascade`'s. Its certificate is Gaussian-only (the levels' noises must have
    ``margin``).

    :param levels: The levels, largest sigma first; level k keys its streams with ``level=k``.
    :param p0: A level answers when its top class's probability is above ``p0``.
    :param alpha_split: ``"uniform"`` (sound, the default) or ``"sequential"`` (the official schedule).
    :param predict_rule: ``"cascade"`` (PREDICT with a guarantee) or ``"hybrid"`` (the official predict_mdds.py).
    :param hybrid_weight: The hybrid rule's weight on the vote shares.
    :param gradient_levels: Positions of the levels the EOT gradients average (default all).
    :param clean_logits: ``clean_logits(x) -> (N, C)`` logits on clean inputs, for the hybrid PREDICT.
    """

    sound = True
    warning = None

    def __init__(self, levels: Sequence[Smooth], *, p0: float = 0.5, alpha_split: str = "uniform",
                 predict_rule: str = "cascade", hybrid_weight: float = 0.1,
                 gradient_levels: Sequence[int] | None = None, clean_logits: Callable | None = None):
        self.levels = tuple(levels)
        used = range(len(self.levels)) if gradient_levels is None else gradient_levels
        self.gradient_levels = tuple(self.levels[k] for k in used)
        self.clean_logits = clean_logits
        for level in self.levels:
            if (level.noise.name, level.noise.norm) != ("gaussian", "l2"):
                raise ValueError(f"the cascade's certificate holds for gaussian noise in l2 only (its radius uses the "
                                 f"Lipschitz constant of Phi^-1), not for {level.noise.name} noise in "
                                 f"{level.noise.norm}")
        self.p0, self.alpha_split = float(p0), alpha_split
        self.predict_rule, self.hybrid_weight = predict_rule, float(hybrid_weight)
        self.num_classes = self.levels[0].num_classes

    @property
    def sigmas(self) -> list[float]:
        return [float(level.noise.sigma) for level in self.levels]

    def counter(self, x, indices: np.ndarray, invalid: np.ndarray | None = None) -> LevelCounter:
        """
        ``count(level, stage, positions, num)`` over the inputs ``x`` (noise space) for the cascade procedures; with
        ``invalid`` (length N), inputs with non-finite outputs are marked there (zero counts) instead of raising.
        """
        import torch

        def count(level: int, stage: int, positions: np.ndarray, num: int) -> np.ndarray:
            marks = None if invalid is None else np.zeros(len(positions), dtype=bool)
            rows = torch.as_tensor(positions, device=x.device) if isinstance(x, torch.Tensor) else positions
            smooth = self.levels[level]
            tally = smooth.counts(x[rows], num, stage, indices=indices[positions], invalid=marks,
                                  desc=f"sigma {smooth.noise.sigma:g}")
            if marks is not None:
                invalid[positions] |= marks
            return tally.counts

        return count

    def certify(self, x, *, n0: int, n: int, alpha: float, indices=None) -> CertifyResult:
        """Cascaded CERTIFY; see :func:`art_some.core.cascade.cascade_certify` for the guarantee."""
        indices = check_indices(indices, len(x))
        result = cascade_certify(
            self.counter(x, indices), self.levels, len(x), n0=n0, n=n, alpha=alpha, p0=self.p0,
            alpha_split=self.alpha_split, num_classes=self.num_classes)
        result.extra = {**self.levels[0].noise.describe(), **result.extra}
        return result

    def certify_sequential(self, x, *, n0: int, n: int, alpha: float, indices=None, radii=None,
                           tolerance: float = DEFAULT_TOLERANCE, start: int = DEFAULT_START,
                           growth: float | None = DEFAULT_GROWTH, bound: str | None = DEFAULT_BOUND,
                           spending: str = DEFAULT_SPENDING, final_share: float = DEFAULT_FINAL_SHARE,
                           futility: float = DEFAULT_FUTILITY, pool: int | None = None) -> CertifyResult:
        """
        Sequential cascaded CERTIFY; see :func:`art_some.core.cascade_sequential.cascade_certify_sequential` for
        the procedure and the guarantee, :func:`art_some.core.sequential.sequential_certify` for the options.
        Needs ``alpha_split="uniform"``.
        """
        import torch

        if self.alpha_split != "uniform":
            raise ValueError(f"sequential certification of a cascade needs alpha_split='uniform' (a confidence "
                             f"sequence's level is fixed before its draws), not {self.alpha_split!r}")
        alpha = probability("alpha", alpha)
        positive_int("n0", n0)
        check_inputs(x, "n", n, indices)
        tolerance = check_tolerance(tolerance)
        radii = None if radii is None else check_radii(radii)
        for level in self.levels:
            if level.rule.needs_squares:
                raise ValueError(f"sequential certification of a cascade needs one vote per draw (its upper bounds "
                                 f"are lower bounds on the other classes' votes), not {type(level.rule).__name__}")
            check_bound(bound, level.rule, radius_mode=radii is None)
        check_sequence_options(spending, final_share, futility)
        pool = None if pool is None else positive_int("pool", pool)
        indices = check_indices(indices, len(x))
        sequential_round_key(len(draw_schedule(n, start, growth, check_bound(bound, self.levels[0].rule,
                                                                             radii is None))) - 1, indices)

        def draw(level: int, stage: int, positions: np.ndarray, nums: np.ndarray, rounds) -> np.ndarray:
            rows = torch.as_tensor(positions, device=x.device) if isinstance(x, torch.Tensor) else positions
            keys = indices[positions] if rounds is None else sequential_round_key(rounds, indices[positions])
            smooth = self.levels[level]
            num = int(nums[0]) if rounds is None else nums
            return smooth.counts(x[rows], num, stage, indices=keys, desc=f"sigma {smooth.noise.sigma:g}").counts

        result = cascade_certify_sequential(
            draw, self.levels, len(x), n0=n0, n=n, alpha=alpha, p0=self.p0, radii=radii, tolerance=tolerance,
            start=start, growth=growth, bound=bound, spending=spending, final_share=final_share, futility=futility,
            pool=pool)
        result.extra = {**self.levels[0].noise.describe(), **result.extra}
        return result

    def predict(self, x, *, n: int, alpha: float, indices=None, invalid=None, abstain: bool = True):
        """
        The cascade's PREDICT by ``predict_rule``: ``(classes, scores, answering level)``. ``"cascade"`` with
        ``abstain`` has a guarantee (:func:`~art_some.core.cascade.cascade_predict`); without ``abstain``, its point
        estimate; ``"hybrid"`` (the official rule, no guarantee) returns the hybrid scores, the clean logits plus the
        log vote shares (inputs with non-finite clean logits raise, or are marked in ``invalid``).
        """
        indices = check_indices(indices, len(x))
        count = self.counter(x, indices, invalid)
        if self.predict_rule == "cascade" and abstain:
            return cascade_predict(count, self.levels, len(x), n=n, alpha=alpha, p0=self.p0,
                                                      alpha_split=self.alpha_split, num_classes=self.num_classes)
        if self.predict_rule == "cascade":
            return cascade_point_estimate(count, len(self.levels), len(x), n=n, p0=self.p0,
                                                             num_classes=self.num_classes)
        clean = self.clean_logits(x)
        bad = ~np.isfinite(clean).all(axis=1)
        if bad.any():
            if invalid is None:
                raise non_finite_output_error(indices[bad])
            invalid |= bad
            clean[bad] = 0.0
        with np.errstate(divide="ignore"):
            classes, logits, level = hybrid_predict(count, len(self.levels), clean, n=n,
                                                                       p0=self.p0, weight=self.hybrid_weight)
        shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
        return classes, n * shifted / shifted.sum(axis=1, keepdims=True), level

    def audit_counts(self, x, *, n: int, indices=None) -> np.ndarray:
        """
        The votes of the level the cascade answers at: chosen on separate draws (each level's CHOICE stage) as the
        first, from the largest sigma, whose top class has a vote share of at least p0 (a point estimate of the
        cascade's rule); no such level is an abstention (all-zero counts, which confirm no flip).
        """
        import torch

        indices = check_indices(indices, len(x))
        choose = np.stack([level.counts(x, n, CHOICE, indices=indices).counts for level in self.levels])
        answers = choose.max(axis=2) >= self.p0 * n
        answer = np.where(answers.any(axis=0), answers.argmax(axis=0), -1)
        counts = np.zeros((len(answer), self.num_classes), dtype=np.int64)
        for k, level in enumerate(self.levels):
            rows = np.flatnonzero(answer == k)
            if len(rows):
                picked = torch.as_tensor(rows, device=x.device) if isinstance(x, torch.Tensor) else rows
                counts[rows] = level.audit_counts(x[picked], n=n, indices=indices[rows])
        return counts

    def __repr__(self) -> str:
        return f"Cascade(sigmas={self.sigmas}, p0={self.p0}, alpha_split={self.alpha_split!r})"


__all__ = ["Cascade", "Smooth"]
