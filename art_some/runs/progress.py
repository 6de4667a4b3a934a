"""
Progress of a certify or audit run: a tqdm bar on a terminal, plain lines in a log file or pipe.

A bar redraws itself with carriage returns and, for a shard's bar (``position``), cursor-movement codes; in a
file (a SLURM job's log, ``2> run.log``) those land as garbage. Off a terminal the run prints one plain line every
:data:`LOG_INTERVAL` seconds and one at the end instead.
"""
from __future__ import annotations

import sys
import time

from tqdm.auto import tqdm

LOG_INTERVAL = 30.0  # seconds between plain progress lines in a log file


class PlainProgress:
    """tqdm's ``update`` and context manager, writing ``desc: done/total unit (percent), seconds`` lines."""

    def __init__(self, total: int, initial: int, desc: str, unit: str, stream, interval: float = LOG_INTERVAL):
        self.total, self.done, self.desc, self.unit = int(total), int(initial), desc, unit
        self.stream, self.interval = stream, interval
        self.start = self.last = time.monotonic()

    def update(self, count: int) -> None:
        self.done += int(count)
        if time.monotonic() - self.last >= self.interval:
            self._line()

    def _line(self) -> None:
        self.last = time.monotonic()
        percent = 100.0 * self.done / self.total if self.total else 100.0
        print(f"{self.desc}: {self.done}/{self.total} {self.unit}s ({percent:.0f}%), {self.last - self.start:.0f} s",
              file=self.stream, flush=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is None:
            self._line()


class _NoProgress:
    def update(self, count: int) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass


def progress(total: int, initial: int, desc: str, position: int = 0, enabled: bool = True, unit: str = "input",
             stream=None):
    """
    A progress reporter with ``update(count)``, used as a context manager: a tqdm bar when ``stream`` (default
    standard error) is a terminal, else :class:`PlainProgress`; nothing when not ``enabled``.

    :param position: The bar's line on a terminal (a shard's own line under torchrun).
    """
    if not enabled:
        return _NoProgress()
    stream = sys.stderr if stream is None else stream
    if getattr(stream, "isatty", lambda: False)():
        return tqdm(total=total, initial=initial, desc=desc, position=position, unit=unit, file=stream,
                    mininterval=0.5)
    return PlainProgress(total, initial, desc, unit, stream)
