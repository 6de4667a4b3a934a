"""
The bounds of sequential CERTIFY (art_some.core.confseq): exact crossing probabilities where they can be computed
(union-CP and the mixture over a schedule, by dynamic programming over the count), Monte Carlo where they cannot
(betting), each with a broken variant that the same check catches.
"""
import numpy as np
import pytest
from scipy.integrate import quad
from scipy.stats import binom

from art_some.core.confseq import (
    GRID,
    Staircase,
    betting_bet,
    crossing_probability,
    mixture_log_evidence,
    spend,
    union_cp_crossing,
)
from art_some.core.sequential import draw_schedule

ALPHA = 0.001
P_VALUES = [0.5, 0.8, 0.95, 0.99, 0.995, 0.999, 0.9995, 0.9999]


@pytest.mark.parametrize("spending", ["uniform", "end"])
def test_the_exact_chance_that_any_union_cp_bound_exceeds_pa_is_at_most_alpha(spending):
    schedule = draw_schedule(20_000, bound="union-cp")
    alphas = spend(ALPHA, len(schedule), spending)
    assert alphas.sum() == pytest.approx(ALPHA)
    worst = max(union_cp_crossing(p, schedule, alphas) for p in P_VALUES)
    assert 0.2 * ALPHA < worst <= ALPHA  # sound, and not vacuous


def test_without_spending_the_exact_check_fails():
    schedule = draw_schedule(20_000, bound="union-cp")
    full = np.full(len(schedule), ALPHA)  # every round at alpha: the broken variant
    assert max(union_cp_crossing(p, schedule, full) for p in P_VALUES) > 2 * ALPHA


def test_the_dynamic_programme_agrees_with_simulation_on_a_small_schedule():
    schedule, alphas, p = [10, 20, 50], [0.1, 0.1, 0.1], 0.8
    exact = union_cp_crossing(p, schedule, alphas)
    rng = np.random.default_rng(0)
    steps = np.stack([rng.binomial(b - a, p, 200_000) for a, b in zip([0, *schedule[:-1]], schedule)], axis=1)
    from art_some.core.stats import clopper_pearson_lower

    crossed = np.zeros(len(steps), dtype=bool)
    for j, total in enumerate(schedule):
        crossed |= clopper_pearson_lower(steps[:, : j + 1].sum(axis=1), total, alphas[j]) > p
    assert crossed.mean() == pytest.approx(exact, abs=0.004)


def test_the_mixture_evidence_is_its_integral():
    for k, t, g in [(9, 10, 0.6), (48, 50, 0.9), (0, 5, 0.3), (200, 200, 0.99)]:
        integral = quad(lambda q: q**k * (1 - q) ** (t - k), g, 1, epsabs=0, epsrel=1e-10)[0] / (1 - g)
        expected = np.log(integral) - k * np.log(g) - (t - k) * np.log(1 - g)
        assert mixture_log_evidence(k, t, g) == pytest.approx(expected, rel=1e-7)
    assert mixture_log_evidence(0, 0, 0.7) == pytest.approx(0.0)
    assert mixture_log_evidence(10, 10, 1.0) == -np.inf  # pA <= 1 is never rejected


@pytest.mark.parametrize("p", [0.6, 0.9, 0.99, 0.999, 0.99865])
def test_the_exact_chance_that_the_mixture_test_at_the_true_pa_ever_rejects_is_at_most_alpha(p):
    # The staircase's claim "pA > g" is wrong only if the test at the lowest threshold >= pA rejects; the worst case
    # is a threshold at pA itself. The test at g rejects at round j iff the count reaches a threshold (the evidence
    # grows with k), so the chance over the whole schedule is exact.
    schedule = draw_schedule(20_000, bound="mixture")
    level = np.log(1 / ALPHA)
    chance = crossing_probability(p, schedule, lambda counts, total, j: mixture_log_evidence(counts, total, p) >= level)
    assert chance <= ALPHA
    # Ville's inequality is loose by a factor of a few at most here: the test is not vacuous either.
    assert chance > ALPHA / 50 or p > 0.999


def test_a_fixed_time_test_looked_at_every_round_breaks_the_same_exact_check():
    # The broken variant: a one-sided binomial test at alpha at every look (no anytime correction).
    schedule, p = draw_schedule(20_000, bound="mixture"), 0.9
    chance = crossing_probability(p, schedule, lambda counts, total, j: binom.sf(counts - 1, total, p) <= ALPHA)
    assert chance > 3 * ALPHA


def _betting_rejections(p, trials, peek, alpha=0.05, seed=0):
    """Monte Carlo: the share of inputs whose betting test at threshold pA ever rejects over the schedule."""
    rng = np.random.default_rng(seed)
    schedule = draw_schedule(3000, start=10, bound="betting")
    stair = Staircase("betting", np.array([p]), trials, alpha, peek=peek)
    rows, k, previous, ever = np.arange(trials), np.zeros(trials), 0, np.zeros(trials, dtype=bool)
    for total in schedule:
        k += rng.binomial(total - previous, p, trials)
        previous = total
        ever |= stair.update(rows, k, total) > 0
    return ever.mean()


@pytest.mark.parametrize("p", [0.5, 0.9, 0.99])
def test_the_betting_test_at_the_true_pa_rejects_at_most_alpha_of_the_time_and_a_peeking_one_does_not(p):
    trials, alpha = 4000, 0.05
    allowance = binom.ppf(0.999, trials, alpha) / trials
    assert _betting_rejections(p, trials, peek=False, alpha=alpha) <= allowance
    assert _betting_rejections(p, trials, peek=True, alpha=alpha) > allowance


def test_the_staircase_climbs_to_the_top_of_the_leading_run_and_never_falls():
    stair = Staircase("mixture", GRID, 3, ALPHA)
    rows = np.arange(3)
    first = stair.update(rows, np.array([40, 20, 0]), 40)
    assert first[0] > 0.75 and first[1] == 0 and first[2] == 0  # all correct; a coin; no votes
    # The bound is the largest grid value whose test (and every lower one's) rejects, checked against the formula.
    top = np.searchsorted(GRID, first[0])
    assert mixture_log_evidence(40, 40, GRID[: top + 1]).min() >= np.log(1 / ALPHA)
    assert mixture_log_evidence(40, 40, GRID[top + 1]) < np.log(1 / ALPHA)
    later = stair.update(rows[:1], np.array([41]), 80)  # a bad round: the test no longer rejects as high
    assert later[0] == first[0]  # an earlier rejection stands: the sequence holds at every look at once


def test_bets_are_never_negative_and_never_risk_more_than_the_cap():
    k, t = np.array([0, 5, 100, 100]), np.array([0, 10, 100, 100])
    g = np.array([0.5, 0.9, 0.5, 0.999])
    bet = betting_bet(k, t, g)
    assert (bet >= 0).all() and (bet <= 0.75 / g + 1e-12).all()
    assert bet[1] == 0  # the mean so far is below the threshold: no bet


def test_each_noise_and_rule_finds_the_smallest_pa_whose_radius_reaches_r():
    from art_some.core.noise import GaussianNoise, LaplaceNoise, UniformNoise
    from art_some.core.rules import CertificateRule, CohenRule, ScaledRule

    for noise in (GaussianNoise(0.25), GaussianNoise(np.array([0.25, 0.5])),
                  GaussianNoise(0.5, norm="linf", dimension=4), LaplaceNoise(0.5), UniformNoise(0.5)):
        for rule in (CohenRule(), ScaledRule(CohenRule(), 2.0)):
            for r in (0.1, 0.25, 0.75, 1.0):
                p = rule.threshold(r, noise, 2)
                reachable = p < 1
                assert (rule.radius(p, noise)[reachable] >= r).all()  # the threshold reaches r ...
                assert (rule.radius(np.nextafter(p, 0), noise)[reachable] < r).all()  # ... and nothing below does
            assert (rule.threshold(0.0, noise, 2) == 0.5).all()  # "certified at 0": pA above 1/2

    class Halved(CertificateRule):  # a rule with a radius of its own: the threshold comes by bisection
        def radius(self, p_lower, noise):
            return noise.radius(p_lower) / 2

    noise = GaussianNoise(0.5)
    p = Halved().threshold(0.25, noise, 3)
    np.testing.assert_allclose(p, noise.threshold(0.5), atol=1e-8)
    assert (Halved().radius(p, noise) >= 0.25).all()
