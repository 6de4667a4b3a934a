"""
Cohen et al.'s CERTIFY and PREDICT as functions of three parts: a vote function, a noise model and a rule.

Every smoothing method in art-some is these two functions with its own parts plugged in, so the sampling,
counting and statistics below are written once.

| Paper link: https://arxiv.org/abs/1902.02918
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from art_some.core.errors import NonFiniteError, name_indices
from art_some.core.noise import ESTIMATION, PREDICTION, SELECTION, count_votes
from art_some.core.stats import binomial_test_two_sided, certifies, clopper_pearson_lower, gaussian_radius
from art_some.core.validate import positive_int, probability

if TYPE_CHECKING:
    import torch

ABSTAIN = -1


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


RuleFunction = Callable[[np.ndarray, np.ndarray, float, object], tuple[np.ndarray, np.ndarray, np.ndarray]]


def cohen_rule(selection_counts: np.ndarray, estimation_counts: np.ndarray, alpha: float, noise):
    """
    Cohen et al.'s certificate: guess c_A = argmax of the selection counts, lower-bound P(c_A) from the
    independent estimation counts with a one-sided Clopper-Pearson bound at level alpha, abstain if the bound
    is below 1/2, otherwise certify the L2 radius sigma * Phi^-1(pA_lower).

    Guarantee: with probability at least 1 - alpha over the estimation draws, a returned class c_A is the
    smoothed classifier's prediction at every point within the returned radius.

    :return: ``(predict, radius, p_lower)`` arrays.
    """
    rows = np.arange(len(selection_counts))
    c_hat = selection_counts.argmax(axis=1)
    n = estimation_counts.sum(axis=1)
    p_lower = clopper_pearson_lower(estimation_counts[rows, c_hat], n, alpha)
    sure = certifies(p_lower)
    radius = np.where(sure, gaussian_radius(p_lower, noise.sigma), 0.0)
    return np.where(sure, c_hat, ABSTAIN).astype(np.int64), radius.astype(np.float64), p_lower


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


def _check_inputs(x, n_name: str, n: int, indices=None) -> None:
    positive_int(n_name, n)
    check_finite_inputs(x, indices)


def certify(
    vote_fn: Callable[["torch.Tensor"], "torch.Tensor"],
    noise,
    x,
    *,
    n0: int,
    n: int,
    alpha: float,
    num_classes: int,
    batch_size: int = 1000,
    seed: int = 0,
    indices: Sequence[int] | None = None,
    device=None,
    rule=cohen_rule,
    verbose: bool | None = False,
) -> CertifyResult:
    """
    CERTIFY (Cohen et al., Algorithm 1, generalised): ``n0`` selection draws pick the class, ``n`` fresh
    estimation draws feed ``rule``.

    Guarantee (for :func:`cohen_rule`): for each input, the probability that a returned (class, radius) is wrong
    about the smoothed classifier is at most ``alpha``. Never from garbage: an input holding NaN or inf, or one on
    whose noisy copies the vote function reports a non-finite output (:data:`~art_some.core.noise.INVALID`),
    raises :class:`~art_some.core.errors.NonFiniteError` naming it. Selection and estimation draws come from independent
    streams keyed by ``(seed, stage, indices[i])``, so results do not depend on ``batch_size`` or sharding.

    :param vote_fn: Maps noisy inputs ``(B, *shape)`` to class indices ``(B,)``.
    :param noise: Noise model (e.g. :class:`~art_some.core.noise.GaussianNoise`).
    :param x: Inputs ``(N, *shape)`` in raw input space.
    :param n0: Selection draws.
    :param n: Estimation draws.
    :param alpha: Failure probability in (0, 1).
    :param num_classes: Number of classes.
    :param batch_size: Noisy inputs per forward pass.
    :param seed: Base seed.
    :param indices: Global input indices that key the noise (default ``0..N-1``).
    :param device: Device for sampling and forward passes.
    :param rule: A :class:`~art_some.core.rules.CertificateRule` (default Cohen's), or a function mapping
                 (selection counts, estimation counts, alpha, noise) to ``(predict, radius, p_lower)``. A rule with
                 ``needs_squares`` also gets the estimation draws' sums of squared tallies (variance-adaptive
                 bounds).
    :param verbose: Progress bars over the draws (None: when standard error is a terminal; see ``count_votes``).
    :return: a :class:`CertifyResult`.
    """
    from art_some.core.rules import as_rule

    rule = as_rule(rule)
    alpha = probability("alpha", alpha)
    positive_int("n0", n0)
    _check_inputs(x, "n", n, indices)
    start = time.perf_counter()
    common = dict(num_classes=num_classes, batch_size=batch_size, seed=seed, indices=indices, device=device,
                  verbose=verbose)
    counts0 = count_votes(vote_fn, x, int(n0), noise, stage=SELECTION, desc="CERTIFY selection", **common)
    common["desc"] = "CERTIFY estimation"
    if rule.needs_squares:
        counts, squares = count_votes(vote_fn, x, int(n), noise, stage=ESTIMATION, squares=True, **common)
    else:
        counts, squares = count_votes(vote_fn, x, int(n), noise, stage=ESTIMATION, **common), None
    pred, radius, p_lower = rule.certify(counts0, counts, alpha, noise, squares=squares)
    seconds = np.full(len(pred), (time.perf_counter() - start) / max(1, len(pred)))
    return CertifyResult(
        pred, radius, p_lower, counts0, counts, int(n0), int(n), alpha, noise.sigma, seconds, squares,
        extra=dict(rule.info()),
    )


def predict(
    vote_fn: Callable[["torch.Tensor"], "torch.Tensor"],
    noise,
    x,
    *,
    n: int,
    alpha: float,
    num_classes: int,
    batch_size: int = 1000,
    seed: int = 0,
    indices: Sequence[int] | None = None,
    device=None,
) -> tuple[np.ndarray, np.ndarray]:
    """
    PREDICT (Cohen et al.): count ``n`` votes, test the top two classes with a two-sided binomial test, and
    abstain (-1) unless the p-value is at most ``alpha``.

    Guarantee: the probability of returning a class other than the smoothed classifier's prediction is at
    most ``alpha``.

    :return: ``(classes, counts)``: int64 classes with -1 for abstain, and the ``(N, C)`` vote counts.
    """
    alpha = probability("alpha", alpha)
    _check_inputs(x, "n", n, indices)
    counts = count_votes(
        vote_fn, x, int(n), noise, num_classes=num_classes, batch_size=batch_size, seed=seed,
        stage=PREDICTION, indices=indices, device=device,
    )
    return predict_from_counts(counts, alpha), counts


def predict_from_counts(counts: np.ndarray, alpha: float) -> np.ndarray:
    """PREDICT's decision from vote counts: the top class if the binomial test rejects a tie, else -1."""
    order = np.argsort(-counts, axis=1, kind="stable")
    rows = np.arange(len(counts))
    top, runner_up = counts[rows, order[:, 0]], counts[rows, order[:, 1]] if counts.shape[1] > 1 else 0
    p_value = binomial_test_two_sided(top, runner_up)
    return np.where(p_value <= alpha, order[:, 0], ABSTAIN).astype(np.int64)
