"""
The figures: the audit's (``audit.png``) keeps every curve off the frame, and its tables use certify's radii; the
certified-accuracy plot of a fixed-radius run draws its requested radii only.
"""
import numpy as np

from art_some.evaluation.audit import _result
from art_some.evaluation.plots import plot_audit, plot_certified_accuracy
from art_some.runs.metrics import CERTIFY_RADII


def audit_record(i, radius, flipped_at=None, correct=True):
    attack = {"flipped": flipped_at is not None, "distance": flipped_at}
    return {"idx": i, "label": 1, "predict": 1 if correct else 2, "radius": radius, "correct": int(correct),
            "clean_correct": correct, "attacks": {"pgd": attack}, "violations": []}


RECORDS = [audit_record(0, 0.0), audit_record(1, 0.3, flipped_at=0.9), audit_record(2, 0.6),
           audit_record(3, 0.0, correct=False)]


def test_audit_tables_use_certifys_radii_continued_to_the_largest_budget():
    assert _result(RECORDS, ["pgd"], eps=[0.25, 1.0]).radii.tolist() == list(CERTIFY_RADII)
    assert _result(RECORDS, ["pgd"], eps=[0.5, 3.0]).radii.tolist() == [0.25 * k for k in range(13)]


def test_audit_curves_stay_off_the_frame():
    result = _result(RECORDS, ["pgd"], eps=[0.5, 1.0])
    ax = plot_audit(result).axes[0]
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    curves = [line for line in ax.get_lines() if len(line.get_xdata()) > 2]
    assert len(curves) == 3  # certified, pgd, best attack
    for line in curves:
        x, y = (np.asarray(v, dtype=float) for v in line.get_data())
        assert x0 < x.min() and x.max() < x1 and y0 < y.min() and y.max() < y1, line.get_label()
    assert max(line.get_ydata().max() for line in curves) == 75.0  # a curve at its top is inside, not on, the frame


def test_a_fixed_radius_run_is_drawn_at_its_radii_only():
    records = [{"idx": i, "label": 1, "predict": 1, "correct": 1, "radius": r,
                "certified_at": {"0.1": r >= 0.1, "0.3": r >= 0.3}} for i, r in enumerate([0.15, 0.35, 0.0])]
    line = plot_certified_accuracy({"fixed": records}).axes[0].get_lines()[0]
    assert line.get_xdata().tolist() == [0.1, 0.3] and np.allclose(line.get_ydata(), [200 / 3, 100 / 3])
    assert line.get_label() == "fixed, fixed radii" and line.get_marker() == "o"
