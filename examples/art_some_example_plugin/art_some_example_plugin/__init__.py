"""
An example art-some plugin. It adds, through the same hooks the built-ins use:

- estimator ``flip_smoothed``: Gaussian smoothing whose base classifier averages the logits of the noisy input
  and its horizontal mirror image (a deterministic base classifier, so Cohen's certificate still holds);
- model ``example_mlp``: a two-layer perceptron;
- aggregation ``median``: the class-wise median of patch scores, for ``SmoothReduceClassifier`` (deterministic, so
  the certificates stay sound);
- command ``art-some example-hello``: says hello and how many estimators are registered (``register_commands``).
"""
import click
import torch

from art_some import hookimpl
from art_some.core.noise import argmax_votes
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
