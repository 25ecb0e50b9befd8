"""Small real video files written with PyAV, for the decoding tests.

Every frame carries its own index as a row of black/white blocks (bit 0 on the left) in the middle band, and a white
marker in the top-left corner, so a test can tell which frame it got and whether it is upright, through lossy codecs.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np

NUM_BITS = 7  # frame indices up to 127

# name -> (container suffix, codec, pix_fmt, encoder options); what FFmpeg builds usually have
CODECS: dict[str, tuple[str, str, str, dict[str, str]]] = {
    "h264_mp4": (".mp4", "libx264", "yuv420p", {"g": "8", "preset": "ultrafast"}),
    "mpeg4_avi": (".avi", "mpeg4", "yuv420p", {"g": "8", "qscale": "2"}),
    "vp9_webm": (".webm", "libvpx-vp9", "yuv420p", {"g": "8", "deadline": "realtime", "cpu-used": "8", "crf": "20"}),
    "mjpeg_mkv": (".mkv", "mjpeg", "yuvj444p", {"q": "2"}),
    "gif": (".gif", "gif", "rgb8", {}),
}


def frame_pattern(index: int, height: int, width: int) -> np.ndarray:
    """The uint8 ``(height, width, 3)`` picture of frame ``index``: corner marker plus index bits."""
    img = np.full((height, width, 3), 40, np.uint8)
    img[: max(height // 4, 1), : max(width // 4, 1)] = 255  # upright marker: top-left
    band = slice(height // 3, max(2 * height // 3, height // 3 + 1))
    edges = np.linspace(0, width, NUM_BITS + 1).round().astype(int)
    for bit in range(NUM_BITS):
        img[band, edges[bit] : edges[bit + 1]] = 255 if (index >> bit) & 1 else 0
    return img


def frame_ids(video: np.ndarray) -> list[int]:
    """Reads back the index written by ``frame_pattern`` from each frame of a ``(T, H, W, C)`` uint8 video."""
    video = np.asarray(video)
    t, h, w, _ = video.shape
    band = video[:, h // 3 : max(2 * h // 3, h // 3 + 1)].astype(float).mean(axis=(1, 3))  # (T, W)
    edges = np.linspace(0, w, NUM_BITS + 1).round().astype(int)
    ids = []
    for row in band:
        bits = [row[edges[b] : edges[b + 1]][1:-1].mean() > 128 if edges[b + 1] - edges[b] > 2
                else row[edges[b] : edges[b + 1]].mean() > 128 for b in range(NUM_BITS)]
        ids.append(sum(1 << b for b, on in enumerate(bits) if on))
    return ids


def write_video(path: Path, num_frames: int = 24, height: int = 48, width: int = 64, codec: str = "h264_mp4",
                fps: int = 25, rotation: int = 0, pts: list[int] | None = None,
                time_base: Fraction | None = None) -> Path:
    """Encodes ``num_frames`` pattern frames with one of ``CODECS``.

    Args:
        path: Output file; its suffix should match the codec's container.
        num_frames: Frames to write.
        height: Frame height (odd sizes need a 4:4:4 or RGB codec).
        width: Frame width.
        codec: A key of ``CODECS``.
        fps: Nominal frame rate.
        rotation: Display-matrix rotation in degrees counter-clockwise (what players apply to show it upright).
        pts: Explicit presentation timestamps in ``time_base`` units, for a variable frame rate.
        time_base: Time base of ``pts`` (default ``1/fps``).
    """
    import av

    _, codec_name, pix_fmt, options = CODECS[codec]
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec_name, rate=fps, options=dict(options))
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        if time_base is not None:
            stream.codec_context.time_base = time_base
            stream.time_base = time_base
        if rotation:
            stream.set_display_rotation(rotation)
        for i in range(num_frames):
            frame = av.VideoFrame.from_ndarray(frame_pattern(i, height, width), format="rgb24")
            if pts is not None:
                frame.pts, frame.time_base = pts[i], time_base
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_audio_only(path: Path, seconds: float = 0.5, rate: int = 16000) -> Path:
    """A WAV file with a sine tone and no video stream."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=rate)
        stream.layout = "mono"
        samples = (np.sin(np.arange(int(seconds * rate)) / rate * 2 * np.pi * 440) * 8000).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(samples[None], format="s16", layout="mono")
        frame.sample_rate = rate
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_truncated(path: Path, source: Path, keep: float = 0.5) -> Path:
    """Copies the first ``keep`` fraction of ``source``'s bytes, as an interrupted download would."""
    data = source.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path
