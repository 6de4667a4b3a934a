"""ART-facing smoothed estimators, one module per method."""
from art_some.estimators.data_dependent import DataDependentSmoothedClassifier
from art_some.estimators.denoised import DenoisedMultiScaleClassifier
from art_some.estimators.multihead import MultiHeadSmoothedClassifier
from art_some.estimators.smooth_reduce import SmoothReduceClassifier, UnsoundCertificateWarning
from art_some.estimators.smoothed import SmoothedClassifier

__all__ = [
    "DataDependentSmoothedClassifier",
    "DenoisedMultiScaleClassifier",
    "MultiHeadSmoothedClassifier",
    "SmoothReduceClassifier",
    "SmoothedClassifier",
    "UnsoundCertificateWarning",
]
