"""Trainers on ART's Trainer API: noise augmentation and its regularised variants."""
from art_some.hookspecs import hookimpl
from art_some.trainers.base import SmoothingTrainer
from art_some.trainers.consistency import ConsistencyTrainer
from art_some.trainers.diffusion_calibration import (
    DenoisedClassifierTrainer,
    DiffusionCalibrationTrainer,
)
from art_some.trainers.gaussian import GaussianAugmentationTrainer
from art_some.trainers.smoothmix import SmoothMixTrainer
from art_some.trainers.some import SOMETrainer

__all__ = [
    "ConsistencyTrainer",
    "DenoisedClassifierTrainer",
    "DiffusionCalibrationTrainer",
    "GaussianAugmentationTrainer",
    "SOMETrainer",
    "SmoothMixTrainer",
    "SmoothingTrainer",
]


@hookimpl
def register_trainers(register):
    register("gaussian", GaussianAugmentationTrainer, description="Gaussian noise augmentation (Cohen et al. 2019)")
    register("consistency", ConsistencyTrainer, description="Consistency regularisation (Jeong & Shin 2020)")
    register("smoothmix", SmoothMixTrainer, description="SmoothMix (Jeong et al. 2021)")
    register("diffusion_calibration", DiffusionCalibrationTrainer,
             description="Brier + anti-consistency fine-tuning of a diffusion denoiser (Jeong & Shin 2023)")
    register("denoised_classifier", DenoisedClassifierTrainer,
             description="fine-tune a classifier on denoised noisy images over the cascade's levels")
    register("some", SOMETrainer, description="SOME circular teaching for multi-head networks (Fang et al.)")
