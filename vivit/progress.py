"""Progress bars: a tqdm bar where a person watches stderr, nothing where logs or CI read it. Imports nothing else of
vivit (the weights path, the data path, the tasks and the CLI all use it)."""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Iterable
from typing import Any


def progress_bar(iterable: Iterable | None = None, *, show: bool | None = None, **tqdm_args: Any) -> Any | None:
    """A ``tqdm`` bar (over ``iterable`` when given) when ``show`` is true, or by default when stderr is a terminal;
    ``None`` when it is not shown or tqdm is not installed (it is optional).

    Args:
        iterable: What the bar iterates over; ``None`` for a bar updated by hand.
        show: Force the bar on or off; ``None`` shows it on an interactive stderr.
        **tqdm_args: ``total``, ``desc``, ``unit``, ... passed to ``tqdm``.
    """
    if show is None:
        show = sys.stderr is not None and sys.stderr.isatty()
    if not show:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(iterable, **tqdm_args)




class Progress:
    """Items done, their rate and the time left: a tqdm bar where a person watches stderr, else a log line every
    ``every`` new items (and at the end).

    Args:
        total: Items in all (``None`` when unknown, e.g. a stream).
        what: The job, first word of each line (``evaluate``, ``timeline``).
        unit: What an item is (``video``, ``window``).
        every: New items between log lines.
        initial: Items done before (a resumed run).
        show: Force the bar on or off (default: on an interactive stderr).
        where: Said after ``what`` in log lines (``" [rank 1]"``).
        log: The logger of the lines (the caller's, so its level applies).
    """

    def __init__(self, total: int | None, what: str, *, unit: str = "video", every: int = 100, initial: int = 0,
                 show: bool | None = None, where: str = "", log: logging.Logger | None = None) -> None:
        self.total, self.what, self.unit, self.every, self.where = total, what, unit, max(1, every), where
        self.done, self.new, self.failed = initial, 0, 0
        self.log = log or logging.getLogger(__name__)
        self.start = time.perf_counter()
        self.bar = progress_bar(total=total, initial=initial, desc=what, unit=unit, dynamic_ncols=True, show=show)

    def update(self, n: int = 1, *, failed: int = 0, note: str = "") -> None:
        """``n`` more items done, ``failed`` of them failed; ``note`` says where the job is (``video at 0:01:02``)."""
        self.done, self.new, self.failed = self.done + n, self.new + n, self.failed + failed
        if self.bar is not None:
            self.bar.update(n)
            if self.failed or note:
                self.bar.set_postfix_str(", ".join(filter(None, [note, self.failed and f"failed={self.failed}"])))
        elif self.new // self.every != (self.new - n) // self.every or self.done == self.total:
            rate = self.new / max(time.perf_counter() - self.start, 1e-9)
            left = f", ETA {_duration((self.total - self.done) / rate if rate else math.inf)}" if self.total else ""
            self.log.info("%s%s: %d%s %ss (%d failed), %.2f %ss/s%s%s", self.what, self.where, self.done,
                          f"/{self.total}" if self.total else "", self.unit, self.failed, rate, self.unit, left,
                          f", {note}" if note else "")

    def close(self) -> float:
        """Close the bar; the rate of the new items per second."""
        if self.bar is not None:
            self.bar.close()
        return self.new / max(time.perf_counter() - self.start, 1e-9)


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes // 60}h{minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m{secs:02d}s"


__all__ = ["Progress", "progress_bar"]
