"""Progress bars: a tqdm bar where a person watches stderr, nothing where logs or CI read it. Imports nothing else of
vivit (the weights path, the data path, the tasks and the CLI all use it)."""

from __future__ import annotations

import sys
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


__all__ = ["progress_bar"]
