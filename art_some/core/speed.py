"""
The vote function's speed options, as a wrapper over any vote function: autocast to bf16/fp16 and channels-last
inputs. The noise the engine adds stays float32; a certificate holds for the vote function as it is evaluated, so
records say which precision voted.
"""
from __future__ import annotations

from typing import Callable

PRECISIONS = ("fp32", "bf16", "fp16")


def check_speed_options(precision, channels_last, compile=False) -> None:
    """``precision`` one of :data:`PRECISIONS`, ``channels_last`` and ``compile`` booleans."""
    import numpy as np

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(map(repr, PRECISIONS))}, got {precision!r}")
    for name, value in (("channels_last", channels_last), ("compile", compile)):
        if not isinstance(value, (bool, np.bool_)):
            raise ValueError(f"{name} must be True or False, got {value!r}")


def with_speed_options(vote_fn: Callable, precision: str = "fp32", channels_last: bool = False,
                       device_type: str = "cpu") -> Callable:
    """
    ``vote_fn`` run under autocast for ``precision`` bf16/fp16 (on ``device_type``) and on channels-last 4-D inputs
    when asked; ``vote_fn`` itself for fp32 without channels-last.
    """
    import torch

    check_speed_options(precision, channels_last)
    if precision == "fp32" and not channels_last:
        return vote_fn
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)

    def run(z):
        if channels_last and z.dim() == 4:
            z = z.contiguous(memory_format=torch.channels_last)
        if dtype is None:
            return vote_fn(z)
        with torch.autocast(device_type=device_type, dtype=dtype):
            return vote_fn(z)

    return run
