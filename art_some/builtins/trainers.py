"""
The built-in trainers (``register_trainers``), each with what it is, for the training run: what it tunes, the
estimator it trains through, whether its loss is a cross-entropy, whether it runs under torchrun, and the optimizer
``art-some train`` gives it unless told otherwise.
"""
from art_some.hookspecs import hookimpl

# Training defaults, chosen so that 3 epochs on digits (DigitsCNN, batch 64) learn with every method; the held-out
# accuracies they reach are in docs/trainers.rst. SGD at 0.1 is the papers' rate for Gaussian, SmoothAdv and
# SmoothMix; at that rate consistency, DDRS, SOME and the denoised methods learn less (CRT and MACER nothing), and
# MACER and CRT still learn nothing at Adam's usual 1e-3 (CRT's rate drops x0.1 at half and three quarters of the
# run; MACER's radius term slows the start).
SGD = {"optimizer": "sgd", "lr": 0.1}
ADAM = {"optimizer": "adam", "lr": 1e-3}
FAST_ADAM = {"optimizer": "adam", "lr": 1e-2}


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

    register("gaussian", GaussianAugmentationTrainer, cross_entropy=True, train_defaults=SGD,
             description="Gaussian noise augmentation (Cohen et al. 2019)")
    register("consistency", ConsistencyTrainer, cross_entropy=True, train_defaults=ADAM,
             description="Consistency regularisation (Jeong & Shin 2020)")
    register("smoothmix", SmoothMixTrainer, train_defaults=SGD, description="SmoothMix (Jeong et al. 2021)")
    register("smoothadv", SmoothAdvTrainer, cross_entropy=True, train_defaults=SGD,
             description="SmoothAdv: L2 PGD on the soft smoothed classifier (Salman et al. 2019)")
    register("macer", MACERTrainer, train_defaults=FAST_ADAM,
             description="MACER: soft certified-radius maximisation (Zhai et al. 2020)")
    register("crt", CRTTrainer, train_defaults=FAST_ADAM,
             description="certified robustness transfer from a robust teacher (Vaishnavi et al.)")
    register("ddrs", DDRSTrainer, train_defaults=ADAM,
             description="data-dependent sigma per training example over Gaussian/SmoothAdv/MACER (Alfarra et al.)")
    register("diffusion_calibration", DiffusionCalibrationTrainer, tunes="denoiser", estimator="denoised_multiscale",
             distributed=False, train_defaults=ADAM,
             description="Brier + anti-consistency fine-tuning of a diffusion denoiser (Jeong & Shin 2023)")
    register("denoised_classifier", DenoisedClassifierTrainer, estimator="denoised_multiscale", cross_entropy=True,
             train_defaults=ADAM,
             description="fine-tune a classifier on denoised noisy images over the cascade's levels")
    register("some", SOMETrainer, train_defaults=ADAM,
             description="SOME circular teaching for multi-head networks (Fang et al.)")
