"""
Statistics of randomized smoothing: confidence bounds and tests on vote counts.

Everything is vectorised over inputs and computed in float64 on the host; only counts come from the device.
Clopper-Pearson bounds come from :mod:`scipy.stats.beta` (no statsmodels needed).

| Paper link: https://arxiv.org/abs/1902.02918
"""
from __future__ import annotations

import numpy as np
from scipy.stats import beta, binom, norm

from art_some.core.validate import probability


def clopper_pearson_lower(k, n, alpha: float) -> np.ndarray:
    """
    One-sided (1 - alpha) Clopper-Pearson lower confidence bound on a binomial proportion.

    Guarantee: for k ~ Binomial(n, p), P(bound > p) <= alpha. Equal to the lower end of the two-sided
    interval at level 2 * alpha (what Cohen et al. compute with statsmodels' ``method="beta"``).
    Edge cases: k = 0 gives 0; k = n gives alpha ** (1 / n).

    :param k: Successes (scalar or array of ints, 0 <= k <= n).
    :param n: Trials (scalar or array, >= 1).
    :param alpha: Failure probability in (0, 1).
    :return: float64 array of lower bounds, broadcast over ``k`` and ``n``.
    """
    alpha = probability("alpha", alpha)
    k = np.asarray(k, dtype=np.float64)
    n = np.asarray(n, dtype=np.float64)
    if np.any(n < 1) or np.any(k < 0) or np.any(k > n):
        raise ValueError("clopper_pearson_lower needs 0 <= k <= n and n >= 1")
    with np.errstate(invalid="ignore"):
        bound = beta.ppf(alpha, k, n - k + 1)
    return np.where(k == 0, 0.0, bound)


def clopper_pearson_upper(k, n, alpha: float) -> np.ndarray:
    """
    One-sided (1 - alpha) Clopper-Pearson upper bound; k = n gives 1.

    :param k: Successes.
    :param n: Trials.
    :param alpha: Failure probability in (0, 1).
    :return: float64 array of upper bounds.
    """
    k = np.asarray(k, dtype=np.float64)
    n = np.asarray(n, dtype=np.float64)
    return 1.0 - clopper_pearson_lower(n - k, n, alpha)


def binomial_test_two_sided(k_a, k_b) -> np.ndarray:
    """
    Two-sided exact binomial test of H0: p = 1/2 for k_a successes in k_a + k_b trials (Cohen's PREDICT).

    For p = 1/2 the distribution is symmetric, so the p-value is min(1, 2 * P(X <= min(k_a, k_b))), the same
    value as ``scipy.stats.binomtest(k_a, k_a + k_b, 0.5).pvalue``; no trials gives p-value 1.

    :param k_a: Votes for the top class (array).
    :param k_b: Votes for the runner-up (array).
    :return: float64 array of p-values.
    """
    k_a = np.asarray(k_a, dtype=np.int64)
    k_b = np.asarray(k_b, dtype=np.int64)
    total = k_a + k_b
    p = 2.0 * binom.cdf(np.minimum(k_a, k_b), total, 0.5)
    return np.where(total == 0, 1.0, np.minimum(1.0, p))


def gaussian_radius(p_lower, sigma) -> np.ndarray:
    """
    Cohen et al.'s L2 radius sigma * Phi^-1(pA_lower); 0.0 where pA_lower <= 1/2.

    :param p_lower: Lower bound(s) on the top-class probability.
    :param sigma: Noise standard deviation(s).
    :return: float64 radii.
    """
    p_lower = np.asarray(p_lower, dtype=np.float64)
    radius = np.asarray(sigma, dtype=np.float64) * norm.ppf(p_lower)
    return np.where(p_lower > 0.5, radius, 0.0)


def max_certifiable_radius(sigma: float, n: int, alpha: float) -> float:
    """
    The largest radius CERTIFY can return: sigma * Phi^-1(alpha ** (1 / n)), reached when all n votes agree.

    :param sigma: Noise standard deviation.
    :param n: Estimation draws.
    :param alpha: Failure probability.
    :return: the radius cap (3.811 * sigma at n = 100,000 and alpha = 0.001).
    """
    return float(gaussian_radius(clopper_pearson_lower(n, n, alpha), sigma))


def hoeffding_lower(mean, n, alpha: float) -> np.ndarray:
    """
    One-sided (1 - alpha) Hoeffding lower bound on the mean of n i.i.d. variables in [0, 1]:
    ``mean - sqrt(ln(1 / alpha) / (2 n))``, clipped at 0.

    :param mean: Sample means.
    :param n: Sample sizes (>= 1).
    :param alpha: Failure probability in (0, 1).
    :return: float64 lower bounds.
    """
    alpha = probability("alpha", alpha)
    mean = np.asarray(mean, dtype=np.float64)
    n = np.asarray(n, dtype=np.float64)
    return np.clip(mean - np.sqrt(np.log(1.0 / alpha) / (2.0 * n)), 0.0, 1.0)


def bernstein_lower(mean, variance, n, alpha: float) -> np.ndarray:
    """
    One-sided (1 - alpha) empirical-Bernstein lower bound on the mean of n >= 2 i.i.d. variables in [0, 1]
    (Maurer & Pontil 2009, Theorem 4): ``mean - sqrt(2 V ln(2/alpha) / n) - 7 ln(2/alpha) / (3 (n - 1))`` with V the
    unbiased sample variance; clipped at 0. Tighter than Hoeffding when the variance is small.

    :param mean: Sample means.
    :param variance: Unbiased sample variances.
    :param n: Sample sizes (>= 2).
    :param alpha: Failure probability in (0, 1).
    :return: float64 lower bounds.
    """
    alpha = probability("alpha", alpha)
    n = np.asarray(n, dtype=np.float64)
    if np.any(n < 2):
        raise ValueError("the empirical-Bernstein bound needs n >= 2 samples")
    log_term = np.log(2.0 / alpha)
    width = np.sqrt(2.0 * np.maximum(variance, 0.0) * log_term / n) + 7.0 * log_term / (3.0 * (n - 1.0))
    return np.clip(np.asarray(mean, dtype=np.float64) - width, 0.0, 1.0)


def certifies(p_lower) -> np.ndarray:
    """
    The one abstain test of every certificate rule, Cohen et al.'s: a class is certified when the lower bound on
    its probability is at least 1/2 (at exactly 1/2 the radius is 0), and the rule abstains below.
    """
    return np.asarray(p_lower) >= 0.5
