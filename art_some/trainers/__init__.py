"""Trainers on ART's Trainer API: noise augmentation and its regularised variants."""
from art_some.hookspecs import hookimpl
from art_some.trainers.base import SmoothingTrainer
from art_some.trainers.consistency import ConsistencyTrainer
from art_some.trainers.gaussian import GaussianAugmentationTrainer
from art_some.trainers.smoothmix import SmoothMixTrainer
from art_some.trainers.some import SOMETrainer

__all__ = ["ConsistencyTrainer", "GaussianAugmentationTrainer", "SOMETrainer", "SmoothMixTrainer", "SmoothingTrainer"]


@hookimpl
def register_trainers(register):
    register("gaussian", GaussianAugmentationTrainer, description="Gaussian noise augmentation (Cohen et al. 2019)")
    register("consistency", ConsistencyTrainer, description="Consistency regularisation (Jeong & Shin 2020)")
    register("smoothmix", SmoothMixTrainer, description="SmoothMix (Jeong et al. 2021)")
    register("some", SOMETrainer, description="SOME circular teaching for multi-head networks (Fang et al.)")
