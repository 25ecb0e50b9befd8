"""Writing files whole or not at all: write a hidden sibling, then rename it over the target (``os.replace``).

A killed or failed write leaves the old file (or none) and no temporary file behind; readers never see half a file.
Also the one-line form of an error (``first_line``), shared by the weights and data paths. Imports nothing else of
vivit.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (its type name when empty): the one-line form errors are shown in."""
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def temporary_sibling(path: Path, *, tmp_suffix: str = ".tmp", keep_suffix: bool = False) -> Path:
    """A unique hidden name beside ``path``: ``.<name>.<8 hex><tmp_suffix>[<path's suffix>]``.

    ``keep_suffix`` is for writers that pick the format from the name (PyAV, matplotlib).
    """
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}{tmp_suffix}" + (path.suffix if keep_suffix else ""))


def write_atomic(path: str | Path, write: Callable[[Path], object], *, tmp_suffix: str = ".tmp",
                 keep_suffix: bool = False, mode: int | None = None) -> Path:
    """Call ``write(tmp)`` on a temporary sibling of ``path`` and rename it to ``path`` when it returns.

    Args:
        path: The file to create or replace.
        write: Writes the whole file at the path it is given.
        tmp_suffix: Ending of the temporary name (cleaners look for it).
        keep_suffix: Append ``path``'s own suffix to the temporary name.
        mode: ``chmod`` the file before the rename (some writers create files ``0600``).

    Returns:
        ``path``.
    """
    path = Path(path)
    tmp = temporary_sibling(path, tmp_suffix=tmp_suffix, keep_suffix=keep_suffix)
    try:
        write(tmp)
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def umask_mode() -> int:
    """The mode a plain ``open(path, "w")`` gives a new file under the process's umask (for writers that use 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def write_text_atomic(path: str | Path, text: str) -> Path:
    """``write_atomic`` for UTF-8 text."""
    return write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_folder_atomic(path: str | Path, write: Callable[[Path], object]) -> bool:
    """Call ``write(tmp)`` on a new hidden sibling folder and rename it to ``path`` when it returns.

    Renaming a folder over an existing one fails, so when another writer finished ``path`` first, its folder stays and
    ours is removed: readers see a whole folder or none.

    Returns:
        ``True`` when ours was renamed into place, ``False`` when ``path`` already existed.
    """
    path = Path(path)
    tmp = temporary_sibling(path)
    try:
        tmp.mkdir(parents=True)
        write(tmp)
        try:
            os.rename(tmp, path)
        except OSError:
            if not path.is_dir():
                raise
            return False
        return True
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
