"""Evaluation: certifying data sets with resumable records, and plots."""
from art_some.evaluation.plots import plot_certified_accuracy
from art_some.evaluation.runner import certify_dataset

__all__ = ["certify_dataset", "plot_certified_accuracy"]
