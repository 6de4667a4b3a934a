"""
Where a run's model and data come from, as command-line options shared by ``certify``, ``evaluate`` and ``train``:
``--model``, ``--arch`` and ``--model-module`` (a registered model, an art-some checkpoint, a plain state dict, a
user's own class), ``--dataset`` and ``--data-root``, and the data options of the data sets that take them
(``--channels``, ``--resize``, ``--mean``, ``--std``: ``imagefolder``; ``--mean``, ``--std``: ``numpy``).
"""
from __future__ import annotations

import math

import click

DATA_OPTIONS = ("channels", "resize", "mean", "std")


def _numbers(ctx, param, value):
    """``--mean`` / ``--std``: one number, or one per channel, comma-separated."""
    if value is None:
        return None
    try:
        numbers = tuple(float(v) for v in str(value).split(",") if v.strip())
    except ValueError:
        numbers = ()
    if not numbers or not all(math.isfinite(v) for v in numbers):
        raise click.BadParameter(f"give one number or one per channel, comma-separated (e.g. 0.5 or "
                                 f"0.485,0.456,0.406), got {value!r}")
    return numbers


def _size(ctx, param, value):
    """``--resize``: ``SIZE`` (square) or ``HEIGHT,WIDTH``."""
    if value is None:
        return None
    parts = [v.strip() for v in str(value).split(",")]
    if len(parts) not in (1, 2) or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise click.BadParameter(f"give SIZE or HEIGHT,WIDTH in pixels (e.g. 28 or 32,24), got {value!r}")
    sizes = [int(p) for p in parts]
    return (sizes[0], sizes[-1])


def model_options(model_help: str):
    """``--model`` (its help says what the command does with it), ``--arch`` and ``--model-module``."""
    return [
        click.option("--model", default=None, help=model_help),
        click.option("--arch", default=None,
                     help="What the weights in --model FILE are for, when the file does not say: a registered model "
                          "(art-some plugins lists them; for a plain torch.save(model.state_dict()) file) or a "
                          "published checkpoint's architecture (docs/published.rst)."),
        click.option("--model-module", default=None, metavar="PKG.MOD:FACTORY",
                     help="Your own model: a class or function returning a torch module, importable from PYTHONPATH "
                          "(pkg.mod:Net) or in a file (path/to/nets.py:Net), called with num_classes (and "
                          "in_channels) where it takes them; --model FILE gives its weights (a state dict)."),
    ]


def data_options():
    """``--dataset``, ``--data-root`` and the data options (None when not given: the data set's defaults)."""
    return [
        click.option("--dataset", default="digits", show_default=True,
                     help="A registered dataset (art-some plugins lists them): digits, cifar10, imagenet, "
                          "imagefolder (class folders of images), numpy (.npz or .npy arrays x, y), ..."),
        click.option("--data-root", type=click.Path(), default=None,
                     help="Folder (or the numpy dataset's .npz file) holding the dataset (not digits)."),
        click.option("--channels", type=click.IntRange(min=1), default=None,
                     help="imagefolder: 1 (grayscale) or 3 (RGB) [default: 3]."),
        click.option("--resize", default=None, callback=_size, metavar="SIZE|H,W",
                     help="imagefolder: resize every image to SIZE x SIZE (or H,W) pixels."),
        click.option("--mean", default=None, callback=_numbers, metavar="M|M1,M2,M3",
                     help="imagefolder, numpy: mean the estimator subtracts after adding the noise (the model's "
                          "normalisation; one per channel or one for all) [default: 0]."),
        click.option("--std", default=None, callback=_numbers, metavar="S|S1,S2,S3",
                     help="imagefolder, numpy: standard deviation it then divides by [default: 1]."),
    ]


def add_options(options):
    """A decorator adding click ``options`` in the order given."""

    def decorate(command):
        for option in reversed(options):
            command = option(command)
        return command

    return decorate


def data_settings(source) -> dict:
    """The data options given in ``source`` (a config object or a dict), for :func:`art_some.data.load_dataset`."""
    get = source.get if isinstance(source, dict) else lambda key: getattr(source, key, None)
    return {key: get(key) for key in DATA_OPTIONS if get(key) is not None}
