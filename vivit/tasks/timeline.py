"""What happens when: a classifier slid over a whole video, in memory bounded by a few windows, not by its length.

:func:`timeline` yields one record per window as it is classified (``index``, ``start``, ``end`` in seconds from the
video's first frame, ``top``: ``{"label", "score"}`` best first). Windows come from
:func:`vivit.data.stream.sliding_windows`: the model's clip (its ``num_frames`` at its ``frame_stride``) every half
window by default, each preprocessed exactly as ``classify`` preprocesses a view (:func:`vivit.data.transforms.
eval_transform`: one centre crop, or three), several windows per forward pass.

:func:`timeline_video` writes into ``out``:

- ``windows.jsonl``: one line per window, in time order, written as windows finish;
- ``segments.json``: consecutive windows with the same top-1 label merged (``start``, ``end``, ``label``, ``score``:
  the mean top-1 score), after an optional moving average over ``smooth`` windows; segments shorter than
  ``min_segment`` seconds are absorbed by their neighbours;
- ``timeline.png`` (needs matplotlib): the top labels' scores over time over coloured segment bands, with a
  thumbnail at each segment boundary.

A run killed midway continues where it stopped when started again with the same ``out`` (``run.json``: the same
video, model, weights and settings, or it is refused, as ``vivit evaluate`` does) and ends with identical files: lines
are kept in whole batches, so every window is computed in the same batch as in an uninterrupted run.
:func:`timeline_listing` does every video of a listing, one sub-folder each, sharded over ``torchrun`` ranks.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from einops import rearrange

from vivit.data.datasets import Dist, init_distributed, one_line, read_listing, shard
from vivit.data.stream import VideoStream, Window, is_url, sliding_windows
from vivit.data.transforms import eval_transform, resolve_data_config
from vivit.data.video import VideoReadError
from vivit.files import write_text_atomic
from vivit.progress import progress_bar
from vivit.tasks.optimize import Optimized, optimize
from vivit.tasks.predict import top_k as _top_k
from vivit.tasks.reuse import SliceReuse, slice_reuse
from vivit.tasks.run import claimed, dtype_name, prepare_model, trim_torn_line

_logger = logging.getLogger(__name__)

WINDOWS = "windows.jsonl"
SEGMENTS = "segments.json"
PLOT = "timeline.png"
SUMMARY = "timelines.json"
READ_ERRORS = (ValueError, OSError, RuntimeError)
TRANSITION_CONFIDENT = 0.99  # mean top-1 score from which a transition-length run is a segment (see segments)


# ================================================================================================ windows
def window_plan(model: torch.nn.Module, fps: float, *, step: float | None = None,
                window_stride: int | None = None) -> tuple[int, int, float]:
    """``(frames per window, frame stride, step in seconds)``: the model's clip, every half window by default.

    Raises:
        ValueError: A step shorter than one frame, or a stride below 1.
    """
    cfg = resolve_data_config(model)
    clip_len, stride = cfg["input_size"][1], int(cfg["frame_stride"] if window_stride is None else window_stride)
    if stride < 1:
        raise ValueError(f"window_stride must be >= 1 (frames between a window's frames), found {window_stride}")
    step = clip_len * stride / 2 / fps if step is None else float(step)
    if not step >= 1 / fps - 1e-9:
        raise ValueError(f"step must be at least one frame (1/{fps:g} s = {1 / fps:.4f} s), found {step!r} s")
    return clip_len, stride, step


def timeline(model: torch.nn.Module, path: str | Path, *, step: float | None = None, window_stride: int | None = None,
             crops: int = 1, batch_size: int = 8, top_k: int = 5, device: str | torch.device | None = None,
             first: int = 0, follow: float | None = None,
             run: Callable[[torch.Tensor], torch.Tensor] | None = None, reuse: bool = True) -> Iterator[dict[str, Any]]:
    """Classify every window of a video, yielding one record per window as soon as its batch is done.

    Args:
        model: A ViViT classifier (its ``pretrained_cfg`` fixes clip, stride and preprocessing), or any module with
            the same ``pretrained_cfg`` / ``num_frames`` / ``img_size`` (an optimised wrapper).
        path: A video file, or a stream URL (``rtsp://``, ``http://`` ...) read as it comes.
        step: Seconds between window starts (default: half a window at the video's frame rate).
        window_stride: Frames between a window's frames (default: the model's ``frame_stride``).
        crops: 1 (centre crop) or 3 (along the long side, logits averaged), as ``classify --views Nx3``.
        batch_size: Windows per forward pass.
        top_k: Labels per window.
        device: Where to run; default the model's device.
        first: Window index to start at (resuming).
        follow: ``path`` is a file still being written (Matroska, MPEG-TS): at its end, wait up to this many seconds
            for more before ending (:class:`vivit.data.stream.VideoStream`).
        run: Called instead of ``model`` on each batch of float32 windows, e.g. ``vivit.optimize(model)``; the model
            still gives the clip, stride, preprocessing and labels.
        reuse: Model 2: encode each tubelet-time slice once and reuse its token in every window that holds it
            (:mod:`vivit.tasks.reuse`; the same scores up to float32 rounding; with an OpenVINO ``run`` its spatial
            half is converted on its own); ``False`` computes every window whole. Other models ignore it.

    Yields:
        ``{"index", "start", "end", "top": [{"label", "score"}, ...]}`` (and ``"padded": true`` for the looped
        window of a video shorter than one window; ``"top_by_split"`` instead of ``"top"`` for a split head).

    Raises:
        VideoReadError: (a ``ValueError``) no video stream, a still image, or decoding failing midway (raised after
            the windows finished before the failure were yielded).
    """
    if batch_size < 1 or top_k < 1:
        raise ValueError(f"batch_size and top_k must be >= 1, found {batch_size}, {top_k}")
    transform = eval_transform(model, num_crops=crops)
    param = next(model.parameters(), None)
    device = torch.device(device) if device is not None else (param.device if param is not None else None)
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    cfg = getattr(model, "pretrained_cfg", None) or {}
    labels, splits = cfg.get("label_names"), cfg.get("class_splits")
    # --- slice reuse hook (vivit.tasks.reuse): replaces the per-batch forward, nothing else changes
    slices = slice_reuse(model, run, transform, device, dtype) if reuse else None
    run = slices if slices is not None else run
    with VideoStream(path, transform.resize_size, transform.interpolation, follow=follow) as stream:
        clip_len, stride, step_s = window_plan(model, stream.info.fps, step=step, window_stride=window_stride)
        batch: list[Window] = []
        try:
            for window in sliding_windows(stream, clip_len, stride, step_s, first=first):
                batch.append(window)
                if len(batch) == batch_size:
                    yield from _classify(model, run, batch, transform, device, dtype, top_k, labels, splits)
                    batch = []
        except VideoReadError:  # decoding failed midway: the windows finished before it are kept
            yield from _classify(model, run, batch, transform, device, dtype, top_k, labels, splits)
            raise
        yield from _classify(model, run, batch, transform, device, dtype, top_k, labels, splits)


@torch.inference_mode()
def _classify(model: torch.nn.Module, run: Callable[[torch.Tensor], torch.Tensor] | None, batch: list[Window],
              transform: Any, device: torch.device | None, dtype: torch.dtype, k: int, labels: Sequence[str] | None,
              splits: Sequence[int] | None) -> Iterator[dict[str, Any]]:
    if not batch:
        return
    was_training = model.training
    model.eval()
    try:
        if isinstance(run, SliceReuse):  # slice-reuse hook: takes the frames, transforms only slices it lacks
            logits = run([w.frames for w in batch]).float().cpu()
        else:
            logits = _forward(model, run, batch, transform, device, dtype).cpu()
    finally:
        model.train(was_training)
    logits = logits.view(len(batch), -1, logits.shape[-1]).mean(1)  # classify's view average: mean of logits
    for window, row in zip(batch, logits, strict=True):
        tops = [[{"label": t["label"], "score": t["score"]} for t in top] for top in _top_k(row, k, labels, splits)]
        record: dict[str, Any] = {"index": window.index, "start": round(window.start, 6), "end": round(window.end, 6)}
        record.update({"top": tops[0]} if len(tops) == 1 else {"top_by_split": tops})
        if window.padded:
            record["padded"] = True
        yield record


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
    """Merge consecutive windows with the same top-1 label into ``{"start", "end", "label", "score"}``.

    Two segments meet halfway between the centres of the last window of one and the first window of the next; the
    first starts at its first window's start and the last ends at its last window's end, so segments tile the
    timeline without overlaps.

    A change of activity inside a window makes a *transition*: the windows that straddle it see half of each side
    and are often given a third label. So a run of at most ``ceil(window / step) - 1`` windows (the most windows that
    can straddle one change: 1 at the default step of half a window) between two segments of other labels makes no
    segment of its own unless its mean top-1 score reaches ``confident``: its neighbours meet at its centre instead
    (and join when they have the same label). Segments at either end of the video are kept as they are.

    Args:
        windows: Records of :func:`timeline`, in time order.
        smooth: Average each window's label scores with its neighbours' (a centred window of ``smooth`` windows;
            labels outside a window's top-k count 0) before taking the top-1; 1 = off.
        min_segment: Segments shorter than this many seconds are absorbed by a neighbour (the longer one), shortest
            first.
        confident: Mean top-1 score from which a transition-length run is kept as a segment; above 1 absorbs every
            transition, 0 keeps all.
    """
    if smooth < 1 or min_segment < 0:
        raise ValueError(f"smooth must be >= 1 and min_segment >= 0, found {smooth}, {min_segment}")
    if not windows:
        return []
    best = [top1(w) for w in windows] if smooth == 1 else _smoothed(windows, smooth)
    segs: list[dict[str, Any]] = []
    centre = [(w["start"] + w["end"]) / 2 for w in windows]
    for i, (w, (label, score)) in enumerate(zip(windows, best, strict=True)):
        if segs and segs[-1]["label"] == label:
            segs[-1]["scores"].append(score)
            segs[-1]["end"] = w["end"]
        else:
            start = round((centre[i - 1] + centre[i]) / 2, 6) if segs else w["start"]
            if segs:
                segs[-1]["end"] = start
            segs.append({"start": start, "end": w["end"], "label": label, "scores": [score]})
    segs = _absorb(_absorb_transitions(segs, _straddling(windows), confident), min_segment)
    return [{"start": s["start"], "end": s["end"], "label": s["label"], "score": round(float(np.mean(s["scores"])), 6)}
            for s in segs]


def _straddling(windows: Sequence[dict[str, Any]]) -> int:
    """The most consecutive windows that can straddle one change: ``ceil(window / step) - 1``."""
    if len(windows) < 2:
        return 0
    span = float(np.median([w["end"] - w["start"] for w in windows]))
    step = float(np.median(np.diff([w["start"] for w in windows])))
    return max(math.ceil(span / step - 1e-6) - 1, 0) if step > 0 else 0


def _absorb_transitions(segs: list[dict[str, Any]], most: int, confident: float) -> list[dict[str, Any]]:
    """Give each unconfident run of at most ``most`` windows between two other labels to its neighbours, who meet at
    its centre (``segments``)."""
    out: list[dict[str, Any]] = []
    for i, seg in enumerate(segs):
        inner = 0 < i < len(segs) - 1
        if inner and len(seg["scores"]) <= most and float(np.mean(seg["scores"])) < confident:
            middle = round((seg["start"] + seg["end"]) / 2, 6)
            out[-1]["end"] = middle
            segs[i + 1] = {**segs[i + 1], "start": middle}
            continue
        out.append(dict(seg))
    return _join(out)


def _smoothed(windows: Sequence[dict[str, Any]], n: int) -> list[tuple[str, float]]:
    """Top-1 of each window's label scores averaged over ``n`` neighbouring windows."""
    scores = []
    for w in windows:
        tops = [w["top"]] if "top" in w else w["top_by_split"]
        scores.append({t["label"]: float(t["score"]) for t in tops[0]} if len(tops) == 1 else dict([top1(w)]))
    half, out = n // 2, []
    for i in range(len(scores)):
        near = scores[max(0, i - half):i - half + n]
        total: dict[str, float] = {}
        for s in near:
            for label, value in s.items():
                total[label] = total.get(label, 0.0) + value / len(near)
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
    out: list[dict[str, Any]] = []
    for seg in segs:
        if out and out[-1]["label"] == seg["label"]:
            out[-1]["end"], out[-1]["scores"] = seg["end"], out[-1]["scores"] + seg["scores"]
        else:
            out.append(seg)
    return out


# ================================================================================================ one video, on disk
def _video_identity(path: str | Path) -> dict[str, Any]:
    if is_url(path):
        return {"url": str(path)}
    stat = Path(path).stat()
    return {"path": str(Path(path).resolve()), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _read_windows(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a line cut by a kill, and anything after it
    return records


def _resume(lines: Path, batch_size: int) -> list[dict[str, Any]]:
    """The windows an interrupted run finished, in whole batches (so that each window left is recomputed in the same
    batch as in an uninterrupted run); ``windows.jsonl`` is cut back to them."""
    trim_torn_line(lines)
    done = _read_windows(lines)
    kept = done[:len(done) // batch_size * batch_size]
    if lines.exists() and len(lines.read_text().splitlines()) != len(kept):
        write_text_atomic(lines, "".join(json.dumps(r) + "\n" for r in kept))
    if kept:
        _logger.info("%s: %d windows already done; continuing", lines.parent, len(kept))
    return kept


def _append_windows(lines: Path, records: Any, bar: _Bar, on_window: Any,
                    stop_after: int | None) -> tuple[str | None, bool]:
    """Append each window's line as it finishes: ``(the one-line error of a video broken midway, stopped early)``."""
    new = 0
    with open(lines, "a") as f:
        try:
            for record in records:
                f.write(json.dumps(record) + "\n")
                f.flush()
                new += 1
                bar.update(record["end"])
                if on_window is not None:
                    on_window(record)
                if stop_after is not None and new >= stop_after:
                    records.close()
                    bar.close()
                    _logger.warning("stopping after %d windows as asked; run again with the same --out to continue",
                                    new)
                    return None, True
        except READ_ERRORS as err:  # broken midway: what came before is kept and summarised
            return one_line(err), False
    return None, False


def timeline_video(path: str | Path, model: torch.nn.Module | str, out: str | Path, *, step: float | None = None,
                   window_stride: int | None = None, crops: int = 1, batch_size: int = 8, top_k: int = 5,
                   smooth: int = 1, min_segment: float = 0.0, device: str | torch.device | None = None,
                   dtype: str | torch.dtype | None = None, plot: bool = True, progress_bar: bool | None = None,
                   stop_after: int | None = None, on_window: Any = None, follow: float | None = None,
                   runtime: str | Optimized = "torch", reuse: bool = True) -> dict[str, Any] | None:
    """Write ``windows.jsonl``, ``segments.json`` and ``timeline.png`` of one video into ``out`` (module docstring).

    Args:
        path: A video file or stream URL (a URL is read from its current position and never resumed).
        model: A model, or a name for ``vivit.create_model(name, pretrained=True)``.
        out: Output folder; one holding an interrupted run with the same settings is continued.
        step: Seconds between window starts (default: half a window), as in :func:`timeline`.
        window_stride: Frames between a window's frames (default: the model's).
        crops: 1 or 3 spatial views per window.
        batch_size: Windows per forward pass; a resumed run keeps whole batches, so keep it to resume.
        top_k: Labels per window.
        smooth: Windows averaged before segmenting, as in :func:`segments`.
        min_segment: Seconds below which a segment joins a neighbour.
        device: Default the model's device (a name: CUDA when available).
        dtype: Cast the weights (``"bfloat16"`` ...).
        plot: Draw ``timeline.png`` (skipped with a log line when matplotlib is missing).
        progress_bar: Force the tqdm bar on or off (default: on a terminal).
        stop_after: Leave after this many new windows, as a killed run would; returns ``None``.
        on_window: Called with each window's record as it is written (the CLI prints live streams' windows).
        follow: As in :func:`timeline`; like a URL, a followed file is never resumed.
        runtime: What runs the model: ``"torch"`` (the model as it is, cast to ``dtype``), ``"auto"`` or
            ``"openvino"`` (through :func:`vivit.optimize` in ``dtype``), or an :class:`~vivit.tasks.optimize.Optimized`
            of this model. The backend and dtype that ran are part of the run's identity.
        reuse: As in :func:`timeline` (Model 2: each slice encoded once).

    Returns:
        ``{"windows", "segments", "duration", "padded", "error", "out"}``; ``error`` holds the one line of a video
        that broke midway (its earlier windows are kept), else ``None``.
    """
    out = Path(out)
    if not isinstance(model, str) and device is None:
        param = next(model.parameters(), None)
        device = param.device if param is not None else None
    env = Dist(device=torch.device(device) if device is not None else
               torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    model, name, weights = prepare_model(model, env, dtype if runtime == "torch" else None)
    fast = _optimized(model, dtype, runtime)
    live = is_url(path) or follow is not None
    with VideoStream(path, follow=follow) as probe:  # no video stream, not a file: refused before writing anything
        fps = probe.info.fps
    clip_len, stride, step_s = window_plan(model, fps, step=step, window_stride=window_stride)
    settings = {"video": _video_identity(path), "model": name, "weights": weights,
                "dtype": str(fast.dtype).removeprefix("torch.") if fast else dtype_name(model),
                "backend": fast.backend if fast else "torch", "window": clip_len, "window_stride": stride,
                "step": step_s, "crops": crops, "top_k": top_k, "batch_size": batch_size}
    lines = out / WINDOWS
    if live:  # a live stream cannot go back: every run starts afresh
        lines.unlink(missing_ok=True)
        (out / "run.json").unlink(missing_ok=True)
    with claimed(out, settings, env):  # one writer per folder; a resume only with the same settings
        kept = _resume(lines, batch_size)
        first = kept[-1]["index"] + 1 if kept else 0
        bar = _Bar(math.ceil(probe.info.duration / step_s) if probe.info.duration else None, len(kept), progress_bar)
        records = timeline(model, path, step=step_s, window_stride=stride, crops=crops, batch_size=batch_size,
                           top_k=top_k, first=first, follow=follow, run=fast, reuse=reuse)
        error, stopped = _append_windows(lines, records, bar, on_window, stop_after)
    if stopped:
        return None
    rate = bar.close()
    windows = _read_windows(lines)
    segs = segments(windows, smooth=smooth, min_segment=min_segment)
    write_text_atomic(out / SEGMENTS, json.dumps(segs, indent=2) + "\n")
    if plot and windows:
        plot_timeline(windows, segs, out / PLOT, title=f"{Path(str(path)).name}: {name}",
                      thumbnails=None if live else path)
    return {"windows": len(windows), "segments": len(segs), "duration": windows[-1]["end"] if windows else 0.0,
            "padded": bool(windows and windows[0].get("padded")), "error": error, "out": str(out),
            "windows_per_second": round(rate, 3)}


def _optimized(model: torch.nn.Module, dtype: str | torch.dtype | None,
               runtime: str | Optimized) -> Optimized | None:
    """The callable that runs ``model``: ``None`` for ``"torch"`` (the model itself), ``runtime`` when it is one."""
    if isinstance(runtime, Optimized):
        return runtime
    if runtime == "torch":
        return None
    fast = optimize(model, dtype, backend=runtime)
    _logger.info("backend %s", fast.note)
    return fast


class _Bar:
    """Windows done, the video time reached and windows/s: a tqdm bar on a terminal, else a log line now and then."""

    def __init__(self, total: int | None, done: int, bar: bool | None) -> None:
        self.done, self.new, self.start = done, 0, time.perf_counter()
        self.bar = progress_bar(total=total, initial=done, desc="timeline", unit="window", dynamic_ncols=True, show=bar)

    def update(self, reached: float) -> None:
        self.done, self.new = self.done + 1, self.new + 1
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix_str(f"video at {_clock(reached)}")
        elif self.new % 100 == 0:
            _logger.info("timeline: %d windows, video at %s, %.2f windows/s", self.done, _clock(reached),
                         self.new / max(time.perf_counter() - self.start, 1e-9))

    def close(self) -> float:
        if self.bar is not None:
            self.bar.close()
        return self.new / max(time.perf_counter() - self.start, 1e-9)


def _clock(seconds: float) -> str:
    minutes, secs = divmod(seconds, 60)
    return f"{int(minutes // 60)}:{int(minutes % 60):02d}:{secs:04.1f}"


# ================================================================================================ the picture
def plot_timeline(windows: Sequence[dict[str, Any]], segs: Sequence[dict[str, Any]], path: str | Path, *,
                  title: str = "", thumbnails: str | Path | None = None, max_labels: int = 8) -> Path | None:
    """Draw the top labels' scores over time over the segments as coloured bands; ``None`` without matplotlib.

    Args:
        windows: Records of :func:`timeline`.
        segs: :func:`segments` of them.
        path: PNG to write.
        title: Figure title.
        thumbnails: The video, to show a frame at each segment boundary (at most 12).
        max_labels: Labels drawn: the segments' labels by time covered.
    """
    try:
        from matplotlib.figure import Figure
    except ImportError:
        _logger.warning("no %s: drawing it needs matplotlib (pip install matplotlib)", Path(path).name)
        return None
    cover: dict[str, float] = {}
    for seg in segs:
        cover[seg["label"]] = cover.get(seg["label"], 0.0) + seg["end"] - seg["start"]
    labels = sorted(cover, key=lambda lab: -cover[lab])[:max_labels]
    colours = {lab: f"C{i % 10}" for i, lab in enumerate(labels)}
    centres = np.array([(w["start"] + w["end"]) / 2 for w in windows])
    fig = Figure(figsize=(12, 4.2 if thumbnails else 3.4), layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    for seg in segs:
        ax.axvspan(seg["start"], seg["end"], color=colours.get(seg["label"], "0.85"), alpha=0.18, lw=0)
    for label in labels:
        scores = [next((float(t["score"]) for t in _tops(w) if t["label"] == label), 0.0) for w in windows]
        ax.plot(centres, scores, color=colours[label], lw=1.6, label=label)
    end = max(w["end"] for w in windows)
    ax.set(xlim=(0, end), ylim=(0, 1.02), xlabel="time (s)", ylabel="score")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)
    if title:
        ax.set_title(title, fontsize=10, loc="left")
    if thumbnails is not None:
        _draw_thumbnails(ax, thumbnails, [s["start"] for s in segs][:12], end)
    fig.savefig(path, dpi=80)
    return Path(path)


def _tops(window: dict[str, Any]) -> list[dict[str, Any]]:
    return window["top"] if "top" in window else [{"label": top1(window)[0], "score": top1(window)[1]}]


def _draw_thumbnails(ax: Any, video: str | Path, times: Sequence[float], end: float) -> None:
    """A small frame above the plot at each time (a segment's start)."""
    try:
        with VideoStream(video, short_side=64) as stream:
            frames = []
            for t in times:
                with contextlib.closing(stream.frames(t)) as after:
                    found = next(after, None)
                    frames.append(None if found is None else stream.to_array(found[1]))
    except READ_ERRORS as err:
        _logger.warning("no thumbnails: %s", one_line(err))
        return
    width = 0.07
    for t, frame in zip(times, frames, strict=True):
        if frame is None:
            continue
        x = min(max(t / end, 0.0), 1.0 - width)
        inset = ax.inset_axes((x, 1.04, width, 0.3))
        inset.imshow(frame)
        inset.set_axis_off()


# ================================================================================================ many videos
def timeline_listing(listing: str | Path, model: torch.nn.Module | str, out: str | Path, *,
                     device: str | torch.device | None = None, dtype: str | torch.dtype | None = None,
                     stop_after: int | None = None, env: Dist | None = None, runtime: str = "torch",
                     **kwargs: Any) -> dict[str, Any] | None:
    """:func:`timeline_video` for every video of a listing, one sub-folder each (``<row>-<file stem>``); under
    ``torchrun`` each rank takes its share. Rank 0 writes ``timelines.json`` (every video's folder and outcome).

    Args:
        listing: Anything :func:`vivit.data.read_listing` reads (labels are ignored).
        model: A model or a name.
        out: Output folder.
        device: Default ``cuda:LOCAL_RANK`` when available, else CPU.
        dtype: Cast the weights (``"bfloat16"`` ...).
        stop_after: Leave after this many new windows on this rank (testing resumption); returns ``None``.
        env: A :class:`vivit.data.datasets.Dist` (default: join torchrun's group when launched by it).
        runtime: As in :func:`timeline_video`; the model is optimized once for every video.
        **kwargs: The other arguments of :func:`timeline_video`.
    """
    owned = env is None
    env = init_distributed(device) if env is None else env
    try:
        rows = read_listing(listing)
        model, _, _ = prepare_model(model, env, dtype if runtime == "torch" else None)
        fast = _optimized(model, dtype, runtime)
        out = Path(out)
        results: dict[int, dict[str, Any]] = {}
        for i in shard(list(range(len(rows.paths))), env.rank, env.world_size):
            sub = out / f"{i:04d}-{Path(rows.paths[i]).stem}"
            try:
                result = timeline_video(rows.paths[i], model, sub, device=env.device, stop_after=stop_after,
                                        runtime=fast or "torch", **kwargs)
            except READ_ERRORS as err:
                result = {"error": one_line(err, rows.paths[i]), "out": str(sub), "windows": 0}
                _logger.warning("%s: %s", rows.paths[i], result["error"])
            if result is None:
                return None
            results[i] = {"path": rows.paths[i], **result}
        merged: dict[int, dict[str, Any]] = {}
        for part in env.all_gather_object(results):
            merged.update(part)
        summary = {"videos": [merged[i] for i in sorted(merged)],
                   "num_failed": sum(1 for r in merged.values() if r.get("error"))}
        if env.main:
            write_text_atomic(out / SUMMARY, json.dumps(summary, indent=2) + "\n")
        env.barrier()
        return summary
    finally:
        if owned:
            env.close()


__all__ = ["plot_timeline", "segments", "timeline", "timeline_listing", "timeline_video", "top1",
           "window_plan"]
