"""ART-facing smoothed estimators, one module per method."""
from art_some.estimators.data_dependent import DataDependentSmoothedClassifier
from art_some.estimators.denoised import DenoisedMultiScaleClassifier
from art_some.estimators.multihead import MultiHeadSmoothedClassifier
from art_some.estimators.smooth_reduce import SmoothReduceClassifier, UnsoundCertificateWarning
from art_some.estimators.smoothed import SmoothedClassifier
from art_some.hookspecs import hookimpl

__all__ = [
    "DataDependentSmoothedClassifier",
    "DenoisedMultiScaleClassifier",
    "MultiHeadSmoothedClassifier",
    "SmoothReduceClassifier",
    "SmoothedClassifier",
    "UnsoundCertificateWarning",
]


@hookimpl
def register_estimators(register):
    register("smoothed", SmoothedClassifier, description="Gaussian randomized smoothing (Cohen et al. 2019)")
    register("some", MultiHeadSmoothedClassifier, description="smoothed multi-head ensemble (SOME, Fang et al.)")
    register("smooth_reduce", SmoothReduceClassifier,
             description="smoothing of patch-aggregated scores (Smooth-Reduce, Joshi et al.); sound by default")
    register("denoised_multiscale", DenoisedMultiScaleClassifier,
             description="diffusion denoised smoothing, cascaded over noise levels (Carlini et al.; Jeong & Shin)")
    register("data_dependent", DataDependentSmoothedClassifier,
             description="input-dependent sigma: Sukenik et al.'s kNN sigma with a sound certificate, or DDRS's "
                         "optimised sigma (certificate of g_sigma_x only)")
