"""
The shared smoothing engine, and nothing else: noise and vote counting, statistics, certificate rules, CERTIFY /
sequential CERTIFY / PREDICT / the cascade, and the smoothed classifier that binds a vote function, a noise model and
a rule. No module here imports anything of art_some outside ``core``.
"""
from art_some.core.certify import CertifyResult
from art_some.core.noise import GaussianNoise, count_votes
from art_some.core.rules import CertificateRule, CohenRule, ScaledRule, Tally
from art_some.core.smoothing import Cascade, Smooth
from art_some.core.stats import (
    binomial_test_two_sided,
    clopper_pearson_lower,
    clopper_pearson_upper,
    gaussian_radius,
    max_certifiable_radius,
)

__all__ = [
    "Cascade",
    "CertificateRule",
    "CertifyResult",
    "CohenRule",
    "GaussianNoise",
    "ScaledRule",
    "Smooth",
    "Tally",
    "binomial_test_two_sided",
    "clopper_pearson_lower",
    "clopper_pearson_upper",
    "count_votes",
    "gaussian_radius",
    "max_certifiable_radius",
]
