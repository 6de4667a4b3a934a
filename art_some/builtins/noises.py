"""The built-in noise models (``register_noise_models``): Gaussian, Laplace and uniform, each with its radii."""
from art_some.hookspecs import hookimpl


@hookimpl
def register_noise_models(register):
    from art_some.core import noise

    register("gaussian", noise.GaussianNoise,
             description="N(0, sigma^2 I): L2 radius sigma Phi^-1(pA) (Cohen et al.); L1 the same; L-inf / sqrt(d)")
    register("laplace", noise.LaplaceNoise,
             description="Laplace, scale sigma / sqrt(2): L1 radius -b ln(2 (1 - pA)) (Teng et al.)")
    register("uniform", noise.UniformNoise,
             description="uniform on [-sigma sqrt(3), sigma sqrt(3)]^d: L1 radius 2 lambda (pA - 1/2) (Yang et al.)")
