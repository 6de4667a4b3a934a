"""Sequential CERTIFY of the multi-scale cascade: exact truths on the cascade's analytic toy, failure rates against
alpha for every bound (and a broken variant that fails), the control flow, and the estimator end to end."""
import math

import numpy as np
import pytest
import torch
from scipy.stats import norm

from art_some.core import cascade_sequential
from art_some.core.cascade import cascade_certify
from art_some.core.cascade_sequential import (
    answer_thresholds,
    cap,
    cascade_certify_sequential,
    margin,
    pass_thresholds,
)
from art_some.core.noise import GaussianNoise
from art_some.core.smoothing import Cascade, Smooth
from tests.estimators.test_denoised import SIGMAS, exact_cascade, exact_p, gaussian_levels, true_radius

BOUNDS = ["mixture", "betting", "union-cp"]


def multinomial_draw(u_values, sigmas, rng):
    """Draws of the toy's exact class probabilities, ``nums[i]`` per input (stage and round only key real noise)."""
    def draw(level, stage, positions, nums, rounds):
        p = exact_p(np.asarray(u_values)[positions], sigmas[level])
        return np.stack([rng.multinomial(int(k), row) for k, row in zip(nums, p)]).reshape(len(positions), 3)

    return draw


def run(u, sigmas=SIGMAS, seed=0, **options):
    rng = np.random.default_rng(seed)
    options = {"n0": 100, "n": 20_000, "alpha": 0.001, "start": 40, **options}
    return cascade_certify_sequential(multinomial_draw(u, sigmas, rng), gaussian_levels(sigmas), len(u), **options)


@pytest.mark.parametrize("sigma", [0.12, 0.25, 0.45, 0.5, 1.0])
def test_thresholds_reach_their_radii_exactly(sigma):
    """Each threshold certifies its radius despite rounding (a radius on a threshold was once lost), for any p0."""
    for p0 in np.round(np.arange(0.5, 0.995, 0.01), 2):
        for r in np.round(np.arange(0.0, 1.5, 0.05), 2):
            g = answer_thresholds(p0, sigma, np.array([r]))[-1]
            q = pass_thresholds(p0, sigma, np.array([r]))[-1]
            assert g == 1.0 or (g >= p0 and margin(sigma, p0, g) >= r)
            assert q == 1.0 or (1 - q < p0 and cap(sigma, p0, 1 - q) >= r)  # strictly below p0: the level passes
    assert cap(sigma, 0.5, np.array([0.0]))[0] == np.inf


@pytest.mark.parametrize("bound", BOUNDS)
def test_certified_radius_never_exceeds_the_true_radius(bound):
    u = np.linspace(-1.5, 1.5, 61)
    res = run(u, bound=bound)
    certified = np.flatnonzero(res.predict >= 0)
    assert len(certified) > 40
    assert len(set(res.extra["levels_visited"][certified])) > 1  # more than the top level answers
    assert res.extra["radius_capped"][certified].any()  # the higher levels' caps bind somewhere
    for i in certified:
        assert res.predict[i] == exact_cascade(u[i], SIGMAS)
        assert res.radius[i] <= true_radius(u[i], res.predict[i], SIGMAS) + 1e-9
    assert (res.draws <= 20_000 * res.extra["levels_visited"]).all() and (res.draws >= 40).all()
    assert res.extra["sequence_bound"] == bound and set(res.stopped_by) <= {"abstain", "tolerance", "max_n"}


@pytest.mark.parametrize("bound", BOUNDS)
def test_fixed_radius_mode_claims_only_true_radii_and_saves_draws(bound):
    u = np.linspace(-1.5, 1.5, 31)
    radii = np.array([0.1, 0.25, 0.5])
    res = run(u, bound=bound, radii=radii)
    fixed = cascade_certify(lambda level, stage, positions, num: multinomial_draw(u, SIGMAS, np.random.default_rng(1))(
        level, stage, positions, np.full(len(positions), num), None), gaussian_levels(SIGMAS), len(u), n0=100,
        n=20_000, alpha=0.001)
    for i in range(len(u)):
        truth = true_radius(u[i], exact_cascade(u[i], SIGMAS), SIGMAS) if exact_cascade(u[i], SIGMAS) >= 0 else -1
        for j, r in enumerate(radii):
            if res.certified_at[i, j]:
                assert res.predict[i] == exact_cascade(u[i], SIGMAS) and r <= truth + 1e-9
    fixed_at = (fixed.predict >= 0)[:, None] & (fixed.radius[:, None] >= radii)
    assert res.certified_at.sum() >= fixed_at.sum() - 3  # about as many radii as fixed n
    fixed_draws = 20_000 * fixed.extra["levels_visited"].sum()
    assert res.draws.sum() < fixed_draws / 2  # and a fraction of its draws


@pytest.mark.parametrize("bound", BOUNDS)
def test_monte_carlo_failure_rate_stays_below_alpha(bound):
    """Large alpha, small n, inputs where the certificate is tight: a wrong certificate at most alpha of the time."""
    alpha, runs = 0.2, 150
    u = np.array([0.5, 0.6, 0.9, -0.45, 0.05])
    truth = [true_radius(v, exact_cascade(v, SIGMAS), SIGMAS) for v in u]
    wrong = total = 0
    for seed in range(runs):
        res = run(u, seed=seed, n0=20, n=300, alpha=alpha, start=10, bound=bound)
        for i in np.flatnonzero(res.predict >= 0):
            total += 1
            wrong += res.predict[i] != exact_cascade(u[i], SIGMAS) or res.radius[i] > truth[i]
    assert total > runs
    assert wrong / total <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / total)


# Two levels with fixed class probabilities (any table, no geometry): the top one passes (every class below p0) but
# its class 0 sits near p0, so it caps the radius of the lower level's answer, class 1, far below that level's margin.
TABLE = [np.array([0.45, 0.40, 0.15]), np.array([0.05, 0.90, 0.05])]


def table_draw(rng):
    def draw(level, stage, positions, nums, rounds):
        return np.stack([rng.multinomial(int(k), TABLE[level]) for k in nums]).reshape(len(positions), 3)

    return draw


def oracle_radius() -> float:
    """What the certificate promises at most: the lower level's margin, capped by the top level's true p_bar."""
    margin = 0.5 * (norm.ppf(TABLE[1][1]) - norm.ppf(0.5))
    return min(margin, float(cap(1.0, 0.5, np.array([max(TABLE[0][0], TABLE[0][2])]))[0]))


def table_failures(runs: int, alpha: float, bound: str) -> tuple[int, int]:
    wrong = total = 0
    for seed in range(runs):
        res = cascade_certify_sequential(table_draw(np.random.default_rng(seed)), gaussian_levels([1.0, 0.5]), 4,
                                         n0=20, n=2000, alpha=alpha, start=20, bound=bound)
        for i in np.flatnonzero(res.predict >= 0):
            total += 1
            wrong += res.predict[i] != 1 or res.radius[i] > oracle_radius()
    return wrong, total


@pytest.mark.parametrize("bound", BOUNDS)
def test_caps_hold_at_their_level_and_a_cascade_without_them_fails(monkeypatch, bound):
    alpha = 0.2
    wrong, total = table_failures(40, alpha, bound)
    assert total > 40 and wrong / total <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / total)
    # The broken variant: the passed level's upper bounds ignored (no cap): wrong radii nearly always.
    monkeypatch.setattr(cascade_sequential, "cap", lambda sigma, p0, p_bar: np.full(np.shape(p_bar), np.inf))
    wrong, total = table_failures(10, alpha, bound)
    assert total and wrong / total > 0.9


@pytest.mark.parametrize("bound", BOUNDS)
@pytest.mark.parametrize("radii,final_share", [(None, 0.8), ([0.25, 0.75], 0.8), ([0.25, 0.75], 0.0)])
def test_one_level_is_the_single_smoothed_classifier(bound, radii, final_share):
    """K = 1 and p0 = 1/2: the same draws, bounds and decisions as sequential CERTIFY of that level alone."""
    def vote(z):
        return (z.flatten(1)[:, 0] > 0).long()

    x = torch.linspace(-0.4, 2.0, 12)[:, None]
    level = Smooth(vote, GaussianNoise(0.5), num_classes=2, batch_size=5000)
    options = dict(n0=50, n=5000, alpha=0.01, bound=bound, radii=radii, final_share=final_share)
    alone = level.certify_sequential(x, **options)
    cascaded = Cascade([level]).certify_sequential(x, **options)
    np.testing.assert_array_equal(cascaded.draws, alone.draws)
    np.testing.assert_array_equal(cascaded.counts_estimation, alone.counts_estimation)
    if radii is None:
        np.testing.assert_array_equal(cascaded.predict, alone.predict)
        np.testing.assert_allclose(cascaded.radius, alone.radius, rtol=1e-12)
    else:  # the cascade also tests radius 0 (p0 itself), so it may name a class the single level leaves at -1
        np.testing.assert_array_equal(cascaded.certified_at, alone.certified_at)
        some = alone.certified_at.any(axis=1)
        np.testing.assert_array_equal(cascaded.predict[some], alone.predict[some])


def test_records_do_not_depend_on_the_pool():
    """Two real levels, packed pools of 1, 3 and all inputs: the same records (each input's draws are its own)."""
    def vote(z):
        u = z.flatten(1)[:, 0]
        return torch.where(u < -0.3, 0, torch.where(u < 0.4, 1, 2))

    x = torch.zeros(7, 2)
    x[:, 0] = torch.tensor([-1.2, -0.2, 0.05, 0.3, 0.6, 1.4, 0.45])
    levels = [Smooth(vote, GaussianNoise(s), num_classes=3, batch_size=900, level=k) for k, s in enumerate([1.0, 0.25])]
    outcomes = [Cascade(levels).certify_sequential(x, n0=30, n=3000, alpha=0.01, radii=[0.05, 0.2], pool=pool)
                for pool in (None, 1, 3)]
    for other in outcomes[1:]:
        for field in ("predict", "radius", "draws", "counts_estimation", "certified_at"):
            np.testing.assert_array_equal(getattr(other, field), getattr(outcomes[0], field))
        np.testing.assert_array_equal(other.extra["levels_visited"], outcomes[0].extra["levels_visited"])
    assert set(outcomes[0].extra["levels_visited"]) == {1, 2}


def test_clear_inputs_stop_at_the_top_level_and_passing_inputs_go_down():
    u = np.array([-1.5, 1.5, 0.3])  # clear class 0, clear class 2, class 1 only at the smallest sigma
    res = run(u, radii=np.array([0.0]))  # the higher levels cap class 1 below 0.1
    assert list(res.extra["levels_visited"]) == [1, 1, 3]
    assert res.draws[0] < 1000 and res.draws[1] < 1000
    assert list(res.predict) == [0, 2, 1] and res.extra["level_sigma"][2] == 0.25


def test_refusals_are_clear():
    level = Smooth(lambda z: z[:, 0].long(), GaussianNoise(0.5), num_classes=2)
    x = torch.zeros(2, 1)
    with pytest.raises(ValueError, match="alpha_split='uniform'"):
        Cascade([level], alpha_split="sequential").certify_sequential(x, n0=10, n=100, alpha=0.01)
    with pytest.raises(ValueError, match="bound must be one of"):
        Cascade([level]).certify_sequential(x, n0=10, n=100, alpha=0.01, bound="wald")
    with pytest.raises(ValueError, match="radii"):
        Cascade([level]).certify_sequential(x, n0=10, n=100, alpha=0.01, radii="0.5")
