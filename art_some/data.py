"""
Datasets: scikit-learn's digits are embedded (no download); CIFAR-10, ImageNet and ImageFolder come through
torchvision from a local ``root`` (nothing is downloaded at run time).

Every loader returns ``(dataset, info)``: a torch Dataset of ``(image tensor in [0, 1], label)`` and a dict with
``num_classes``, ``input_shape``, ``mean`` and ``std`` (the standardisation the smoothing literature applies
*after* the noise).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

SPLITS = ("train", "test")
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")


def digits_arrays(split: str = "test") -> tuple[np.ndarray, np.ndarray]:
    """
    scikit-learn's 8x8 digits as float32 ``(N, 1, 8, 8)`` in [0, 1] and int64 labels; a fixed stratified
    80/20 split (1437 train, 360 test).
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    _check_split(split)
    bunch = load_digits()
    x = (bunch.images / 16.0).astype(np.float32)[:, None]
    y = bunch.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.2, random_state=0, stratify=y)
    return (x_train, y_train) if split == "train" else (x_test, y_test)


def digits(root=None, split: str = "test", augment: bool = False):
    """The embedded digits data set (``root`` is ignored; no augmentation for 8x8 digits)."""
    import torch
    from torch.utils.data import TensorDataset

    x, y = digits_arrays(split)
    info = {"num_classes": 10, "input_shape": (1, 8, 8), "mean": (0.0,), "std": (1.0,)}
    return TensorDataset(torch.from_numpy(x), torch.from_numpy(y)), info


def _need_root(name: str, root) -> Path:
    if root is None:
        raise ValueError(f"dataset {name!r} needs a data root (--data-root); nothing is downloaded")
    path = Path(root)
    if not path.is_dir():
        raise ValueError(f"data root {str(path)!r} for dataset {name!r} is not a directory")
    return path


def cifar10(root=None, split: str = "test", augment: bool = False):
    """
    CIFAR-10 from ``root`` (the folder holding ``cifar-10-batches-py``), as tensors in [0, 1]; ``augment`` adds
    the usual training augmentation (RandomCrop 32 with padding 4, horizontal flip).
    """
    from torchvision import datasets, transforms

    _check_split(split)
    path = _need_root("cifar10", root)
    steps = [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip()] if augment else []
    try:
        dataset = datasets.CIFAR10(str(path), train=split == "train", download=False,
                                   transform=transforms.Compose([*steps, transforms.ToTensor()]))
    except RuntimeError as err:
        raise ValueError(f"CIFAR-10 not found under {str(path)!r}: {err}") from None
    return dataset, {"num_classes": 10, "input_shape": (3, 32, 32), "mean": CIFAR10_MEAN, "std": CIFAR10_STD}


def _imagenet_transform(augment: bool = False):
    from torchvision import transforms

    if augment:
        return transforms.Compose([transforms.RandomResizedCrop(224), transforms.RandomHorizontalFlip(),
                                   transforms.ToTensor()])
    return transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor()])


def imagenet(root=None, split: str = "test", augment: bool = False):
    """
    ImageNet (ILSVRC2012) from ``root``; the "test" split is the validation set (Resize 256, CenterCrop 224);
    ``augment`` uses RandomResizedCrop 224 and horizontal flips instead.
    """
    from torchvision import datasets

    _check_split(split)
    path = _need_root("imagenet", root)
    try:
        folder = "train" if split == "train" else "val"
        dataset = datasets.ImageNet(str(path), split=folder, transform=_imagenet_transform(augment))
    except (RuntimeError, FileNotFoundError) as err:
        raise ValueError(f"ImageNet not found under {str(path)!r}: {err}") from None
    return dataset, {"num_classes": 1000, "input_shape": (3, 224, 224), "mean": IMAGENET_MEAN, "std": IMAGENET_STD}


def imagefolder(root=None, split: str = "test", augment: bool = False, channels: int | None = None,
                resize: tuple[int, int] | None = None, mean=None, std=None):
    """
    A folder of class sub-folders (``root/<split>/<class>/*.png`` if ``root/<split>`` exists, else
    ``root/<class>/*``). ``augment`` adds horizontal flips.

    :param channels: 1 (grayscale) or 3 (RGB, the default: torchvision's loader converts every image to RGB).
    :param resize: ``(height, width)`` every image is resized to (bilinear, antialiased); without it the images
                   must share one size.
    :param mean: The standardisation the estimator applies *after* the noise (its ``preprocessing``): one number
                 per channel, or one for all; default 0.
    :param std: Likewise, default 1 (positive numbers).
    """
    from torchvision import datasets, transforms

    _check_split(split)
    path = _need_root("imagefolder", root)
    if (path / split).is_dir():
        path = path / split
    channels = 3 if channels is None else channels
    if channels not in (1, 3):
        raise ValueError(f"--channels must be 1 (grayscale) or 3 (RGB) for dataset 'imagefolder', got {channels!r}")
    steps = [transforms.Grayscale(1)] if channels == 1 else []
    if resize is not None:
        steps.append(transforms.Resize(tuple(_check_size(resize)), antialias=True))
    if augment:
        steps.append(transforms.RandomHorizontalFlip())
    try:
        dataset = datasets.ImageFolder(str(path), transform=transforms.Compose([*steps, transforms.ToTensor()]))
    except (FileNotFoundError, RuntimeError) as err:
        raise ValueError(f"no image folder under {str(path)!r}: {err}") from None
    first, _ = dataset[0]
    n = len(dataset.classes)
    return dataset, {"num_classes": n, "input_shape": tuple(first.shape),
                     **standardisation(mean, std, channels, "imagefolder")}


def _check_size(size) -> tuple[int, int]:
    """``--resize``: one size for both sides, or ``(height, width)``; positive integers."""
    size = (size, size) if isinstance(size, int) else tuple(size)
    if len(size) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size):
        raise ValueError(f"--resize must be one positive integer or HEIGHT,WIDTH, got {size!r}")
    return size


def standardisation(mean, std, channels: int, dataset: str) -> dict:
    """
    ``{"mean", "std"}`` of a data set whose user gives them (``--mean`` / ``--std``): the estimator standardises
    with them after adding the noise, as the normalize layer in front of the smoothing literature's networks. One
    number for every channel or one per channel; std positive; defaults 0 and 1 (no standardisation).
    """
    import math

    values = {}
    for name, given, default in (("mean", mean, 0.0), ("std", std, 1.0)):
        numbers = [default] if given is None else [given] if isinstance(given, (int, float)) else list(given)
        if len(numbers) not in (1, channels) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in numbers):
            raise ValueError(f"--{name} for dataset {dataset!r} must be one finite number or {channels} (one per "
                             f"channel), got {given!r}")
        if name == "std" and min(numbers) <= 0:
            raise ValueError(f"--std for dataset {dataset!r} must be positive, got {given!r}")
        values[name] = tuple(float(v) for v in numbers)
    return values


def load_dataset(name: str, root: str | os.PathLike | None = None, split: str = "test", augment: bool = False,
                 **options):
    """
    Load the registered dataset ``name``: returns ``(dataset, info)``. ``augment`` asks for the training
    augmentation; it is passed only when true, so plugin loaders without the argument keep working.

    :param options: The data options the user gave (``channels``, ``resize``, ``mean``, ``std``; None values are
                    left out): passed only when given, and refused in one line when the loader does not take them.
    """
    from art_some.plugins import get, registered

    known = registered("datasets")
    if name not in known:
        raise ValueError(f"unknown dataset {name!r} (--dataset); registered: {', '.join(sorted(known))}")
    loader = get("datasets", name)
    options = {k: v for k, v in options.items() if v is not None}
    takes = data_options_of(name)
    refused = [k for k in options if k not in takes]
    if refused:
        takes = [f"--{k}" for k in takes]
        raise ValueError(f"{', '.join('--' + k for k in refused)} is not an option of dataset {name!r} "
                         f"({'it takes ' + ', '.join(takes) if takes else 'it takes no data options'}; "
                         "imagefolder takes --channels, --resize, --mean, --std)")
    if augment:
        options["augment"] = True
    return loader(root=root, split=split, **options)


def data_options_of(name: str) -> tuple[str, ...]:
    """The data options (``channels``, ``resize``, ``mean``, ``std``, ...) the registered dataset ``name`` takes."""
    import inspect

    from art_some.plugins import get

    params = inspect.signature(get("datasets", name)).parameters
    return tuple(k for k, p in params.items()
                 if k not in ("root", "split", "augment") and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))
