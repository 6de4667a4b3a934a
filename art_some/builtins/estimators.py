"""The built-in estimators (``register_estimators``)."""
from art_some.hookspecs import hookimpl


@hookimpl
def register_estimators(register):
    from art_some.estimators import (
        DataDependentSmoothedClassifier,
        DenoisedMultiScaleClassifier,
        MultiHeadSmoothedClassifier,
        SmoothedClassifier,
        SmoothReduceClassifier,
    )

    register("smoothed", SmoothedClassifier, description="Gaussian randomized smoothing (Cohen et al. 2019)")
    register("some", MultiHeadSmoothedClassifier, fits="multihead",
             description="smoothed multi-head ensemble (SOME, Fang et al.)")
    register("smooth_reduce", SmoothReduceClassifier,
             description="smoothing of patch-aggregated scores (Smooth-Reduce, Joshi et al.); sound by default")
    register("denoised_multiscale", DenoisedMultiScaleClassifier, denoiser=True,
             description="diffusion denoised smoothing, cascaded over noise levels (Carlini et al.; Jeong & Shin)")
    register("data_dependent", DataDependentSmoothedClassifier,
             description="input-dependent sigma: Sukenik et al.'s kNN sigma with a sound certificate, or DDRS's "
                         "optimised sigma (certificate of g_sigma_x only)")
