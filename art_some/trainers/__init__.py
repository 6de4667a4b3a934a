"""Trainers on ART's Trainer API: noise augmentation and its regularised variants."""
from art_some.hookspecs import hookimpl
from art_some.trainers.base import SmoothingTrainer
from art_some.trainers.consistency import ConsistencyTrainer
from art_some.trainers.gaussian import GaussianAugmentationTrainer

__all__ = ["ConsistencyTrainer", "GaussianAugmentationTrainer", "SmoothingTrainer"]


@hookimpl
def register_trainers(register):
    register("gaussian", GaussianAugmentationTrainer, description="Gaussian noise augmentation (Cohen et al. 2019)")
    register("consistency", ConsistencyTrainer, description="Consistency regularisation (Jeong & Shin 2020)")
