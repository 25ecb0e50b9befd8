"""Writing files whole or not at all: write a hidden sibling, then rename it over the target (``os.replace``).

A killed or failed write leaves the old file (or none) and no temporary file behind; readers never see half a file.
Also the one-line form of an error (``first_line``), shared by the weights and data paths; for the tasks' output
folders a JSON object read with a one-line error (``read_json``), an appended file's torn last line cut
(``trim_torn_line``) and the digest of a model's weights (``weights_digest``); for caches of folders the trust check
(``untrusted``) and least-recently-used eviction (``evict_least_recent``). Imports nothing else of vivit.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import stat
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (its type name when empty): the one-line form errors are shown in."""
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def env_seconds(name: str, default: float, *, zero: str | None = None) -> float:
    """Seconds from the environment variable ``name`` (``default`` when unset or empty): a number above 0, or 0 too
    where ``zero`` says what 0 means; at most 1e6 (``nan``, ``inf`` and typos are refused naming the variable)."""
    text = os.environ.get(name, "").strip()
    try:
        value = float(text) if text else default
    except ValueError:
        value = float("nan")
    if not (0 <= value if zero else 0 < value) or not value <= 1e6:
        low = f"from 0 ({zero})" if zero else "above 0"
        raise ValueError(f"{name} must be a number of seconds {low} to 1e6, got {text!r}")
    return value


def weights_digest(model: Any) -> str:
    """SHA-256 (hex) over every state-dict entry's name, dtype, shape and bytes, in name order: other weights, other
    digest."""
    import torch  # here, so that writing files needs no torch

    digest = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        tensor = value.detach().to("cpu").contiguous()
        digest.update(f"{key}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def read_json(path: Path, what: str) -> dict[str, Any]:
    """A JSON object this package wrote, or one line naming the file when it is not one."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise ValueError(f"{path}: is not valid JSON ({type(err).__name__}); it should hold {what}: delete it (and "
                         "the folder's other outputs) to start over, or pass another --out") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path}: holds a JSON {type(value).__name__}, expected an object with {what}; delete it "
                         "to start over, or pass another --out")
    return value


def trim_torn_line(path: Path) -> None:
    """Cut a last line that a kill left without its newline, so appended lines start on a line of their own."""
    if not path.exists() or path.stat().st_size == 0:
        return
    data = path.read_bytes()
    if not data.endswith(b"\n"):
        with open(path, "r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)


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


def untrusted(folder: Path, names: Sequence[str]) -> str | None:
    """Why ``folder`` and its files ``names`` must not be read (a link, not a folder or regular file, another user's,
    writable by others), or ``None``. As in huggingface_hub's cache, only this user's files no one else can change
    are trusted, and only regular files are opened (a FIFO or ``/dev/zero`` behind a name would hang the read)."""
    uid = os.geteuid()
    for path in (folder, *(folder / name for name in names)):
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue  # a missing file is damage, found when the entry is read
        except OSError as err:
            return f"{path.name} cannot be inspected ({err.strerror or err})"
        label = "the folder" if path == folder else path.name
        if stat.S_ISLNK(st.st_mode):
            return f"{label} is a symbolic link"
        if not (stat.S_ISDIR(st.st_mode) if path == folder else stat.S_ISREG(st.st_mode)):
            return f"{label} is not a {'folder' if path == folder else 'regular file'}"
        if st.st_uid != uid:
            return f"{label} belongs to user id {st.st_uid}, not to you ({uid})"
        if st.st_mode & 0o022:
            return f"other users can write to {label} (mode {stat.S_IMODE(st.st_mode):o})"
    return None


def evict_least_recent(root: Path, pattern: str, names: Sequence[str], limit: int, keep: Path) -> list[Path]:
    """Remove the trusted folders ``root/pattern`` least recently used (the time of their last file of ``names``)
    until their files take at most ``limit`` bytes; ``keep`` stays. Returns the folders removed."""
    entries = []
    for entry in root.glob(pattern):
        files = [entry / name for name in names]
        with contextlib.suppress(OSError):
            if untrusted(entry, names) is None:
                entries.append((files[-1].stat().st_mtime, sum(f.stat().st_size for f in files if f.exists()), entry))
    total, removed = sum(size for _, size, _ in entries), []
    for _, size, entry in sorted(entries):
        if total <= limit:
            break
        if entry != keep:
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
            total -= size
    return removed


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
