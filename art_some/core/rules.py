"""
Certificate rules: the part of a smoothing method that turns vote counts into a certified class and radius (and
PREDICT's decision). A rule owns its statistics; every certification procedure (fixed-n CERTIFY, sequential
CERTIFY, the cascade's levels) asks it for the same four things:

- :meth:`CertificateRule.select`: the class to certify, c_A, from the selection draws;
- :meth:`CertificateRule.lower_bound` / :meth:`CertificateRule.upper_bound`: one-sided confidence bounds on the
  probability of given classes from a :class:`Tally` of estimation draws;
- :meth:`CertificateRule.radius`: the radius that a lower bound >= 1/2 certifies (the noise model's by default);
- :meth:`CertificateRule.decide`: Cohen et al.'s abstain test and radius, written once; no rule overrides it.

So a new rule needs only ``lower_bound`` (and ``radius`` if its radius is not the noise's). Cohen et al.'s rule is
:class:`CohenRule`; a rule that a spec marks unsound has ``sound = False`` and a ``warning`` that the estimator
repeats on every use.

| Paper link: https://arxiv.org/abs/1902.02918
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from art_some.core.stats import (
    binomial_test_two_sided,
    certifies,
    clopper_pearson_lower,
    clopper_pearson_upper,
)

ABSTAIN = -1


@dataclass
class Tally:
    """
    What a rule sees of a batch of draws: ``counts`` ``(N, C)`` of votes per class, ``draws`` (the number of noisy
    draws behind each row: an int or an ``(N,)`` array) and, for rules with ``needs_squares``, the per-class sums of
    squared tallies (several votes per draw, e.g. one per patch).
    """

    counts: np.ndarray
    draws: int | np.ndarray
    squares: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.counts)

    def rows(self, positions) -> "Tally":
        """The tally of the inputs at ``positions``."""
        draws = self.draws if np.ndim(self.draws) == 0 else np.asarray(self.draws)[positions]
        squares = None if self.squares is None else self.squares[positions]
        return Tally(self.counts[positions], draws, squares)


class CertificateRule:
    """
    A certificate rule, with Cohen et al.'s behaviour wherever a subclass says nothing.

    Subclasses override :meth:`lower_bound` (and :meth:`upper_bound` where a procedure needs one), :meth:`radius`
    if the radius is not the noise model's, :meth:`predict` and :meth:`scores` for their own PREDICT, and
    :meth:`info` for what each record says. :meth:`decide` and :meth:`certify` are the same for every rule.
    """

    needs_squares: bool = False
    sound: bool = True
    warning: str | None = None
    # The noise families and norms the certificate holds for; None: whatever the noise model's radius is for.
    noises: tuple[str, ...] | None = None
    norms: tuple[str, ...] | None = None
    # The bounds sequential CERTIFY may use (art_some.core.confseq): the anytime ones need one Bernoulli vote per draw.
    sequence_bounds: tuple[str, ...] = ("mixture", "betting", "union-cp")

    def check_noise(self, noise) -> None:
        """Refuse a noise model this rule's certificate does not hold for, in one line naming both."""
        family_ok = self.noises is None or noise.name in self.noises
        norm_ok = self.norms is None or noise.norm in self.norms
        if not (family_ok and norm_ok):
            holds = f"{'/'.join(self.noises or ('any',))} noise in {'/'.join(self.norms or ('any norm',))}"
            raise ValueError(f"{type(self).__name__}'s certificate holds for {holds} only, not for {noise.name} noise "
                             f"in {noise.norm}")

    # ------------------------------------------------------------------------------------------------------------
    # The statistics
    # ------------------------------------------------------------------------------------------------------------
    def select(self, selection: Tally) -> np.ndarray:
        """c_A: the class with the most selection votes (ties to the smallest index)."""
        return selection.counts.argmax(axis=1)

    def lower_bound(self, tally: Tally, classes: np.ndarray, alpha: float) -> np.ndarray:
        """
        One-sided (1 - alpha) lower confidence bounds on the probability of ``classes[i]`` for each row: here
        Clopper-Pearson on the binomial count of that class out of the draws.
        """
        rows = np.arange(len(tally))
        return clopper_pearson_lower(tally.counts[rows, classes], tally.draws, alpha)

    def successes(self, tally: Tally, classes: np.ndarray) -> np.ndarray:
        """The votes for ``classes[i]`` per row: the Bernoulli count the anytime bounds of sequential CERTIFY test."""
        return tally.counts[np.arange(len(tally)), classes]

    def upper_bound(self, tally: Tally, classes: np.ndarray, alpha: float) -> np.ndarray:
        """One-sided (1 - alpha) upper confidence bounds on the probability of ``classes[i]`` (Clopper-Pearson)."""
        rows = np.arange(len(tally))
        return clopper_pearson_upper(tally.counts[rows, classes], tally.draws, alpha)

    def class_upper_bounds(self, tally: Tally, alpha: float) -> np.ndarray:
        """
        Simultaneous upper bounds ``(N, C)`` on every class's probability (Bonferroni over the C classes): with
        probability at least 1 - alpha all of them hold.
        """
        num_classes = tally.counts.shape[1]
        return np.stack([self.upper_bound(tally, np.full(len(tally), c), alpha / num_classes)
                         for c in range(num_classes)], axis=1).reshape(len(tally), num_classes)

    def projected_lower_bound(self, tally: Tally, classes: np.ndarray, n: int, alpha_now: float,
                              alpha_final: float) -> np.ndarray:
        """
        An optimistic guess of the lower bound after ``n`` draws in all (sequential CERTIFY's stopping rules): the
        remaining draws voting for ``classes`` at the rate of the upper bound at ``alpha_now``, bounded at
        ``alpha_final``. No claim rests on it; a poor guess only stops an input too early or too late.
        """
        p_upper = self.upper_bound(tally, classes, alpha_now)
        done = np.asarray(tally.draws)
        k = tally.counts[np.arange(len(tally)), classes]
        best_k = np.minimum(n, np.ceil(k + p_upper * (n - done)))
        return clopper_pearson_lower(best_k, n, alpha_final)

    def radius(self, p_lower: np.ndarray, noise) -> np.ndarray:
        """The radius certified by lower bounds ``p_lower`` on pA: the noise model's (sigma Phi^-1(p) for Gaussian)."""
        return noise.radius(p_lower)

    def threshold(self, radius, noise, num_inputs: int) -> np.ndarray:
        """
        Per input ``(num_inputs,)``, the smallest pA whose :meth:`radius` reaches ``radius`` (1.0 where none below 1
        does): what sequential CERTIFY tests to decide "certified at r". The noise's inverse formula where the
        radius is the noise's; a bisection on :meth:`radius` otherwise, so a rule with its own radius needs nothing
        more (a threshold too low or too high only costs draws: every claim is checked against :meth:`radius`).
        """
        if type(self).radius is CertificateRule.radius:
            return np.broadcast_to(noise.threshold(radius), (num_inputs,)).astype(np.float64)
        return bisect_threshold(lambda p: self.radius(p, noise), radius, num_inputs)

    # ------------------------------------------------------------------------------------------------------------
    # The one decision
    # ------------------------------------------------------------------------------------------------------------
    def decide(self, classes: np.ndarray, p_lower: np.ndarray, noise) -> tuple[np.ndarray, np.ndarray]:
        """
        Cohen et al.'s decision from a lower bound: certify ``classes`` where ``p_lower`` >= 1/2 with
        :meth:`radius`, abstain (-1, radius 0.0) elsewhere. Every procedure decides here.
        """
        sure = certifies(p_lower)
        radius = np.where(sure, self.radius(p_lower, noise), 0.0).astype(np.float64)
        return np.where(sure, classes, ABSTAIN).astype(np.int64), radius

    def certify(self, selection: Tally, estimation: Tally, alpha: float, noise):
        """
        Fixed-n CERTIFY's statistics: select c_A, lower-bound its probability at ``alpha`` from the independent
        estimation draws, and decide.

        Guarantee (given a valid ``lower_bound`` and ``radius``): with probability at least 1 - alpha over the
        estimation draws, a returned class is the smoothed classifier's prediction within the returned radius.

        :return: ``(predict, radius, p_lower)`` arrays.
        """
        classes = self.select(selection)
        p_lower = self.lower_bound(estimation, classes, alpha)
        predict, radius = self.decide(classes, p_lower, noise)
        return predict, radius, p_lower

    # ------------------------------------------------------------------------------------------------------------
    # PREDICT
    # ------------------------------------------------------------------------------------------------------------
    def predict(self, tally: Tally, alpha: float) -> np.ndarray:
        """
        PREDICT's decision (Cohen et al.): the top class if a two-sided binomial test of the top two counts rejects a
        tie at ``alpha``, else -1. Guarantee: a wrong class with probability at most alpha.
        """
        counts = tally.counts
        order = np.argsort(-counts, axis=1, kind="stable")
        rows = np.arange(len(counts))
        top = counts[rows, order[:, 0]]
        runner_up = counts[rows, order[:, 1]] if counts.shape[1] > 1 else 0
        p_value = binomial_test_two_sided(top, runner_up)
        return np.where(p_value <= alpha, order[:, 0], ABSTAIN).astype(np.int64)

    def scores(self, counts: np.ndarray) -> np.ndarray:
        """What ``predict`` shows per class for PREDICT's ``counts`` (the counts themselves here)."""
        return counts

    def info(self) -> dict:
        """Entries for each certificate record."""
        return {}


class CohenRule(CertificateRule):
    """Cohen et al.'s certificate and PREDICT: Clopper-Pearson bounds, the noise's radius, the binomial test."""

    def __repr__(self) -> str:
        return "CohenRule()"


class ScaledRule(CertificateRule):
    """
    ``base``'s rule with radii divided by ``divisor`` (a radius in a space that the input maps into with operator
    norm ``divisor``, e.g. a resize before the noise, or stacked patches with independent noise).
    """

    def __init__(self, base: CertificateRule, divisor: float, *, sound: bool = True, warning: str | None = None):
        self.base, self.divisor = base, float(divisor)
        self.needs_squares, self.sequence_bounds = base.needs_squares, base.sequence_bounds
        self.sound, self.warning = sound, warning
        # A divisor is an operator norm between L2 spaces: the scaled radius is an L2 radius.
        self.noises, self.norms = base.noises, base.norms if self.divisor == 1.0 else ("l2",)

    def select(self, selection):
        return self.base.select(selection)

    def lower_bound(self, tally, classes, alpha):
        return self.base.lower_bound(tally, classes, alpha)

    def upper_bound(self, tally, classes, alpha):
        return self.base.upper_bound(tally, classes, alpha)

    def successes(self, tally, classes):
        return self.base.successes(tally, classes)

    def projected_lower_bound(self, tally, classes, n, alpha_now, alpha_final):
        return self.base.projected_lower_bound(tally, classes, n, alpha_now, alpha_final)

    def radius(self, p_lower, noise):
        return self.base.radius(p_lower, noise) / self.divisor

    def threshold(self, radius, noise, num_inputs):
        return self.base.threshold(np.asarray(radius) * self.divisor, noise, num_inputs)

    def predict(self, tally, alpha):
        return self.base.predict(tally, alpha)

    def scores(self, counts):
        return self.base.scores(counts)

    def info(self) -> dict:
        return self.base.info()


def bisect_threshold(radius_of, radius, num_inputs: int, steps: int = 30) -> np.ndarray:
    """
    The smallest p in [1/2, 1) with ``radius_of(p) >= radius`` per input, by bisection on a radius that grows with p
    (one call per step for all inputs); the upper end, so the returned p always reaches the radius; 1.0 where even
    p just below 1 does not.
    """
    low, high = np.full(num_inputs, 0.5), np.full(num_inputs, np.nextafter(1.0, 0.0))
    reachable = radius_of(high) >= radius
    for _ in range(steps):
        middle = (low + high) / 2
        up = radius_of(middle) >= radius
        high, low = np.where(up, middle, high), np.where(up, low, middle)
    return np.where(reachable, high, 1.0)


__all__ = ["ABSTAIN", "CertificateRule", "CohenRule", "ScaledRule", "Tally", "bisect_threshold", "certifies"]
