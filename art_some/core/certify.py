"""
Cohen et al.'s CERTIFY and PREDICT, written once for every smoothed classifier
(:class:`~art_some.core.smoothing.Smooth`: a vote function, a noise model and a certificate rule).

The procedures own the order of the draws (selection, then independent estimation) and the bookkeeping; the
statistics and the decision are the rule's (:mod:`art_some.core.rules`), the counting is the smoothed classifier's.

| Paper link: https://arxiv.org/abs/1902.02918
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from art_some.core.errors import NonFiniteError, name_indices
from art_some.core.rules import ABSTAIN
from art_some.core.streams import ESTIMATION, PREDICTION, SELECTION
from art_some.core.validate import positive_int, probability

if TYPE_CHECKING:
    from art_some.core.smoothing import Smooth


@dataclass
class CertifyResult:
    """
    Per-input outcome of CERTIFY, as arrays over the N inputs.

    ``predict`` is -1 and ``radius`` 0.0 where the procedure abstains (ART's convention). ``squares_estimation``
    holds the sums of squared tallies when the rule asked for them; ``extra`` holds what the estimator adds to each
    record (a value per input as an array of length N, or one value for all).
    """

    predict: np.ndarray
    radius: np.ndarray
    p_lower: np.ndarray
    counts_selection: np.ndarray
    counts_estimation: np.ndarray
    n0: int
    n: int
    alpha: float
    sigma: float | np.ndarray
    seconds: np.ndarray = field(default_factory=lambda: np.zeros(0))
    squares_estimation: np.ndarray | None = None
    extra: dict = field(default_factory=dict)
    # Sequential CERTIFY (art_some.core.sequential) says how each input was decided: its estimation draws, why it
    # stopped, and in fixed-radius mode the radii and whether each input is certified at each of them.
    draws: np.ndarray | None = None
    stopped_by: np.ndarray | None = None
    radii: np.ndarray | None = None
    certified_at: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.predict)


def check_finite_inputs(x, indices=None) -> None:
    """Refuse inputs holding NaN or inf, naming them (by ``indices`` when given, else by position)."""
    import torch

    x_t = torch.as_tensor(x)
    if x_t.numel() == 0 or bool(torch.isfinite(x_t).all()):
        return
    bad = np.flatnonzero(~torch.isfinite(x_t.flatten(1)).all(dim=1).cpu().numpy())
    named = bad if indices is None else np.asarray(indices)[bad]
    raise NonFiniteError(f"x contains NaN or infinite values in input(s) {name_indices(named)}"
                         f"{'' if indices is None else ' (by index)'}; no vote, count or certificate is given "
                         "for them", named)


def check_inputs(x, n_name: str, n: int, indices=None) -> None:
    """A positive draw count and finite inputs, checked before any draw."""
    positive_int(n_name, n)
    check_finite_inputs(x, indices)


def certify(smooth: "Smooth", x, *, n0: int, n: int, alpha: float, indices=None) -> CertifyResult:
    """
    CERTIFY (Cohen et al., Algorithm 1, generalised): ``n0`` selection draws pick the class, ``n`` fresh
    estimation draws feed the rule's lower bound, and the rule decides.

    Guarantee (for a rule with a valid bound and radius, e.g. Cohen's): for each input, the probability that a
    returned (class, radius) is wrong about the smoothed classifier is at most ``alpha``. Never from garbage: an
    input holding NaN or inf, or one on whose noisy copies the vote function reports a non-finite output, raises
    :class:`~art_some.core.errors.NonFiniteError` naming it. Selection and estimation draws come from independent
    streams keyed by ``(seed, stage, indices[i])``, so results do not depend on the batch size or sharding.

    :param smooth: The smoothed classifier (vote function, noise model, rule, counting settings).
    :param x: Inputs ``(N, *shape)`` in the noise's space.
    :param n0: Selection draws.
    :param n: Estimation draws.
    :param alpha: Failure probability in (0, 1).
    :param indices: Global input indices that key the noise (default ``0..N-1``).
    :return: a :class:`CertifyResult`.
    """
    rule = smooth.rule
    alpha = probability("alpha", alpha)
    positive_int("n0", n0)
    check_inputs(x, "n", n, indices)
    start = time.perf_counter()
    selection = smooth.counts(x, int(n0), SELECTION, indices=indices, desc="CERTIFY selection")
    estimation = smooth.counts(x, int(n), ESTIMATION, indices=indices, squares=rule.needs_squares,
                               desc="CERTIFY estimation")
    pred, radius, p_lower = rule.certify(selection, estimation, alpha, smooth.noise)
    seconds = np.full(len(pred), (time.perf_counter() - start) / max(1, len(pred)))
    return CertifyResult(
        pred, radius, p_lower, selection.counts, estimation.counts, int(n0), int(n), alpha, smooth.noise.sigma,
        seconds, estimation.squares, extra=record_extra(smooth),
    )


def record_extra(smooth: "Smooth") -> dict:
    """
    What every record of ``smooth``'s certificates adds: the noise family and the norm of the radius, the rule's
    entries, and a sigma per input if it has one.
    """
    extra = {**smooth.noise.describe(), **smooth.rule.info()}
    if np.ndim(smooth.noise.sigma):
        extra["sigma"] = np.asarray(smooth.noise.sigma)
    return extra


def predict(smooth: "Smooth", x, *, n: int, alpha: float, indices=None, invalid: np.ndarray | None = None):
    """
    PREDICT (Cohen et al.): count ``n`` votes and let the rule decide (Cohen's: a two-sided binomial test of the top
    two classes at ``alpha``), abstaining (-1) otherwise.

    Guarantee: the probability of returning a class other than the smoothed classifier's prediction is at
    most ``alpha``. ``invalid`` (a boolean array of length N) marks inputs with non-finite outputs instead of
    raising; they get -1 and zero counts.

    :return: ``(classes, tally)``: int64 classes with -1 for abstain, and the :class:`~art_some.core.rules.Tally`.
    """
    alpha = probability("alpha", alpha)
    positive_int("n", n)
    if invalid is None:
        check_finite_inputs(x, indices)
    tally = smooth.counts(x, int(n), PREDICTION, indices=indices, squares=smooth.rule.needs_squares,
                          invalid=invalid)
    drawn = np.flatnonzero(tally.counts.sum(axis=1) > 0)  # inputs marked invalid have no votes
    classes = np.full(len(tally), ABSTAIN, dtype=np.int64)
    classes[drawn] = smooth.rule.predict(tally.rows(drawn), alpha)
    return classes, tally


__all__ = ["ABSTAIN", "CertifyResult", "certify", "check_finite_inputs", "check_inputs", "predict"]
