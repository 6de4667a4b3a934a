"""
The ``numpy`` data set: a researcher's own arrays of inputs and labels (``--dataset numpy --data-root FILE``).

``--data-root`` is a ``.npz`` file or a folder of ``.npy`` files; either holds the inputs ``x`` and integer
labels ``y``, or one pair per split (``x_train``, ``y_train``, ``x_test``, ``y_test``), which win over ``x`` / ``y``.
An optional scalar ``num_classes`` gives the number of classes (default: the largest label of every label array
there, plus one, so that the splits agree). Inputs are ``(N, C, H, W)``, ``(N, H, W, C)`` (C 1 or 3) or
``(N, H, W)`` (grayscale); uint8 in 0-255 or floats in [0, 1]. Every array is read with ``allow_pickle=False``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

NAME = "numpy"
CHANNELS = (1, 3)
ACCEPTED = "uint8 in 0-255 or floats in [0, 1]"


def numpy_dataset(root=None, split: str = "test", augment: bool = False, mean=None, std=None):
    """
    The arrays of ``root`` for ``split`` as a torch Dataset of float32 ``(C, H, W)`` inputs in [0, 1] and int64
    labels (no augmentation); ``mean`` / ``std`` as for :func:`art_some.data.imagefolder`.

    :raises ValueError: one line naming the file and array, for a missing array, a wrong shape or dtype, values
                        out of range or not finite, labels that are not integers in [0, num_classes).
    """
    import torch
    from torch.utils.data import TensorDataset

    from art_some.data import _check_split, standardisation

    _check_split(split)
    source = _Source(root)
    x_name, y_name = source.pair(split)
    x = as_images(source.load(x_name), f"{source.where(x_name)}")
    y = source.load(y_name)
    num_classes = source.num_classes()
    check_labels(y, len(x), num_classes, source.where(y_name))
    info = {"num_classes": num_classes, "input_shape": tuple(x.shape[1:]),
            **standardisation(mean, std, x.shape[1], NAME)}
    return TensorDataset(torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))), info


class _Source:
    """The arrays of a ``.npz`` file or of a folder of ``.npy`` files, by name."""

    def __init__(self, root):
        if root is None:
            raise ValueError(f"dataset {NAME!r} needs --data-root: a .npz file or a folder of .npy files holding x "
                             "and y (or x_train, y_train, x_test, y_test)")
        self.path = Path(root)
        if self.path.is_dir():
            self.names = sorted(p.stem for p in self.path.glob("*.npy"))
            self.archive = None
        elif self.path.is_file() and self.path.suffix == ".npz":
            try:
                self.archive = np.load(self.path, allow_pickle=False)
            except Exception as err:
                raise ValueError(f"--data-root {self.path} is not a readable .npz file ({err})") from None
            self.names = sorted(self.archive.files)
        else:
            raise ValueError(f"--data-root {self.path} for dataset {NAME!r} must be a .npz file or a folder of .npy "
                             "files")

    def where(self, name: str) -> str:
        return f"{self.path}[{name!r}]" if self.archive is not None else str(self.path / f"{name}.npy")

    def pair(self, split: str) -> tuple[str, str]:
        """The inputs' and labels' names for ``split``: ``x_<split>`` / ``y_<split>``, else ``x`` / ``y``."""
        for pair in ((f"x_{split}", f"y_{split}"), ("x", "y")):
            if all(name in self.names for name in pair):
                return pair
        have = ", ".join(self.names) or "no arrays"
        raise ValueError(f"--data-root {self.path} has no inputs and labels for split {split!r}: it needs arrays "
                         f"x and y, or x_{split} and y_{split} (it has {have})")

    def load(self, name: str) -> np.ndarray:
        try:
            if self.archive is not None:
                return np.asarray(self.archive[name])
            return np.load(self.path / f"{name}.npy", allow_pickle=False)
        except Exception as err:  # an object array (pickles refused) or a broken file
            raise ValueError(f"{self.where(name)} is not a readable array of numbers ({err})") from None

    def num_classes(self) -> int:
        """The file's ``num_classes``, else the largest label of all its label arrays plus one."""
        if "num_classes" in self.names:
            value = self.load("num_classes")
            if value.shape != () or value.dtype.kind not in "iu" or int(value) < 2:
                raise ValueError(f"{self.where('num_classes')} must be one integer >= 2, got {value!r}")
            return int(value)
        labels = [name for name in self.names if name == "y" or name.startswith("y_")]
        largest = [int(a.max()) for a in map(self.load, labels) if a.size and a.dtype.kind in "iu"]
        return max(max(largest, default=0) + 1, 2)


def as_images(x: np.ndarray, where: str) -> np.ndarray:
    """
    ``x`` as float32 ``(N, C, H, W)`` in [0, 1]: NCHW, NHWC (C 1 or 3) or NHW arrays; uint8 scaled by 1/255,
    floats checked to be finite and in [0, 1].
    """
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[1] not in CHANNELS and x.shape[-1] in CHANNELS:
        x = x.transpose(0, 3, 1, 2)  # NHWC -> NCHW
    elif x.ndim != 4 or x.shape[1] not in CHANNELS:
        raise ValueError(f"{where} has shape {x.shape}; inputs must be (N, C, H, W) or (N, H, W, C) with C 1 or 3, "
                         "or (N, H, W) for grayscale")
    if len(x) == 0:
        raise ValueError(f"{where} holds no inputs")
    if x.dtype == np.uint8:
        return np.ascontiguousarray(x, dtype=np.float32) / 255.0
    if x.dtype.kind != "f":
        raise ValueError(f"{where} has dtype {x.dtype}; inputs must be {ACCEPTED}")
    finite = np.isfinite(x)
    if not finite.all():
        raise ValueError(f"{where} holds {int((~finite).sum())} NaN or infinite values; inputs must be {ACCEPTED}")
    low, high = float(x.min()), float(x.max())
    if low < 0 or high > 1:
        raise ValueError(f"{where} holds values in [{low:g}, {high:g}]; inputs must be {ACCEPTED} (divide 0-255 "
                         "floats by 255)")
    return np.ascontiguousarray(x, dtype=np.float32)


def check_labels(y: np.ndarray, n: int, num_classes: int, where: str) -> None:
    """Labels: one integer per input, in [0, num_classes)."""
    if y.dtype.kind not in "iu":
        raise ValueError(f"{where} has dtype {y.dtype}; labels must be integers (save y.astype(int))")
    if y.shape != (n,):
        raise ValueError(f"{where} has shape {y.shape}; labels must be one integer per input, shape ({n},)")
    bad = np.unique(y[(y < 0) | (y >= num_classes)])
    if len(bad):
        shown = ", ".join(str(int(v)) for v in bad[:5]) + (" ..." if len(bad) > 5 else "")
        raise ValueError(f"{where} holds labels {shown}; they must be in [0, {num_classes - 1}] ({num_classes} "
                         "classes; a scalar num_classes array gives their number, else the largest label + 1)")
