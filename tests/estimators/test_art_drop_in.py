"""
``SmoothedClassifier`` as a drop-in for ART's ``PyTorchRandomizedSmoothing`` (issue 27): ``predict`` returns ART's
rows (one-hot of the smoothed prediction, all zeros for abstain) by default, works with ART's attacks, and the
audit's attacks still get the vote counts they need.
"""
import numpy as np
import pytest
from art.attacks.evasion import ProjectedGradientDescent
from art.estimators.certification.randomized_smoothing import PyTorchRandomizedSmoothing

from art_some.evaluation.audit import attack_view


@pytest.fixture(scope="module")
def smoothed(trained_digits_classifier, digits):
    _, (xt, yt) = digits
    return trained_digits_classifier, xt[:40], yt[:40]


def test_predict_rows_are_arts_one_hot_rows_of_the_smoothed_class(smoothed):
    clf, x, _ = smoothed
    assert isinstance(clf, PyTorchRandomizedSmoothing)
    rows = clf.predict(x)
    classes, _ = clf.predict_classes(x)
    assert rows.shape == (len(x), clf.nb_classes) and rows.dtype == np.float32
    assert set(np.unique(rows)) <= {0.0, 1.0} and set(rows.sum(axis=1)) <= {0.0, 1.0}
    decided = classes >= 0
    assert decided.any()
    np.testing.assert_array_equal(rows[decided].argmax(axis=1), classes[decided])  # argmax = the smoothed class
    assert (rows[~decided] == 0).all()  # abstain: an all-zero row
    counts = clf.predict(x, output="counts")  # counts on request: the same decisions
    np.testing.assert_array_equal(counts[decided].argmax(axis=1), classes[decided])
    assert (counts[decided].sum(axis=1) == clf.sample_size).all() and (counts[~decided] == 0).all()


def test_art_style_accuracy_and_pgd_work_unchanged(smoothed):
    """What ART's own RS tests do with ``PyTorchRandomizedSmoothing``: accuracy of predict, then PGD on it."""
    clf, x, y = smoothed
    rows = clf.predict(x)
    accuracy = np.mean(np.argmax(rows, axis=1) == y)
    assert accuracy > 0.7
    attack = ProjectedGradientDescent(clf, norm=2, eps=1.0, eps_step=0.25, max_iter=5, verbose=False)
    x_adv = attack.generate(x[:8], y=np.eye(clf.nb_classes)[y[:8]])
    assert x_adv.shape == x[:8].shape and np.isfinite(x_adv).all()
    assert np.abs(x_adv - x[:8]).max() > 0  # it moved the inputs
    after = clf.predict(x_adv)
    assert set(after.sum(axis=1)) <= {0.0, 1.0}


def test_the_audits_attack_view_gets_vote_counts_and_leaves_the_estimator_alone(smoothed):
    clf, x, _ = smoothed
    view = attack_view(clf)
    counts = view.predict(x)
    assert (counts.sum(axis=1) == clf.sample_size).all()  # never abstains, counts out of sample_size
    assert clf.predict_output == "onehot" and clf.predict_abstains
    np.testing.assert_array_equal(clf.predict(x), clf.predict(x, output="onehot"))
