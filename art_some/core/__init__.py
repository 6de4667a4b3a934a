"""The shared smoothing engine: noise and vote counting, statistics, CERTIFY/PREDICT, and result records."""
from art_some.core.certify import CertifyResult, certify, cohen_rule, predict
from art_some.core.input_dependent import KNNSigma, semi_elastic_bound, semi_elastic_radius
from art_some.core.memory import MemoryCertifier
from art_some.core.noise import GaussianNoise, count_votes
from art_some.core.sigma_search import optimize_sigma, soft_radius
from art_some.core.stats import (
    binomial_test_two_sided,
    clopper_pearson_lower,
    clopper_pearson_upper,
    gaussian_radius,
    max_certifiable_radius,
)

__all__ = [
    "CertifyResult",
    "GaussianNoise",
    "KNNSigma",
    "MemoryCertifier",
    "binomial_test_two_sided",
    "certify",
    "clopper_pearson_lower",
    "clopper_pearson_upper",
    "cohen_rule",
    "count_votes",
    "gaussian_radius",
    "max_certifiable_radius",
    "optimize_sigma",
    "predict",
    "semi_elastic_bound",
    "semi_elastic_radius",
    "soft_radius",
]
