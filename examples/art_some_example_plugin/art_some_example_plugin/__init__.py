"""
An example art-some plugin. It adds, through the same hooks the built-ins use:

- estimator ``flip_smoothed``: Gaussian smoothing whose base classifier averages the logits of the noisy input
  and its horizontal mirror image (a deterministic base classifier, so Cohen's certificate still holds);
- model ``example_mlp``: a two-layer perceptron;
- aggregation ``median``: the class-wise median of patch scores, for ``SmoothReduceClassifier`` (deterministic, so
  the certificates stay sound);
- noise model ``uniform_linf``: uniform noise on a cube certified in L-infinity (``register_noise_models``);
- command ``art-some example-hello``: says hello and how many estimators are registered (``register_commands``).
"""
import click
import numpy as np
import torch

from art_some import hookimpl
from art_some.core.noise import UniformNoise, argmax_votes
from art_some.estimators import SmoothedClassifier


class FlipSmoothedClassifier(SmoothedClassifier):
    """SmoothedClassifier whose vote averages the logits of z and of z flipped along the last axis."""

    def vote(self, z):
        # argmax_votes marks rows whose logits are not finite, so they are never counted (argmax of NaN is 0).
        return argmax_votes(self.logits(z) + self.logits(torch.flip(z, dims=[-1])))


class ExampleMLP(torch.nn.Module):
    def __init__(self, num_classes=10, in_features=64, hidden=32):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(in_features, hidden), torch.nn.ReLU(),
                                       torch.nn.Linear(hidden, num_classes))

    def forward(self, x):
        return self.net(x)


class UniformLinfNoise(UniformNoise):
    """
    Uniform noise on [-lambda, lambda]^d (lambda = sigma sqrt(3)) certified in L-infinity: shifting the cube by delta
    moves a mass of at most 1 - (1 - ||delta||_inf / (2 lambda))^d out of it, so pA stays above 1/2 while
    ||delta||_inf < 2 lambda (1 - (3/2 - pA)^(1/d)); for d = 1 this is the L1 radius 2 lambda (pA - 1/2).
    """

    name = "uniform_linf"
    norms = ("linf",)

    def _radius(self, p):
        half_width = np.asarray(self.sigma, dtype=np.float64) * np.sqrt(3.0)
        return 2.0 * half_width * (1.0 - (1.5 - p) ** (1.0 / self._need_dimension()))


@hookimpl
def register_noise_models(register):
    register("uniform_linf", UniformLinfNoise, description="uniform noise on a cube, L-infinity radii (example)")


@hookimpl
def register_estimators(register):
    register("flip_smoothed", FlipSmoothedClassifier, description="smoothing over a flip-averaged base classifier")


@hookimpl
def register_models(register):
    register("example_mlp", ExampleMLP, description="two-layer perceptron (example plugin)")


@hookimpl
def register_aggregations(register):
    register("median", lambda scores: scores.median(dim=1).values, description="class-wise median over patches; sound")


@hookimpl
def register_commands(cli):
    @cli.command(name="example-hello")
    @click.option("--name", default="world", show_default=True, help="Whom to greet.")
    def example_hello(name):
        """Say hello from the example plugin (a command added through register_commands)."""
        from art_some.plugins import registered

        click.echo(f"Hello, {name}, from art-some-example-plugin; {len(registered('estimators'))} estimators "
                   "are registered")
