"""
Aggregation rules: how the scores of P patches (or heads) of one noisy input become one score vector.

A rule maps ``(B, P, C)`` scores to ``(B, C)`` and must be a deterministic function of its input. Any such rule
keeps the smoothing certificate sound, because the base classifier stays a fixed function of the noisy input;
plugins add rules through the ``register_aggregations`` hook and can then be named in
:class:`~art_some.estimators.SmoothReduceClassifier`.
"""
from __future__ import annotations


def max_over_patches(scores):
    """Class-wise max (Smooth-Max): the class of the single most confident patch wins."""
    return scores.amax(dim=1)


def mean_over_patches(scores):
    """Class-wise mean (Smooth-Mean): a soft-voting ensemble of the patches."""
    return scores.mean(dim=1)


def min_over_patches(scores):
    """Class-wise min: a class scores as well as its least convinced patch (in the official code, unreported)."""
    return scores.amin(dim=1)
