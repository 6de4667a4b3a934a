"""
Noise families and norms: each family's radius against its paper's closed form, its draws, and soundness tested
statistically on exact ground truths in each norm (fixed-n CERTIFY, sequential CERTIFY and PREDICT), with a broken
radius failing the same test; tightness at large n.

The ground truth: a half-space classifier h(z) = 1[z_0 > 0] at x with x_0 = d. For noise symmetric about 0 the
smoothed classifier predicts 1 exactly where x_0 > 0, so its robust radius at x is |d| in L1, L2 and L-infinity
alike (the distance to a coordinate hyperplane), and pA is the noise's one-dimensional CDF at d.
"""
import numpy as np
import pytest
import torch
from scipy.stats import binom, norm

from art_some.core.noise import GaussianNoise, LaplaceNoise, UniformNoise, lp_norm
from art_some.core.rules import CohenRule
from art_some.core.smoothing import Smooth
from art_some.core.stats import gaussian_radius

SIGMA = 0.5
ALPHA = 0.1  # large, for power
DIM = 4
TRIALS = 400


def half_space(z):
    return (z[:, 0] > 0).long()


def p_a(family, d, sigma=SIGMA):
    """The exact pA of the half-space at distance d > 0 under each family (its 1-D CDF at d)."""
    if family == "gaussian":
        return norm.cdf(d / sigma)
    if family == "laplace":
        return 1 - 0.5 * np.exp(-d / (sigma / np.sqrt(2)))
    half_width = sigma * np.sqrt(3)
    return min(1.0, (d + half_width) / (2 * half_width))


FAMILIES = {"gaussian": GaussianNoise, "laplace": LaplaceNoise, "uniform": UniformNoise}
CASES = [("gaussian", "l2"), ("gaussian", "l1"), ("gaussian", "linf"), ("laplace", "l1"), ("uniform", "l1")]


class BrokenUniform(UniformNoise):
    """The L2 formula of Gaussian noise used for uniform noise: not a certificate."""

    def _radius(self, p):
        return gaussian_radius(p, self.sigma)


def certify(noise, d, *, trials=TRIALS, n=2000, alpha=ALPHA, sequential=None, seed=5):
    x = torch.zeros((trials, DIM))
    x[:, 0] = d
    smooth = Smooth(half_space, noise, CohenRule(), num_classes=2, batch_size=50_000, seed=seed)
    if sequential is None:
        return smooth.certify(x, n0=20, n=n, alpha=alpha)
    return smooth.certify_sequential(x, n0=20, n=n, alpha=alpha, start=20, **sequential)


def wrong_claims(result, d) -> int:
    """Certificates that are wrong: a class that is not 1, or a radius beyond the true |d| (in any norm)."""
    certified = result.predict >= 0
    return int(np.sum(certified & ((result.predict != 1) | (result.radius > abs(d) + 1e-12))))


def allowance(trials=TRIALS, alpha=ALPHA):
    return binom.ppf(0.999, trials, alpha)


# The formulas -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("t", [0.05, 0.3, 0.8])
def test_the_tight_families_give_back_the_distance_from_the_exact_pa(t):
    """Each radius formula inverts its family's 1-D CDF: pA of a half-space at distance t certifies exactly t."""
    assert GaussianNoise(SIGMA).radius(p_a("gaussian", t)) == pytest.approx(t, rel=1e-9)
    assert LaplaceNoise(SIGMA).radius(p_a("laplace", t)) == pytest.approx(t, rel=1e-9)
    assert UniformNoise(SIGMA).radius(p_a("uniform", t)) == pytest.approx(t, rel=1e-9)


def test_the_radii_against_the_papers_closed_forms():
    p = np.array([0.4, 0.5, 0.6, 0.9, 0.999])
    sure = p > 0.5
    # Cohen et al.: sigma Phi^-1(p); Teng et al.: -b ln(2(1 - p)), b = sigma / sqrt 2; Yang et al.: 2 lambda (p - 1/2),
    # lambda = sigma sqrt 3. Zero where p <= 1/2.
    np.testing.assert_allclose(GaussianNoise(SIGMA).radius(p), np.where(sure, SIGMA * norm.ppf(p), 0.0))
    np.testing.assert_allclose(GaussianNoise(SIGMA, norm="l1").radius(p), np.where(sure, SIGMA * norm.ppf(p), 0.0))
    np.testing.assert_allclose(GaussianNoise(SIGMA, norm="linf", dimension=64).radius(p),
                               np.where(sure, SIGMA * norm.ppf(p) / 8.0, 0.0))
    b = SIGMA / np.sqrt(2)
    np.testing.assert_allclose(LaplaceNoise(SIGMA).radius(p), np.where(sure, -b * np.log(2 * (1 - p)), 0.0))
    np.testing.assert_allclose(UniformNoise(SIGMA).radius(p), np.where(sure, 2 * SIGMA * np.sqrt(3) * (p - 0.5), 0.0))
    assert LaplaceNoise(SIGMA).radius(1.0) == np.inf  # every vote for c_A; the engine's bound is never 1
    np.testing.assert_allclose(UniformNoise(np.array([0.5, 1.0])).radius([0.75, 0.75]),
                               [0.5 * np.sqrt(3) * 0.5, np.sqrt(3) * 0.5])  # a sigma per input


def test_families_refuse_norms_they_do_not_certify_and_linf_needs_the_dimension():
    with pytest.raises(ValueError, match="laplace noise certifies radii in l1, not norm='l2'"):
        LaplaceNoise(0.5, norm="l2")
    with pytest.raises(ValueError, match="uniform noise certifies radii in l1, not norm='linf'"):
        UniformNoise(0.5, norm="linf")
    with pytest.raises(ValueError, match="needs the input dimension"):
        GaussianNoise(0.5, norm="linf").radius(0.9)
    with pytest.raises(ValueError, match="sigma must be a finite number > 0"):
        LaplaceNoise(0.0)
    with pytest.raises(ValueError, match="margin of Gaussian noise is an L2 distance"):
        GaussianNoise(0.5, norm="l1").margin(0.9, 0.5)


@pytest.mark.parametrize("family", ["gaussian", "laplace", "uniform"])
def test_unit_draws_have_zero_mean_and_unit_variance_and_the_family_shape(family):
    generator = torch.Generator().manual_seed(0)
    eps = FAMILIES[family](1.0).unit((200_000,), generator, "cpu").double()
    assert abs(float(eps.mean())) < 0.01 and abs(float(eps.var()) - 1) < 0.02
    kurtosis = float(((eps - eps.mean()) ** 4).mean() / eps.var() ** 2)
    expected = {"gaussian": 3.0, "laplace": 6.0, "uniform": 1.8}[family]
    assert kurtosis == pytest.approx(expected, rel=0.1)
    if family == "uniform":
        assert float(eps.abs().max()) <= np.sqrt(3)
    again = FAMILIES[family](1.0).unit((200_000,), torch.Generator().manual_seed(0), "cpu")
    assert torch.equal(again.double(), eps)  # keyed by the generator alone


def test_the_engine_draws_the_family_it_is_given():
    seen = []

    def record(z):
        seen.append(z[:, 0].clone())
        return half_space(z)

    Smooth(record, UniformNoise(0.5), num_classes=2).counts(torch.zeros((3, DIM)), 500, 1)
    drawn = torch.cat(seen)
    assert float(drawn.abs().max()) <= 0.5 * np.sqrt(3) + 1e-6 and float(drawn.std()) == pytest.approx(0.5, rel=0.1)


def test_lp_norm():
    delta = np.array([[3.0, -4.0], [0.0, 0.0]])
    assert lp_norm(delta, "l1") == 7.0 and lp_norm(delta, "l2") == 5.0 and lp_norm(delta, "linf") == 4.0
    with pytest.raises(ValueError, match="norm must be one of"):
        lp_norm(delta, "l3")


# Soundness on exact ground truths, each norm ----------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("family,norm_name", CASES)
def test_fixed_n_certify_is_sound_in_every_norm(family, norm_name):
    for d in (0.2, 0.6):
        noise = FAMILIES[family](SIGMA, norm=norm_name, dimension=DIM)
        result = certify(noise, d, n=1000)
        assert (result.predict == 1).mean() > 0.8
        assert wrong_claims(result, d) <= allowance(), (family, norm_name, d)


@pytest.mark.slow
@pytest.mark.parametrize("family,norm_name", CASES)
def test_sequential_certify_is_sound_in_every_norm(family, norm_name):
    noise = FAMILIES[family](SIGMA, norm=norm_name, dimension=DIM)
    d = 0.4
    radius_mode = certify(noise, d, n=3000, sequential={"tolerance": 0.0})
    assert wrong_claims(radius_mode, d) <= allowance()
    fixed_radius = certify(noise, d, n=3000, sequential={"radii": [0.98 * d, 1.02 * d]})
    wrong = int(np.sum(fixed_radius.certified_at[:, 1]))  # "certified at 1.02 d" is always wrong
    assert wrong <= allowance()


@pytest.mark.slow
def test_a_broken_radius_fails_the_same_test():
    d = 0.8  # pA = 0.96 for uniform noise at sigma 0.5; the Gaussian formula then claims about 0.85
    sound = certify(UniformNoise(SIGMA), d, n=3000)
    broken = certify(BrokenUniform(SIGMA), d, n=3000)
    np.testing.assert_array_equal(sound.counts_estimation, broken.counts_estimation)  # the same draws
    assert wrong_claims(sound, d) <= allowance()
    assert wrong_claims(broken, d) > allowance()
    broken_sequential = certify(BrokenUniform(SIGMA), d, n=3000, sequential={"tolerance": 0.0})
    assert wrong_claims(broken_sequential, d) > allowance()


@pytest.mark.parametrize("family", ["gaussian", "laplace", "uniform"])
def test_predict_is_sound_for_every_family(family):
    # Near the boundary PREDICT abstains often; a class other than 1 is wrong, at most alpha of the time.
    d = 0.02
    x = torch.zeros((TRIALS, DIM))
    x[:, 0] = d
    smooth = Smooth(half_space, FAMILIES[family](SIGMA), num_classes=2, batch_size=50_000, seed=2)
    classes, _, _ = smooth.predict(x, n=500, alpha=ALPHA)
    assert np.sum(classes == 0) <= allowance()
    far = torch.zeros((50, DIM))
    far[:, 0] = 0.5
    assert (smooth.predict(far, n=500, alpha=ALPHA)[0] == 1).all()


@pytest.mark.parametrize("family", ["gaussian", "laplace", "uniform"])
def test_the_certified_radius_is_tight_at_large_n(family):
    d = 0.6 if family != "uniform" else 0.7  # pA about 0.88-0.9
    result = certify(FAMILIES[family](SIGMA), d, trials=20, n=100_000, alpha=0.001)
    assert np.median(result.radius) == pytest.approx(d, rel=0.05)
    assert (result.radius <= d).all()
