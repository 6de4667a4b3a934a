"""
Certificate rules: the part of a smoothing method that turns vote counts into a certified class and radius (and
PREDICT's decision). A rule is an object that says what statistics it needs, so the engine computes them once and
no estimator rewrites CERTIFY or PREDICT to get them.

- :class:`CohenRule`: Cohen et al.'s Clopper-Pearson bound and radius sigma * Phi^-1(pA_lower), and PREDICT's
  binomial test. Every other rule is a variation of it.
- A rule with ``needs_squares = True`` also receives the estimation draws' sums of squared tallies (several votes
  per noisy input, e.g. one per patch, for variance-adaptive bounds).
- A rule that a spec marks unsound has ``sound = False`` and a ``warning``; the estimator says it on every use.

| Paper link: https://arxiv.org/abs/1902.02918
"""
from __future__ import annotations

import numpy as np

from art_some.core.certify import ABSTAIN, cohen_rule, predict_from_counts
from art_some.core.stats import certifies, gaussian_radius


class CertificateRule:
    """
    The interface of a certificate rule (and Cohen's rule as its default behaviour).

    :meth:`certify` maps (selection counts, estimation counts, alpha, noise model) to ``(predict, radius,
    p_lower)`` arrays with -1 / 0.0 where it abstains; :meth:`predict` maps PREDICT's counts to classes (-1 =
    abstain); :meth:`info` is what each certificate record says about the rule.
    """

    needs_squares: bool = False
    sound: bool = True
    warning: str | None = None
    # A rule whose certificate is the selection's class with a radius computed from one lower bound on its probability
    # (radius(p_lower, noise)) may be used by sequential CERTIFY: any valid lower bound, such as one of a confidence
    # sequence, then gives a valid certificate.
    sequential: bool = False

    def certify(self, selection_counts: np.ndarray, estimation_counts: np.ndarray, alpha: float, noise,
                squares: np.ndarray | None = None):
        """CERTIFY's decision; see :func:`~art_some.core.certify.cohen_rule` for the guarantee."""
        return cohen_rule(selection_counts, estimation_counts, alpha, noise)

    def predict(self, counts: np.ndarray, alpha: float, squares: np.ndarray | None = None) -> np.ndarray:
        """PREDICT's decision: the top class if the binomial test rejects a tie with the runner-up at ``alpha``."""
        return predict_from_counts(counts, alpha)

    def scores(self, counts: np.ndarray) -> np.ndarray:
        """What ``predict`` shows per class for PREDICT's ``counts`` (the counts themselves here)."""
        return counts

    def info(self) -> dict:
        """Entries for each certificate record."""
        return {}

    def radius(self, p_lower: np.ndarray, noise) -> np.ndarray:
        """The certified radius for lower bounds ``p_lower`` >= 1/2 on pA (rules with ``sequential`` only)."""
        raise ValueError(f"{type(self).__name__} does not support sequential certification (it does not declare "
                         "sequential = True with a radius(p_lower, noise)); use fixed-n certify")

    def __call__(self, selection_counts, estimation_counts, alpha, noise, squares=None):
        # Rules were plain functions before; calling one still works.
        return self.certify(selection_counts, estimation_counts, alpha, noise, squares=squares)


class CohenRule(CertificateRule):
    """Cohen et al.'s certificate and PREDICT, unchanged."""

    sequential = True

    def radius(self, p_lower, noise):
        """Cohen et al.'s radius sigma * Phi^-1(pA_lower)."""
        return gaussian_radius(p_lower, noise.sigma)

    def __repr__(self) -> str:
        return "CohenRule()"


class ScaledRule(CertificateRule):
    """
    A rule whose radii are ``base``'s divided by ``divisor`` (a radius in a space that the input maps into with
    operator norm ``divisor``, e.g. a resize before the noise, or stacked patches with independent noise).
    """

    def __init__(self, base: CertificateRule, divisor: float, *, sound: bool = True, warning: str | None = None):
        self.base, self.divisor = base, float(divisor)
        self.needs_squares = base.needs_squares
        self.sound, self.warning = sound, warning
        self.sequential = base.sequential

    def radius(self, p_lower, noise):
        return self.base.radius(p_lower, noise) / self.divisor

    def certify(self, selection_counts, estimation_counts, alpha, noise, squares=None):
        predict, radius, p_lower = self.base.certify(selection_counts, estimation_counts, alpha, noise, squares)
        return predict, radius / self.divisor, p_lower

    def predict(self, counts, alpha, squares=None):
        return self.base.predict(counts, alpha, squares)

    def scores(self, counts):
        return self.base.scores(counts)

    def info(self) -> dict:
        return self.base.info()


def as_rule(rule) -> CertificateRule:
    """A rule object from a rule or a plain function ``(selection, estimation, alpha, noise) -> (pred, r, p)``."""
    if isinstance(rule, CertificateRule):
        return rule
    if callable(rule):
        return _FunctionRule(rule)
    raise ValueError(f"rule must be a CertificateRule or a function, got {type(rule).__name__}")


class _FunctionRule(CertificateRule):
    def __init__(self, function):
        self.function = function
        self.needs_squares = bool(getattr(function, "uses_squares", False))

    def certify(self, selection_counts, estimation_counts, alpha, noise, squares=None):
        if self.needs_squares:
            return self.function(selection_counts, estimation_counts, alpha, noise, squares=squares)
        return self.function(selection_counts, estimation_counts, alpha, noise)


__all__ = ["ABSTAIN", "CertificateRule", "CohenRule", "ScaledRule", "as_rule", "certifies"]
