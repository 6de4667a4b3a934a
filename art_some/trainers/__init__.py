"""Trainers on ART's Trainer API: noise augmentation and its regularised variants."""
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
