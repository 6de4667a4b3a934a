"""
Soundness against an exact ground truth: for a binary linear classifier under Gaussian noise, P(class 1) =
Phi((w.x + b) / (sigma ||w||)) and the smoothed classifier's true L2 radius is |w.x + b| / ||w||.
"""
import numpy as np
import pytest
from scipy.stats import binom

from tests.conftest import Linear2, make_classifier

D, SIGMA = 10, 0.5


@pytest.fixture(scope="module")
def linear_setup():
    rng = np.random.default_rng(42)
    w = rng.normal(size=D)
    b = 0.1
    x = rng.normal(scale=0.3, size=(400, D)).astype(np.float32)
    margin = (x @ w + b) / np.linalg.norm(w)
    clf = make_classifier(Linear2(w, b), (D,), 2, scale=SIGMA, clip_values=None, sample_size=100,
                          noise_batch_size=20_000, alpha=0.05)
    return clf, x, margin


def failures(pred, radius, margin, inflate=1.0):
    true_class = (margin > 0).astype(int)
    certified = pred >= 0
    wrong = certified & (pred != true_class)
    too_big = certified & (inflate * radius > np.abs(margin) + 1e-9)
    return int(np.sum(wrong | too_big))


def test_failure_rate_within_alpha(linear_setup):
    clf, x, margin = linear_setup
    alpha = 0.05
    pred, radius = clf.certify(x, n=500, alpha=alpha, batch_size=20_000)
    assert np.mean(pred >= 0) > 0.5  # the check is not vacuous
    limit = binom.ppf(0.999, len(x), alpha)
    assert failures(pred, radius, margin) <= limit


def test_the_soundness_check_has_power(linear_setup):
    # A rule that overstates radii by 60% is caught by the same check.
    clf, x, margin = linear_setup
    pred, radius = clf.certify(x, n=500, alpha=0.05, batch_size=20_000)
    assert failures(pred, radius, margin, inflate=1.6) > binom.ppf(0.999, len(x), 0.05)


def test_radii_approach_the_true_radius_as_n_grows(linear_setup):
    clf, x, margin = linear_setup
    x, margin = x[:60], margin[:60]
    gaps = []
    for n in (100, 1000, 100_000):
        pred, radius = clf.certify(x, n=n, alpha=0.001, batch_size=50_000)
        ok = (pred >= 0) & (np.abs(margin) < 3.5 * SIGMA)  # below the radius cap
        gaps.append(np.mean(np.where(ok, np.abs(margin) - radius, np.abs(margin))))
    assert gaps[0] > gaps[1] > gaps[2]
    assert gaps[2] < 0.1


def test_predict_errs_at_most_alpha(linear_setup):
    clf, x, margin = linear_setup
    votes = clf.predict(x)
    decided = votes.sum(axis=1) > 0
    wrong = decided & (votes.argmax(axis=1) != (margin > 0))
    assert np.sum(wrong) <= binom.ppf(0.999, len(x), clf.alpha)
    assert np.mean(decided) > 0.5
