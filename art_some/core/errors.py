"""
The errors art-some raises on purpose. Each is a :class:`ValueError`, so the command line turns it into a one-line
message with exit code 2, and code that already catches ``ValueError`` keeps working.
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
