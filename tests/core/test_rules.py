"""
Certificate rules own their statistics: a new rule needs only ``lower_bound`` (and ``radius`` where the noise's is not
its own), and fixed-n CERTIFY, sequential CERTIFY and the decision all go through it.
"""
import numpy as np
import pytest
import torch
from scipy.stats import norm

from art_some.core.noise import GaussianNoise
from art_some.core.rules import ABSTAIN, CertificateRule, CohenRule, ScaledRule, Tally
from art_some.core.smoothing import Smooth
from art_some.core.stats import hoeffding_lower

SIGMA = 0.5


class HoeffdingRule(CertificateRule):
    """A toy rule: Hoeffding's bound on the count of the selected class, nothing else."""

    def lower_bound(self, tally, classes, alpha):
        rows = np.arange(len(tally))
        return hoeffding_lower(tally.counts[rows, classes] / tally.draws, tally.draws, alpha)


class HalfRadiusRule(HoeffdingRule):
    """The toy rule with its own radius: half the noise's."""

    def radius(self, p_lower, noise):
        return noise.radius(p_lower) / 2


def half_space(z):
    return (z[:, 0] > 0).long()


def inputs(d, count=4):
    x = torch.zeros((count, 2))
    x[:, 0] = d
    return x


def test_a_rule_with_only_a_lower_bound_certifies_with_fixed_n():
    smooth = Smooth(half_space, GaussianNoise(SIGMA), HoeffdingRule(), num_classes=2, seed=1)
    result = smooth.certify(inputs(1.0), n0=20, n=2000, alpha=0.01)
    k = result.counts_estimation[:, 1]
    expected_p = hoeffding_lower(k / 2000, 2000, 0.01)
    np.testing.assert_array_equal(result.p_lower, expected_p)
    np.testing.assert_allclose(result.radius, SIGMA * norm.ppf(expected_p))
    assert (result.predict == 1).all()
    # Hoeffding is looser than Clopper-Pearson on the same draws.
    cohen = Smooth(half_space, GaussianNoise(SIGMA), num_classes=2, seed=1).certify(inputs(1.0), n0=20, n=2000,
                                                                                    alpha=0.01)
    np.testing.assert_array_equal(cohen.counts_estimation, result.counts_estimation)
    assert (result.radius < cohen.radius).all()


def test_the_same_rule_certifies_sequentially_and_its_own_radius_is_used():
    smooth = Smooth(half_space, GaussianNoise(SIGMA), HalfRadiusRule(), num_classes=2, seed=1)
    result = smooth.certify_sequential(inputs(1.0), n0=20, n=4000, alpha=0.01, start=50)
    sure = result.predict >= 0
    assert sure.all() and (result.draws <= 4000).all()
    np.testing.assert_allclose(result.radius, SIGMA * norm.ppf(result.p_lower) / 2)
    # Every radius it claims is below the truth (1.0): half of a valid radius.
    assert (result.radius < 1.0).all()
    at = smooth.certify_sequential(inputs(1.0), n0=20, n=4000, alpha=0.01, start=50, radii=[0.1, 0.9])
    assert at.certified_at[:, 0].all() and not at.certified_at[:, 1].any()


def test_decide_is_one_rule_for_all():
    rule = CohenRule()
    classes = np.array([3, 1, 2])
    predict, radius = rule.decide(classes, np.array([0.4, 0.5, 0.9]), GaussianNoise(SIGMA))
    assert list(predict) == [ABSTAIN, 1, 2]
    assert radius[0] == 0.0 and radius[1] == 0.0 and radius[2] == pytest.approx(SIGMA * norm.ppf(0.9))
    scaled = ScaledRule(rule, 4.0)
    _, quarter = scaled.decide(classes, np.array([0.4, 0.5, 0.9]), GaussianNoise(SIGMA))
    np.testing.assert_allclose(quarter, radius / 4)
    for method in ("decide", "certify"):
        assert getattr(type(scaled), method) is getattr(CertificateRule, method)  # never overridden


def test_cohen_bounds_are_clopper_pearson_and_simultaneous_upper_bounds_split_alpha():
    from art_some.core.stats import clopper_pearson_lower, clopper_pearson_upper

    tally = Tally(np.array([[70, 20, 10], [0, 0, 100]]), 100)
    top = np.array([0, 2])
    np.testing.assert_array_equal(CohenRule().lower_bound(tally, top, 0.01),
                                  clopper_pearson_lower(np.array([70, 100]), 100, 0.01))
    np.testing.assert_array_equal(CohenRule().upper_bound(tally, top, 0.01),
                                  clopper_pearson_upper(np.array([70, 100]), 100, 0.01))
    both = CohenRule().class_upper_bounds(tally, 0.03)
    np.testing.assert_array_equal(both, clopper_pearson_upper(tally.counts, 100, 0.01))
