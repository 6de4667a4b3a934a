"""Trainers on ART's Trainer API: noise augmentation and its regularised variants."""
from art_some.hookspecs import hookimpl
from art_some.trainers.base import SmoothingTrainer
from art_some.trainers.consistency import ConsistencyTrainer
from art_some.trainers.crt import CRTTrainer
from art_some.trainers.ddrs import DDRSTrainer
from art_some.trainers.diffusion_calibration import (
    DenoisedClassifierTrainer,
    DiffusionCalibrationTrainer,
)
from art_some.trainers.gaussian import GaussianAugmentationTrainer
from art_some.trainers.macer import MACERTrainer
from art_some.trainers.smoothadv import SmoothAdvTrainer
from art_some.trainers.smoothmix import SmoothMixTrainer
from art_some.trainers.some import SOMETrainer

__all__ = [
    "CRTTrainer",
    "ConsistencyTrainer",
    "DDRSTrainer",
    "DenoisedClassifierTrainer",
    "DiffusionCalibrationTrainer",
    "GaussianAugmentationTrainer",
    "MACERTrainer",
    "SOMETrainer",
    "SmoothAdvTrainer",
    "SmoothMixTrainer",
    "SmoothingTrainer",
]


@hookimpl
def register_trainers(register):
    register("gaussian", GaussianAugmentationTrainer, description="Gaussian noise augmentation (Cohen et al. 2019)")
    register("consistency", ConsistencyTrainer, description="Consistency regularisation (Jeong & Shin 2020)")
    register("smoothmix", SmoothMixTrainer, description="SmoothMix (Jeong et al. 2021)")
    register("smoothadv", SmoothAdvTrainer,
             description="SmoothAdv: L2 PGD on the soft smoothed classifier (Salman et al. 2019)")
    register("macer", MACERTrainer, description="MACER: soft certified-radius maximisation (Zhai et al. 2020)")
    register("crt", CRTTrainer, description="certified robustness transfer from a robust teacher (Vaishnavi et al.)")
    register("ddrs", DDRSTrainer,
             description="data-dependent sigma per training example over Gaussian/SmoothAdv/MACER (Alfarra et al.)")
    register("diffusion_calibration", DiffusionCalibrationTrainer,
             description="Brier + anti-consistency fine-tuning of a diffusion denoiser (Jeong & Shin 2023)")
    register("denoised_classifier", DenoisedClassifierTrainer,
             description="fine-tune a classifier on denoised noisy images over the cascade's levels")
    register("some", SOMETrainer, description="SOME circular teaching for multi-head networks (Fang et al.)")
