"""
What evaluation and runs may use of an estimator: the written contract between the ART-facing estimators and
everything that drives them (the attack audit, ``art-some certify``, record headers). Every registered estimator
class satisfies it (:class:`~art_some.estimators.smoothed.SmoothedClassifier` and its subclasses do); a third-party
estimator is checked once, by :func:`check_estimator`, with one error naming what it lacks, instead of being probed
attribute by attribute.
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from art_some.core.certify import CertifyResult

# The members below, as checked by check_estimator (a Protocol's runtime check only sees that they exist).
MEMBERS = (
    "nb_classes", "input_shape", "clip_values", "sample_size", "alpha", "seed", "scale", "noise_batch_size",
    "precision", "radii_in_input_space", "model", "device", "get_params", "set_params", "predict", "certify",
    "certify_detailed", "certify_sequential", "predict_decisions", "audit_counts", "certificate_info",
    "loss_gradient", "predict_abstains", "predict_output", "reseed_gradients", "radius_norm",
)


@runtime_checkable
class SmoothedEstimator(Protocol):
    """
    A smoothed estimator as art-some's evaluation and runs use it.

    Settings: ``nb_classes``, ``input_shape``, ``clip_values`` (None, or the valid input range), ``sample_size``
    (n0 and PREDICT's n), ``alpha``, ``seed``, ``scale`` (sigma, the largest for a cascade), ``noise_batch_size``,
    ``precision`` (what voted), ``radii_in_input_space`` (whether radii are distances between raw inputs),
    ``radius_norm`` (the norm of the radii: what the audit measures distances and budgets in), ``model``
    and ``device``; ART's ``get_params`` / ``set_params``.

    Procedures: ART's ``predict`` and ``certify``; ``certify_detailed`` and ``certify_sequential`` returning a
    :class:`~art_some.core.certify.CertifyResult`; ``predict_decisions`` (PREDICT with ``sample_size`` draws per
    input keyed by ``indices``: classes with -1 for abstain, the rule's scores, the answering level);
    ``audit_counts`` (the fresh votes an attack point is checked with);
    ``certificate_info`` (what each record says of the certificate); ``loss_gradient`` (what ART's attacks call);
    ``predict_abstains`` and ``predict_output`` (``predict``'s defaults: abstain, ART's one-hot rows; the audit's
    attack view never abstains and returns the vote counts) and ``reseed_gradients``
    (restart the EOT gradient noise, so that each attack run sees the same).
    """

    nb_classes: int
    input_shape: tuple
    clip_values: object
    sample_size: int
    alpha: float
    seed: int
    scale: float
    noise_batch_size: int
    precision: str
    radii_in_input_space: bool
    radius_norm: str
    predict_abstains: bool
    predict_output: str

    def reseed_gradients(self, stream: int = 0) -> None: ...

    def get_params(self) -> dict: ...

    def set_params(self, **kwargs) -> None: ...

    def predict(self, x, batch_size: int = 128, **kwargs) -> np.ndarray: ...

    def certify(self, x, n: int, batch_size: int | None = None, **kwargs): ...

    def certify_detailed(self, x, n: int, n0=None, alpha=None, batch_size=None, indices=None) -> CertifyResult: ...

    def certify_sequential(self, x, n: int, n0=None, alpha=None, batch_size=None, indices=None, radii=None,
                           tolerance: float = 0.02, start: int = 100, growth: float = 2.0) -> CertifyResult: ...

    def predict_decisions(self, x, indices=None, invalid=None, abstain: bool = True): ...

    def audit_counts(self, x, n: int, indices=None) -> np.ndarray: ...

    def certificate_info(self) -> dict: ...

    def loss_gradient(self, x, y, training_mode: bool = False, **kwargs): ...


def check_estimator(estimator, what: str = "art-some") -> SmoothedEstimator:
    """
    ``estimator`` if it has every member of :class:`SmoothedEstimator`; otherwise a ValueError naming the missing ones
    (``what`` says who needs them, e.g. ``"the audit"``).
    """
    missing = [name for name in MEMBERS if not hasattr(estimator, name)]
    if missing:
        raise ValueError(f"{what} needs a smoothed estimator (art_some.estimators.protocol.SmoothedEstimator); "
                         f"{type(estimator).__name__} lacks {', '.join(missing)}")
    return estimator


__all__ = ["MEMBERS", "SmoothedEstimator", "check_estimator"]
