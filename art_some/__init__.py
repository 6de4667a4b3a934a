"""
art-some: certified robustness by randomized smoothing, as ART estimators and trainers.

Public names: :class:`SmoothedClassifier`, the trainers, the engine's :func:`certify` / :func:`predict`,
and plugin access through :mod:`art_some.plugins`.
"""
from art_some._version import __version__
from art_some.hookspecs import hookimpl

__all__ = [
    "CRTTrainer",
    "ConsistencyTrainer",
    "DDRSTrainer",
    "DataDependentSmoothedClassifier",
    "DenoisedMultiScaleClassifier",
    "DiffusionCalibrationTrainer",
    "GaussianAugmentationTrainer",
    "MACERTrainer",
    "MultiHeadSmoothedClassifier",
    "SOMETrainer",
    "SmoothAdvTrainer",
    "SmoothMixTrainer",
    "SmoothReduceClassifier",
    "SmoothedClassifier",
    "__version__",
    "certify",
    "create_estimator",
    "hookimpl",
    "predict",
]


def __getattr__(name):
    # Lazy: importing art_some (e.g. for plugin hooks) must not import ART or torch.
    if name in ("SmoothedClassifier", "MultiHeadSmoothedClassifier", "SmoothReduceClassifier",
                "DenoisedMultiScaleClassifier", "DataDependentSmoothedClassifier"):
        from art_some import estimators

        return getattr(estimators, name)
    if name in ("ConsistencyTrainer", "GaussianAugmentationTrainer", "SOMETrainer", "SmoothMixTrainer",
                "DiffusionCalibrationTrainer", "SmoothAdvTrainer", "MACERTrainer", "CRTTrainer", "DDRSTrainer"):
        from art_some import trainers

        return getattr(trainers, name)
    if name == "create_estimator":
        from art_some.estimators.factory import create_estimator

        return create_estimator
    if name in ("certify", "predict"):
        import importlib

        # By module path: art_some.core's own attribute "certify" is the function, which hides its module.
        return getattr(importlib.import_module("art_some.core.certify"), name)
    raise AttributeError(f"module 'art_some' has no attribute {name!r}")
