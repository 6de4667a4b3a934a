"""
The errors and warnings art-some raises on purpose. Each error is a :class:`ValueError`, so the command line turns
it into a one-line message with exit code 2, and code that already catches ``ValueError`` keeps working. Warnings
point at the user's own line (:func:`user_stacklevel`, :func:`warn_unsound`).
"""
from __future__ import annotations

from typing import Sequence


class NonFiniteError(ValueError):
    """
    A non-finite value (NaN or inf) where a vote, a count, a certificate, a loss or a weight would be computed
    from it. ``indices`` names the offending inputs where there are any (dataset indices when the caller gave
    them, else positions in the batch).
    """

    def __init__(self, message: str, indices: Sequence[int] = ()):
        super().__init__(message)
        self.indices = [int(i) for i in indices]


def name_indices(indices: Sequence[int], limit: int = 10) -> str:
    """``"3, 7 and 9"`` style text for an error message, shortened after ``limit`` entries."""
    items = [str(int(i)) for i in indices]
    if len(items) > limit:
        return ", ".join(items[:limit]) + f" and {len(items) - limit} more"
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def user_stacklevel() -> int:
    """
    The ``stacklevel`` for :func:`warnings.warn`, called by the function that calls this, that points at the first
    caller outside art-some and ART (whose estimators wrap ``predict``): the user's own line, however deep the
    package's calls go (so Python's once-per-line filter also merges the repeats of one user call).
    """
    import sys

    frame, level = sys._getframe(2), 2  # the frame that will call warnings.warn is level 1
    while frame.f_back is not None and frame.f_globals.get("__name__", "").startswith(("art_some", "art.")):
        frame, level = frame.f_back, level + 1
    return level


class UnsoundCertificateWarning(UserWarning):
    """A certificate rule that a spec marks unsound was used; its radii may be larger than the truth."""


def warn_unsound(message: str) -> None:
    """
    Warn at the user's line (the first caller outside art-some and ART), every time: a fresh registry defeats
    Python's once-per-call-site default (each unsound certificate deserves its own warning) while the user's
    filters still apply.
    """
    import sys
    import warnings

    frame = sys._getframe(1)
    while frame.f_back is not None and frame.f_globals.get("__name__", "").startswith(("art_some", "art.")):
        frame = frame.f_back
    warnings.warn_explicit(message, UnsoundCertificateWarning, frame.f_code.co_filename, frame.f_lineno,
                           module=frame.f_globals.get("__name__", "art_some"), registry={})
