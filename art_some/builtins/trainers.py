"""
The built-in trainers (``register_trainers``), each with what it is, for the training run: what it tunes, the
estimator it trains through, whether its loss is a cross-entropy and whether it runs under torchrun.
"""
from art_some.hookspecs import hookimpl


@hookimpl
def register_trainers(register):
    from art_some.trainers import (
        ConsistencyTrainer,
        CRTTrainer,
        DDRSTrainer,
        DenoisedClassifierTrainer,
        DiffusionCalibrationTrainer,
        GaussianAugmentationTrainer,
        MACERTrainer,
        SmoothAdvTrainer,
        SmoothMixTrainer,
        SOMETrainer,
    )

    register("gaussian", GaussianAugmentationTrainer, cross_entropy=True,
             description="Gaussian noise augmentation (Cohen et al. 2019)")
    register("consistency", ConsistencyTrainer, cross_entropy=True,
             description="Consistency regularisation (Jeong & Shin 2020)")
    register("smoothmix", SmoothMixTrainer, description="SmoothMix (Jeong et al. 2021)")
    register("smoothadv", SmoothAdvTrainer, cross_entropy=True,
             description="SmoothAdv: L2 PGD on the soft smoothed classifier (Salman et al. 2019)")
    register("macer", MACERTrainer, description="MACER: soft certified-radius maximisation (Zhai et al. 2020)")
    register("crt", CRTTrainer, description="certified robustness transfer from a robust teacher (Vaishnavi et al.)")
    register("ddrs", DDRSTrainer,
             description="data-dependent sigma per training example over Gaussian/SmoothAdv/MACER (Alfarra et al.)")
    register("diffusion_calibration", DiffusionCalibrationTrainer, tunes="denoiser", estimator="denoised_multiscale",
             distributed=False,
             description="Brier + anti-consistency fine-tuning of a diffusion denoiser (Jeong & Shin 2023)")
    register("denoised_classifier", DenoisedClassifierTrainer, estimator="denoised_multiscale", cross_entropy=True,
             description="fine-tune a classifier on denoised noisy images over the cascade's levels")
    register("some", SOMETrainer, description="SOME circular teaching for multi-head networks (Fang et al.)")
