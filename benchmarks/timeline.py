"""Real-time factor of ``vivit.timeline`` (processing seconds / video seconds; below 1 keeps up with the video).

A generated fixed-camera video (a still textured scene and one moving square; 1280 x 720, 25 fps, H.264) is run
through the whole timeline (decode, resize, crop, model, top-k) at the default step, half a window, with:

- ViViT-B Model 2 (``vivit_b_16x2_fe``, 32 x 224^2): every window whole (``reuse=False``) vs slice reuse (each
  tubelet-time slice encoded once, ``vivit.tasks.reuse``);
- ViViT-B Model 1 (``vivit_b_16x2``, 8 x 160^2): dense vs static-token skipping (``drop_static``, RLT's default).

Random weights (the cost does not depend on them; static skipping's does on the pixels only). Every repeat runs every
setting once in turn (interleaved), so a load change on a shared machine hits all alike; the median is reported, with
the CPU named. Usage: ``python benchmarks/timeline.py [--seconds 12] [--repeats 2] [--size 1280x720] [--json out]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import vivit
from vivit.model.static import DROP_STATIC_DEFAULT, static_keep
from vivit.tasks.timeline import timeline

FPS = 25
SETTINGS = {  # label: (architecture, num_frames, img_size, create_model extras, timeline extras)
    "M2 dense": ("vivit_b_16x2_fe", 32, 224, {}, {"reuse": False}),
    "M2 reuse": ("vivit_b_16x2_fe", 32, 224, {}, {"reuse": True}),
    "M1 dense": ("vivit_b_16x2", 8, 160, {}, {}),
    "M1 static": ("vivit_b_16x2", 8, 160, {"drop_static": DROP_STATIC_DEFAULT}, {}),
}


def cpu_name() -> str:
    """The CPU's model name (``lscpu``'s), and the threads torch uses."""
    try:
        name = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name"))
    except (OSError, StopIteration):
        name = platform.processor() or "unknown CPU"
    return f"{name}, {torch.get_num_threads()} threads"


def write_fixed_camera(path: Path, seconds: float, width: int, height: int) -> Path:
    """A still textured scene with one square moving across it, H.264, written frame by frame."""
    import av

    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (height // 40 + 1, width // 40 + 1, 3), dtype=np.uint8)
    scene = np.kron(small, np.ones((40, 40, 1), dtype=np.uint8))[:height, :width]
    size = height // 6
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(int(seconds * FPS)):
            frame = scene.copy()
            x = int((width - size) * i / (seconds * FPS))
            frame[height // 2 - size // 2:height // 2 + size // 2, x:x + size] = (255, 40, 40)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def run_once(model: torch.nn.Module, video: Path, extras: dict) -> tuple[float, float, int]:
    """Wall and process CPU seconds for the whole timeline of ``video``, and its window count."""
    start, cpu = time.perf_counter(), time.process_time()
    windows = list(timeline(model, video, **extras))
    return time.perf_counter() - start, time.process_time() - cpu, len(windows)


def kept_fraction(model: torch.nn.Module, video: Path) -> float:
    """Fraction of Model 1's tokens static skipping keeps over the video's windows."""
    from vivit.data.stream import VideoStream, sliding_windows
    from vivit.data.transforms import eval_transform
    from vivit.tasks.timeline import window_plan

    transform = eval_transform(model)
    kept = []
    with VideoStream(video, transform.resize_size, transform.interpolation) as stream:
        clip_len, stride, step = window_plan(model, stream.info.fps)
        for window in sliding_windows(stream, clip_len, stride, step):
            x = transform(window.frames)[None]
            kept.append(static_keep(x, model.tubelet_size, DROP_STATIC_DEFAULT).float().mean().item())
    return float(np.mean(kept))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=12.0, help="video length")
    parser.add_argument("--size", default="1280x720", help="video WIDTHxHEIGHT")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--m2-size", type=int, default=224, help="Model 2's frame size (the release: 224)")
    parser.add_argument("--m1-size", type=int, default=160, help="Model 1's frame size")
    parser.add_argument("--threads", type=int, help="torch threads (default torch's; 1 measures CPU work without "
                        "threads waiting on each other on a loaded machine)")
    parser.add_argument("--depth", type=int, help="blocks per encoder (default the model's; tests use 1)")
    parser.add_argument("--json", type=Path, help="append the results as one JSON line")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    models = {}
    for label in args.settings:
        arch, frames, size, extra, _ = SETTINGS[label]
        size = args.m2_size if label.startswith("M2") else args.m1_size
        SETTINGS[label] = (arch, frames, size, extra, SETTINGS[label][4])
        depth = {} if args.depth is None else {"depth": args.depth, "temporal_depth": args.depth}
        models[label] = vivit.create_model(arch, num_frames=frames, img_size=size, **extra, **depth).eval()
    times: dict[str, list[float]] = {label: [] for label in args.settings}
    cpu: dict[str, list[float]] = {label: [] for label in args.settings}
    counts: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        video = write_fixed_camera(Path(tmp) / "fixed.mp4", args.seconds, width, height)
        for label, model in models.items():  # warm-up: one clip through each model
            _, frames, size, _, _ = SETTINGS[label]
            with torch.inference_mode():
                model(torch.zeros(1, 3, frames, size, size))
        for _ in range(args.repeats):
            for label in args.settings:
                seconds, cpu_seconds, counts[label] = run_once(models[label], video, SETTINGS[label][4])
                times[label].append(seconds)
                cpu[label].append(cpu_seconds)
        kept = kept_fraction(models["M1 static"], video) if "M1 static" in models else None
    print(f"vivit timeline real-time factor on {cpu_name()}; {args.seconds:g} s of {width}x{height} at {FPS} fps, "
          f"fixed camera, default step (half a window), median of {args.repeats} interleaved repeats; load average "
          f"{os.getloadavg()[0]:.1f} (on a shared machine the CPU seconds say more than the wall clock)")
    rows = {}
    for label in args.settings:
        median, cpu_median = statistics.median(times[label]), statistics.median(cpu[label])
        rows[label] = {"seconds": round(median, 3), "rtf": round(median / args.seconds, 3), "windows": counts[label],
                       "cpu_seconds": round(cpu_median, 3)}
        print(f"  {label:10s} {SETTINGS[label][0]:16s} {SETTINGS[label][1]}x{SETTINGS[label][2]}^2: "
              f"{median:7.2f} s for {counts[label]} windows, real-time factor {median / args.seconds:.2f}; "
              f"{cpu_median:7.2f} CPU-s")
    for dense, fast in (("M2 dense", "M2 reuse"), ("M1 dense", "M1 static")):
        if dense in rows and fast in rows:
            print(f"  speed-up {fast} vs {dense}: {rows[dense]['seconds'] / rows[fast]['seconds']:.2f}x wall, "
                  f"{rows[dense]['cpu_seconds'] / rows[fast]['cpu_seconds']:.2f}x CPU time")
    if kept is not None:
        print(f"  static skipping keeps {kept:.1%} of Model 1's tokens (tau = {DROP_STATIC_DEFAULT})")
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps({"cpu": cpu_name(), "seconds": args.seconds, "size": args.size, "rows": rows,
                                "kept": kept}) + "\n")


if __name__ == "__main__":
    main()
