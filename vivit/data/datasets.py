"""Datasets of video files: listings, class maps, training and evaluation datasets, collation, loaders, ranks.

A **listing** says which videos a job covers and, optionally, their labels. :func:`read_listing` reads four forms:

- a CSV with a ``path,label`` header (paths relative to the CSV's folder; ``path`` alone for unlabelled videos);
- the official Kinetics CSV (``label,youtube_id,time_start,time_end,split``), whose rows are mapped onto files of a
  local folder by a name pattern, by default ``KINETICS_PATTERN`` = ``{youtube_id}_{time_start:06d}_{time_end:06d}.mp4``
  (what the common downloaders write); a file with another video suffix but the same stem is found too;
- a folder with one sub-folder of videos per class (the sub-folder is the label);
- a bare list of files, one per line (``.txt``/``.lst``, or a CSV without a header), unlabelled.

:class:`TrainClips` draws one random clip per video with augmentation; :class:`EvalVideos` decodes all test views of
one video (SPEC 4.2) and turns an unreadable file into a failure record (path and a one-line reason) instead of an
exception, so a job over thousands of videos never stops on one bad file and never drops one silently.
:func:`collate_views` lets the views of several videos share one forward pass; :func:`make_loader` builds the
``DataLoader`` (decoding in worker processes, one intra-op thread each); :func:`init_distributed` joins torchrun's
process group and :func:`shard` gives each rank its disjoint part of a listing.
"""

from __future__ import annotations

import csv
import difflib
import functools
import logging
import math
import os
import socket
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from vivit.data.transforms import resolve_data_config
from vivit.data.video import VideoReadError, ViewSampler, parse_views, read_clip
from vivit.files import env_seconds, first_line

_logger = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v", ".gif", ".mpg", ".mpeg", ".flv", ".wmv")
KINETICS_PATTERN = "{youtube_id}_{time_start:06d}_{time_end:06d}.mp4"
# The official CSVs; the test splits have no "label" column (those rows are unlabelled).
KINETICS_COLUMNS = ("youtube_id", "time_start", "time_end")
LIST_SUFFIXES = (".txt", ".lst")
UNLABELLED = -1
MAX_FAILURE_WARNINGS = 10  # unreadable videos logged one by one per process; the outputs name every one
_MAX_CONSECUTIVE_BAD = 32  # a training sample tries this many files before the run gives up
# What decoding and preprocessing raise for a bad file: VideoReadError is a ValueError; OSError covers a missing or
# unreadable file; RuntimeError a decoder failing inside torch code.
READ_ERRORS: tuple[type[Exception], ...] = (ValueError, OSError, RuntimeError)


class DataError(ValueError):
    """A problem with a listing or the flags, found before any video is decoded (unknown label, no files, bad CSV)."""


class Listing(NamedTuple):
    """The rows of a listing: ``paths``, ``labels`` (label names, ``None`` when unlabelled) and ``where`` (the row's
    place, ``file:line``, for error messages)."""

    paths: list[str]
    labels: list[str | None]
    where: list[str]


@dataclass(frozen=True)
class Item:
    """One listed video and its class index (``UNLABELLED`` = -1 when the listing has no label for it)."""

    path: str
    label: int = UNLABELLED


# ================================================================================================ listings
def read_listing(source: str | Path, *, video_root: str | Path | None = None,
                 pattern: str = KINETICS_PATTERN) -> Listing:
    """Read a listing in any of the module's four forms (see the module docstring).

    Args:
        source: A CSV file, a Kinetics CSV, a folder-per-class tree or a bare list of files.
        video_root: Folder the videos of a Kinetics CSV live in (default: the CSV's folder); relative paths of the
            other forms are relative to the listing's folder.
        pattern: File name of a Kinetics row, a ``str.format`` pattern over the CSV's columns (``time_start`` and
            ``time_end`` are integers).

    Raises:
        DataError: No such file, no rows, a row without its columns, a folder without videos.
    """
    source = Path(source)
    if source.is_dir():
        return _read_tree(source)
    if not source.is_file():
        raise DataError(f"{source}: no such file or folder; expected a CSV of path,label rows, a Kinetics CSV, a "
                        "folder with one sub-folder per class, or a text file listing videos")
    rows = _read_rows(source)
    if not rows:
        raise DataError(f"{source}: has no rows; expected lines of 'path,label' (or one video path per line)")
    header = [c.strip().lower() for c in rows[0][1]]
    if all(c in header for c in KINETICS_COLUMNS):
        return _read_kinetics(source, rows, header, Path(video_root) if video_root else source.parent, pattern)
    if header[:1] == ["path"]:
        rows, labelled = rows[1:], header[1:2] == ["label"]
    else:
        labelled = source.suffix.lower() not in LIST_SUFFIXES and len(rows[0][1]) >= 2
    paths: list[str] = []
    labels: list[str | None] = []
    where: list[str] = []
    for line, row in rows:
        if labelled and len(row) < 2:
            raise DataError(f"{source}:{line}: expected 'path,label', found {','.join(row)!r}")
        paths.append(_row_path(row[0], source.parent))
        labels.append(row[1].strip() if labelled else None)
        where.append(f"{source}:{line}")
    if not paths:
        raise DataError(f"{source}: has a header but no rows; expected lines of 'path,label'")
    return Listing(paths, labels, where)


def _read_rows(source: Path) -> list[tuple[int, list[str]]]:
    """The non-empty rows of a CSV or bare list with their line numbers, comments left out.

    A UTF-8 byte-order mark (Excel's "CSV UTF-8") is not part of the header. A line starting with ``#`` is a comment
    only when it is a single field that names no file: ``#clip.mp4,label`` (or an existing ``#clip.mp4``) is a row.
    """
    try:
        with open(source, newline="", encoding="utf-8-sig") as f:
            # A bare list holds one path per line, commas included; everything else is CSV.
            reader = ([line.rstrip("\r\n")] for line in f) if source.suffix.lower() in LIST_SUFFIXES else csv.reader(f)
            return [(line, row) for line, row in enumerate(reader, start=1)
                    if row and "".join(row).strip() and not _is_comment(row, source.parent)]
    except UnicodeDecodeError as err:
        raise DataError(f"{source}: is not UTF-8 text (byte 0x{err.object[err.start]:02x} at offset {err.start}); "
                        "save the listing as UTF-8 (Excel: CSV UTF-8)") from None
    except csv.Error as err:
        raise DataError(f"{source}: is not a readable CSV ({err}); expected lines of 'path,label'") from None


def _is_comment(row: list[str], folder: Path) -> bool:
    return len(row) == 1 and row[0].lstrip().startswith("#") and not (folder / row[0]).exists()


def _row_path(text: str, folder: Path) -> str:
    """A row's file, relative to the listing's folder: as written when that names a file (a leading or trailing space
    can be part of a name), else with the spaces around it stripped."""
    stripped = text.strip()
    if text != stripped and (folder / text).exists():
        stripped = text
    path = Path(stripped)
    return str(path if path.is_absolute() else folder / path)


def _read_tree(root: Path) -> Listing:
    """A folder per class: every file with a video suffix under it, each real file once.

    Symbolic links are followed, but a class folder that links back to the tree (a cycle) is skipped, and a video
    reached twice through links is listed once; links that point nowhere and entries that are no regular file
    (devices, pipes) are listed, so they are reported as failed videos rather than skipped silently.
    """
    real_root = root.resolve()
    found: list[tuple[str, str]] = []
    seen: set[Path] = set()
    repeated: list[str] = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        if real_root.is_relative_to(folder.resolve()):
            _logger.warning("%s: links back to %s (a cycle); the videos it reaches are listed once, under their own "
                            "class folders", folder, root)
            continue
        for path in _videos_under(folder):
            real = path.resolve()
            if real in seen:
                repeated.append(str(path))
                continue
            seen.add(real)
            found.append((str(path), folder.name))
    _report_tree(root, found, repeated)
    return Listing([p for p, _ in found], [c for _, c in found], [p for p, _ in found])


def _videos_under(folder: Path) -> list[Path]:
    """Files with a video suffix under ``folder``, in path order, following links but never into a folder twice."""
    out: list[Path] = []
    visited: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in visited:
            dirnames[:] = []
            continue
        visited.add(real)
        out.extend(Path(dirpath) / name for name in filenames if Path(name).suffix.lower() in VIDEO_SUFFIXES)
    return sorted(out)


def _report_tree(root: Path, found: list[tuple[str, str]], repeated: list[str]) -> None:
    if not found:
        raise DataError(f"{root}: no videos found; expected one sub-folder per class holding video files "
                        f"({', '.join(VIDEO_SUFFIXES[:4])}, ...)")
    if repeated:
        _logger.warning("%s: %d videos are reached twice through symbolic links (first: %s); each is listed once",
                        root, len(repeated), repeated[0])
    odd = [p for p, _ in found if not os.path.isfile(p)]
    if odd:
        _logger.warning("%s: %d listed entries are links that point nowhere or not regular files (first: %s); they "
                        "are reported as failed videos", root, len(odd), odd[0])


def _read_kinetics(source: Path, rows: list[tuple[int, list[str]]], header: list[str], root: Path,
                   pattern: str) -> Listing:
    paths, labels, where = [], [], []
    for line, row in rows[1:]:
        if len(row) < len(header):
            raise DataError(f"{source}:{line}: expected {len(header)} columns ({','.join(header)}), found "
                            f"{','.join(row)!r}")
        fields: dict[str, Any] = {k: v.strip() for k, v in zip(header, row, strict=False)}
        try:
            fields["time_start"], fields["time_end"] = int(float(fields["time_start"])), int(float(fields["time_end"]))
            name = pattern.format(**fields)
        except (ValueError, KeyError, IndexError) as err:
            raise DataError(f"{source}:{line}: cannot build a file name from pattern {pattern!r} ({err!r}); the "
                            f"pattern may use the columns {', '.join(header)}") from None
        paths.append(str(_existing_suffix(root / name)))
        labels.append(fields.get("label"))
        where.append(f"{source}:{line}")
    if not paths:
        raise DataError(f"{source}: a Kinetics CSV header but no rows")
    return Listing(paths, labels, where)


def _existing_suffix(path: Path) -> Path:
    """``path`` if it exists, else the same stem with another video suffix that exists (downloaders differ)."""
    if path.exists():
        return path
    for suffix in VIDEO_SUFFIXES:
        other = path.with_suffix(suffix)
        if other.exists():
            return other
    return path


# ================================================================================================ class maps
def resolve_classes(labels: Sequence[str | None], classes_file: str | Path | None = None) -> list[str]:
    """Class names in logit order: ``classes_file`` (one per line) or the sorted labels (numerically when they are all
    integers, so labels "0" ... "10" keep their values as indices)."""
    if classes_file is None:
        names = {lab for lab in labels if lab is not None}
        return sorted(names, key=int) if all(lab.isdigit() for lab in names) else sorted(names)
    names_list = [line.strip() for line in Path(classes_file).read_text().splitlines() if line.strip()]
    if len(set(names_list)) != len(names_list):
        dup = sorted({n for n in names_list if names_list.count(n) > 1})
        raise DataError(f"{classes_file}: class names must be unique, found repeats {dup[:5]}")
    return names_list


def _label_key(name: str) -> str:
    """Kinetics spells classes with spaces in its CSVs and with underscores in many folder trees."""
    return " ".join(name.strip().strip('"').lower().replace("_", " ").split())


def class_index(classes: Sequence[str], *, allow_indices: bool = False) -> Callable[[str], int | None]:
    """A label -> class index function: exact name, then the name ignoring case, ``_`` vs space and extra spaces;
    with ``allow_indices`` a label that is an integer ``0 <= i < len(classes)`` and not a name is that index."""
    exact = {name: i for i, name in enumerate(classes)}
    loose = {_label_key(name): i for i, name in enumerate(classes)}

    def lookup(label: str) -> int | None:
        if label in exact:
            return exact[label]
        if _label_key(label) in loose:
            return loose[_label_key(label)]
        if allow_indices and label.isdigit() and int(label) < len(classes):
            return int(label)
        return None

    return lookup


def to_items(paths: Sequence[str], labels: Sequence[str | None], where: Sequence[str], classes: Sequence[str],
             what: str, *, allow_indices: bool = False, require_files: bool = True,
             require_labels: bool = False) -> list[Item]:
    """Map label names to class indices, refusing unknown labels (listing the first few with their rows).

    Missing files are logged and kept: the datasets report them (training skips them, evaluation lists them as
    failed). ``require_files`` refuses a listing where none of the files exists (usually a wrong root folder);
    ``require_labels`` refuses unlabelled rows (training).
    """
    if require_labels and (first := next((w for w, lab in zip(where, labels, strict=True) if lab is None), None)):
        raise DataError(f"{what}: {first}: has no label; expected 'path,label' rows (with a path,label header) or a "
                        "folder per class")
    lookup = class_index(classes, allow_indices=allow_indices)
    indices = [UNLABELLED if lab is None else lookup(lab) for lab in labels]
    unknown = [(w, lab) for w, lab, i in zip(where, labels, indices, strict=True) if i is None]
    if unknown:
        shown = "; ".join(f"{w}: {lab!r}" + (f" (did you mean {close[0]!r}?)" if (
            close := difflib.get_close_matches(str(lab), classes, n=1)) else "") for w, lab in unknown[:5])
        known = ", ".join(list(classes)[:20]) + (" ..." if len(classes) > 20 else "")
        raise DataError(f"{what}: {len(unknown)} rows have labels that are not known classes: {shown}. Known "
                        f"classes ({len(classes)}): {known}. Fix the labels or pass the full class list.")
    missing = [p for p in paths if not os.path.exists(p)]
    if require_files and paths and len(missing) == len(paths):
        raise DataError(f"{what}: none of the {len(paths)} listed files exists (first: {missing[0]}); CSV paths are "
                        "relative to the CSV's folder, Kinetics rows to the video folder")
    if missing:
        _logger.warning("%s: %d of %d files do not exist (first: %s); they are counted as failed", what,
                        len(missing), len(paths), missing[0])
    return [Item(p, int(i)) for p, i in zip(paths, indices, strict=True)]  # type: ignore[arg-type]


# ================================================================================================ datasets
def item_seed(seed: int, epoch: int, index: int) -> int:
    """A well-mixed 63-bit seed of ``(seed, epoch, index)``: the same sample draws the same clip and augmentation."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(2, np.uint64)[0] >> np.uint64(1))


class TrainClips(Dataset):
    """Random training clips: ``{"video": (C, T, H, W) float, "label": int, "skipped": int}``.

    An unreadable file is logged and replaced by the next one in the listing (``skipped`` counts them), so a bad
    file never stops an epoch; all randomness is seeded by ``(seed, epoch, index)``; set ``epoch`` before each epoch.

    Args:
        items: The videos.
        data_cfg: :func:`vivit.data.transforms.resolve_data_config` output (clip length and ``frame_stride``).
        transform: Clip transform, e.g. :func:`vivit.data.transforms.train_transform`.
        seed: Base seed.
        decoder: ``"auto"``, ``"pyav"`` or ``"torchcodec"``, as :func:`vivit.data.video.read_video`'s ``backend``.
    """

    def __init__(self, items: Sequence[Item], data_cfg: dict[str, Any], transform: Callable[[torch.Tensor], Any],
                 seed: int = 0, decoder: str = "auto") -> None:
        self.items, self.data_cfg, self.transform = list(items), data_cfg, transform
        self.seed, self.decoder = seed, decoder
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        for attempt in range(min(len(self.items), _MAX_CONSECUTIVE_BAD)):
            item = self.items[(index + attempt) % len(self.items)]
            try:
                video = self._load(item.path, item_seed(self.seed, self.epoch, index))
            except (VideoReadError, OSError) as err:  # OSError: a file gone missing (FileNotFoundError) or unreadable
                _logger.warning("skipping unreadable video %s: %s", item.path, err)
                continue
            return {"video": video, "label": item.label, "skipped": attempt}
        raise RuntimeError(f"{_MAX_CONSECUTIVE_BAD} consecutive videos from {self.items[index].path} on could not be "
                           "read; check the dataset (see the warnings above)")

    def _load(self, path: str, seed: int) -> torch.Tensor:
        _, clip_len, _, _ = self.data_cfg["input_size"]
        frames = read_clip(path, clip_len, self.data_cfg["frame_stride"], mode="random",
                           generator=torch.Generator().manual_seed(seed), backend=self.decoder)
        with torch.random.fork_rng(devices=[]):  # the transforms draw from torch's global RNG
            torch.manual_seed(seed)
            return self.transform(frames)


class EvalVideos(Dataset):
    """All test views of each video (SPEC 4.2), or a failure record for a file that cannot be read.

    Item ``i`` is ``{"index": i, "path", "label", "status", "views", "error"}``: ``status`` ``"ok"`` with ``views``
    ``(V, C, T, H, W)``; ``"failed"`` with ``views`` ``None`` and ``error`` the one-line reason; ``"pad"`` for the
    indices past the listing that ``pad_to`` adds (ranks that must stay in lock-step run them on zeros).

    Args:
        items: The videos.
        model_or_cfg: What :func:`vivit.data.video.multi_view_clips` takes (clip length, stride, preprocessing).
        views: ``"4x3"`` or ``(clips, crops)``.
        decoder: ``"auto"``, ``"pyav"`` or ``"torchcodec"``.
        pad_to: Round the length up to a multiple of this (the world size of lock-step evaluation).
    """

    def __init__(self, items: Sequence[Item], model_or_cfg: Any, views: str | Sequence[int] = (4, 3), *,
                 decoder: str = "auto", pad_to: int = 1) -> None:
        # The preprocessing fields only: workers get a small dict, not a copy of the model.
        self.cfg = resolve_data_config(model_or_cfg)
        self.items, self.views, self.decoder = list(items), parse_views(views), decoder
        self.sampler = ViewSampler.for_model(self.cfg, self.views)  # resolved once, not per video
        self.padded_len = math.ceil(len(self.items) / pad_to) * pad_to

    def __len__(self) -> int:
        return self.padded_len

    def __getitem__(self, index: int) -> dict[str, Any]:
        if index >= len(self.items):
            return {"index": index, "path": "", "label": UNLABELLED, "status": "pad", "views": None, "error": None}
        item = self.items[index]
        record = {"index": index, "path": item.path, "label": item.label}
        try:
            views = self.sampler(item.path, backend=self.decoder)
        except READ_ERRORS as err:
            if is_out_of_memory(err):
                raise  # the machine's limit, not the video's fault: the run stops and says what to lower
            reason = one_line(err, item.path)
            self._log_failure(item.path, reason, err)
            return {**record, "status": "failed", "views": None, "error": reason}
        return {**record, "status": "ok", "views": views, "error": None}

    def _log_failure(self, path: str, reason: str, err: BaseException) -> None:
        """A warning for the first ``MAX_FAILURE_WARNINGS`` unreadable videos (per process); the rest are counted in
        the progress and named in the outputs. Missing files were summed up by :func:`to_items` already."""
        self.failures = getattr(self, "failures", 0) + 1
        if isinstance(err, FileNotFoundError) or self.failures > MAX_FAILURE_WARNINGS:
            _logger.debug("unreadable video %s: %s", path, reason)
        else:
            _logger.warning("unreadable video %s: %s%s", path, reason, "" if self.failures < MAX_FAILURE_WARNINGS
                            else " (further unreadable videos are not logged; the outputs name every one)")


def is_out_of_memory(err: BaseException) -> bool:
    """Whether ``err`` is an allocator failure (``MemoryError``, CUDA out of memory, a CPU allocation torch refused)."""
    if isinstance(err, MemoryError) or type(err).__name__ == "OutOfMemoryError":
        return True
    text = str(err)
    return isinstance(err, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def one_line(err: BaseException, path: str | None = None) -> str:
    """The first line of an error message, without a leading ``path:`` (the record holds the path)."""
    text = first_line(err)
    if path and text.startswith(f"{path}: "):
        text = text[len(path) + 2:]
    return text or type(err).__name__


# ================================================================================================ collation, loaders
def collate_views(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack the views of several :class:`EvalVideos` items for one forward pass.

    Returns:
        ``{"views": (sum of V, C, T, H, W) or None, "counts": views per record, "records": the items without
        views}``; ``counts[j]`` is 0 for a failed or pad record, and ``views`` holds the ok records' views in order.
    """
    ok = [b["views"] for b in batch if b["status"] == "ok"]
    records = [{k: v for k, v in b.items() if k != "views"} for b in batch]
    counts = [b["views"].shape[0] if b["status"] == "ok" else 0 for b in batch]
    return {"views": torch.cat(ok) if ok else None, "counts": counts, "records": records}


def collate_first(batch: list[Any]) -> Any:
    """The single item of a ``batch_size=1`` batch, unstacked."""
    return batch[0]


LOADER_TIMEOUT = 600.0  # seconds a loader may wait for its next batch (a hung decode), unless VIVIT_LOADER_TIMEOUT says
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def loader_timeout() -> float:
    """``$VIVIT_LOADER_TIMEOUT`` seconds (0: wait forever), else ``LOADER_TIMEOUT``: how long the loader waits for its
    workers' next batch before the run stops with :class:`LoaderTimeout`."""
    return env_seconds("VIVIT_LOADER_TIMEOUT", LOADER_TIMEOUT, zero="no deadline")


class LoaderTimeout(TimeoutError):
    """The loader's workers sent no batch within :func:`loader_timeout` seconds (a decode that hangs)."""


def die_with_parent(parent: int) -> None:
    """In a worker process: be killed (SIGKILL) when ``parent``, the process that started it, dies (Linux
    ``prctl(PR_SET_PDEATHSIG)``; elsewhere nothing), so a worker stuck in a decode never outlives its job. The
    signal follows the *thread* that started the worker: loaders are iterated by the thread that runs the job."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # no prctl in this libc: the worker lives as before
        return
    if os.getppid() != parent:  # the parent died before prctl took effect: nobody will read this worker's output
        os.kill(os.getpid(), signal.SIGKILL)


def _worker_init(parent: int, _: int) -> None:
    die_with_parent(parent)
    # Decoding and resizing run in many workers at once: one intra-op thread each leaves the cores to the model.
    torch.set_num_threads(1)


class _Loader(DataLoader):
    """A ``DataLoader`` whose deadline for the next batch is one clear :class:`LoaderTimeout`."""

    def __iter__(self) -> Iterator[Any]:
        batches = super().__iter__()
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                return
            except RuntimeError as err:
                if "timed out" not in str(err) or not self.timeout:
                    raise
                raise LoaderTimeout(
                    f"the decoding workers sent no batch for {self.timeout:g} s (a video whose decode hangs?); the "
                    "run stops here and keeps what it finished: run it again to continue, or set "
                    "VIVIT_LOADER_TIMEOUT (seconds, 0 for no deadline)") from None
            yield batch


def make_loader(dataset: Dataset, *, batch_size: int | None = 1, workers: int = 0,
                collate_fn: Callable[[list[Any]], Any] | None = None, sampler: Any = None, shuffle: bool = False,
                drop_last: bool = False, pin_memory: bool = False, seed: int | None = None,
                prefetch_factor: int = 2, timeout: float | None = None) -> DataLoader:
    """A ``DataLoader`` for video datasets: ``workers`` decoding processes (one torch thread each) that fill a queue
    of ``prefetch_factor`` batches per worker while the model runs. Each worker dies with the process that started
    it (:func:`die_with_parent`), and a batch that does not come within ``timeout`` seconds stops the iteration with
    :class:`LoaderTimeout` (the stuck worker is terminated), never a hang.

    Args:
        dataset: A dataset of this module.
        batch_size: Items per batch.
        workers: Worker processes (0 decodes in the main process).
        collate_fn: E.g. :func:`collate_views` for :class:`EvalVideos`; default torch's.
        sampler: E.g. a ``DistributedSampler``.
        shuffle: Shuffle (without a sampler).
        drop_last: Drop a last incomplete batch.
        pin_memory: Page-locked batches for fast copies to a GPU.
        seed: Seed of the loader's generator (shuffling, worker seeds).
        prefetch_factor: Batches each worker prepares ahead.
        timeout: Seconds to wait for the workers' next batch (default :func:`loader_timeout`; 0: no deadline).
            Decoding in the main process (``workers=0``) has no deadline.
    """
    if workers < 0:
        raise ValueError(f"workers must be >= 0, found {workers}")
    timeout = loader_timeout() if timeout is None else timeout
    if not 0 <= timeout <= 1e6:
        raise ValueError(f"timeout must be a number of seconds from 0 to 1e6, got {timeout!r}")
    extra: dict[str, Any] = dict(prefetch_factor=prefetch_factor, timeout=timeout,
                                 worker_init_fn=functools.partial(_worker_init, os.getpid())) if workers else {}
    return _Loader(dataset, batch_size=batch_size, shuffle=shuffle, sampler=sampler, num_workers=workers,
                      collate_fn=collate_fn, drop_last=drop_last, pin_memory=pin_memory,
                      generator=torch.Generator().manual_seed(seed) if seed is not None else None, **extra)


class ResumableDistributedSampler(DistributedSampler):
    """``DistributedSampler`` that can start an epoch part-way (``start``), after the samples a checkpoint consumed."""

    def __init__(self, dataset: Dataset, **kwargs: Any) -> None:
        super().__init__(dataset, **kwargs)
        self.start = 0

    def __iter__(self) -> Iterator[int]:
        return iter(list(super().__iter__())[self.start:])

    def __len__(self) -> int:
        return self.num_samples - self.start


# ================================================================================================ ranks
@dataclass
class Dist:
    """This process's place in a run, and collectives that are no-ops without a process group."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    initialised: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.initialised:
            dist.barrier()

    def all_reduce(self, values: Sequence[float]) -> list[float]:
        """Sum of ``values`` over ranks (float64)."""
        tensor = torch.tensor(list(values), dtype=torch.float64)
        if self.initialised:
            tensor = tensor.to(self.device)
            dist.all_reduce(tensor)
        return tensor.cpu().tolist()

    def all_gather_object(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order (picklable objects)."""
        if not self.initialised:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def close(self) -> None:
        """Leave the process group (when this process joined one)."""
        if self.initialised:
            dist.destroy_process_group()
            self.initialised = False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed(device: str | torch.device | None = None, *, need_group: bool = False) -> Dist:
    """Join torchrun's process group (NCCL on GPU, gloo on CPU) when ``WORLD_SIZE`` > 1.

    Args:
        device: Default ``cuda:LOCAL_RANK`` when CUDA is available, else CPU; ``"cuda"`` means ``cuda:LOCAL_RANK``.
        need_group: Create a one-process group even without torchrun (FSDP needs one).
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if device is not None:
        device = torch.device(device)
    else:
        device = torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    if device.type == "cuda":
        if device.index is None:
            device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    state = Dist(rank, world_size, device)
    if world_size > 1 or need_group:
        backend = "nccl" if device.type == "cuda" else "gloo"
        if "MASTER_ADDR" in os.environ:
            dist.init_process_group(backend, device_id=device if device.type == "cuda" else None)
        else:
            dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
        state.initialised = True
    return state


def shard(items: Sequence[Any], rank: int, world_size: int) -> list[Any]:
    """Rank ``rank``'s disjoint part of ``items`` (every ``world_size``-th, from ``rank``): ranks get equal shares
    of each part of the listing, so one slow folder does not land on one rank."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), found {rank}")
    return list(items[rank::world_size])


__all__ = ["DataError", "Dist", "EvalVideos", "Item", "KINETICS_PATTERN", "Listing", "READ_ERRORS",
           "ResumableDistributedSampler", "TrainClips", "UNLABELLED", "VIDEO_SUFFIXES", "class_index",
           "collate_first", "collate_views", "die_with_parent", "init_distributed", "is_out_of_memory", "item_seed",
           "LoaderTimeout", "loader_timeout", "make_loader",
           "one_line", "read_listing", "resolve_classes", "shard", "to_items"]
