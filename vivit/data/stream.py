"""Long videos, forward only: decode a video (a file or a stream URL) once, in order, and cut it into sliding windows
of frames, holding at most the frames of the windows in progress whatever the video's length.

:class:`VideoStream` decodes with PyAV and never scans or indexes the file first (a live stream has no end to scan
to); it only seeks once, forward, to resume at a window. Frames are converted to RGB and resized to the model's
short side only when a window needs them (:func:`vivit.data.video.frame_to_array`, the resize ``read_video`` does).
:func:`sliding_windows` starts window ``k`` at the first frame whose timestamp reaches ``k * step`` seconds, so a
variable frame rate keeps real times, and takes the model's clip (``clip_len`` frames ``stride`` apart) from there.
Times are seconds from the video's first frame.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vivit.data.video import (
    _HEADER_DURATION_FORMATS,
    VideoReadError,
    _check_file,
    _import_av,
    _normalise_rotation,
    _reason,
    clip_indices,
    frame_to_array,
    open_container,
)

_logger = logging.getLogger(__name__)


def is_url(source: str | Path) -> bool:
    """A stream address FFmpeg opens itself (``rtsp://``, ``http(s)://``, ``udp://`` ...) rather than a file."""
    return "://" in str(source)


@dataclass(frozen=True)
class StreamInfo:
    """What the stream's header and first frame say.

    Attributes:
        fps: Nominal frame rate (the stream's average rate, else FFmpeg's guess).
        duration: Seconds the container states, ``None`` when it states none (live streams, some formats).
        height: Upright frame height.
        width: Upright frame width.
        rotation: Counter-clockwise degrees applied to make frames upright.
        codec: Codec name.
        live: A URL: no resume, no end known in advance.
    """

    fps: float
    duration: float | None
    height: int
    width: int
    rotation: int
    codec: str
    live: bool


@dataclass(frozen=True)
class Window:
    """One window of frames.

    Attributes:
        index: ``k``: the window starts at the first frame at or after ``k * step`` seconds.
        start: Time of its first frame (seconds from the video's first frame).
        end: Time of the first frame after its span, or the video's end.
        frames: uint8 ``(T, H, W, 3)``, resized while decoding.
        padded: The video is shorter than one window: its frames looped, as ``classify`` does.
    """

    index: int
    start: float
    end: float
    frames: torch.Tensor
    padded: bool = False


class VideoStream:
    """A video decoded forward only, one frame at a time (use as a context manager).

    Args:
        source: A video file or a URL FFmpeg opens (``rtsp://``, ``http://`` ...).
        short_side: Resize converted frames so that their short side is this size (``None``: full size).
        interpolation: Resize filter.
        follow: A file still being written (a recording in a streamable container: Matroska, MPEG-TS): at its
            current end, wait up to this many seconds for it to grow before taking that as the end of the video.
    """

    def __init__(self, source: str | Path, short_side: int | None = None, interpolation: str = "bilinear", *,
                 follow: float | None = None) -> None:
        self.live = is_url(source) or follow is not None
        self.follow = follow
        self.source = str(source) if is_url(source) else _check_file(source)
        self.size = None if short_side is None else (int(short_side), interpolation)
        self._av = _import_av()
        self._container: Any = None
        self._growing: list[_Growing] = []
        with contextlib.closing(self._open()) as container:
            stream = container.streams.video[0]
            self.time_base = stream.time_base
            fps = float(stream.average_rate or stream.guessed_rate or 0)
            header = (container.duration / 1e6 if container.duration and not self.live
                      and any(f in container.format.name for f in _HEADER_DURATION_FORMATS) else None)
            first = next(self._decode(container), None)
            if first is None:
                raise VideoReadError(f"{self.source}: no frame could be decoded (corrupt or truncated); re-fetch or "
                                     "re-encode it")
            self._t0 = float(first.pts * self.time_base) if first.pts is not None else None
            rotation = _normalise_rotation(Path(str(self.source)), getattr(first, "rotation", None))
            h, w = (first.width, first.height) if rotation % 180 else (first.height, first.width)
            self.info = StreamInfo(fps or 25.0, header, h, w, rotation, stream.codec_context.name, self.live)

    def __enter__(self) -> VideoStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None
        while self._growing:
            self._growing.pop().close()

    def _open(self) -> Any:
        if self.follow is None:
            return open_container(self._av, self.source)
        self._growing.append(_Growing(Path(self.source), self.follow))  # PyAV leaves file objects open: close() does
        return open_container(self._av, self._growing[-1])

    def to_array(self, frame: Any) -> np.ndarray:
        """A decoded frame as uint8 ``(H, W, 3)``, upright, resized to ``short_side``."""
        return frame_to_array(frame, self.info.rotation, self.size)

    def frames(self, start: float = 0.0) -> Iterator[tuple[float, Any]]:
        """``(time, PyAV frame)`` of every frame at or after ``start`` seconds, in presentation order.

        A ``start`` past 0 seeks (to the keyframe before it) and decodes forward from there; where the file cannot seek
        there exactly, it decodes from the beginning and skips. Convert a frame with :meth:`to_array` only if needed.

        Raises:
            VideoReadError: Decoding fails midway (after every frame before the failure was yielded), or a file whose
                header states a duration ends well before it (truncated).
        """
        self.close()
        self._container = container = self._open()
        seeked = start > 0 and self._t0 is not None and not self.live and self._seek(container, start)
        last, step = -math.inf, 1.0 / self.info.fps
        for i, frame in enumerate(self._decode(container)):
            t = self._reached = self._time(frame, i)
            if seeked and i == 0 and t > start:  # landed after the target: no keyframe index to trust
                _logger.debug("%s: seek to %.3f s landed at %.3f s; decoding from the start", self.source, start, t)
                yield from self.frames_from_start(start)
                return
            if last > -math.inf:
                step = t - last if t > last else step
            last = t
            if t >= start:
                yield t, frame
        self._check_end(last + step)

    def frames_from_start(self, start: float) -> Iterator[tuple[float, Any]]:
        """As :meth:`frames`, without seeking."""
        self.close()
        self._container = container = self._open()
        for i, frame in enumerate(self._decode(container)):
            t = self._reached = self._time(frame, i)
            if t >= start:
                yield t, frame

    def _seek(self, container: Any, start: float) -> bool:
        stream = container.streams.video[0]
        try:
            container.seek(int((start + self._t0) / self.time_base), stream=stream, backward=True, any_frame=False)
        except self._av.error.FFmpegError:
            self.close()
            self._container = self._open()
            return False
        return True

    def _time(self, frame: Any, i: int) -> float:
        if frame.pts is None or self._t0 is None:  # no timestamps (some raw streams): count frames at the nominal rate
            return i / self.info.fps
        return float(frame.pts * self.time_base) - self._t0

    def _decode(self, container: Any) -> Iterator[Any]:
        self._reached: float | None = None  # the last frame's time, for the message of a failure midway
        try:
            yield from container.decode(container.streams.video[0])
        except self._av.error.FFmpegError as err:
            where = "at the start" if self._reached is None else f"after {self._reached:.2f} s"
            raise VideoReadError(f"{self.source}: decoding stopped {where} ({_reason(err)}); the video is corrupt or "
                                 "truncated from there: re-fetch or re-encode it") from None

    def _check_end(self, end: float) -> None:
        header = self.info.duration
        if header and end < 0.9 * header - 0.1:
            raise VideoReadError(f"{self.source}: the frames end at {end:.2f} s but the header says {header:.2f} s; "
                                 "the file is truncated (e.g. an interrupted download): re-fetch or re-encode it")


class _Growing(io.RawIOBase):
    """A file being written, read as a stream: at its current end, wait for more data (up to ``idle`` seconds).

    It is not seekable, so FFmpeg reads it front to back as it would a network stream (an MP4 being recorded cannot
    be read this way: its index is written at the end).
    """

    def __init__(self, path: Path, idle: float) -> None:
        super().__init__()
        self.name, self.idle = str(path), idle
        self._file = open(path, "rb")  # noqa: SIM115 - closed with this object

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        waited = 0.0
        while True:
            n = self._file.readinto(buffer)
            if n or waited >= self.idle:
                return n or 0
            time.sleep(0.1)
            waited += 0.1

    def close(self) -> None:
        self._file.close()
        super().close()


def sliding_windows(stream: VideoStream, clip_len: int, stride: int, step: float, *,
                    first: int = 0) -> Iterator[Window]:
    """The windows of ``stream`` in time order, as each one's last frame is decoded.

    Window ``k`` starts at the first frame at or after ``k * step`` seconds (a quarter frame of tolerance for rounded
    timestamps) and takes ``clip_len`` frames ``stride`` apart; a window whose frames run past the end is not made.
    A video too short for any window gives one window of its frames looped (``clip_indices``, as ``classify`` does),
    marked ``padded``. Only frames of windows in progress are kept.

    Args:
        stream: An open :class:`VideoStream`.
        clip_len: Frames per window (the model's ``num_frames``).
        stride: Frames between a window's frames (the model's ``frame_stride``).
        step: Seconds between window starts (at least one frame).
        first: Window index to start at (resuming); earlier frames are skipped by a seek.

    Raises:
        VideoReadError: A single-frame video; decoding failing midway (raised after the windows finished before it).
    """
    if clip_len < 1 or stride < 1 or not step > 0:
        raise ValueError(f"expected clip_len >= 1, stride >= 1 and step > 0, found {clip_len}, {stride}, {step}")
    span, tol = clip_len * stride, 0.25 / stream.info.fps
    pending: deque[tuple[int, int, float]] = deque()  # (window index, first frame's position in this pass, start)
    kept: dict[int, np.ndarray] = {}
    made, next_k, pos, t, gap = 0, first, -1, 0.0, 1.0 / stream.info.fps
    broken: VideoReadError | None = None
    frames = stream.frames(max(0.0, first * step - tol))
    while True:
        try:
            t_next, frame = next(frames)
        except StopIteration:
            break
        except VideoReadError as err:  # the windows finished before the failure are still made
            broken = err
            break
        pos, gap, t = pos + 1, (t_next - t if pos >= 0 and t_next > t else gap), t_next
        k = math.floor((t + tol) / step)
        if k >= next_k:  # a long gap (variable frame rate) starts one window, not several on one frame
            pending.append((k, pos, t))
            next_k = k + 1
        while pending and pos == pending[0][1] + span:
            yield _window(pending.popleft(), kept, clip_len, stride, end=t)
            made += 1
            floor = pending[0][1] if pending else pos + 1
            for old in [p for p in kept if p < floor]:
                del kept[old]
        looping = made == 0 and first == 0  # until one window is made, a short video may need every frame
        if any(pos - p < span and (looping or (pos - p) % stride == 0) for _, p, _ in pending):
            kept[pos] = stream.to_array(frame)
    for window in pending:
        if pos >= window[1] + (clip_len - 1) * stride:
            yield _window(window, kept, clip_len, stride, end=t + gap)
            made += 1
    if broken is not None:
        raise broken
    if made == 0 and first == 0 and pos >= 0:
        if pos == 0:
            raise VideoReadError(f"{stream.source}: has a single frame (a still image); a video model needs motion, so "
                                 "pass a video with at least 2 frames")
        _logger.warning("%s: %d frames is shorter than one window (%d frames at stride %d): one window of its frames "
                        "looped, as classify does", stream.source, pos + 1, clip_len, stride)
        looped = clip_indices(pos + 1, clip_len, stride)[0].tolist()
        yield Window(0, 0.0, t + gap, torch.from_numpy(np.stack([kept[i] for i in looped])), padded=True)


def _window(entry: tuple[int, int, float], kept: dict[int, np.ndarray], clip_len: int, stride: int,
            end: float) -> Window:
    k, first, start = entry
    frames = np.stack([kept[first + j * stride] for j in range(clip_len)])
    return Window(k, start, end, torch.from_numpy(frames))


__all__ = ["StreamInfo", "VideoStream", "Window", "is_url", "sliding_windows"]
