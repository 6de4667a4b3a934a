"""Diffusion denoised smoothing and the multi-scale cascade (spec: denoised_multiscale.md, test list 1-10)."""
import math

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler  # noqa: E402
from scipy.stats import norm

from art_some import DenoisedMultiScaleClassifier, DiffusionCalibrationTrainer
from art_some.core import cascade
from art_some.core.cascade import hybrid_predict, level_alpha
from art_some.core.noise import SELECTION, GaussianNoise
from art_some.core.rules import CohenRule, Tally
from art_some.core.smoothing import Smooth
from art_some.core.stats import clopper_pearson_lower
from art_some.models.diffusion import (
    DiffusionDenoiser,
    IdentityDenoiser,
    create_denoiser,
    diffusion_sigmas,
    timestep_for_noise,
    tiny_unet,
)
from tests.conftest import Linear2, make_classifier


def gaussian_levels(sigmas):
    """Cascade levels with Gaussian noise and Cohen's rule; their counts come from the tests' stubs."""
    return [Smooth(None, GaussianNoise(sigma), num_classes=3) for sigma in sigmas]


def cascade_certify(count, sigmas, num_inputs, **options):
    return cascade.cascade_certify(count, gaussian_levels(sigmas), num_inputs, **options)


def cascade_predict(count, sigmas, num_inputs, **options):
    return cascade.cascade_predict(count, gaussian_levels(sigmas), num_inputs, **options)


def class_upper_bounds(counts, n, alpha):
    return CohenRule().class_upper_bounds(Tally(counts, n), alpha)

diffusers = pytest.importorskip("diffusers")

LINEAR = DDPMScheduler(num_train_timesteps=1000).alphas_cumprod
COSINE = DDPMScheduler(num_train_timesteps=4000, beta_schedule="squaredcos_cap_v2").alphas_cumprod


class Recorder(torch.nn.Module):
    """A 'UNet' that returns a fixed function of its input and records what it was called with."""

    def __init__(self, fn=lambda x, t: torch.zeros_like(x), channels_out=None):
        super().__init__()
        self.fn, self.calls = fn, []
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x, t):
        self.calls.append((x.detach().clone(), t.detach().clone()))
        return self.fn(x, t)


class Oracle(torch.nn.Module):
    """Returns the exact epsilon implied by known clean images x_m (model units): (x_in - sqrt(a) x_m) / sqrt(1-a)."""

    def __init__(self, x_m, alphas):
        super().__init__()
        self.x_m, self.alphas = x_m, torch.as_tensor(alphas, dtype=torch.float64)
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x_in, t):
        a = float(self.alphas[int(t[0])])
        return (x_in - math.sqrt(a) * self.x_m) / math.sqrt(1 - a)


class Constant(torch.nn.Module):
    def __init__(self, cls, num_classes=3, scale=50.0):
        super().__init__()
        self.cls, self.num_classes, self.scale = cls, num_classes, scale
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        out = torch.zeros(len(x), self.num_classes) + 0 * self.dummy
        out[:, self.cls] = self.scale
        return out + 0 * x.flatten(1).sum(1, keepdim=True)


def dms(model, denoiser, sigmas=(0.25, 0.5, 1.0), shape=(1, 8, 8), classes=10, **kw):
    kw.setdefault("device_type", "cpu")
    kw.setdefault("clip_values", (0.0, 1.0))
    return DenoisedMultiScaleClassifier(model, None, shape, classes, denoiser=denoiser, sigmas=sigmas, **kw)


# 1. Timestep map ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("alphas,expected", [(LINEAR, [70, 145, 259, 396]), (COSINE, [573, 1158, 1984, 2809])])
def test_timestep_map(alphas, expected):
    den = DiffusionDenoiser(Recorder(), alphas)
    got = [den.timestep(s) for s in (0.12, 0.25, 0.5, 1.0)]
    assert got == expected
    sig = diffusion_sigmas(alphas)
    for s, t in zip((0.12, 0.25, 0.5, 1.0), got):
        assert sig[t - 1] < 2 * s <= sig[t]  # the factor 2 of the [-1, 1] range
        assert float(sig[t]) <= 2 * s * 1.007
    # The same noise expressed for inputs in [-1, 1] (std 2 sigma there) maps to the same t*.
    den_sym = DiffusionDenoiser(Recorder(), alphas, input_range=(-1.0, 1.0))
    assert [den_sym.timestep(2 * s) for s in (0.12, 0.25, 0.5, 1.0)] == expected


def test_timestep_errors():
    with pytest.raises(ValueError, match="largest noise std"):
        timestep_for_noise(LINEAR[:10], 1.0)
    with pytest.raises(ValueError, match="noise_std"):
        timestep_for_noise(LINEAR, -1.0)
    with pytest.raises(ValueError, match="input_range"):
        DiffusionDenoiser(Recorder(), LINEAR, input_range=(1.0, 0.0))
    with pytest.raises(ValueError, match="non-increasing"):
        DiffusionDenoiser(Recorder(), LINEAR.flip(0))
    with pytest.raises(ValueError, match="output_mode"):
        DiffusionDenoiser(Recorder(), LINEAR, output_mode="area")


# 10. diffusers consistency -----------------------------------------------------------------------------------------
def test_cosine_schedule_matches_improved_diffusion():
    steps, s = 4000, 0.008
    f = lambda t: math.cos((t / steps + s) / (1 + s) * math.pi / 2) ** 2
    betas = np.array([min(1 - f(i + 1) / f(i), 0.999) for i in range(steps)])
    ours = np.cumprod(1 - betas)
    assert np.abs(COSINE.double().numpy() - ours).max() < 1e-6


def test_scheduler_step_matches_manual_x0():
    torch.manual_seed(0)
    unet = tiny_unet(channels=1, sample_size=8, widths=(8, 16)).eval()
    scheduler = DDPMScheduler(num_train_timesteps=1000, clip_sample=True)
    den = DiffusionDenoiser(unet, scheduler.alphas_cumprod, input_range=(-1.0, 1.0))
    y = torch.randn(3, 1, 8, 8) * 0.5
    sigma = 0.5 / 2  # model-unit noise std 0.5 when the input range is already [-1, 1] ... halved by the range
    t = den.timestep(sigma)
    abar = float(scheduler.alphas_cumprod[t])
    with torch.no_grad():
        x_in = math.sqrt(abar) * y
        eps = unet(x_in, t).sample
        reference = scheduler.step(eps, t, x_in).pred_original_sample
        ours = den(y, sigma)
    assert torch.allclose(ours, reference, atol=1e-5)


# 2. Oracle exactness -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("pad", [0, 2])
def test_oracle_denoiser_recovers_the_clean_image(pad):
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(4, 1, 8, 8, generator=gen)
    x_m = 2 * x - 1
    if pad:
        x_m = torch.nn.functional.pad(x_m, (pad,) * 4, mode="reflect")
    den = DiffusionDenoiser(Oracle(x_m, LINEAR), LINEAR, clip_denoised=False, pad=pad)
    sigma = 0.5
    # The padded oracle's epsilon is exact only where the noisy input was padded like the clean one, i.e. the
    # reflection of the noisy image: that is what the denoiser does, so x0 is exact everywhere.
    z = x + sigma * torch.randn(x.shape, generator=gen)
    out = den(z, sigma)
    assert torch.allclose(out, x, atol=1e-5)


def test_random_unet_output_shape_range_and_determinism():
    torch.manual_seed(1)
    den = create_denoiser("tiny_diffusion", widths=(8, 16)).eval()
    z = torch.rand(5, 1, 8, 8) + 0.3 * torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        a, b = den(z, 0.25), den(z, 0.25)
    assert a.shape == z.shape and torch.equal(a, b)
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    resized = DiffusionDenoiser(den.unet, den.alphas_cumprod, output_size=12)
    with torch.no_grad():
        big = resized(z, 0.25)
    assert big.shape == (5, 1, 12, 12) and float(big.min()) >= 0.0 and float(big.max()) <= 1.0


def test_learned_variance_and_timestep_rescaling():
    six = Recorder(lambda x, t: torch.cat([torch.ones_like(x), 5 * torch.ones_like(x)], dim=1))
    den = DiffusionDenoiser(six, COSINE, rescale_timesteps=True, clip_denoised=False)
    z = torch.full((2, 1, 4, 4), 0.5)
    out = den(z, 0.25)
    t = den.timestep(0.25)
    assert t == 1158
    assert six.calls[0][1].dtype == torch.float32 and float(six.calls[0][1][0]) == pytest.approx(1158 * 0.25)
    abar = float(COSINE[t])
    expected = (0.0 - math.sqrt((1 - abar) / abar) * 1.0 + 1) / 2  # eps = first half (ones), y = 0
    assert torch.allclose(out, torch.full_like(out, expected), atol=1e-5)
    bad = DiffusionDenoiser(Recorder(lambda x, t: torch.zeros(len(x), 3, 4, 4)), LINEAR)
    with pytest.raises(ValueError, match="channels"):
        bad(z, 0.25)


# 3. Noise scale ----------------------------------------------------------------------------------------------------
def test_noise_scale_reaches_the_unet_as_two_sigma():
    rec = Recorder()
    den = DiffusionDenoiser(rec, LINEAR, clip_denoised=False)
    est = dms(Constant(0, 10), den, sigmas=(0.5,), sample_size=4000)
    x = np.full((1, 1, 8, 8), 0.5, dtype=np.float32)
    est.predict_counts(x, n=4000)
    x_in = torch.cat([c[0] for c in rec.calls])
    abar = float(LINEAR[den.timestep(0.5)])
    assert float(x_in.std()) == pytest.approx(2 * 0.5 * math.sqrt(abar), rel=0.01)
    assert abs(float(x_in.mean())) < 0.01
    # With a zero epsilon, x0 = y, the noisy image itself: the denoiser is the identity in input units.
    z = torch.rand(3, 1, 8, 8)
    assert torch.allclose(den(z, 0.5), z, atol=1e-6)


def test_radius_does_not_depend_on_the_internal_range():
    """[0, 1] inputs with sigma, or [-1, 1] inputs with 2 sigma and a [-1, 1] denoiser: same votes, radius x2."""
    w = torch.randn(64, generator=torch.Generator().manual_seed(3))
    clf = Linear2(w, -float(w.sum()) / 2)
    x = np.random.default_rng(0).random((3, 1, 8, 8)).astype(np.float32)
    unit = dms(clf, IdentityDenoiser(), sigmas=(0.25,), classes=2, sample_size=50)
    sym = dms(clf, DiffusionDenoiser(Recorder(), LINEAR, input_range=(-1.0, 1.0), clip_denoised=False),
              sigmas=(0.5,), classes=2, sample_size=50, preprocessing=(-1.0, 2.0), clip_values=(-1.0, 1.0))
    a = unit.certify_detailed(x, n=500)
    b = sym.certify_detailed(2 * x - 1, n=500)
    assert np.abs(a.counts_estimation - b.counts_estimation).max() <= 2  # float rounding at the boundary
    assert np.array_equal(a.predict, b.predict)
    certified = a.predict >= 0
    assert certified.any()
    assert np.allclose(b.radius[certified], 2 * a.radius[certified], rtol=0.02)


# 4. Constant classifier --------------------------------------------------------------------------------------------
def test_constant_classifier_radius():
    est = dms(Constant(2, 3), IdentityDenoiser(), sigmas=(0.5,), classes=3, sample_size=10)
    res = est.certify_detailed(np.zeros((2, 1, 8, 8), np.float32), n=10_000, alpha=0.001)
    p = 0.001 ** (1 / 10_000)
    assert np.allclose(res.p_lower, p, rtol=1e-9)
    assert np.allclose(res.radius, 0.5 * norm.ppf(p))
    assert res.radius[0] == pytest.approx(3.1986 * 0.5, abs=5e-4)
    assert list(res.predict) == [2, 2]


# 5. K = 1 is Cohen -------------------------------------------------------------------------------------------------
def test_single_level_cascade_is_cohen_on_the_same_counts():
    rng = np.random.default_rng(0)
    counts0 = rng.multinomial(100, [0.6, 0.3, 0.1], size=50)
    counts = rng.multinomial(1000, [0.55, 0.35, 0.1], size=50)
    stub = lambda level, stage, pos, num: (counts0 if stage == SELECTION else counts)[pos]
    res = cascade_certify(stub, [0.5], 50, n0=100, n=1000, alpha=0.01)
    pred, radius, _ = CohenRule().certify(Tally(counts0, 100), Tally(counts, 1000), 0.01, GaussianNoise(0.5))
    assert np.array_equal(res.predict, pred) and np.allclose(res.radius, radius)
    assert (res.predict >= 0).any() and (res.predict < 0).any()


def test_single_sigma_estimator_equals_smoothed_classifier():
    torch.manual_seed(0)
    from art_some.models import DigitsCNN

    net = DigitsCNN().eval()
    x = np.random.default_rng(1).random((4, 1, 8, 8)).astype(np.float32)
    plain = make_classifier(net, (1, 8, 8), 10, scale=0.5, sample_size=30)
    dds = dms(net, IdentityDenoiser(), sigmas=(0.5,), sample_size=30)
    a, b = plain.certify_detailed(x, n=300), dds.certify_detailed(x, n=300)
    assert np.array_equal(a.counts_estimation, b.counts_estimation)
    assert np.array_equal(a.predict, b.predict) and np.allclose(a.radius, b.radius)
    assert list(b.extra["levels_visited"]) == [1] * 4


# 6. Control flow with counting stubs -------------------------------------------------------------------------------
class Stub:
    """Per-level (selection, estimation) counts, the same for every input; records which levels were asked."""

    def __init__(self, per_level):
        self.per_level, self.calls = per_level, []

    def __call__(self, level, stage, positions, num):
        self.calls.append(level)
        sel, est = self.per_level[level]
        row = np.asarray(sel if stage == SELECTION else est)
        assert row.sum() == num
        return np.tile(row, (len(positions), 1))


SIGMAS = [1.0, 0.5, 0.25]


def test_top_level_certifies_and_lower_levels_are_never_called():
    stub = Stub({0: ([100, 0, 0], [990, 5, 5])})
    res = cascade_certify(stub, SIGMAS, 3, n0=100, n=1000, alpha=0.001)
    assert set(stub.calls) == {0}
    p_lower = clopper_pearson_lower(990, 1000, 0.001 / 3 / 2)
    assert np.allclose(res.radius, 1.0 * norm.ppf(p_lower))
    assert list(res.extra["level_sigma"]) == [1.0] * 3 and list(res.extra["levels_visited"]) == [1] * 3


def test_inconclusive_top_level_abstains_without_going_lower():
    stub = Stub({0: ([100, 0, 0], [500, 300, 200])})
    res = cascade_certify(stub, SIGMAS, 2, n0=100, n=1000, alpha=0.001)
    assert set(stub.calls) == {0} and list(res.predict) == [-1, -1]


def test_off_class_bound_at_or_above_p0_abstains():
    # Selection picks class 0, but class 1 holds 60% of the estimation draws: not above p0 for class 0, and
    # class 1's upper bound is above p0, so the level does not confidently abstain either.
    stub = Stub({0: ([100, 0, 0], [300, 600, 100])})
    res = cascade_certify(stub, SIGMAS, 1, n0=100, n=1000, alpha=0.001)
    assert set(stub.calls) == {0} and res.predict[0] == -1


def test_confidently_below_p0_goes_on_and_the_radius_is_capped():
    top = [340, 330, 330]
    stub = Stub({0: ([40, 30, 30], top), 1: ([0, 100, 0], [2, 996, 2])})
    res = cascade_certify(stub, SIGMAS, 1, n0=100, n=1000, alpha=0.001)
    assert stub.calls == [0, 0, 1, 1]
    a = 0.001 / 3 / 2
    upper = class_upper_bounds(np.array([top]), 1000, a)[0]
    p_bar = max(upper[0], upper[2])  # classes other than the answer (1)
    cap = 1.0 * (norm.ppf(0.5) - norm.ppf(p_bar))
    own = 0.5 * norm.ppf(clopper_pearson_lower(996, 1000, a))
    assert res.predict[0] == 1 and list(res.extra["level_sigma"]) == [0.5]
    assert res.radius[0] == pytest.approx(min(own, cap)) and res.radius[0] <= cap + 1e-12
    assert res.extra["radius_capped"][0] == (cap < own)
    assert res.extra["levels_visited"][0] == 2


def test_every_level_abstaining_abstains():
    flat = ([34, 33, 33], [340, 330, 330])
    stub = Stub({0: flat, 1: flat, 2: flat})
    res = cascade_certify(stub, SIGMAS, 1, n0=100, n=1000, alpha=0.001)
    assert stub.calls == [0, 0, 1, 1, 2, 2] and res.predict[0] == -1 and res.extra["levels_visited"][0] == 3


def test_sequential_split_can_make_a_cap_negative():
    """Passing at stage 0 uses alpha/2 bounds; the cap at stage 1 recomputes them at alpha/4 and may reach p0."""
    n, alpha = 1000, 0.01
    k = next(k for k in range(300, 500)
             if class_upper_bounds(np.array([[k, n - 2 * k, k]]), n, alpha / 2)[0].max() < 0.5
             <= class_upper_bounds(np.array([[k, n - 2 * k, k]]), n, alpha / 4)[0].max())
    stub = Stub({0: ([100, 0, 0], [k, n - 2 * k, k]), 1: ([0, 100, 0], [0, 1000, 0])})
    res = cascade_certify(stub, [1.0, 0.5], 1, n0=100, n=n, alpha=alpha, alpha_split="sequential")
    assert stub.calls == [0, 0, 1, 1] and res.predict[0] == -1
    # The uniform split (alpha/4 for these bounds from the start) finds the top level inconclusive instead.
    uniform_stub = Stub(stub.per_level)
    uniform = cascade_certify(uniform_stub, [1.0, 0.5], 1, n0=100, n=n, alpha=alpha)
    assert uniform_stub.calls == [0, 0] and uniform.predict[0] == -1


# 8. The alpha policy -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("split", ["uniform", "sequential"])
def test_alpha_policy_is_the_configured_one(split):
    # Level 0 passes; level 1 certifies: its lower bound uses half the stage-1 budget.
    stub = Stub({0: ([34, 33, 33], [340, 330, 330]), 1: ([0, 100, 0], [10, 980, 10]),
                 2: ([0, 100, 0], [10, 980, 10])})
    res = cascade_certify(stub, SIGMAS, 1, n0=100, n=1000, alpha=0.003, alpha_split=split)
    budget = 0.001 if split == "uniform" else 0.0015
    assert level_alpha(0.003, 1, 3, split) == pytest.approx(budget)
    assert res.p_lower[0] == pytest.approx(float(clopper_pearson_lower(980, 1000, budget / 2)))
    assert res.extra["alpha_split"] == split
    assert res.extra["failure_bound"] == pytest.approx(0.003 if split == "uniform" else 0.003 * (1 + 1 / 2 + 1 / 3))
    # The last level has no level below it, so its lower bound gets the whole budget.
    stub = Stub({0: ([34, 33, 33], [340, 330, 330]), 1: ([34, 33, 33], [340, 330, 330]),
                 2: ([0, 100, 0], [10, 980, 10])})
    res = cascade_certify(stub, SIGMAS, 1, n0=100, n=1000, alpha=0.003, alpha_split=split)
    last = 0.001 if split == "uniform" else 0.001
    assert res.p_lower[0] == pytest.approx(float(clopper_pearson_lower(980, 1000, last)))
    with pytest.raises(ValueError, match="alpha_split"):
        level_alpha(0.01, 0, 3, "bonferroni")


# 7. Soundness on an analytic toy -----------------------------------------------------------------------------------
A, B = -0.3, 0.4  # class 0 if u < A, 1 if A <= u < B, 2 if u >= B, u = projection on a unit vector


def exact_p(u, sigma):
    p0 = norm.cdf((A - u) / sigma)
    p2 = norm.sf((B - u) / sigma)
    return np.stack([p0, 1 - p0 - p2, p2], axis=-1)


def exact_cascade(u, sigmas, p0=0.5):
    """The cascade's true output at projections u (-1 = abstain), levels largest first."""
    out = np.full(np.shape(u), -1)
    undecided = np.ones(np.shape(u), dtype=bool)
    for s in sigmas:
        p = exact_p(u, s)
        answers = undecided & (p.max(axis=-1) > p0)
        out[answers] = p.argmax(axis=-1)[answers]
        undecided &= ~answers
    return out


def true_radius(u, cls, sigmas):
    grid = np.linspace(-6, 6, 240_001)
    outputs = exact_cascade(grid, sigmas)
    changed = grid[outputs != cls]
    return float(np.abs(changed - u).min())


def multinomial_stub(u_values, sigmas, rng):
    def count(level, stage, positions, num):
        p = exact_p(np.asarray(u_values)[positions], sigmas[level])
        return np.stack([rng.multinomial(num, row) for row in p])

    return count


@pytest.mark.parametrize("split", ["uniform", "sequential"])
def test_certified_radius_never_exceeds_the_true_radius(split):
    rng = np.random.default_rng(0)
    u = np.linspace(-1.5, 1.5, 61)
    res = cascade_certify(multinomial_stub(u, SIGMAS, rng), SIGMAS, len(u), n0=100, n=20_000, alpha=0.001,
                          alpha_split=split)
    certified = np.flatnonzero(res.predict >= 0)
    assert len(certified) > 40
    assert len(set(res.extra["levels_visited"][certified])) > 1  # more than the top level answers
    for i in certified:
        assert res.predict[i] == exact_cascade(u[i], SIGMAS)
        assert res.radius[i] <= true_radius(u[i], res.predict[i], SIGMAS) + 1e-9


def test_monte_carlo_failure_rate_stays_below_alpha():
    """Small n, large alpha, inputs near where the certificate is tight: wrong certificates occur at most alpha."""
    alpha, runs = 0.2, 400
    rng = np.random.default_rng(1)
    u = np.array([0.5, 0.6, 0.9, -0.45, 0.05])
    wrong = total = 0
    truth = [true_radius(v, exact_cascade(v, SIGMAS), SIGMAS) for v in u]
    for _ in range(runs):
        res = cascade_certify(multinomial_stub(u, SIGMAS, rng), SIGMAS, len(u), n0=20, n=100, alpha=alpha)
        for i in np.flatnonzero(res.predict >= 0):
            total += 1
            wrong += res.predict[i] != exact_cascade(u[i], SIGMAS) or res.radius[i] > truth[i]
    assert total > runs  # most runs certify something
    # Per input the failure probability is at most alpha; allow 3 standard errors on the pooled rate.
    assert wrong / total <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / total)


class Threshold(torch.nn.Module):
    """The 3-class toy in 64 dimensions: class 0 below A, 2 above B, 1 between, along the first coordinate."""

    def forward(self, x):
        u = x.flatten(1)[:, 0]
        return torch.stack([(A - u) * 100, torch.zeros_like(u), (u - B) * 100], dim=1)


def test_estimator_cascade_is_sound_on_a_linear_threshold_model():
    """The real engine and estimator with the identity denoiser on the same 3-class toy in 64 dimensions."""

    u = np.array([-1.2, -0.2, 0.05, 0.35, 0.7, 1.4])
    x = np.zeros((len(u), 1, 8, 8), np.float32)
    x[:, 0, 0, 0] = u
    est = dms(Threshold(), IdentityDenoiser(), sigmas=(0.25, 0.5, 1.0), classes=3, sample_size=100,
              clip_values=None, noise_batch_size=4000)
    res = est.certify_detailed(x, n=4000, alpha=0.001)
    for i in np.flatnonzero(res.predict >= 0):
        assert res.predict[i] == exact_cascade(u[i], SIGMAS)
        assert res.radius[i] <= true_radius(u[i], res.predict[i], SIGMAS) + 1e-6
    assert (res.predict >= 0).sum() >= 4
    records_sigma = [s for s in res.extra["level_sigma"] if s is not None]
    assert set(records_sigma) - {1.0}  # some inputs are answered below the top level


# PREDICT ------------------------------------------------------------------------------------------------------------
def test_cascade_predict_control_flow_and_bonferroni():
    stub = Stub({0: ([0, 0, 0], [60, 70, 70]), 1: ([0, 0, 0], [5, 190, 5])})
    stub.per_level = {k: (v[1], v[1]) for k, v in stub.per_level.items()}
    classes, counts, level = cascade_predict(stub, SIGMAS, 2, n=200, alpha=0.001)
    assert list(classes) == [1, 1] and list(level) == [1, 1] and np.array_equal(counts[0], [5, 190, 5])
    incon = Stub({0: ([110, 80, 10], [110, 80, 10])})
    classes, _, level = cascade_predict(incon, SIGMAS, 1, n=200, alpha=0.001)
    assert classes[0] == -1 and level[0] == -1 and set(incon.calls) == {0}


def test_hybrid_predict_rule():
    per_level = {0: [80, 70, 50], 1: [20, 150, 30]}  # level 0 share 0.4 < p0; level 1 share 0.75
    stub = lambda level, stage, pos, num: np.tile(per_level[level], (len(pos), 1))
    clean = np.array([[5.0, 0.0, 0.0]])
    labels, scores, level = hybrid_predict(stub, 2, clean, n=200, weight=0.1)
    expected = clean[0] + np.log(0.9 * np.array([20, 150, 30]) / 200 + 0.1 / 3)
    assert np.allclose(scores[0], expected) and labels[0] == int(np.argmax(expected)) and level[0] == 1
    never = {0: [80, 70, 50], 1: [80, 70, 50]}
    labels, scores, level = hybrid_predict(lambda lv, st, pos, num: np.tile(never[lv], (len(pos), 1)), 2,
                                           clean, n=200)
    assert labels[0] == 0 and level[0] == -1 and np.array_equal(scores, clean)


def test_estimator_predict_rules():
    torch.manual_seed(0)
    est = dms(Constant(4, 10), IdentityDenoiser(), sample_size=60)
    x = np.zeros((3, 1, 8, 8), np.float32)
    out = est.predict(x, output="counts")
    assert out.shape == (3, 10) and np.all(out.argmax(axis=1) == 4) and np.all(out[:, 4] == 60)
    classes, _, sigma = est.predict_levels(x)
    assert list(classes) == [4] * 3 and np.all(sigma == 1.0)
    est.set_params(predict_rule="hybrid")
    out = est.predict(x, output="counts")
    assert np.all(out.argmax(axis=1) == 4) and np.allclose(out.sum(axis=1), 60)


# Estimator: parameters, records, gradients, ART ---------------------------------------------------------------------
def test_bad_arguments_are_clear_errors():
    net = Constant(0, 10)
    for kwargs, match in [
        (dict(sigmas=(0.5, -1.0)), "sigmas"), (dict(sigmas=(0.5, 0.5)), "distinct"), (dict(p0=0.4), "p0"),
        (dict(alpha_split="holm"), "alpha_split"), (dict(predict_rule="vote"), "predict_rule"),
        (dict(hybrid_weight=2.0), "hybrid_weight"), (dict(gradient_level=0.3), "gradient_level"),
    ]:
        sig = kwargs.pop("sigmas", (0.25, 0.5, 1.0))
        with pytest.raises(ValueError, match=match):
            dms(net, IdentityDenoiser(), sigmas=sig, **kwargs)
    with pytest.raises(ValueError, match="denoiser must be callable"):
        dms(net, 3)
    with pytest.raises(ValueError, match="unknown denoiser"):
        dms(net, "no_such_denoiser")
    est = dms(net, IdentityDenoiser())
    with pytest.raises(ValueError, match="p0"):
        est.set_params(p0=1.5)
    assert est.p0 == 0.5
    with pytest.raises(ValueError, match="scale"):
        est.set_params(scale=0.3)
    est.set_params(sigmas=(0.12, 0.25))
    assert est.levels == (0.25, 0.12) and est.scale == 0.25
    with pytest.raises(ValueError, match="NaN"):
        est.certify(np.full((1, 1, 8, 8), np.nan, np.float32), n=10)


def test_records_say_which_level_answered_and_denoiser_by_name():
    from art_some.runs.records import records_from_result

    est = dms(Constant(1, 10), {"name": "tiny_diffusion", "widths": [8, 16]}, sample_size=20)
    assert isinstance(est.denoiser, DiffusionDenoiser)
    res = est.certify_detailed(np.zeros((2, 1, 8, 8), np.float32), n=200)
    records = records_from_result(res, [1, 3], [0, 1], "denoised_multiscale")
    assert records[0]["level_sigma"] == 1.0 and records[0]["levels_visited"] == 1 and records[0]["correct"]
    assert records[1]["sigmas"] == [1.0, 0.5, 0.25] and records[1]["sigma"] == 1.0 and not records[1]["correct"]
    assert records[0]["failure_bound"] == 0.001 and records[0]["denoiser"] == "DiffusionDenoiser"


def test_gradients_flow_through_the_denoiser_and_art_pgd_runs():
    from art.attacks.evasion import ProjectedGradientDescent

    from art_some.models import DigitsCNN

    torch.manual_seed(0)
    est = dms(DigitsCNN().eval(), create_denoiser("tiny_diffusion", widths=(8, 16)), sample_size=8,
              gradient_samples=4)
    x = np.random.default_rng(0).random((2, 1, 8, 8)).astype(np.float32)
    g = est.loss_gradient(x, np.array([1, 2]))
    assert g.shape == x.shape and np.abs(g).sum() > 0
    est.set_params(gradient_level=0.25)
    g1 = est.loss_gradient(x, np.array([1, 2]))
    assert not np.allclose(g, g1)
    adv = ProjectedGradientDescent(est, norm=2, eps=0.5, eps_step=0.25, max_iter=2, verbose=False).generate(x)
    assert adv.shape == x.shape and np.linalg.norm((adv - x).reshape(2, -1), axis=1).max() <= 0.5 + 1e-5


def test_loading_a_local_diffusers_folder_and_a_checkpoint(tmp_path):
    from diffusers import DDPMPipeline
    from safetensors.torch import save_file

    torch.manual_seed(0)
    unet = tiny_unet(widths=(8, 16)).eval()
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(tmp_path / "pipe")
    unet.save_pretrained(tmp_path / "bare")
    save_file(unet.state_dict(), str(tmp_path / "unet.safetensors"))
    z = torch.rand(2, 1, 8, 8)
    reference = DiffusionDenoiser(unet, scheduler.alphas_cumprod)(z, 0.5)
    for den in (create_denoiser("diffusion", path=str(tmp_path / "pipe")),
                create_denoiser("diffusion", path=str(tmp_path / "bare")),
                create_denoiser("diffusion", checkpoint=str(tmp_path / "unet.safetensors"),
                                unet_config=dict(unet.config))):
        with torch.no_grad():
            assert torch.allclose(den(z, 0.5), reference, atol=1e-6)
    with pytest.raises(ValueError, match="exactly one"):
        create_denoiser("diffusion")
    with pytest.raises(FileNotFoundError):
        create_denoiser("diffusion", path=str(tmp_path / "missing"))


def test_plugins_register_the_denoisers_estimator_and_trainers():
    from art_some.plugins import registered

    assert {"diffusion", "tiny_diffusion", "identity"} <= set(registered("denoisers"))
    assert registered("estimators")["denoised_multiscale"] is DenoisedMultiScaleClassifier
    assert registered("trainers")["diffusion_calibration"] is DiffusionCalibrationTrainer


# 9. Fine-tuning wiring ---------------------------------------------------------------------------------------------
def _calibration_setup(model, seed=0, **kwargs):
    torch.manual_seed(seed)
    den = create_denoiser("tiny_diffusion", widths=(8, 16))
    est = dms(model, den, sample_size=10)
    return est, DiffusionCalibrationTrainer(est, optimizer=torch.optim.Adam(den.parameters(), lr=1e-3),
                                            num_noise_vec=2, seed=seed, **kwargs)


def test_gradients_reach_only_the_unet():
    from art_some.models import DigitsCNN

    est, trainer = _calibration_setup(DigitsCNN())
    x, y = torch.rand(8, 1, 8, 8), torch.arange(8) % 10
    for p in est.model.parameters():
        p.requires_grad_(False)  # as fit() does for the run
    trainer.training_loss(x, y).backward()
    assert all(p.grad is None for p in est.model.parameters())
    assert sum(float(p.grad.abs().sum()) for p in est.denoiser.parameters() if p.grad is not None) > 0
    assert not est.model.training


def test_always_right_or_always_wrong_activates_one_term():
    est, trainer = _calibration_setup(Constant(3, 10))
    x = torch.rand(6, 1, 8, 8)
    brier, ac, correct = trainer.calibration_terms(x, torch.full((6,), 3))
    assert bool(correct.all()) and torch.allclose(brier, torch.zeros(6), atol=1e-12)  # one-hot e_y: Brier 0
    assert float(trainer.training_loss(x, torch.full((6,), 3)).detach()) == pytest.approx(0.0, abs=1e-12)
    brier, ac, correct = trainer.calibration_terms(x, torch.full((6,), 5))
    assert not bool(correct.any()) and torch.allclose(ac, torch.ones(6))  # q_bar[y_hat] = 1
    assert float(trainer.training_loss(x, torch.full((6,), 5)).detach()) == pytest.approx(1.0)
    assert trainer.last_terms["correct"] == 0.0


def test_brier_and_anti_consistency_forms_by_hand():
    from art_some.trainers.diffusion_calibration import anti_consistency, brier_score

    # Two draws for one example: (0.7, 0.3) and (0.3, 0.7) -> q_bar = (0.5, 0.5); then (0.9, 0.1) twice.
    probs = torch.tensor([[[0.7, 0.3], [0.9, 0.1]], [[0.3, 0.7], [0.9, 0.1]]])
    assert torch.allclose(brier_score(probs, torch.tensor([0, 0])), torch.tensor([(0.18 + 0.98) / 2, 0.02]))
    assert torch.allclose(anti_consistency(probs, "confidence"), torch.tensor([0.5, 0.9]))
    assert torch.allclose(anti_consistency(probs, "collision"), torch.tensor([0.5, 0.82]))
    assert torch.allclose(anti_consistency(probs, "diversity"), torch.tensor([-0.08, 0.0]))
    with pytest.raises(ValueError, match="ac_form"):
        anti_consistency(probs, "entropy")


def test_one_step_lowers_the_loss_on_a_fixed_batch():
    from art_some.models import DigitsCNN

    est, trainer = _calibration_setup(DigitsCNN(), seed=2, mse_weight=0.1)
    x, y = torch.rand(16, 1, 8, 8), torch.arange(16) % 10
    for p in est.model.parameters():
        p.requires_grad_(False)
    est.denoiser.train()
    state = trainer.generator(x.device).get_state()
    gen_state = torch.random.get_rng_state()

    def loss():
        trainer.generator(x.device).set_state(state)
        torch.random.set_rng_state(gen_state)
        return trainer.training_loss(x, y)

    before = loss()
    trainer.optimizer.zero_grad()
    before.backward()
    trainer.optimizer.step()
    with torch.no_grad():
        after = loss()
    assert float(after) < float(before)


def test_fit_tunes_the_denoiser_and_restores_the_classifier():
    from art_some.models import DigitsCNN

    est, trainer = _calibration_setup(DigitsCNN())
    before = [p.detach().clone() for p in est.model.parameters()]
    den_before = [p.detach().clone() for p in est.denoiser.parameters()]
    x = np.random.default_rng(0).random((32, 1, 8, 8)).astype(np.float32)
    history = trainer.fit(x, np.arange(32) % 10, batch_size=16, nb_epochs=1)
    assert len(history) == 1 and np.isfinite(history[0])
    assert all(torch.equal(a, b) for a, b in zip(before, est.model.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(den_before, est.denoiser.parameters()))
    assert all(p.requires_grad for p in est.model.parameters()) and not est.denoiser.training
    with pytest.raises(ValueError, match="ac_form"):
        DiffusionCalibrationTrainer(est, ac_form="entropy")
    with pytest.raises(ValueError, match="torch module with parameters"):
        DiffusionCalibrationTrainer(dms(DigitsCNN(), IdentityDenoiser()))


def test_estimator_fit_trains_the_classifier_on_denoised_images():
    from art_some.models import DigitsCNN

    torch.manual_seed(0)
    net = DigitsCNN()
    den = create_denoiser("tiny_diffusion", widths=(8, 16))
    est = dms(net, den, optimizer=torch.optim.Adam(net.parameters(), 1e-3), sample_size=10)
    den_before = [p.detach().clone() for p in den.parameters()]
    net_before = [p.detach().clone() for p in net.parameters()]
    x = np.random.default_rng(0).random((32, 1, 8, 8)).astype(np.float32)
    est.fit(x, np.arange(32) % 10, batch_size=16, nb_epochs=1)
    assert all(torch.equal(a, b) for a, b in zip(den_before, den.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(net_before, net.parameters()))


def test_straight_through_clip_and_review_guards():
    den = DiffusionDenoiser(Recorder(lambda x, t: -4 * torch.ones_like(x)), LINEAR)
    z = torch.full((1, 1, 4, 4), 0.9, requires_grad=True)
    out = den(z, 0.5, clip="straight_through")
    assert torch.allclose(out, den(z, 0.5))  # the values certification sees (clipped to the range)
    assert float(out.max()) == pytest.approx(1.0)
    (grad,) = torch.autograd.grad(out.sum(), z)
    assert torch.allclose(grad, torch.ones_like(grad))  # the unclipped x0's gradient, not zero
    with pytest.raises(ValueError, match="clip must be"):
        den(z, 0.5, clip="soft")
    # The denoiser must expect the estimator's input range, or its t* would not match the certified sigma.
    with pytest.raises(ValueError, match="input_range"):
        dms(Constant(0, 10), DiffusionDenoiser(Recorder(), LINEAR, input_range=(-1.0, 1.0)))
    from art_some.models import DigitsCNN

    est = dms(DigitsCNN(), create_denoiser("tiny_diffusion", widths=(8, 16)))
    with pytest.raises(ValueError, match="num_noise_vec >= 2"):
        DiffusionCalibrationTrainer(est, ac_form="diversity", num_noise_vec=1)


def test_empty_input_gives_empty_results():
    est = dms(Constant(0, 10), IdentityDenoiser(), sample_size=5)
    empty = np.zeros((0, 1, 8, 8), np.float32)
    res = est.certify_detailed(empty, n=10)
    assert len(res) == 0 and res.counts_estimation.shape == (0, 10)
    assert est.predict(empty).shape == (0, 10)
