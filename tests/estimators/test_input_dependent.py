import numpy as np
import pytest
import torch
from scipy.stats import ncx2, norm

from art_some.estimators.input_dependent import MAX_NONCENTRALITY, KNNSigma, semi_elastic_bound, semi_elastic_radius

P_GRID = np.array([0.6, 0.9, 0.99, 0.9999])


def cohen_bound(p, distance, sigma):
    return norm.cdf(norm.ppf(p) - distance / sigma)


def worst_ball(x0, x1, sigma0, sigma1, p):
    """The Neyman-Pearson ball, built from the geometry alone: its centre, squared radius and inside flag."""
    centre = (sigma0**2 * x1 - sigma1**2 * x0) / (sigma0**2 - sigma1**2)
    lam0 = np.sum((x0 - centre) ** 2) / sigma0**2
    inside = sigma1 > sigma0
    t = ncx2.isf(1 - p, len(x0), lam0) if inside else ncx2.ppf(1 - p, len(x0), lam0)
    return centre, t * sigma0**2, inside


def ball_mass(mean, sigma, centre, squared_radius, inside):
    """Exact N(mean, sigma^2 I)-mass of the inside (or outside) of a ball, vectorised over centres."""
    lam = np.sum((mean - centre) ** 2, axis=-1) / sigma**2
    dim = np.shape(centre)[-1]
    fn = ncx2.cdf if inside else ncx2.sf
    return fn(squared_radius / sigma**2, dim, lam)


# --- the radius --------------------------------------------------------------------------------------------------


def test_rate_zero_is_exactly_cohen():
    p = np.array([0.2, 0.5, 0.51, 0.7, 0.99, 0.999999])
    sigma = np.array([0.25, 0.5, 1.0, 0.12, 0.5, 2.0])
    expected = np.where(p > 0.5, sigma * norm.ppf(p), 0.0)
    np.testing.assert_array_equal(semi_elastic_radius(p, sigma, 0.0, 3072), expected)


@pytest.mark.parametrize("dim", [2, 3072])
def test_tiny_rate_is_within_the_grid_of_cohen(dim):
    cohen = 0.5 * norm.ppf(P_GRID)
    radius = semi_elastic_radius(P_GRID, 0.5, 1e-6, dim)
    assert np.all(radius <= cohen) and np.all(radius >= 0.98 * cohen)


def test_abstain_and_certain_inputs():
    radius = semi_elastic_radius([0.0, 0.3, 0.5, 1.0], 0.5, 0.1, 10)
    np.testing.assert_array_equal(radius, [0.0, 0.0, 0.0, np.inf])


def test_radius_broadcasts_over_p_and_sigma():
    radius = semi_elastic_radius(P_GRID[:, None], [[0.25, 0.5, 1.0]], 0.1, 64, radius_steps=20, sigma_steps=11)
    assert radius.shape == (4, 3) and radius.dtype == np.float64
    assert np.all(np.diff(radius, axis=0) > 0)  # larger p_lower, larger radius


def test_radius_does_not_grow_with_rate():
    radii = np.array([semi_elastic_radius(P_GRID, 0.5, rate, 64) for rate in (0.0, 0.01, 0.05, 0.2, 0.5, 1.0)])
    assert np.all(np.diff(radii, axis=0) <= 0)
    assert np.all(radii[-1] < 0.2 * radii[0])


def test_radius_shrinks_with_dimension():
    radii = np.array([semi_elastic_radius(P_GRID, 0.5, 0.05, dim) for dim in (2, 64, 784, 3072)])
    assert np.all(np.diff(radii, axis=0) <= 0)
    assert np.all(radii[-1] < 0.5 * radii[0])


@pytest.mark.parametrize(
    "p, sigma0, rate, dim", [(0.9, 0.5, 0.05, 784), (0.99, 0.25, 0.5, 64), (0.999, 1.0, 0.01, 3072), (0.7, 0.5, 1.0, 2)]
)
def test_radius_holds_on_a_fine_sigma_grid(p, sigma0, rate, dim):
    cohen = sigma0 * norm.ppf(p)
    radius = float(semi_elastic_radius(p, sigma0, rate, dim))
    assert 0.0 < radius < cohen
    sigma1 = sigma0 * np.exp(rate * radius * np.linspace(-1.0, 1.0, 1001))
    assert semi_elastic_bound(p, radius, sigma0, sigma1, dim).min() > 0.5
    # It is the last passing grid distance: one step further fails on the default sigma grid.
    further = radius + cohen / 100
    sigma1 = sigma0 * np.exp(rate * further * np.append(np.linspace(-1.0, 1.0, 41), 0.0))
    assert semi_elastic_bound(p, further, sigma0, sigma1, dim).min() <= 0.5


# --- the bound ---------------------------------------------------------------------------------------------------


def test_equal_sigmas_is_cohen():
    rng = np.random.default_rng(0)
    p, distance, sigma = rng.uniform(0, 1, 50), rng.uniform(0, 3, 50), rng.uniform(0.1, 2, 50)
    for dim in (1, 784):
        bound = semi_elastic_bound(p, distance, sigma, sigma, dim)
        np.testing.assert_allclose(bound, cohen_bound(p, distance, sigma), rtol=0, atol=1e-15)


def test_bound_edge_values_and_shape():
    assert semi_elastic_bound(1.0, 2.0, 0.5, [0.3, 0.5, 0.9], 10).tolist() == [1.0, 1.0, 1.0]
    assert semi_elastic_bound(0.0, 2.0, 0.5, [0.3, 0.5, 0.9], 10).tolist() == [0.0, 0.0, 0.0]
    # No shift: only the change of scale remains; it costs mass in high dimension.
    assert semi_elastic_bound(0.9, 0.0, 0.5, 0.5, 10) == pytest.approx(0.9, abs=1e-15)
    assert semi_elastic_bound(0.9, 0.0, 0.5, 0.55, 3072) < 0.01
    assert semi_elastic_bound(P_GRID[:, None], [0.1, 0.2], 0.5, 0.6, 5).shape == (4, 2)


@pytest.mark.parametrize("dim", [2, 784, 3072])
def test_bound_is_continuous_at_equal_sigmas(dim):
    cohen = cohen_bound(P_GRID, 0.4, 0.5)
    for eps, tol in ((1e-3, 3e-3), (1e-5, 1e-3), (1e-8, 1e-6)):
        for sigma1 in (0.5 * (1 - eps), 0.5 * (1 + eps)):
            assert np.all(np.abs(semi_elastic_bound(P_GRID, 0.4, 0.5, sigma1, dim) - cohen) <= tol)


@pytest.mark.parametrize("dim", [2, 784])
@pytest.mark.parametrize("sign", [-1, 1])
def test_two_step_fallback_is_below_the_exact_bound(dim, sign):
    # Just beyond MAX_NONCENTRALITY ncx2 is still accurate (only slow), so the exact bound is the reference there.
    p, distance, sigma0 = np.array([0.6, 0.99]), 0.5, 0.5
    ratio = 1 + sign * (distance / sigma0) / (2 * np.sqrt(3 * MAX_NONCENTRALITY))
    gap = (1 - ratio) * (1 + ratio)
    lam0 = (distance / sigma0 / gap) ** 2
    lam1 = ratio**2 * lam0
    assert max(lam0, lam1) > MAX_NONCENTRALITY
    if ratio > 1:
        exact = ncx2.cdf(ncx2.isf(1 - p, dim, lam0) / ratio**2, dim, lam1)
    else:
        exact = ncx2.sf(ncx2.ppf(1 - p, dim, lam0) / ratio**2, dim, lam1)
    bound = semi_elastic_bound(p, distance, sigma0, sigma0 * ratio, dim)
    assert np.all(bound <= exact + 1e-10)
    assert np.all(bound >= exact - 1e-3)


@pytest.mark.parametrize("dim", [2, 5])
@pytest.mark.parametrize("ratio", [0.5, 0.9, 0.99, 1.01, 1.3, 2.0])
def test_worst_ball_attains_the_bound(dim, ratio):
    rng = np.random.default_rng(dim * 100 + int(ratio * 100))
    x0 = rng.normal(size=dim)
    x1 = x0 + rng.normal(size=dim) * 0.3
    sigma0, p = 0.7, 0.93
    sigma1 = sigma0 * ratio
    bound = float(semi_elastic_bound(p, np.linalg.norm(x1 - x0), sigma0, sigma1, dim))
    centre, squared_radius, inside = worst_ball(x0, x1, sigma0, sigma1, p)
    assert ball_mass(x0, sigma0, centre, squared_radius, inside) == pytest.approx(p, abs=1e-9)
    assert ball_mass(x1, sigma1, centre, squared_radius, inside) == pytest.approx(bound, abs=1e-6)
    # Sampling, independent of ncx2: the ball holds p under x0 and the bound under x1.
    n = 200_000
    for mean, sigma, target in ((x0, sigma0, p), (x1, sigma1, bound)):
        points = mean + sigma * rng.normal(size=(n, dim))
        in_ball = np.sum((points - centre) ** 2, axis=1) <= squared_radius
        frac = np.mean(in_ball if inside else ~in_ball)
        assert abs(frac - target) <= 5 * np.sqrt(target * (1 - target) / n) + 1e-4


@pytest.mark.parametrize("dim", [2, 5])
def test_no_set_of_mass_p_falls_below_the_bound(dim):
    # Balls (inside and outside, anywhere) and half-spaces whose N(x0, sigma0^2)-mass is exactly p.
    rng = np.random.default_rng(dim)
    ratios = [0.4, 0.8, 0.97, 1 - 1e-7, 1.0, 1 + 1e-7, 1.03, 1.25, 2.5]
    for trial in range(36):
        x0 = rng.normal(size=dim)
        x1 = x0 + rng.normal(size=dim) * rng.uniform(0.05, 0.6)
        sigma0 = rng.uniform(0.2, 1.0)
        sigma1 = sigma0 * ratios[trial % len(ratios)]
        p = rng.uniform(0.5, 0.999)
        bound = float(semi_elastic_bound(p, np.linalg.norm(x1 - x0), sigma0, sigma1, dim))
        centres = x0 + rng.normal(size=(200, dim)) * rng.uniform(0.1, 3.0, size=(200, 1))
        if abs(sigma1 / sigma0 - 1) > 0.01:  # also centres near the worst one (too far away for ncx2 otherwise)
            centres[:20] = worst_ball(x0, x1, sigma0, sigma1, p)[0] + 0.05 * rng.normal(size=(20, dim))
        lam0 = np.sum((x0 - centres) ** 2, axis=1) / sigma0**2
        for inside in (True, False):
            squared_radius = sigma0**2 * (ncx2.isf(1 - p, dim, lam0) if inside else ncx2.ppf(1 - p, dim, lam0))
            assert np.all(ball_mass(x1, sigma1, centres, squared_radius, inside) >= bound - 1e-9)
        normals = rng.normal(size=(200, dim))
        normals /= np.linalg.norm(normals, axis=1, keepdims=True)
        offsets = normals @ x0 + sigma0 * norm.ppf(p)  # {u.x <= h} has mass p under x0
        assert np.all(norm.cdf((offsets - normals @ x1) / sigma1) >= bound - 1e-9)
        # And by sampling, for a few of them.
        points = x1 + sigma1 * rng.normal(size=(50_000, dim))
        frac = np.mean(points @ normals[:5].T <= offsets[:5], axis=0)
        assert np.all(frac >= bound - 5 * np.sqrt(0.25 / 50_000))


# --- KNNSigma ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def knn():
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(400, 3, 4))
    return KNNSigma(reference, sigma_base=0.5, rate=0.7, k=10), reference


def test_knn_sigma_is_log_lipschitz(knn):
    sigma, reference = knn
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.normal(size=(100, 3, 4)), 3 * rng.normal(size=(20, 3, 4)), reference[:50]])
    pairs = [(x, x[rng.permutation(len(x))])]
    pairs += [(x, x + scale * rng.normal(size=x.shape)) for scale in (1e-9, 1e-6, 1e-3, 0.1, 1.0)]
    worst = 0.0
    for a, b in pairs:
        gap = np.abs(np.log(sigma(a)) - np.log(sigma(b)))
        allowed = sigma.rate * np.linalg.norm((a - b).reshape(len(a), -1), axis=1)
        assert np.all(gap <= allowed + 1e-9)
        worst = max(worst, np.max(gap / allowed))
    assert worst > 0.5  # the constant is not vacuous either


def test_knn_sigma_torch_matches_numpy(knn):
    sigma, _ = knn
    x = np.random.default_rng(2).normal(size=(64, 3, 4))
    expected = sigma(x)
    assert expected.shape == (64,) and expected.dtype == np.float64
    got = sigma(torch.from_numpy(x))
    assert got.dtype == torch.float64 and got.device.type == "cpu"
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12)
    got32 = sigma(torch.from_numpy(x).float())
    assert got32.dtype == torch.float32
    np.testing.assert_allclose(got32.numpy(), expected, rtol=1e-5)
    assert sigma(np.zeros((0, 3, 4))).shape == (0,)


def test_knn_sigma_default_offset(knn):
    sigma, reference = knn
    flat = reference.reshape(len(reference), -1)
    distances = np.linalg.norm(flat[:, None] - flat[None], axis=2)
    np.fill_diagonal(distances, np.inf)
    expected = np.median(np.mean(np.sort(distances, axis=1)[:, : sigma.k], axis=1))
    assert sigma.offset == pytest.approx(expected, rel=1e-12)
    # Fresh points from the same distribution are typical: their median sigma is about sigma_base.
    fresh = np.random.default_rng(3).normal(size=(4000, 3, 4))
    assert np.median(sigma(fresh)) == pytest.approx(sigma.sigma_base, rel=0.05)
    # Far from the data the noise grows, next to it it shrinks.
    assert sigma(10 * fresh[:5]).min() > sigma.sigma_base > sigma(reference[:5]).max()


def test_knn_sigma_explicit_offset_and_all_neighbours():
    reference = np.array([[0.0, 0.0], [3.0, 4.0]])
    sigma = KNNSigma(torch.as_tensor(reference), sigma_base=2.0, rate=0.5, k=2, offset=1.0)
    # From the origin: distances 0 and 5, mean 2.5.
    assert sigma(np.zeros((1, 2)))[0] == pytest.approx(2.0 * np.exp(0.5 * 1.5), rel=1e-12)


# --- validation --------------------------------------------------------------------------------------------------

_REF = np.zeros((5, 2))


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda: semi_elastic_bound(1.5, 1.0, 1.0, 1.0, 2), "p_lower"),
        (lambda: semi_elastic_bound(float("nan"), 1.0, 1.0, 1.0, 2), "p_lower"),
        (lambda: semi_elastic_bound(0.9, -1.0, 1.0, 1.0, 2), "distance"),
        (lambda: semi_elastic_bound(0.9, 1.0, 0.0, 1.0, 2), "sigma0"),
        (lambda: semi_elastic_bound(0.9, 1.0, 1.0, [1.0, -2.0], 2), "sigma1"),
        (lambda: semi_elastic_bound(0.9, 1.0, 1.0, 1.0, 0), "dim"),
        (lambda: semi_elastic_bound(0.9, 1.0, 1.0, 1.0, 2.5), "dim"),
        (lambda: semi_elastic_radius(-0.1, 0.5, 0.1, 2), "p_lower"),
        (lambda: semi_elastic_radius(0.9, [0.5, float("inf")], 0.1, 2), "sigma0"),
        (lambda: semi_elastic_radius(0.9, 0.5, -0.1, 2), "rate"),
        (lambda: semi_elastic_radius(0.9, 0.5, float("inf"), 2), "rate"),
        (lambda: semi_elastic_radius(0.9, 0.5, float("nan"), 2), "rate"),
        (lambda: semi_elastic_radius(0.9, 0.5, 0.1, True), "dim"),
        (lambda: semi_elastic_radius(0.9, 0.5, 0.1, 2, radius_steps=0), "radius_steps"),
        (lambda: semi_elastic_radius(0.9, 0.5, 0.1, 2, sigma_steps=1), "sigma_steps"),
        (lambda: KNNSigma(_REF, 0.5, 0.1, k=0), "k"),
        (lambda: KNNSigma(_REF, 0.5, 0.1, k=6, offset=0.0), "k"),
        (lambda: KNNSigma(_REF, 0.5, 0.1, k=5), "k"),  # the default offset excludes each point itself
        (lambda: KNNSigma(_REF, 0.0, 0.1, k=2), "sigma_base"),
        (lambda: KNNSigma(_REF, 0.5, -1.0, k=2), "rate"),
        (lambda: KNNSigma(_REF, 0.5, 0.1, k=2, offset=float("nan")), "offset"),
        (lambda: KNNSigma(np.zeros((0, 2)), 0.5, 0.1, k=1), "reference"),
        (lambda: KNNSigma(_REF, 0.5, 0.1, k=2)(np.zeros((3, 3))), "x"),
    ],
)
def test_bad_arguments_name_the_argument(call, name):
    with pytest.raises(ValueError, match=rf"^{name} "):
        call()
