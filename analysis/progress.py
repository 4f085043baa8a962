"""The progress printer of the long analysis steps (`ProgressLine`), shared by
``python -m analysis`` and the demo chain of ``python -m sweeps demo``."""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["ProgressLine"]


class ProgressLine:
    """One progress line per stage, with counts and the stage's elapsed time:
    ``pairs linear_cka 120/450 (26.7%, 41.2/s; 2.9 s)``,
    ``inputs inverted 4/18 (22.2%, 16.2 s each; 64.6 s)``. Redrawn in place on a terminal,
    printed at most every 5 s otherwise (logs of a batch job stay short); a stage's last line
    always.

    A stage's clock starts at its first call: callers report ``(stage, 0, total)`` as they
    begin it (`analysis.inputs.extract` and `analysis.pipeline` do).
    """

    def __init__(self, stream: TextIO | None = None):
        self._stream = stream  # None: whatever sys.stderr is when a line is written
        self.start: dict[str, float] = {}
        self.last = 0.0

    def __call__(self, stage: str, done: int, total: int) -> None:
        stream = self._stream or sys.stderr
        tty = stream.isatty()
        now = time.monotonic()
        t0 = self.start.setdefault(stage, now)
        final = done >= total
        if not (tty or final or now - self.last >= 5.0):
            return
        self.last = now
        elapsed = now - t0
        rate = ""
        if elapsed > 0.05 and done:  # items per second, or seconds per item for slow stages
            rate = (f", {done / elapsed:.1f}/s" if done >= elapsed
                    else f", {elapsed / done:.1f} s each")
        line = f"{stage} {done}/{total} ({100 * done / max(total, 1):.1f}%{rate}; {elapsed:.1f} s)"
        stream.write(("\r" + line + ("\n" if final else "")) if tty else line + "\n")
        stream.flush()
