"""Long videos, forward only: decode a video (a file or a stream URL) once, in order, and cut it into sliding windows
of frames, holding at most the frames of the windows in progress whatever the video's length.

:class:`VideoStream` decodes with PyAV and never scans or indexes the file first (a live stream has no end to scan
to); it only seeks once, forward, to resume at a window. Frames are converted to RGB and resized to the model's
short side only when a window needs them (:func:`vivit.data.video.frame_to_array`, the resize ``read_video`` does).
:func:`sliding_windows` starts window ``k`` at the first frame whose timestamp reaches ``k * step`` seconds, so a
variable frame rate keeps real times, and takes the model's clip (``clip_len`` frames ``stride`` apart) from there.
Times are seconds from the video's first frame; where timestamps go back (a broken mux, a restarted stream) they are
replaced by counting on at the frame rate, so a window never ends before it starts.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import logging
import math
import queue
import threading
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

    The header is read once, when the stream is made; the first pass over the frames continues the decode that read
    it, so a URL or a followed file is connected to once for its header and all its frames. Later passes (a resume's
    seek, the thumbnails of a file) open the file again at their seek point: FFmpeg cannot rewind a demuxer that was
    read to its end other than by a seek, and a fresh one decodes exactly what a first pass would.

    A live source (a URL, a followed file) is read in a background thread and handed over frame by frame: FFmpeg's
    reads block in C, where Ctrl-C cannot reach them (and PyAV drops a ``KeyboardInterrupt`` raised in a file
    object's read), so the caller waits in Python instead, and ``timeout`` bounds each wait for data (the thread is
    left to its deadline when the caller leaves early; a followed file's reads end when the stream is closed).

    Args:
        source: A video file or a URL FFmpeg opens (``rtsp://``, ``http://`` ...).
        short_side: Resize converted frames so that their short side is this size (``None``: full size).
        interpolation: Resize filter.
        follow: A file still being written (a recording in a streamable container: Matroska, MPEG-TS): at its
            current end, wait up to this many seconds for it to grow before taking that as the end of the video.
        timeout: Seconds a URL may send nothing (opening, then each read) before it is given up with a
            ``TimeoutError``; ``None`` waits forever.

    Raises:
        VideoReadError: Not a video, no video stream, no decodable frame, an implausible frame rate, or ``follow``
            on a file whose format cannot be read while it is written (MP4, MOV).
        ValueError: ``follow`` or ``timeout`` not a finite number of seconds.
    """

    def __init__(self, source: str | Path, short_side: int | None = None, interpolation: str = "bilinear", *,
                 follow: float | None = None, timeout: float | None = None) -> None:
        for name, value in (("follow", follow), ("timeout", timeout)):
            if value is not None and not (isinstance(value, int | float) and 0 <= value < math.inf):
                raise ValueError(f"{name} must be a finite number of seconds >= 0, found {value!r}")
        self.live = is_url(source) or follow is not None
        self.follow, self.timeout = follow, (timeout or None) if is_url(source) else None
        self.source = str(source) if is_url(source) else _check_file(source)
        if follow is not None:
            _check_streamable(Path(self.source))
        self.size = None if short_side is None else (int(short_side), interpolation)
        self._av = _import_av()
        self._container: Any = None
        self._growing: list[_Growing] = []
        self._passes = 0
        self._reached: float | None = None
        self._pass = self._open_pass()
        try:
            meta = next(self._pass)
            first = next(self._pass, None)
        except BaseException:
            self.close()
            raise
        if first is None:
            self.close()
            raise VideoReadError(f"{self.source}: no frame could be decoded (corrupt or truncated); re-fetch or "
                                 "re-encode it")
        self._first = first
        self.time_base = meta["time_base"]
        self._t0 = float(first.pts * self.time_base) if first.pts is not None else None
        rotation = _normalise_rotation(Path(str(self.source)), getattr(first, "rotation", None))
        h, w = (first.width, first.height) if rotation % 180 else (first.height, first.width)
        fps = meta["fps"]
        if fps and not MIN_FPS <= fps <= MAX_FPS:
            self.close()
            raise VideoReadError(f"{self.source}: its frame rate reads {fps:g} fps, outside the {MIN_FPS:g} to "
                                 f"{MAX_FPS:g} fps windows are timed by (broken metadata, or a time-lapse or "
                                 "high-speed recording); re-encode it at a rate in that range (ffmpeg -i IN -r 25 OUT)")
        self.info = StreamInfo(fps or 25.0, meta["duration"], h, w, rotation, meta["codec"], self.live)

    def __enter__(self) -> VideoStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._pass is not None:
            self._pass.close()
            self._pass = None
        if self._container is not None:
            self._container.close()
            self._container = None
        while self._growing:
            self._growing.pop().close()

    def _open(self) -> Any:
        if self.follow is None:
            return open_container(self._av, self.source, timeout=self.timeout)
        self._growing.append(_Growing(Path(self.source), self.follow))  # PyAV leaves file objects open: close() does
        return open_container(self._av, self._growing[-1])

    def _open_pass(self, start: float = 0.0) -> Iterator[Any]:
        """A pass over the frames: a dict of the stream's header, then its frames from a keyframe at or before
        ``start``; a URL's in a background thread."""
        self._passes += 1
        if self.live:
            return _in_thread(lambda: self._frames_of(None, start), name=f"vivit-stream {self.source}")
        self._container = self._open()
        return self._frames_of(self._container, start)

    def _frames_of(self, container: Any, start: float) -> Iterator[Any]:
        owned = container is None
        container = self._open() if owned else container
        try:
            stream = container.streams.video[0]
            live = self.live
            duration = (container.duration / 1e6 if container.duration and not live
                        and any(f in container.format.name for f in _HEADER_DURATION_FORMATS) else None)
            yield {"time_base": stream.time_base, "fps": float(stream.average_rate or stream.guessed_rate or 0),
                   "duration": duration, "codec": stream.codec_context.name}
            if start > 0:
                self._seek(container, start)
            yield from self._decode(container)
        finally:
            if owned:
                container.close()

    def to_array(self, frame: Any, short_side: int | None = None) -> np.ndarray:
        """A decoded frame as uint8 ``(H, W, 3)``, upright, resized to ``short_side`` (default: the stream's)."""
        size = self.size if short_side is None else (int(short_side), self.size[1] if self.size else "bilinear")
        return frame_to_array(frame, self.info.rotation, size)

    def frames(self, start: float = 0.0) -> Iterator[tuple[float, Any]]:
        """``(time, PyAV frame)`` of every frame at or after ``start`` seconds, in presentation order.

        The first pass continues the decode that read the header. A later ``start`` past 0 seeks (to the keyframe
        before it) and decodes forward from there; where the file cannot seek there exactly, it decodes from the
        beginning and skips. A live source (a URL, a followed file) is read once: a second pass is refused. Convert a
        frame with :meth:`to_array` only if needed.

        Raises:
            VideoReadError: Decoding fails midway (after every frame before the failure was yielded), a file whose
                header states a duration ends well before it (truncated), or a second pass over a live source.
            TimeoutError: A URL sent nothing for ``timeout`` seconds.
        """
        seek = start > 0 and self._t0 is not None and not self.live
        frames = self._continue_first() if not seek else None
        if frames is None:
            if self.live:
                raise VideoReadError(f"{self.source}: a live source is read once, front to back; it cannot be read "
                                     "again")
            self.close()
            self._pass = self._open_pass(start if seek else 0.0)
            next(self._pass)  # the header, read once already
            frames = self._pass
        last, step = -math.inf, 1.0 / self.info.fps
        for i, frame in enumerate(frames):
            t = self._reached = self._time(frame, i)
            if seek and i == 0 and t > start:  # landed after the target: no keyframe index to trust
                _logger.debug("%s: seek to %.3f s landed at %.3f s; decoding from the start", self.source, start, t)
                yield from self.frames_from_start(start)
                return
            if last > -math.inf:
                step = t - last if t > last else step
            last = t
            if t >= start:
                yield t, frame
        self._check_end(last + step)

    def _continue_first(self) -> Iterator[Any] | None:
        """The first pass's frames, from the one the header was read with; ``None`` once it has been taken."""
        first, self._first = getattr(self, "_first", None), None
        if first is None or self._pass is None:
            return None
        rest = self._pass
        return itertools.chain([first], rest)

    def frames_from_start(self, start: float) -> Iterator[tuple[float, Any]]:
        """As :meth:`frames`, without seeking."""
        frames = self._continue_first()
        if frames is None:
            self.close()
            self._pass = self._open_pass()
            next(self._pass)
            frames = self._pass
        for i, frame in enumerate(frames):
            t = self._reached = self._time(frame, i)
            if t >= start:
                yield t, frame

    def _seek(self, container: Any, start: float) -> None:
        """Seek a freshly opened container to the keyframe before ``start``; where it cannot, it stays at the start
        and :meth:`frames` skips forward."""
        stream = container.streams.video[0]
        with contextlib.suppress(self._av.error.FFmpegError, OverflowError):
            container.seek(int((start + self._t0) / self.time_base), stream=stream, backward=True, any_frame=False)

    def _time(self, frame: Any, i: int) -> float:
        if frame.pts is None or self._t0 is None:  # no timestamps (some raw streams): count frames at the nominal rate
            return i / self.info.fps
        return float(frame.pts * self.time_base) - self._t0

    def _decode(self, container: Any) -> Iterator[Any]:
        self._reached = None  # the last frame's time, for the message of a failure midway
        try:
            yield from container.decode(container.streams.video[0])
        except self._av.error.ExitError:  # PyAV's read deadline (only URLs have one)
            where = "while opening" if self._reached is None else f"after {self._reached:.2f} s of video"
            raise TimeoutError(f"{self.source}: sent nothing for {self.timeout} s {where}; the source stalled "
                               "(VIVIT_DOWNLOAD_TIMEOUT sets the deadline)") from None
        except self._av.error.FFmpegError as err:
            where = "at the start" if self._reached is None else f"after {self._reached:.2f} s"
            raise VideoReadError(f"{self.source}: decoding stopped {where} ({_reason(err)}); the video is corrupt or "
                                 "truncated from there: re-fetch or re-encode it") from None

    def _check_end(self, end: float) -> None:
        header = self.info.duration
        if header and end < 0.9 * header - 0.1:
            raise VideoReadError(f"{self.source}: the frames end at {end:.2f} s but the header says {header:.2f} s; "
                                 "the file is truncated (e.g. an interrupted download): re-fetch or re-encode it")


MIN_FPS, MAX_FPS = 1.0, 1000.0  # frame rates a header may state; outside them it is taken as broken metadata


def _check_streamable(path: Path) -> None:
    """Refuse ``--follow`` on MP4 / MOV: their index is written last, so they cannot be read while written."""
    with open(path, "rb") as f:
        head = f.read(12)
    if head[4:8] in (b"ftyp", b"moov", b"mdat", b"wide", b"free"):
        raise VideoReadError(f"{path}: is MP4/MOV, which cannot be read while it is being written (its index comes "
                             "last); record to Matroska (.mkv) or MPEG-TS (.ts) to follow it, or leave out --follow "
                             "for a finished file")


_DONE = object()


def _in_thread(produce: Any, name: str, depth: int = 4) -> Iterator[Any]:
    """The items of ``produce()`` made in a daemon thread and handed over through a queue of ``depth``; waits in
    Python (where Ctrl-C lands), and asks the thread to stop when the consumer leaves."""
    items: queue.Queue = queue.Queue(depth)
    stop = threading.Event()

    def work() -> None:
        try:
            for item in produce():
                while not stop.is_set():
                    try:
                        items.put((item, None), timeout=0.2)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            items.put((_DONE, None))
        except BaseException as err:  # noqa: BLE001 - handed to the consumer, who raises it
            items.put((_DONE, err))

    threading.Thread(target=work, name=name, daemon=True).start()
    try:
        while True:
            try:
                item, err = items.get(timeout=0.2)
            except queue.Empty:
                continue
            if item is _DONE:
                if err is not None:
                    raise err
                return
            yield item
    finally:
        stop.set()


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
    went_back = False
    frames = stream.frames(max(0.0, first * step - tol))
    while True:
        try:
            t_next, frame = next(frames)
        except StopIteration:
            break
        except VideoReadError as err:  # the windows finished before the failure are still made
            broken = err
            break
        if pos >= 0 and t_next < t:  # timestamps going back (a broken mux, a restarted stream): count on at the rate
            if not went_back:
                _logger.warning("%s: timestamps go back at %.2f s; counting on at the frame rate from there",
                                stream.source, t)
            went_back, t_next = True, t + gap
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
