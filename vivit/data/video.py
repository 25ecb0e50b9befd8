"""Video files in, uint8 ``T x H x W x C`` frames out; the reference's frame indices; multi-view clips.

Decoding uses PyAV (``pip install av``) or, when installed, torchcodec. Both are optional and imported inside the
functions that need them, so ``import vivit`` never loads them.

**Frame indices** count frames in presentation order as a full decode yields them (frame ``i`` is the ``i``-th frame
the decoder outputs), not timestamps times a nominal rate. The reference samples from such frame sequences, and with
a variable frame rate this is the only numbering where every index is one real frame; ``VideoInfo.fps`` is then the
average rate. Frames are returned upright: a display-matrix rotation (phone videos) is applied, flips are not.

**Memory** follows the model, not the video: with ``short_side`` (what :func:`multi_view_clips` passes) every frame is
resized as soon as it is decoded, one frame at a time, so only resized frames are kept. The resize is
:func:`vivit.data.transforms.resize_short_side` itself, pixel for pixel, for frames up to ``EXACT_RESIZE_MAX_PIXELS``
(4096 x 4096; one such frame takes about 250 MB while it is resized). Larger frames (8K, 16K, hostile files) are
scaled by FFmpeg's area filter straight to the target size while converting to RGB, so no full-resolution RGB copy is
made at all; their pixels then differ from the reference's unfiltered resize (they are antialiased). The torchcodec
backend resizes every frame exactly, one frame at a time, so it holds one full-resolution frame at most.
"""

from __future__ import annotations

import bisect
import contextlib
import logging
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vivit.data.transforms import (
    INTERPOLATIONS,
    EvalTransform,
    resize_short_side,
    resolve_data_config,
)
from vivit.files import write_atomic

_logger = logging.getLogger(__name__)

BACKENDS = ("pyav", "torchcodec")
CLIP_MODES = ("uniform", "random")
MAX_CLIPS = 32  # temporal clips per video: 32x3 views of a 32x224x224 model take 1.8 GB of float32
SHORT_VIDEO = ("loop", "error")
# Encoders that refuse odd frame sizes in 4:2:0 (others, e.g. mpeg4 and libvpx-vp9, round the chroma planes up).
_EVEN_SIZE_ENCODERS = ("libx264", "libx265", "mjpeg")
# Containers whose header states a duration the muxer measured; only these are compared with the frames found.
_HEADER_DURATION_FORMATS = ("matroska", "webm", "mov", "mp4")
# Frames up to this many pixels are resized exactly as transforms.resize_short_side does (through a full-size float
# copy); larger ones are scaled by FFmpeg while converting to RGB, which needs no full-size copy.
EXACT_RESIZE_MAX_PIXELS = 4096 * 4096


class VideoReadError(ValueError):
    """A file that exists but cannot be used as a video. The message names the file, the problem and what to do."""


@dataclass(frozen=True)
class VideoInfo:
    """What a video holds, as :func:`read_video` will return it.

    Attributes:
        num_frames: Frames a full decode yields (valid indices are ``0 .. num_frames - 1``).
        fps: Frames per second (the average rate for a variable frame rate).
        duration: Seconds covered by the frames.
        height: Frame height after rotation (what ``read_video`` returns).
        width: Frame width after rotation.
        rotation: Counter-clockwise degrees applied to make frames upright (0, 90, 180 or 270).
        codec: Codec name as FFmpeg reports it.
    """

    num_frames: int
    fps: float
    duration: float
    height: int
    width: int
    rotation: int
    codec: str = ""


# ------------------------------------------------------------------------------------------------ public API
def video_info(path: str | Path, *, backend: str = "auto") -> VideoInfo:
    """Frame count, rate, duration, upright size and rotation of a video, decoding only its first frame.

    Args:
        path: A video file any FFmpeg build reads (mp4, mkv, webm, avi, mov, gif ...).
        backend: ``"pyav"``, ``"torchcodec"`` or ``"auto"`` (PyAV when installed, else torchcodec).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        VideoReadError: (a ``ValueError``) empty, not a video, audio-only, truncated, or no decodable frame.
        ImportError: Neither decoder is installed.
    """
    with _open(path, backend) as reader:
        return reader.info


def write_video(path: str | Path, frames: torch.Tensor | np.ndarray, fps: float = 10.0, codec: str = "libx264") -> Path:
    """Encode uint8 ``(T, H, W, C)`` RGB frames to a video file with PyAV (H.264 in the file's container by default).

    Frames are encoded as 4:2:0 (``yuv420p``), so ``codec`` must be a video encoder that takes it; H.264, H.265 and
    MJPEG also need even frame sizes. The file is written to a temporary name and renamed, so an interrupted or failed
    write never leaves a partial video behind.

    Raises:
        ValueError: Frames that are not uint8 ``T x H x W x 3``, a codec that is unknown, not a video encoder or cannot
            take ``yuv420p``, or odd frame sizes for a codec that needs even ones.
    """
    av = _import_av()
    frames = torch.as_tensor(np.asarray(frames))
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != torch.uint8:
        raise ValueError(f"write_video expects uint8 frames T x H x W x 3, got {tuple(frames.shape)} {frames.dtype}")
    height, width = frames.shape[1:3]
    encoder = _video_encoder(av, codec)
    if encoder in _EVEN_SIZE_ENCODERS and (height % 2 or width % 2):
        raise ValueError(f"codec {codec!r} ({encoder}, 4:2:0) needs even frame sizes, got {height} x {width}; pad or "
                         "resize first")
    def encode(tmp: Path) -> None:
        with av.open(str(tmp), mode="w") as container:  # the container format follows the (kept) suffix
            stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1000))
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            for frame in frames.numpy():
                container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
            container.mux(stream.encode())

    return write_atomic(path, encode, keep_suffix=True)


def read_video(path: str | Path, indices: Sequence[int] | torch.Tensor | None = None, *, backend: str = "auto",
               short_side: int | None = None, interpolation: str = "bilinear") -> torch.Tensor:
    """Decode frames of a video as an upright uint8 tensor.

    With ``indices`` only those frames are decoded: the reader seeks to the keyframe before the first wanted frame
    (and again whenever a later keyframe lies before the next wanted one), so a clip near the end of a long video
    does not decode the whole file.

    Args:
        path: A video file.
        indices: Frame indices in presentation order (see the module docstring), any order, repeats allowed (a
            looped clip); ``None`` decodes every frame.
        backend: ``"pyav"``, ``"torchcodec"`` or ``"auto"``.
        short_side: Resize every frame while decoding so that its short side is this size, as
            :func:`vivit.data.transforms.resize_short_side` does (see the module docstring for frames beyond
            ``EXACT_RESIZE_MAX_PIXELS``); memory then holds resized frames only. ``None`` keeps the full size.
        interpolation: Resize filter for ``short_side``: ``"bilinear"``, ``"bicubic"`` or ``"nearest"``.

    Returns:
        ``(T, H, W, 3)`` uint8 RGB, ``T = len(indices)``, frames in the order of ``indices``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        VideoReadError: (a ``ValueError``) a bad file, or an index outside ``0 .. num_frames - 1``.
        ValueError: ``indices`` that are not integers (floats, bools) or are empty; a bad ``short_side`` or
            ``interpolation``.
        ImportError: Neither decoder is installed.
    """
    wanted = None if indices is None else _as_index_list(indices)  # a bad argument is refused before decoding
    size = None if short_side is None else _check_resize(short_side, interpolation)
    with _open(path, backend) as reader:
        return reader.read(wanted, size)


def clip_indices(num_frames: int, clip_len: int = 32, stride: int = 2, num_clips: int = 1, mode: str = "uniform", *,
                 short_video: str = "loop", generator: torch.Generator | None = None) -> torch.Tensor:
    """Frame indices of the reference's clips (dmvr ``sample_sequence`` / ``sample_linspace_sequence``).

    Each clip takes ``clip_len`` frames ``stride`` apart from an offset: ``"uniform"`` (test time) takes one centre
    clip, or ``num_clips`` clips whose offsets are evenly spaced over the video; ``"random"`` (training) draws one
    offset per clip. A video shorter than a clip's span is looped (``index % num_frames``), as the reference does.

    Args:
        num_frames: Frames in the video (``VideoInfo.num_frames``).
        clip_len: Frames per clip (the model's ``num_frames``; 32 for the released weights).
        stride: Temporal stride (2 for Kinetics, 1 for Epic Kitchens and SSv2).
        num_clips: Clips to return (4 for the paper's 4x3 views).
        mode: ``"uniform"`` or ``"random"``.
        short_video: ``"loop"`` (the reference) or ``"error"`` to refuse videos shorter than ``clip_len * stride``.
        generator: Random generator for ``"random"``.

    Returns:
        ``(num_clips, clip_len)`` int64 indices.

    Raises:
        ValueError: ``num_frames < 1``, a bad argument, or a short video with ``short_video="error"``.
    """
    _check_clip_args(clip_len, stride, num_clips, mode, short_video)
    if num_frames < 1:
        raise ValueError(f"a video with {num_frames} frames has no clip to sample; expected at least 1 frame")
    span = clip_len * stride
    if num_frames < span and short_video == "error":
        raise ValueError(f"the video has {num_frames} frames, shorter than one clip ({clip_len} frames at stride "
                         f"{stride} span {span}); pass short_video='loop' to loop it as the reference does")
    if mode == "random":
        # dmvr processors._get_random_sampling_offset: offset ~ U[0, max(n - (clip_len - 1) * stride, 1))
        high = max(num_frames - (clip_len - 1) * stride, 1)
        offsets = torch.randint(0, high, (num_clips,), generator=generator)
    elif num_clips == 1:
        # dmvr processors.sample_sequence(random=False): offset = max(0, (n - num_steps * stride) // 2)
        offsets = torch.tensor([max(0, (num_frames - span) // 2)])
    else:
        # dmvr processors.sample_linspace_sequence: max_offset = max(0, n - num_steps * stride);
        # offsets = tf.cast(tf.linspace(0., float(max_offset), num_windows), tf.int32). tf.linspace works in float32
        # as start + i * ((stop - start) / (num - 1)) with the last value exactly stop; the cast truncates.
        max_offset = max(0, num_frames - span)
        delta = torch.tensor(float(max_offset), dtype=torch.float32) / (num_clips - 1)
        offsets = (torch.arange(num_clips, dtype=torch.float32) * delta).to(torch.int64)
        offsets[-1] = max_offset
    # dmvr processors.sample_or_pad_sequence_indices(repeat_sequence=True) tiles the sequence: index % n.
    steps = torch.arange(clip_len, dtype=torch.int64) * stride
    return (offsets.to(torch.int64)[:, None] + steps[None]) % num_frames


def parse_views(views: str | int | Sequence[int]) -> tuple[int, int]:
    """``"4x3"``, ``(4, 3)`` or ``4`` -> ``(temporal clips, spatial crops)``; crops must be 1 or 3."""
    if isinstance(views, str):
        parts = views.lower().replace("×", "x").split("x")
        try:
            values = tuple(int(p) for p in parts)
        except ValueError:
            values = ()
    elif isinstance(views, int):
        values = (views, 1)
    else:
        values = tuple(int(v) for v in views)
    if len(values) == 1:
        values = (values[0], 1)
    if len(values) != 2 or values[0] < 1 or values[1] not in (1, 3):
        raise ValueError(f"views must be 'CLIPSxCROPS' with CLIPS >= 1 and CROPS 1 or 3 (e.g. '4x3', (4, 3)), "
                         f"found {views!r}")
    if values[0] > MAX_CLIPS:  # refused before any clip is decoded: every view of a video is held at once
        raise ValueError(f"views {values[0]}x{values[1]} asks for {values[0]} clips per video, more than the "
                         f"{MAX_CLIPS} this allows (the paper uses 4; each view of one video is held in memory at "
                         "once); pass fewer clips, e.g. '4x3'")
    return values[0], values[1]


def multi_view_clips(path: str | Path, model_or_cfg: Any, views: str | int | Sequence[int] = (4, 3), *,
                     backend: str = "auto", short_video: str = "loop") -> torch.Tensor:
    """Decode and preprocess the reference's test views of one video (SPEC 4.2).

    Temporal clips come from :func:`clip_indices` (``mode="uniform"``) with the clip length and stride of the model's
    pretrained cfg; each clip is decoded with seeking, resized on its short side and cut into 1 centre crop or 3
    crops along the long side by :func:`vivit.data.transforms.eval_transform`, so weights and preprocessing match. The
    resize happens while decoding, one frame at a time (``read_video(short_side=...)``), so memory is bounded by the
    model's input, not the video's resolution; the transform then finds frames already at its size.

    Args:
        path: A video file.
        model_or_cfg: A ViViT model, its ``pretrained_cfg`` dict, a ``PretrainedCfg`` or a registered name.
        views: ``(clips, crops)`` or ``"4x3"``; 4x3 for Kinetics, 4x1 for Epic Kitchens.
        backend: Decoder, as in :func:`read_video`.
        short_video: ``"loop"`` (reference) or ``"error"``, as in :func:`clip_indices`.

    Returns:
        ``(clips * crops, C, T, H, W)`` float; view ``v`` is clip ``v // crops``, crop ``v % crops`` (the reference
        stacks crop-major; the order does not matter to the averaged logits).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        VideoReadError: A bad file, a single-frame file (a still image), or a short video with
            ``short_video="error"``.
        ValueError: A bad ``views``, ``short_video`` or cfg (e.g. ``frame_stride < 1``), before the file is opened.
    """
    return ViewSampler.for_model(model_or_cfg, views, short_video=short_video)(path, backend=backend)


@dataclass(frozen=True)
class ViewSampler:
    """The reference's test views of any video, for one model: built once (per dataset), applied per video.

    Holds the clip length and stride of the model's cfg and its :class:`vivit.data.transforms.EvalTransform`, so
    nothing is resolved per video, and each video is opened and decoded once. Picklable (DataLoader workers).

    Attributes:
        clip_len: Frames per clip (the model's ``num_frames``).
        stride: The cfg's ``frame_stride``.
        num_clips: Temporal clips per video.
        transform: Resize, crops and scaling of every clip.
        short_video: ``"loop"`` (reference) or ``"error"``, as in :func:`clip_indices`.
    """

    clip_len: int
    stride: int
    num_clips: int
    transform: EvalTransform
    short_video: str = "loop"

    @classmethod
    def for_model(cls, model_or_cfg: Any, views: str | int | Sequence[int] = (4, 3), *,
                  short_video: str = "loop") -> ViewSampler:
        """The sampler of :func:`multi_view_clips`; bad arguments are refused here, before any file is opened."""
        num_clips, num_crops = parse_views(views)
        cfg = resolve_data_config(model_or_cfg)
        clip_len, stride = cfg["input_size"][1], cfg["frame_stride"]
        _check_clip_args(clip_len, stride, num_clips, "uniform", short_video, stride_name="the cfg's frame_stride")
        return cls(clip_len, stride, num_clips, EvalTransform.from_cfg(cfg, num_crops), short_video)

    def __call__(self, path: str | Path, *, backend: str = "auto") -> torch.Tensor:
        """``(clips * crops, C, T, H, W)`` float views of the video at ``path`` (see :func:`multi_view_clips`)."""
        transform = self.transform
        with _open(path, backend) as reader:
            n = reader.info.num_frames
            if n < 2:
                raise VideoReadError(f"{reader.path}: has a single frame (a still image, e.g. a one-frame GIF); a "
                                     "video model needs motion, so pass a video with at least 2 frames")
            try:
                indices = clip_indices(n, self.clip_len, self.stride, self.num_clips, "uniform",
                                       short_video=self.short_video)
            except ValueError as err:  # the arguments are checked in for_model: only a too-short video is left
                raise VideoReadError(f"{reader.path}: {err}") from None
            if n < self.clip_len * self.stride:
                _logger.info("%s: %d frames is shorter than a clip (%d at stride %d); looping it as the reference "
                             "does", reader.path, n, self.clip_len, self.stride)
            # Frames are resized as they are decoded and clips transformed one at a time: memory holds resized
            # frames only.
            size = (transform.resize_size, transform.interpolation)
            views_ = [transform(reader.read(clip.tolist(), size)) for clip in indices]
        stacked = torch.stack(views_)
        return stacked.flatten(0, 1) if transform.num_crops > 1 else stacked


def read_clip(path: str | Path, clip_len: int, stride: int, *, mode: str = "random",
              generator: torch.Generator | None = None, backend: str = "auto") -> torch.Tensor:
    """One clip of :func:`clip_indices` (``num_clips=1``), the file opened once: uint8 ``(clip_len, H, W, 3)``.

    Raises:
        FileNotFoundError, VideoReadError, ValueError: As :func:`read_video` and :func:`clip_indices`.
    """
    _check_clip_args(clip_len, stride, 1, mode, "loop")
    with _open(path, backend) as reader:
        indices = clip_indices(reader.info.num_frames, clip_len, stride, 1, mode, generator=generator)[0]
        return reader.read(indices.tolist())


# ------------------------------------------------------------------------------------------------ helpers
def _check_clip_args(clip_len: int, stride: int, num_clips: int, mode: str, short_video: str, *,
                     stride_name: str = "stride") -> None:
    """Refuse what :func:`clip_indices` would refuse whatever the video's length."""
    if mode not in CLIP_MODES:
        raise ValueError(f"mode must be one of {CLIP_MODES}, found {mode!r}")
    if short_video not in SHORT_VIDEO:
        raise ValueError(f"short_video must be one of {SHORT_VIDEO}, found {short_video!r}")
    for name, value in (("clip_len", clip_len), (stride_name, stride), ("num_clips", num_clips)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, found {value!r}")


def _check_resize(short_side: int, interpolation: str) -> tuple[int, str]:
    if isinstance(short_side, bool) or not isinstance(short_side, int | np.integer) or short_side < 1:
        raise ValueError(f"short_side must be a positive integer (pixels), found {short_side!r}")
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, found {interpolation!r}")
    return int(short_side), interpolation


def _resize_frame(frame: np.ndarray | torch.Tensor, size: tuple[int, str] | None) -> np.ndarray:
    """One upright ``(H, W, C)`` uint8 frame, resized on its short side when ``size = (short_side, interpolation)``.

    It goes through ``resize_short_side`` as a ``(1, C, H, W)`` view, the layout ``EvalTransform`` hands it, so the
    pixels equal those of resizing the whole clip at once.
    """
    if size is None:
        return np.asarray(frame)
    chw = torch.as_tensor(frame).permute(2, 0, 1)[None]
    return resize_short_side(chw, size[0], size[1])[0].permute(1, 2, 0).numpy()


def _as_index_list(indices: Sequence[int] | torch.Tensor) -> list[int]:
    if isinstance(indices, torch.Tensor):
        if indices.dtype.is_floating_point or indices.dtype.is_complex or indices.dtype == torch.bool:
            raise ValueError(f"indices must be integers, found a {indices.dtype} tensor")
        return [int(i) for i in indices.reshape(-1).tolist()]
    array = np.asarray(indices)
    # int() would truncate 2.7 to 2 and read True as 1: a float or bool index is a caller's mistake, not a frame.
    # An empty list is float64 to numpy; _check_indices refuses it with its own message.
    if array.size and array.dtype.kind not in "iu":
        raise ValueError(f"indices must be integers, found {array.dtype} values such as {array.reshape(-1)[0]!r}")
    return [int(i) for i in array.reshape(-1).tolist()]


def _video_encoder(av: Any, codec: str) -> str:
    """FFmpeg's name of the encoder ``codec`` selects ("h264" -> "libx264"); refuse one that cannot write yuv420p."""
    try:
        encoder = av.codec.Codec(codec, "w")
    except ValueError:  # PyAV's UnknownCodecError
        raise ValueError(f"codec {codec!r} is not an encoder this FFmpeg build has; use e.g. 'libx264' (mp4), "
                         "'libvpx-vp9' (webm) or 'mpeg4' (avi)") from None
    if encoder.type != "video":
        raise ValueError(f"codec {codec!r} encodes {encoder.type}, not video; write_video needs a video encoder such "
                         "as 'libx264'")
    formats = {f.name for f in encoder.video_formats or ()}
    if formats and "yuv420p" not in formats:
        raise ValueError(f"codec {codec!r} cannot encode yuv420p (4:2:0), which write_video writes (it takes "
                         f"{', '.join(sorted(formats))}); use e.g. 'libx264', 'libvpx-vp9' or 'mpeg4'")
    return str(encoder.name)


def _check_indices(path: Path, indices: list[int], num_frames: int) -> None:
    if not indices:
        raise ValueError(f"{path}: indices is empty; pass at least one frame index or None for all frames")
    bad = [i for i in indices if not 0 <= i < num_frames]
    if bad:
        raise VideoReadError(f"{path}: frame index {bad[0]} is out of range; the video has {num_frames} "
                             f"frames (0 .. {num_frames - 1})")


def _check_file(path: str | Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file; expected a path to a video")
    if path.is_dir():
        raise VideoReadError(f"{path}: is a folder; expected a video file")
    if not path.is_file():  # FFmpeg would block on a FIFO with no writer, or read a device forever
        raise VideoReadError(f"{path}: is not a regular file (a pipe, socket or device); save the video to a file and "
                             "pass that")
    if path.stat().st_size == 0:
        raise VideoReadError(f"{path}: is empty (0 bytes), e.g. a failed download or copy; re-fetch the video")
    return path


def _import_av() -> Any:
    try:
        import av
    except ImportError as err:
        raise ImportError('decoding video needs PyAV: pip install av (or pip install "vivit[video]")') from err
    return av


def _import_torchcodec() -> Any:
    try:
        from torchcodec.decoders import VideoDecoder
    except (ImportError, OSError, RuntimeError) as err:  # OSError/RuntimeError: torchcodec without FFmpeg libraries
        raise ImportError(f"the torchcodec backend could not be loaded ({err}); install torchcodec and FFmpeg's "
                          'shared libraries, or use PyAV: pip install av (or pip install "vivit[video]")') from err
    return VideoDecoder


def _open(path: str | Path, backend: str) -> _PyAVReader | _TorchCodecReader:
    if backend not in ("auto", *BACKENDS):
        raise ValueError(f"backend must be 'auto' or one of {BACKENDS}, found {backend!r}")
    path = _check_file(path)
    if backend == "auto":
        try:
            _import_av()
            backend = "pyav"
        except ImportError:
            try:
                _import_torchcodec()
                backend = "torchcodec"
            except ImportError:
                raise ImportError('decoding video needs PyAV: pip install av (or pip install "vivit[video]"); '
                                  "torchcodec also works when installed") from None
    return _PyAVReader(path) if backend == "pyav" else _TorchCodecReader(path)


def _rotate(frame: np.ndarray, rotation: int) -> np.ndarray:
    """Rotate an ``(H, W, C)`` frame counter-clockwise by a multiple of 90 degrees (display-matrix convention)."""
    k = (rotation // 90) % 4
    return np.ascontiguousarray(np.rot90(frame, k, axes=(0, 1))) if k else frame


def _normalise_rotation(path: Path, degrees: float | None) -> int:
    if not degrees:
        return 0
    rounded = int(round(degrees / 90.0)) * 90 % 360
    if abs(((degrees - rounded) + 180) % 360 - 180) > 1:
        _logger.warning("%s: rotation %.1f degrees is not a multiple of 90; using %d", path, degrees, rounded)
    return rounded


def open_container(av: Any, source: Path | str | Any, timeout: float | None = None) -> Any:
    """Open ``source`` (a file, a URL FFmpeg reads, or a readable binary file object) with PyAV, its first video
    stream set up for decoding; ``timeout``: seconds opening, and each later read, may wait for data (a URL).

    Raises:
        VideoReadError: FFmpeg cannot read it, or it has no video stream.
        TimeoutError: Nothing came within ``timeout`` seconds.
    """
    if hasattr(source, "read"):
        source, name = source, getattr(source, "name", "the stream")
    else:
        source = name = str(source)
    try:
        container = av.open(source, timeout=timeout)
    except av.error.ExitError:  # PyAV's deadline cut the wait
        raise TimeoutError(f"{name}: sent nothing for {timeout} s while opening; check the address and that the "
                           "source is up (VIVIT_DOWNLOAD_TIMEOUT sets the deadline)") from None
    except av.error.FFmpegError as err:
        raise VideoReadError(
            f"{name}: FFmpeg cannot read it as a video ({_reason(err)}); it is not a video, or it is "
            "truncated or corrupt (e.g. an interrupted download): re-fetch or re-encode it") from None
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams})
        container.close()
        found = f"found {', '.join(kinds)} streams, e.g. an audio-only file" if kinds else "the container is empty"
        raise VideoReadError(f"{name}: has no video stream ({found}); pass a file with video")
    stream = container.streams.video[0]
    # Frame threading keeps one decoded frame per thread; for huge frames, slice threading keeps only one.
    large = (stream.codec_context.width or 0) * (stream.codec_context.height or 0) > EXACT_RESIZE_MAX_PIXELS
    stream.thread_type = "SLICE" if large else "AUTO"
    return container


def _rgb(frame: Any, **kwargs: Any) -> np.ndarray:
    """``frame.to_ndarray`` on one thread. PyAV 18.1.1 converts with FFmpeg's swscale on a pool of every CPU by default
    (``threads=0``): a DataLoader worker forked from a process that had converted a frame then waits forever in its
    first conversion (the test suite hung there). Decoding already runs one worker per core."""
    try:
        return frame.to_ndarray(format="rgb24", threads=1, **kwargs)
    except TypeError:  # a PyAV whose reformat has no threads= converts on one thread anyway
        return frame.to_ndarray(format="rgb24", **kwargs)


def frame_to_array(frame: Any, rotation: int, size: tuple[int, str] | None) -> np.ndarray:
    """A decoded PyAV frame as an upright uint8 ``(H, W, 3)`` RGB array, resized on its short side when ``size =
    (short_side, interpolation)`` (see the module docstring for frames beyond ``EXACT_RESIZE_MAX_PIXELS``)."""
    if size is not None and frame.width * frame.height > EXACT_RESIZE_MAX_PIXELS:
        from vivit.data.transforms import short_side_size

        # FFmpeg scales while converting to RGB: no full-resolution RGB or float copy of a huge frame is made.
        height, width = short_side_size(frame.height, frame.width, size[0])  # symmetric: rotation-safe
        small = _rgb(frame, width=width, height=height, interpolation="AREA")
        return _rotate(small, rotation)
    return _resize_frame(_rotate(_rgb(frame), rotation), size)


class _Fallback(Exception):
    """Seeking did not land where the frame table said; decode from the start instead."""


class _PyAVReader:
    """One open video: a demux-only scan builds the frame table, then frames are decoded on demand with seeks."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._av = _import_av()
        self._container: Any = None
        self._frames: Iterator[Any] | None = None
        self._pos = -1
        self._last: dict[int, np.ndarray] = {}
        self._last_size: tuple[int, str] | None = None
        self._size: tuple[int, str] | None = None  # (short side, interpolation) frames are resized to while decoding
        container = self._open_container()
        try:
            self._scan(container)
        finally:
            container.close()
        self.info = self._make_info()

    def __enter__(self) -> _PyAVReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self._close()

    def _close(self) -> None:
        """Drop the open frame generator and close the decoding container (the next decode opens a fresh one)."""
        self._drop_frames()
        if self._container is not None:
            self._container.close()
            self._container = None

    def _drop_frames(self) -> None:
        # The open frame generator refers back to this reader (a reference cycle). Closing it here frees its frames
        # and their FFmpeg thread pools now: left to the cyclic GC, they could be freed in a forked DataLoader worker,
        # which has none of those threads and hangs joining them. And a Ctrl-C that lands while a generator is
        # finalised implicitly is lost (the interpreter can only report it as "ignored"), so the program would go on.
        if self._frames is not None:
            self._frames.close()  # type: ignore[attr-defined]
        self._frames, self._pos = None, -1

    # ---------------------------------------------------------------- opening and scanning
    def _open_container(self) -> Any:
        return open_container(self._av, self.path)

    def _scan(self, container: Any) -> None:
        """Demux (no decoding) to list every frame's timestamp, in presentation order, and the keyframes."""
        stream = container.streams.video[0]
        self.codec = stream.codec_context.name
        self.time_base = stream.time_base
        self._header_frames = stream.frames
        self._header_duration = (container.duration / 1e6 if container.duration and len(container.streams) == 1
                                 and any(f in container.format.name for f in _HEADER_DURATION_FORMATS) else None)
        self._nominal_rate = float(stream.average_rate or stream.guessed_rate or 0)
        pts: list[int | None] = []
        keys: list[int] = []
        durations: list[int] = []
        try:
            for packet in container.demux(stream):
                if packet.size == 0 or getattr(packet, "is_discard", False):  # flush packets; edit-list cuts
                    continue
                pts.append(packet.pts)
                durations.append(packet.duration or 0)
                if packet.is_keyframe and packet.pts is not None:
                    keys.append(packet.pts)
        except self._av.error.FFmpegError as err:
            raise VideoReadError(f"{self.path}: is corrupt ({_reason(err)}); re-fetch or re-encode it") from None
        self.num_frames = len(pts)
        if not pts:
            raise VideoReadError(f"{self.path}: has a video stream but no frames; pass a video with frames")
        known = [p for p in pts if p is not None]
        # The span the frames cover, from their timestamps even when two share one (Matroska rounds to 1 ms).
        self._times = sorted(known) if len(known) == len(pts) else None
        self._last_duration = durations[pts.index(self._times[-1])] if self._times else 0
        if self._times is not None and len(set(known)) == len(known):
            self._pts: list[int] | None = self._times
            self._index = {p: i for i, p in enumerate(self._pts)}
            self._keys = sorted(self._index[k] for k in keys)
        else:  # no usable timestamps (some AVI/raw streams), or repeated ones: find frames by decoding from the start
            self._pts, self._index, self._keys = None, {}, []
        if self._header_frames and self.num_frames < self._header_frames:
            raise VideoReadError(f"{self.path}: is truncated: the header lists {self._header_frames} frames but only "
                                 f"{self.num_frames} are present; re-fetch or re-encode it")

    def _make_info(self) -> VideoInfo:
        fps = self._nominal_rate
        duration = self.num_frames / fps if fps else 0.0
        if self._times is not None and len(self._times) > 1 and self._times[-1] > self._times[0]:
            span = float((self._times[-1] - self._times[0]) * self.time_base)
            last = float(self._last_duration * self.time_base) if self._last_duration else span / (len(self._times) - 1)
            duration = span + last
            fps = self.num_frames / duration  # exact for a constant rate, the average for a variable one
        if self._header_duration and duration < 0.9 * self._header_duration - 0.1:
            raise VideoReadError(f"{self.path}: is truncated: the header says {self._header_duration:.2f} s but the "
                                 f"frames end at {duration:.2f} s ({self.num_frames} frames); re-fetch or re-encode it")
        with contextlib.closing(self._frames_from_start()) as frames:
            first = next(frames, None)
        if first is None:
            raise VideoReadError(f"{self.path}: no frame could be decoded (corrupt or truncated); re-fetch or "
                                 "re-encode it")
        degrees = getattr(first, "rotation", None)
        if degrees is None:  # PyAV < 13: FFmpeg's old "rotate" tag, which counts clockwise
            degrees = -float(self._decoder().streams.video[0].metadata.get("rotate", 0))
        rotation = _normalise_rotation(self.path, degrees)
        self.rotation = rotation
        h, w = (first.width, first.height) if rotation % 180 else (first.height, first.width)
        return VideoInfo(self.num_frames, float(fps), duration, h, w, rotation, self.codec)

    # ---------------------------------------------------------------- decoding
    def _decoder(self) -> Any:
        if self._container is None:
            self._container = self._open_container()
        return self._container

    def _frames_from_start(self) -> Iterator[Any]:
        # A fresh container rather than a seek to 0, which some formats (GIF, raw streams) refuse.
        self._close()
        container = self._decoder()
        return self._decode(container, container.streams.video[0])

    def _decode(self, container: Any, stream: Any) -> Iterator[Any]:
        try:
            yield from container.decode(stream)
        except self._av.error.FFmpegError as err:
            raise VideoReadError(f"{self.path}: decoding failed ({_reason(err, self.path)}); the file is corrupt or "
                                 "truncated: re-fetch or re-encode it") from None

    def read(self, indices: list[int] | None, size: tuple[int, str] | None = None) -> torch.Tensor:
        self._size = size
        if indices is None:
            frames = [self._to_array(f) for f in self._frames_from_start()]
            if not frames:
                raise VideoReadError(f"{self.path}: no frame could be decoded; re-fetch or re-encode it")
            return torch.from_numpy(np.stack(frames))
        _check_indices(self.path, indices, self.num_frames)
        # The previous call's frames are kept: consecutive multi-view clips share their boundary frame.
        last = self._last if size == self._last_size else {}
        got = {i: last[i] for i in set(indices) if i in last}
        wanted = sorted(set(indices) - set(got))
        if wanted:
            try:
                got |= self._read_seeking(wanted) if self._pts is not None else self._read_sequential(wanted)
            except _Fallback:
                _logger.debug("%s: seeking missed its target; decoding from the start", self.path)
                got |= self._read_sequential(wanted)
        self._last, self._last_size = got, size
        return torch.from_numpy(np.stack([got[i] for i in indices]))

    def _read_seeking(self, wanted: list[int]) -> dict[int, np.ndarray]:
        assert self._pts is not None
        container = self._decoder()
        stream = container.streams.video[0]
        got: dict[int, np.ndarray] = {}
        # Kept between calls, so the clips of multi_view_clips share one pass when no keyframe lies between them.
        frames, pos = self._frames, self._pos  # pos: presentation index of the last frame taken from `frames`
        self._frames, self._pos = None, -1
        for target in wanted:
            k = bisect.bisect_right(self._keys, pos)
            next_key = self._keys[k] if k < len(self._keys) else None
            if frames is None or pos >= target or (next_key is not None and next_key <= target):
                # a keyframe after `pos` but not after `target`: jumping there skips decoding the frames between
                try:
                    container.seek(self._pts[target], stream=stream, backward=True, any_frame=False)
                except self._av.error.FFmpegError as err:
                    raise _Fallback from err
                if frames is not None:
                    frames.close()  # type: ignore[attr-defined]
                frames, pos = self._decode(container, stream), -1
            for frame in frames:
                index = self._index.get(frame.pts) if frame.pts is not None else None
                if index is None or (pos == -1 and index > target):
                    raise _Fallback  # unknown timestamp, or the seek landed after the target
                pos = index
                if index == target:
                    got[target] = self._to_array(frame)
                    break
                if index > target:
                    raise _Fallback
            else:
                self._missing(target)
        self._frames, self._pos = frames, pos
        return got

    def _read_sequential(self, wanted: list[int]) -> dict[int, np.ndarray]:
        got: dict[int, np.ndarray] = {}
        remaining = set(wanted)
        with contextlib.closing(self._frames_from_start()) as frames:
            for i, frame in enumerate(frames):
                if i in remaining:
                    got[i] = self._to_array(frame)
                    remaining.discard(i)
                    if not remaining:
                        return got
        self._missing(min(remaining))
        return got

    def _missing(self, index: int) -> None:
        raise VideoReadError(f"{self.path}: frame {index} of {self.num_frames} could not be decoded; the file is "
                             "truncated or corrupt: re-fetch or re-encode it")

    def _to_array(self, frame: Any) -> np.ndarray:
        """An upright RGB frame, resized while decoding when ``read`` was given a size."""
        return frame_to_array(frame, self.rotation, self._size)


class _TorchCodecReader:
    """torchcodec's exact-seek decoder (it scans the file once, then decodes only the frames asked for)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        decoder_cls = _import_torchcodec()
        try:
            self._decoder = decoder_cls(str(path), seek_mode="exact", dimension_order="NHWC", num_ffmpeg_threads=0)
        except (RuntimeError, ValueError) as err:
            raise VideoReadError(
                f"{path}: FFmpeg (via torchcodec) finds no decodable video stream ({_reason(err, path)}); it is not a "
                "video, is audio-only, or is truncated or corrupt: re-fetch or re-encode it") from None
        md = self._decoder.metadata
        self.num_frames = int(md.num_frames or 0)
        if self.num_frames < 1:
            raise VideoReadError(f"{path}: has a video stream but no frames; pass a video with frames")
        # Only the stream header is visible here (not a Matroska segment duration), so fewer truncations are caught.
        header = md.num_frames_from_header
        if header and md.num_frames_from_content and md.num_frames_from_content < header:
            raise VideoReadError(f"{path}: is truncated: the header lists {header} frames but only "
                                 f"{md.num_frames_from_content} are present; re-fetch or re-encode it")
        self.rotation = _normalise_rotation(path, getattr(md, "rotation", None))
        first = self._get([0])  # torchcodec returns frames already rotated upright
        fps = float(md.average_fps or 0.0)
        duration = float(md.duration_seconds or (self.num_frames / fps if fps else 0.0))
        self.info = VideoInfo(self.num_frames, fps, duration, first.shape[1], first.shape[2], self.rotation,
                              str(md.codec or ""))

    def __enter__(self) -> _TorchCodecReader:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def _get(self, indices: list[int]) -> torch.Tensor:
        try:
            return self._decoder.get_frames_at(indices).data
        except (RuntimeError, ValueError, IndexError) as err:
            raise VideoReadError(f"{self.path}: decoding failed ({_reason(err, self.path)}); the file is corrupt or "
                                 "truncated: re-fetch or re-encode it") from None

    def read(self, indices: list[int] | None, size: tuple[int, str] | None = None) -> torch.Tensor:
        if indices is None:
            indices = list(range(self.num_frames))
        _check_indices(self.path, indices, self.num_frames)
        wanted = sorted(set(indices))
        if size is None:
            frames = self._get(wanted)
        else:  # one frame at a time, resized at once, so only resized frames are kept
            frames = torch.stack([torch.from_numpy(_resize_frame(self._get([i])[0], size)) for i in wanted])
        position = {i: k for k, i in enumerate(wanted)}
        return frames[[position[i] for i in indices]].contiguous()


def _reason(err: BaseException, path: Path | None = None) -> str:
    """The decoder's message on one line, without the file name or torchcodec's source location."""
    text = str(getattr(err, "strerror", None) or err).strip().splitlines()[0]
    text = re.sub(r"^\w+, \S+:\d+, ", "", text.split(": '")[0])
    if path is not None:
        text = text.replace(f": {path}", "").replace(str(path), "the file")
    return text.strip() or type(err).__name__


__all__ = ["BACKENDS", "EXACT_RESIZE_MAX_PIXELS", "MAX_CLIPS", "VideoInfo", "VideoReadError", "ViewSampler",
           "clip_indices", "multi_view_clips", "parse_views", "read_clip", "read_video", "video_info", "write_video"]
