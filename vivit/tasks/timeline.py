"""What happens when: a classifier slid over a whole video, in memory bounded by a few windows, not by its length.

:func:`timeline` yields one record per window as it is classified: windows of
:func:`vivit.data.stream.sliding_windows` (the model's clip, every half window by default), each preprocessed as
``classify`` preprocesses a view, several per forward pass. :func:`timeline_video` writes into ``out``
``windows.jsonl`` (a line per window, as windows finish), ``segments.json`` (:func:`segments`) and ``timeline.png``
(:func:`plot_timeline`, needs matplotlib), opening the video once and planning its windows once. Started again with
the same ``out`` and settings (``run.json``, as ``vivit evaluate``: other settings are refused), a killed run goes on
where it stopped and ends with identical files, since lines are kept in whole batches; a finished run computes
nothing. :func:`timeline_listing` does every video of a listing, one sub-folder each, sharded over ``torchrun``.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import torch
from einops import rearrange

from vivit.data.datasets import Dist, one_line
from vivit.data.stream import VideoStream, Window, is_url, sliding_windows
from vivit.data.transforms import eval_transform, resolve_data_config
from vivit.data.video import VideoReadError
from vivit.files import trim_torn_line, write_text_atomic
from vivit.progress import Progress
from vivit.tasks.optimize import Optimized
from vivit.tasks.predict import top_k as _top_k
from vivit.tasks.reuse import slice_reuse
from vivit.tasks.run import NOT_FINITE, RUN, Run, RunOptions, Task, claimed, model_identity, prepare_model, run_job
from vivit.tasks.runtime import dtype_name, setup_runtime
from vivit.weights.fetch import download_timeout

_logger = logging.getLogger(__name__)

WINDOWS = "windows.jsonl"
SEGMENTS = "segments.json"
PLOT = "timeline.png"
SUMMARY = "timelines.json"
READ_ERRORS = (ValueError, OSError, RuntimeError)
MAX_STEP = 1e6  # seconds between windows (11.6 days): beyond it no video has a second window
MAX_WINDOW_STRIDE = 1000  # frames between a window's frames
MAX_HELD_FRAMES = 4096  # decoded frames the windows in progress may hold (about 1 GB at a 224 short side)
MAX_BATCH_SIZE = 256  # windows per forward pass; a 32 x 224 x 224 window is 19 MB of float32 input
TRANSITION_CONFIDENT = 0.99  # mean top-1 score from which a transition-length run is a segment (see segments)


# ================================================================================================ windows
def window_plan(model: torch.nn.Module, fps: float, *, step: float | None = None,
                window_stride: int | None = None) -> tuple[int, int, float]:
    """``(frames per window, frame stride, step in seconds)``: the model's clip, every half window by default.

    Raises:
        ValueError: A step shorter than one frame, not finite or over ``MAX_STEP``; a stride outside 1 to
            ``MAX_WINDOW_STRIDE``; or windows that would hold more than ``MAX_HELD_FRAMES`` decoded frames at once.
    """
    _check_options(step, window_stride)
    cfg = resolve_data_config(model)
    clip_len, stride = cfg["input_size"][1], int(cfg["frame_stride"] if window_stride is None else window_stride)
    step = clip_len * stride / 2 / fps if step is None else float(step)
    if not step >= 1 / fps - 1e-9:
        raise ValueError(f"step must be at least one frame (1/{fps:g} s = {1 / fps:.4f} s), found {step!r} s")
    span = clip_len * stride  # frames a window covers; windows overlapping it are in progress together
    held = min(span, math.ceil(span / max(1.0, step * fps)) * clip_len)
    if held > MAX_HELD_FRAMES:
        raise ValueError(f"windows of {clip_len} frames {stride} apart every {step:g} s would hold {held} decoded "
                         f"frames at once (at most {MAX_HELD_FRAMES}); raise step or lower window_stride")
    return clip_len, stride, step


def _check_options(step: float | None = None, window_stride: int | None = None, crops: int = 1, batch_size: int = 1,
                   top_k: int = 1, max_delay: float | None = None) -> None:
    """Refuse settings no video makes valid, before anything is loaded or written (one line naming the argument)."""
    if max_delay is not None and not (isinstance(max_delay, int | float) and 0 <= max_delay <= MAX_STEP):
        raise ValueError(f"max_delay must be a number of seconds from 0 to {MAX_STEP:g}, found {max_delay!r}")
    if step is not None and not (isinstance(step, int | float) and 0 < step <= MAX_STEP):
        raise ValueError(f"step must be a number of seconds above 0 and at most {MAX_STEP:g}, found {step!r}")
    if window_stride is not None and not (isinstance(window_stride, int) and 1 <= window_stride <= MAX_WINDOW_STRIDE):
        raise ValueError(f"window_stride must be an integer from 1 to {MAX_WINDOW_STRIDE} (frames between a window's "
                         f"frames), found {str(window_stride)[:30]}")
    if crops not in (1, 3):
        raise ValueError(f"crops must be 1 or 3, found {crops!r}")
    if not (isinstance(batch_size, int) and 1 <= batch_size <= MAX_BATCH_SIZE):
        raise ValueError(f"batch_size must be an integer from 1 to {MAX_BATCH_SIZE} (windows per forward pass), "
                         f"found {str(batch_size)[:30]}")
    if not (isinstance(top_k, int) and top_k >= 1):
        raise ValueError(f"top_k must be an integer >= 1, found {top_k!r}")


def _check_classifier(model: torch.nn.Module) -> None:
    """A timeline ranks labels: a model without a classifier head would rank feature dimensions."""
    if getattr(model, "num_classes", None) == 0:
        raise ValueError(f"{getattr(model, 'default_cfg', {}).get('architecture') or type(model).__name__} has no "
                         "classifier head (num_classes=0), so it has no labels to put on a timeline; use a model with "
                         "a head, or `vivit extract` for features")


@contextlib.contextmanager
def _opened(model: torch.nn.Module, path: str | Path, *, crops: int, follow: float | None, step: float | None,
            window_stride: int | None, batch_size: int,
            max_delay: float | None) -> Iterator[tuple[VideoStream, tuple[int, int, float], Any, LiveClock | None]]:
    """The video decoded at the model's short side (a URL with the download rule's read deadline), with the
    transform, the window plan and a live stream's clock (by default a window may be a batch of steps plus one window
    behind: what waiting for a batch costs)."""
    transform = eval_transform(model, num_crops=crops)
    with VideoStream(path, transform.resize_size, transform.interpolation, follow=follow,
                     timeout=download_timeout() if is_url(path) else None) as stream:
        plan = clip_len, stride, step_s = window_plan(model, stream.info.fps, step=step, window_stride=window_stride)
        delay = batch_size * step_s + clip_len * stride / stream.info.fps if max_delay is None else max_delay
        yield stream, plan, transform, LiveClock(delay) if stream.live else None


def timeline(model: torch.nn.Module, path: str | Path, *, step: float | None = None, window_stride: int | None = None,
             crops: int = 1, batch_size: int = 8, top_k: int = 5, device: str | torch.device | None = None,
             first: int = 0, follow: float | None = None,
             run: Callable[[torch.Tensor], torch.Tensor] | None = None, reuse: bool = True,
             max_delay: float | None = None) -> Iterator[dict[str, Any]]:
    """Classify every window of a video, yielding one record per window as soon as its batch is done.

    Args:
        model: A ViViT classifier: its ``pretrained_cfg`` fixes clip, stride, preprocessing and labels.
        path: A video file, or a stream URL (``rtsp://``, ``http://`` ...) read as it comes.
        step: Seconds between window starts (default: half a window).
        window_stride: Frames between a window's frames (default: the model's ``frame_stride``).
        crops: 1 (centre crop) or 3 (along the long side, logits averaged), as ``classify --views Nx3``.
        batch_size: Windows per forward pass (at most ``MAX_BATCH_SIZE``).
        top_k: Labels per window.
        device: Where to run; default the model's device.
        first: Window index to start at (resuming).
        follow: ``path`` is a file still being written (Matroska, MPEG-TS): wait up to this many seconds at its end.
        run: Called instead of ``model`` on each batch of float32 windows, e.g. ``vivit.optimize(model)``.
        reuse: Model 2: encode each tubelet-time slice once for every window that holds it (:mod:`vivit.tasks.reuse`:
            the same scores up to float32 rounding); ``False`` computes every window whole.
        max_delay: A live source's (a URL, ``follow``) windows further behind its live edge are skipped
            (:class:`LiveClock`); default a batch of steps plus one window, which a model faster than the video never
            reaches.

    Yields:
        ``{"index", "start", "end", "top": [{"label", "score"}, ...]}``, seconds from the first frame (``"padded":
        true`` for the looped window of a video shorter than one window; ``"top_by_split"`` for a split head). A live
        source's records add ``"delay"`` (seconds behind the live edge) and ``"skipped"`` (windows skipped to stay
        live since the record before).

    Raises:
        VideoReadError: No video stream, a still image, or decoding failing midway (after the windows before it).
    """
    _check_options(step, window_stride, crops, batch_size, top_k, max_delay)
    _check_classifier(model)
    with _opened(model, path, crops=crops, follow=follow, step=step, window_stride=window_stride,
                 batch_size=batch_size, max_delay=max_delay) as (stream, plan, transform, clock):
        yield from _timeline(model, stream, plan, transform, clock, batch_size=batch_size, top_k=top_k, device=device,
                             first=first, run=run, reuse=reuse)


class LiveClock:
    """How far a live source's windows are behind its live edge (the first frame's time plus the wall-clock seconds
    since opening, so a source read faster than real time is never behind); those more than ``max_delay`` seconds
    behind are skipped (their model work only: decoding goes on, which is what lets the timeline catch up)."""

    def __init__(self, max_delay: float) -> None:
        self.max_delay, self.opened, self.skipped = max_delay, time.monotonic(), 0

    def delay(self, end: float) -> float:
        """Seconds a window ending at ``end`` (video time) is behind the live edge now."""
        return max(0.0, time.monotonic() - self.opened - end)

    def skip(self, window: Window) -> bool:
        """Whether ``window`` is too far behind to compute (counted in ``skipped``)."""
        late = self.delay(window.end) > self.max_delay
        self.skipped += late
        return late


def _timeline(model: torch.nn.Module, stream: VideoStream, plan: tuple[int, int, float], transform: Any,
              clock: LiveClock | None, *, batch_size: int, top_k: int, device: str | torch.device | None, first: int,
              run: Callable[[torch.Tensor], torch.Tensor] | None, reuse: bool) -> Iterator[dict[str, Any]]:
    """:func:`timeline` over an open stream with its window plan; ``clock`` (a live stream's) skips windows too far
    behind and its records say their delay."""
    param = next(model.parameters(), None)
    device = torch.device(device) if device is not None else (param.device if param is not None else None)
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    cfg = getattr(model, "pretrained_cfg", None) or {}
    slices = slice_reuse(model, run, transform, device, dtype) if reuse else None  # replaces the forward, nothing else
    batch: list[tuple[Window, int]] = []  # each window with the windows skipped since the one before it
    since = 0
    if clock is not None:  # live time counts from here, when windows are first read, not from setting up
        clock.opened = time.monotonic()

    @torch.inference_mode()
    def classify() -> Iterator[dict[str, Any]]:
        if not batch:
            return
        was_training = model.training
        model.eval()
        try:
            windows = [w for w, _ in batch]
            logits = (slices([w.frames for w in windows]) if slices is not None else
                      _forward(model, run, windows, transform, device, dtype)).float().cpu()
        finally:
            model.train(was_training)
        logits = logits.view(len(batch), -1, logits.shape[-1]).mean(1)  # classify's view average: mean of logits
        # every record is made before the first is yielded: a batch is written whole or not at all
        records = [_record(w, row, top_k, cfg) for w, row in zip(windows, logits, strict=True)]
        for record, (_, skipped) in zip(records, batch, strict=True):
            if clock is not None:
                record["delay"] = round(clock.delay(record["end"]), 3)
                record.update({"skipped": skipped} if skipped else {})
            yield record

    try:
        for window in sliding_windows(stream, *plan, first=first):
            if clock is not None and clock.skip(window):
                since += 1
                continue
            batch.append((window, since))
            since = 0
            if len(batch) == batch_size:
                yield from classify()
                batch = []
    except (VideoReadError, TimeoutError, KeyboardInterrupt):  # broken, stalled or stopped midway: the windows
        yield from classify()  # finished are kept
        raise
    yield from classify()


def _record(window: Window, logits: torch.Tensor, k: int, cfg: dict[str, Any]) -> dict[str, Any]:
    """A window's record of its logits (:class:`NotFinite` when they are not finite: the video fails)."""
    if not bool(torch.isfinite(logits).all()):  # float64 softmax of finite logits is finite: scores need no check
        raise NotFinite(f"window {window.index} ({window.start:.2f}-{window.end:.2f} s): {NOT_FINITE}")
    tops = [[{"label": t["label"], "score": t["score"]} for t in top]
            for top in _top_k(logits, k, cfg.get("label_names"), cfg.get("class_splits"))]
    return {"index": window.index, "start": round(window.start, 6), "end": round(window.end, 6),
            **({"top": tops[0]} if len(tops) == 1 else {"top_by_split": tops}),
            **({"padded": True} if window.padded else {})}


class NotFinite(ValueError):
    """The model's outputs for a window are NaN or infinite: the video fails, as in ``vivit evaluate``."""


def _forward(model: torch.nn.Module, run: Callable[[torch.Tensor], torch.Tensor] | None, batch: list[Window],
             transform: Any, device: torch.device | None, dtype: torch.dtype) -> torch.Tensor:
    """Logits ``(windows * crops, classes)`` of whole windows."""
    # One transform call for the batch: it works frame by frame, so frames of all windows along T give each window
    # the pixels classify would (and far fewer small tensor operations).
    x = transform(torch.cat([w.frames for w in batch]))  # (C, B*T, h, w), or (3, C, B*T, h, w) with three crops
    x = rearrange(x if x.ndim == 5 else x[None], "v c (b t) h w -> (b v) c t h w", b=len(batch)).contiguous()
    # An optimized callable takes float32 input and moves and casts it itself (OpenVINO wants it on the CPU).
    return (model(x.to(device, dtype)) if run is None else run(x)).float()


# ================================================================================================ segments
def top1(record: dict[str, Any]) -> tuple[str, float]:
    """A window's best label and its score (a split head: the parts' labels joined by ``|``, the mean score)."""
    if "top" in record:
        return record["top"][0]["label"], float(record["top"][0]["score"])
    parts = [top[0] for top in record["top_by_split"]]
    return "|".join(p["label"] for p in parts), float(np.mean([p["score"] for p in parts]))


def segments(windows: Sequence[dict[str, Any]], *, smooth: int = 1, min_segment: float = 0.0,
             confident: float = TRANSITION_CONFIDENT) -> list[dict[str, Any]]:
    """Merge consecutive windows with the same top-1 label into ``{"start", "end", "label", "score"}`` (the mean
    top-1 score), tiling the timeline: two segments meet halfway between their nearest window centres.

    A change of activity inside a window makes a *transition*: the windows straddling it see both sides and are
    often given a third label. So a run of at most ``ceil(window / step) - 1`` windows (1 at the default step)
    between two other labels makes no segment unless its mean top-1 score reaches ``confident``: its neighbours meet
    at its centre (and join when they share a label). Segments at either end of the video are kept as they are.

    Args:
        windows: Records of :func:`timeline`, in time order.
        smooth: Average each window's label scores over a centred run of ``smooth`` windows (labels outside a
            window's top-k count 0) before taking the top-1; 1 = off.
        min_segment: Segments shorter than this many seconds are absorbed by their longer neighbour, shortest first.
        confident: Above 1 absorbs every transition, 0 keeps all.
    """
    if not (smooth >= 1 and min_segment >= 0):  # also refuses a NaN min_segment, which would compare False
        raise ValueError(f"smooth must be >= 1 and min_segment >= 0, found {smooth}, {min_segment}")
    if not windows:
        return []
    best = [top1(w) for w in windows] if smooth == 1 else _smoothed(windows, smooth)
    centre = [(w["start"] + w["end"]) / 2 for w in windows]
    cuts = [windows[0]["start"], *(round((a + b) / 2, 6) for a, b in pairwise(centre)), windows[-1]["end"]]
    segs = _join([{"start": cuts[i], "end": cuts[i + 1], "label": label, "scores": [score]}
                  for i, (label, score) in enumerate(best)])
    span = float(np.median([w["end"] - w["start"] for w in windows]))
    step = float(np.median(np.diff([w["start"] for w in windows]))) if len(windows) > 1 else 0.0
    straddling = max(math.ceil(span / step - 1e-6) - 1, 0) if step > 0 else 0  # windows that can straddle one change
    segs = _absorb(_absorb_transitions(segs, straddling, confident), min_segment)
    return [{"start": s["start"], "end": s["end"], "label": s["label"], "score": round(float(np.mean(s["scores"])), 6)}
            for s in segs]


def _absorb_transitions(segs: list[dict[str, Any]], most: int, confident: float) -> list[dict[str, Any]]:
    """Give each unconfident run of at most ``most`` windows between two other labels to its neighbours, who meet at
    its centre."""
    out: list[dict[str, Any]] = []
    for i, seg in enumerate(segs):
        if 0 < i < len(segs) - 1 and len(seg["scores"]) <= most and float(np.mean(seg["scores"])) < confident:
            middle = round((seg["start"] + seg["end"]) / 2, 6)
            out[-1]["end"] = middle
            segs[i + 1] = {**segs[i + 1], "start": middle}
        else:
            out.append(dict(seg))
    return _join(out)


def _scores(window: dict[str, Any]) -> dict[str, float]:
    """A window's scores by label (a split head: its :func:`top1`)."""
    return {t["label"]: float(t["score"]) for t in window["top"]} if "top" in window else dict([top1(window)])


def _smoothed(windows: Sequence[dict[str, Any]], n: int) -> list[tuple[str, float]]:
    """Top-1 of each window's label scores averaged over ``n`` neighbouring windows."""
    scores, half, out = [_scores(w) for w in windows], n // 2, []
    for i in range(len(scores)):
        near, total = scores[max(0, i - half):i - half + n], Counter[str]()
        for s in near:
            total.update({label: value / len(near) for label, value in s.items()})
        out.append(max(total.items(), key=lambda kv: (kv[1], kv[0])))
    return out


def _absorb(segs: list[dict[str, Any]], min_segment: float) -> list[dict[str, Any]]:
    """Give the shortest segment below ``min_segment`` to its longer neighbour until none is left."""
    length = lambda seg: seg["end"] - seg["start"]  # noqa: E731
    while len(segs) > 1:
        i = min(range(len(segs)), key=lambda j: length(segs[j]))
        if length(segs[i]) >= min_segment:
            break
        left, right = segs[i - 1] if i > 0 else None, segs[i + 1] if i + 1 < len(segs) else None
        if right is None or (left is not None and length(left) >= length(right)):
            left["end"] = segs[i]["end"]  # type: ignore[index]
        else:
            right["start"] = segs[i]["start"]
        del segs[i]
        segs = _join(segs)
    return segs


def _join(segs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Neighbours with the same label as one segment."""
    out: list[dict[str, Any]] = []
    for seg in segs:
        if out and out[-1]["label"] == seg["label"]:
            out[-1]["end"], out[-1]["scores"] = seg["end"], out[-1]["scores"] + seg["scores"]
        else:
            out.append(seg)
    return out


# ================================================================================================ one video, on disk
def _video_identity(path: str | Path, live: bool) -> dict[str, Any]:
    if is_url(path):
        return {"url": str(path)}
    if live:  # a followed file grows between runs, and is never resumed: its name is what it is
        return {"path": str(Path(path).resolve()), "follow": True}
    stat = Path(path).stat()
    return {"path": str(Path(path).resolve()), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _resume(lines: Path, batch_size: int, finished: Any) -> list[dict[str, Any]]:
    """The windows in ``windows.jsonl`` (one line naming the file and line when one is not the next record this module
    wrote): a finished run's all, an interrupted run's in whole batches (so that each window left is recomputed in the
    same batch as in an uninterrupted run), to which the file is cut back."""
    trim_torn_line(lines)
    start_over = "delete the folder's outputs to start over, or pass another --out"
    try:
        text = lines.read_text(encoding="utf-8") if lines.exists() else ""
    except UnicodeDecodeError:
        raise ValueError(f"{lines}: is not text; {start_over}") from None
    done: list[dict[str, Any]] = []
    for n, line in enumerate(text.splitlines(), 1):
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, RecursionError):
            record = None
        if not _is_window(record, after=done[-1]["index"] if done else -1):
            raise ValueError(f"{lines}: line {n} is not the next window record of a timeline ({line[:40]!r}); "
                             f"{start_over}")
        done.append(record)
    if finished == len(done):
        return done
    kept = done[:len(done) // batch_size * batch_size]
    if len(done) != len(kept):
        write_text_atomic(lines, "".join(json.dumps(r) + "\n" for r in kept))
    if kept:
        _logger.info("%s: %d windows already done; continuing", lines.parent, len(kept))
    return kept


def _is_window(record: Any, after: int) -> bool:
    """``record`` is one :func:`_record` wrote, of a window after the one indexed ``after``."""
    def number(v: Any) -> bool:
        return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)

    def top(entries: Any) -> bool:  # a one-line label and a probability, as this module writes them
        return isinstance(entries, list) and bool(entries) and all(
            isinstance(t, dict) and isinstance(t.get("label"), str) and not any(c in t["label"] for c in "\r\n\x00")
            and number(t.get("score")) and 0 <= t["score"] <= 1 for t in entries)

    if not (isinstance(record, dict) and type(record.get("index")) is int and after < record["index"] < 2 ** 53
            and number(record.get("start")) and number(record.get("end")) and record["start"] <= record["end"]
            and isinstance(record.get("padded", False), bool)):
        return False
    tops = [record["top"]] if "top" in record else record.get("top_by_split")
    return isinstance(tops, list) and bool(tops) and all(top(t) for t in tops)


def timeline_video(path: str | Path, model: torch.nn.Module | str, out: str | Path, *, step: float | None = None,
                   window_stride: int | None = None, crops: int = 1, batch_size: int = 8, top_k: int = 5,
                   smooth: int = 1, min_segment: float = 0.0, device: str | torch.device | None = None,
                   dtype: str | torch.dtype | None = None, plot: bool = True, progress_bar: bool | None = None,
                   stop_after: int | None = None, on_window: Any = None, follow: float | None = None,
                   runtime: str | Optimized = "torch", reuse: bool = True,
                   max_delay: float | None = None) -> dict[str, Any] | None:
    """Write ``windows.jsonl``, ``segments.json`` and ``timeline.png`` of one video into ``out`` (module docstring).

    ``step``, ``window_stride``, ``crops``, ``batch_size`` (keep it to resume), ``top_k``, ``follow``, ``reuse`` and
    ``max_delay`` are :func:`timeline`'s, ``smooth`` and ``min_segment`` :func:`segments`'. A URL, like a followed
    file, is read from its current position and never resumed; ``VIVIT_DOWNLOAD_TIMEOUT`` seconds (default 60)
    without data end it with the windows before kept. Ctrl-C leaves ``windows.jsonl`` and the segments of the
    windows finished, then propagates.

    Args:
        model: A model, or a name for ``vivit.create_model(name, pretrained=True)``.
        out: Output folder: an interrupted run in it is continued, a finished one re-segmented without computing.
        device: Default the model's device (a name: CUDA when available).
        dtype: Cast the weights (``"bfloat16"`` ...).
        plot: Draw ``timeline.png`` (skipped with a log line when matplotlib is missing).
        progress_bar: Force the tqdm bar on or off (default: on a terminal).
        stop_after: Leave at the end of the batch reaching this many new windows, as a killed run would (``None``).
        on_window: Called with each window's record as it is written (the CLI prints live streams' windows).
        runtime: ``"torch"``, ``"auto"``, ``"openvino"`` (:func:`vivit.optimize` in ``dtype``) or an
            :class:`~vivit.tasks.optimize.Optimized` of this model; what ran is part of the run's identity.

    Returns:
        ``{"windows", "segments", "duration", "padded", "error", "out", "windows_per_second"}`` (a live source adds
        ``"skipped"``); ``error`` is the one line of a video that broke midway, stalled or gave outputs that are not
        finite (its earlier windows kept), else ``None``.
    """
    out = Path(out)
    _check_options(step, window_stride, crops, batch_size, top_k, max_delay)
    if device is None:
        param = None if isinstance(model, str) else next(model.parameters(), None)
        device = param.device if param is not None else "cuda" if torch.cuda.is_available() else "cpu"
    env = Dist(device=torch.device(device))
    model, name, weights = prepare_model(model, env)
    _check_classifier(model)
    ran = setup_runtime(model, env.device, dtype, runtime)
    # No video stream, not a file: refused here, before anything is written
    with _opened(ran.model, path, crops=crops, follow=follow, step=step, window_stride=window_stride,
                 batch_size=batch_size, max_delay=max_delay) as (stream, plan, transform, clock):
        settings = {"video": _video_identity(path, stream.live), "model": name, "weights": weights,
                    **model_identity(ran.model), "dtype": dtype_name(ran.dtype), "backend": ran.backend,
                    "window": plan[0], "window_stride": plan[1], "step": plan[2], "crops": crops, "top_k": top_k,
                    "batch_size": batch_size}
        lines, error, rate = out / WINDOWS, None, 0.0
        with claimed(out, settings, env, (WINDOWS, SEGMENTS, PLOT)) as saved:  # one writer; resumes the same settings
            if stream.live:  # a live stream cannot go back: every run starts afresh, once the folder is this run's
                saved = {}
                for stale in (WINDOWS, SEGMENTS, PLOT):
                    (out / stale).unlink(missing_ok=True)
                write_text_atomic(out / RUN, json.dumps(settings, indent=2) + "\n")  # no earlier run's "finished"
            finished = saved.get("finished") if isinstance(saved.get("finished"), dict) else {}
            windows = _resume(lines, batch_size, finished.get("windows"))
            if len(windows) == finished.get("windows"):  # a finished run: nothing to compute
                error = finished.get("error")
            else:
                bar = Progress(math.ceil(stream.info.duration / plan[2]) if stream.info.duration else None,
                               "timeline", unit="window", initial=len(windows), show=progress_bar, log=_logger)
                records = _timeline(ran.model, stream, plan, transform, clock, batch_size=batch_size, top_k=top_k,
                                    device=None, first=windows[-1]["index"] + 1 if windows else 0, run=ran.fast,
                                    reuse=reuse)
                with open(lines, "a") as f:
                    try:
                        for record in records:  # each window is in the file as soon as its batch is done
                            f.write(json.dumps(record, allow_nan=False) + "\n")
                            f.flush()
                            windows.append(record)
                            minutes, secs = divmod(record["end"], 60)
                            bar.update(note=f"video at {int(minutes // 60)}:{int(minutes % 60):02d}:{secs:04.1f}")
                            if on_window is not None:
                                on_window(record)
                            if stop_after is not None and bar.new >= stop_after and len(windows) % batch_size == 0:
                                records.close()
                                bar.close()
                                _logger.warning("stopping after %d windows (whole batches of %d) as asked; run again "
                                                "with the same --out to continue", bar.new, batch_size)
                                return None
                    except READ_ERRORS as err:  # broken midway: the windows before are kept and summarised
                        error = one_line(err)
                    except KeyboardInterrupt:  # the segments of the windows in the file are written, then it propagates
                        _write_segments(out, windows, smooth, min_segment)
                        raise
                    finally:
                        rate = bar.close()
            segs = _write_segments(out, windows, smooth, min_segment)
            # run.json says the run went to the end: a rerun re-segments without computing its last batch again
            write_text_atomic(out / RUN, json.dumps({**settings, "finished": {"windows": len(windows), "error": error}},
                                                    indent=2) + "\n")
            if plot and windows:
                plot_timeline(windows, segs, out / PLOT, title=f"{Path(str(path)).name}: {name}",
                              thumbnails=None if stream.live else stream)
    return {"windows": len(windows), "segments": len(segs), "duration": windows[-1]["end"] if windows else 0.0,
            "padded": bool(windows and windows[0].get("padded")), "error": error, "out": str(out),
            "windows_per_second": round(rate, 3), **({"skipped": clock.skipped} if clock is not None else {})}


def _write_segments(out: Path, windows: list[dict[str, Any]], smooth: int, min_segment: float) -> list[dict[str, Any]]:
    segs = segments(windows, smooth=smooth, min_segment=min_segment)
    write_text_atomic(out / SEGMENTS, json.dumps(segs, indent=2, allow_nan=False) + "\n")
    return segs


# ================================================================================================ the picture
ROW_WINDOWS = 60  # windows per row of the picture: enough to follow the score lines
MAX_ROWS = 12  # rows at most; a longer video gets longer rows
THUMBS_PER_ROW = 10
MAX_THUMBNAILS = 24  # each is a seek and a decode from the keyframe before it
THUMBNAIL_SIDE = 64


def plot_timeline(windows: Sequence[dict[str, Any]], segs: Sequence[dict[str, Any]], path: str | Path, *,
                  title: str = "", thumbnails: str | Path | VideoStream | None = None,
                  max_labels: int = 8) -> Path | None:
    """Draw the ``max_labels`` top labels' scores (the segments' labels by time covered) over the segments as
    coloured bands into the PNG ``path``; ``None`` without matplotlib.

    Time runs in rows (like lines of text) of ``ROW_WINDOWS`` windows, at most ``MAX_ROWS`` of them, so a long video
    gets a taller picture rather than a denser one. ``thumbnails``, the video (a file or an open
    :class:`~vivit.data.stream.VideoStream`), adds frames at segment starts spread over each row (its start when none
    starts in it), up to ``THUMBS_PER_ROW`` a row and ``MAX_THUMBNAILS`` in all.
    """
    try:
        from matplotlib.figure import Figure
    except ImportError:
        _logger.warning('no %s: drawing it needs matplotlib, in the video extra '
                        '(pip install "vivit[video]" or pip install matplotlib)', Path(path).name)
        return None
    cover: Counter[str] = Counter()
    for seg in segs:
        cover[seg["label"]] += seg["end"] - seg["start"]
    labels = [label for label, _ in cover.most_common(max_labels)]
    colours = {lab: f"C{i % 10}" for i, lab in enumerate(labels)}
    centres = np.array([(w["start"] + w["end"]) / 2 for w in windows])
    scores = {lab: np.array([_scores(w).get(lab, 0.0) for w in windows]) for lab in labels}
    rows = _rows(windows, max(w["end"] for w in windows))
    fig = Figure(figsize=(12, len(rows) * (2.9 if thumbnails is not None else 2.2) + 0.4), layout="constrained")
    axes = fig.subplots(len(rows), 1, squeeze=False)[:, 0]
    width = rows[0][1] - rows[0][0]
    for ax, (lo, hi) in zip(axes, rows, strict=True):
        for seg in segs:
            if seg["end"] > lo and seg["start"] < hi:
                ax.axvspan(seg["start"], seg["end"], color=colours.get(seg["label"], "0.85"), alpha=0.18, lw=0)
        inside = (centres >= lo - width * 0.02) & (centres <= hi + width * 0.02)
        for label in labels:
            ax.plot(centres[inside], scores[label][inside], color=colours[label], lw=1.4, label=label)
        ax.set(xlim=(lo, max(lo + width, hi)), ylim=(0, 1.02), ylabel="score")
        ax.tick_params(labelsize=8)
    axes[-1].set_xlabel("time (s)")
    axes[0].legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10, x=0.01, ha="left")
    if thumbnails is not None:
        per_row = max(1, min(THUMBS_PER_ROW, MAX_THUMBNAILS // len(rows)))
        _draw_thumbnails(axes, rows, [_thumbnail_times(segs, lo, hi, per_row) for lo, hi in rows], width, thumbnails)
    fig.savefig(path, dpi=80)
    return Path(path)


def _rows(windows: Sequence[dict[str, Any]], end: float) -> list[tuple[float, float]]:
    """The rows' time spans: ``ROW_WINDOWS`` windows each, longer when ``MAX_ROWS`` would not hold the video."""
    starts = sorted(w["start"] for w in windows)
    step = float(np.median(np.diff(starts))) if len(starts) > 1 else end
    row = max(ROW_WINDOWS * max(step, 1e-6), end / MAX_ROWS, 1e-6)
    count = max(1, min(MAX_ROWS, math.ceil(end / row - 0.05)))  # a last sliver joins the row before
    return [(i * row, end if i == count - 1 else (i + 1) * row) for i in range(count)]


def _thumbnail_times(segs: Sequence[dict[str, Any]], lo: float, hi: float, most: int = THUMBS_PER_ROW) -> list[float]:
    """Up to ``most`` segment starts in ``[lo, hi)``, evenly picked; the row's start when there are none."""
    starts = [s["start"] for s in segs if lo <= s["start"] < hi] or [lo]
    if len(starts) > most:
        starts = [starts[round(i * (len(starts) - 1) / max(1, most - 1))] for i in range(most)]
    return starts


def _draw_thumbnails(axes: Any, rows: Sequence[tuple[float, float]], times: Sequence[Sequence[float]], width: float,
                     video: str | Path | VideoStream) -> None:
    """A small frame above each row at each of its times (segment starts)."""
    try:
        with (contextlib.nullcontext(video) if isinstance(video, VideoStream) else
              VideoStream(video, short_side=THUMBNAIL_SIDE)) as stream:
            frames = [[_frame_at(stream, t) for t in row] for row in times]
    except READ_ERRORS as err:
        _logger.warning("no thumbnails: %s", one_line(err))
        return
    size = 0.07
    for ax, (lo, _), row_times, row_frames in zip(axes, rows, times, frames, strict=True):
        for t, frame in zip(row_times, row_frames, strict=True):
            if frame is not None:
                inset = ax.inset_axes((min(max((t - lo) / width, 0.0), 1.0 - size), 1.04, size, 0.3))
                inset.imshow(frame)
                inset.set_axis_off()


def _frame_at(stream: VideoStream, t: float) -> np.ndarray | None:
    with contextlib.closing(stream.frames(t)) as after:
        found = next(after, None)
    return None if found is None else stream.to_array(found[1], THUMBNAIL_SIDE)


# ================================================================================================ many videos
def timeline_listing(listing: str | Path, model: torch.nn.Module | str, out: str | Path, *,
                     device: str | torch.device | None = None, dtype: str | torch.dtype | None = None,
                     stop_after: int | None = None, env: Dist | None = None, runtime: str | Optimized = "torch",
                     **kwargs: Any) -> dict[str, Any] | None:
    """:func:`timeline_video` for every video of a listing (labels ignored) into a sub-folder of ``out`` each
    (``<row>-<file stem>``), as a task of :func:`vivit.tasks.run.run_job` (``run.json``, the lock, ``torchrun``
    shards, resumes); rank 0 writes ``timelines.json`` (every video's folder and outcome). ``device`` and ``env`` are
    as in :class:`~vivit.tasks.run.RunOptions`; ``runtime`` optimizes the model once for every video; ``dtype``,
    ``stop_after`` (per video) and ``**kwargs`` are :func:`timeline_video`'s.

    Returns:
        ``{"videos": [...], "num_failed"}`` on rank 0; ``None`` on other ranks and when stopped early.
    """
    opts = RunOptions(device=device, dtype=dtype, backend=runtime, env=env, log_every=1, progress_bar=False)
    return run_job(listing, model, out, _Timelines(stop_after, kwargs), opts)


class _Timelines(Task):
    """Each video's windows streamed through :func:`timeline_video` into its sub-folder; ``timelines.json`` at the
    end. Its identity holds what each video's ``run.json`` does (a video resumes inside its own folder)."""

    what = "timeline"
    outputs = (SUMMARY, f"*/{WINDOWS}")

    def __init__(self, stop_after: int | None, kwargs: dict[str, Any]) -> None:
        self.stop_after, self.kwargs = stop_after, kwargs
        defaults = inspect.signature(timeline_video).parameters
        self.settings = {k: kwargs.get(k, defaults[k].default) for k in ("step", "window_stride", "crops",
                                                                           "batch_size", "top_k")}
        self.results: dict[int, dict[str, Any]] = {}

    def prepare(self, run: Run) -> dict[str, Any]:
        _check_options(**{k: v for k, v in self.settings.items() if v is not None})
        _check_classifier(run.model)
        return self.settings

    def batches(self, run: Run, mine: list[int]) -> Iterator[list[tuple[int, str, Any, str | None]] | None]:
        for i in mine:
            path, sub = run.rows.paths[i], run.out / f"{i:04d}-{Path(run.rows.paths[i]).stem}"
            try:
                result = timeline_video(path, run.model, sub, device=run.env.device, stop_after=self.stop_after,
                                        runtime=run.runtime.fast or "torch", **self.kwargs)
            except READ_ERRORS as err:
                result = {"error": one_line(err, path), "out": str(sub), "windows": 0}
                _logger.warning("%s: %s", path, result["error"])
            yield None if result is None else [(i, path, result, result.get("error"))]

    def consume(self, run: Run, batch: list[tuple[int, str, Any, str | None]]) -> None:
        for i, path, result, _ in batch:
            self.results[i] = {"path": path, **result}

    def end(self, run: Run, completed: bool) -> dict[int, Any]:
        return self.results

    def finish(self, run: Run, identity: dict[str, Any], results: dict[int, Any]) -> dict[str, Any]:
        summary = {"videos": [results[i] for i in range(run.num)],
                   "num_failed": sum(1 for r in results.values() if r.get("error"))}
        write_text_atomic(run.out / SUMMARY, json.dumps(summary, indent=2) + "\n")
        return summary


__all__ = ["LiveClock", "plot_timeline", "segments", "timeline", "timeline_listing", "timeline_video", "top1",
           "window_plan"]
