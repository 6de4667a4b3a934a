"""
The argument checks every module shares: one line naming the argument and what is allowed, raised before any
work starts. Each returns the value in its checked form.
"""
from __future__ import annotations

import math
from numbers import Real

import numpy as np


def is_number(value) -> bool:
    """A real number, never a bool (True is 1 to Python, but never what a user meant by a number)."""
    return isinstance(value, (Real, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def integer(name: str, value, low: int | None = None, high: int | None = None) -> int:
    """An integer (a whole-number float too, never a bool) in ``[low, high]``."""
    if low is None:
        allowed = "an integer"
    else:
        allowed = f"an integer >= {low}" if high is None else f"an integer in [{low}, {high}]"
    if not is_number(value) or not math.isfinite(float(value)) or int(value) != value:
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    return int(value)


def positive_int(name: str, value) -> int:
    """An integer >= 1 (numbers of draws, batch sizes, ...)."""
    return integer(name, value, 1)


def probability(name: str, value) -> float:
    """A failure probability strictly between 0 and 1 (alpha: 0 certifies nothing, 1 guarantees nothing)."""
    if not is_number(value) or not 0.0 < float(value) < 1.0:
        raise ValueError(f"{name} must lie in (0, 1), got {value!r}")
    return float(value)


def unit_interval(name: str, value) -> np.ndarray:
    """Values in [0, 1] (probabilities and their bounds), as float64."""
    arr = np.asarray(value, dtype=np.float64)
    bad = ~((arr >= 0.0) & (arr <= 1.0))
    if np.any(bad):
        raise ValueError(f"{name} must lie in [0, 1], got {float(arr[bad].flat[0])}")
    return arr


def positive(name: str, value) -> np.ndarray:
    """Finite values > 0 (noise levels, rates), as float64."""
    arr = np.asarray(value, dtype=np.float64)
    bad = ~((arr > 0.0) & np.isfinite(arr))
    if np.any(bad):
        raise ValueError(f"{name} must be finite and > 0, got {float(arr[bad].flat[0])}")
    return arr


def nonnegative(name: str, value) -> np.ndarray:
    """Finite values >= 0 (distances), as float64."""
    arr = np.asarray(value, dtype=np.float64)
    bad = ~((arr >= 0.0) & np.isfinite(arr))
    if np.any(bad):
        raise ValueError(f"{name} must be finite and >= 0, got {float(arr[bad].flat[0])}")
    return arr


def choice(name: str, value, allowed) -> None:
    """One of ``allowed``."""
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}, got {value!r}")
