import numpy as np
import pytest
from scipy.stats import binomtest, norm

from art_some.core.stats import (
    binomial_test_two_sided,
    clopper_pearson_lower,
    clopper_pearson_upper,
    gaussian_radius,
    max_certifiable_radius,
)


def test_clopper_pearson_edge_cases():
    assert clopper_pearson_lower(0, 50, 0.001) == 0.0
    for n in (1, 10, 100_000):
        assert clopper_pearson_lower(n, n, 0.001) == pytest.approx(0.001 ** (1 / n), rel=1e-12)
    assert clopper_pearson_upper(7, 7, 0.01) == 1.0


def test_clopper_pearson_vectorised_and_monotone():
    k = np.arange(0, 101)
    lower = clopper_pearson_lower(k, 100, 0.05)
    assert lower.shape == (101,) and lower.dtype == np.float64
    assert np.all(np.diff(lower) > 0)
    assert np.all(lower <= k / 100)
    assert np.all(clopper_pearson_upper(k, 100, 0.05) >= k / 100)


def test_clopper_pearson_coverage_within_alpha():
    # Statistical: the one-sided bound exceeds the true p with frequency at most alpha.
    rng = np.random.default_rng(1)
    alpha, trials = 0.05, 40_000
    for p, n in ((0.7, 50), (0.95, 200), (0.5, 10)):
        k = rng.binomial(n, p, size=trials)
        fails = np.sum(clopper_pearson_lower(k, n, alpha) > p)
        # 99.9% binomial upper limit on the count at rate alpha.
        assert fails <= trials * alpha + 3.1 * np.sqrt(trials * alpha * (1 - alpha))


@pytest.mark.parametrize("alpha", [0, 1, -0.1, 1.5, float("nan")])
def test_alpha_outside_unit_interval_is_rejected(alpha):
    with pytest.raises(ValueError, match="alpha"):
        clopper_pearson_lower(3, 10, alpha)


def test_bad_counts_are_rejected():
    with pytest.raises(ValueError):
        clopper_pearson_lower(11, 10, 0.01)
    with pytest.raises(ValueError):
        clopper_pearson_lower(0, 0, 0.01)


def test_binomial_test_matches_scipy():
    for k_a in range(0, 25):
        for k_b in range(0, 25):
            if k_a + k_b == 0:
                continue
            expected = binomtest(k_a, k_a + k_b, 0.5).pvalue
            assert binomial_test_two_sided(k_a, k_b) == pytest.approx(expected, rel=1e-9, abs=1e-15)
    assert binomial_test_two_sided(0, 0) == 1.0


def test_radius_and_cap():
    assert gaussian_radius(0.5, 1.0) == 0.0
    assert gaussian_radius(0.4, 1.0) == 0.0
    assert gaussian_radius(norm.cdf(1.0), 0.5) == pytest.approx(0.5)
    # The caps seen in the published logs: 0.953, 1.906, 3.811 at n=100,000 and alpha=0.001.
    assert max_certifiable_radius(1.0, 100_000, 0.001) == pytest.approx(3.811, abs=1e-3)
    assert max_certifiable_radius(0.25, 100_000, 0.001) == pytest.approx(0.953, abs=1e-3)
    assert max_certifiable_radius(0.5, 100_000, 0.001) == pytest.approx(norm.ppf(0.001 ** 1e-5) * 0.5)


@pytest.mark.parametrize("bound", ["hoeffding", "bernstein"])
def test_mean_bounds_fail_no_more_often_than_alpha(bound):
    # Means of n patch-vote fractions X = Binomial(P, p) / P, the vote-averaged Smooth-Mean's per-draw values.
    from art_some.core.stats import bernstein_lower, hoeffding_lower

    rng = np.random.default_rng(0)
    alpha, n, trials = 0.05, 200, 4000
    # Bernoulli(1/2) (patches = 1) has the largest variance, where Hoeffding is nearly tight: a bound half as wide
    # fails about 11% of the time and is caught.
    for patches, p in ((1, 0.5), (9, 0.3), (9, 0.6), (9, 0.9), (9, 0.99)):
        x = rng.binomial(patches, p, size=(trials, n)) / patches
        mean, variance = x.mean(axis=1), x.var(axis=1, ddof=1)
        lower = hoeffding_lower(mean, n, alpha) if bound == "hoeffding" else bernstein_lower(mean, variance, n, alpha)
        failures = np.mean(lower > p)
        assert failures <= alpha, (p, failures)  # both bounds are conservative; far below alpha in practice
        assert np.all(lower <= mean)
    # Small variance: Bernstein is tighter than Hoeffding.
    x = rng.binomial(9, 0.97, size=(1, 5000)) / 9
    assert bernstein_lower(x.mean(), x.var(ddof=1), 5000, 0.001) > hoeffding_lower(x.mean(), 5000, 0.001)
