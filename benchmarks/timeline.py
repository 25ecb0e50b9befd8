"""Real-time factor of ``vivit.timeline`` (processing seconds / video seconds; below 1 keeps up with the video).

A generated fixed-camera video (a still textured scene and one moving square; 1280 x 720, 25 fps, H.264) is run
through the whole timeline (decode, resize, crop, model, top-k) at the default step, half a window, with:

- ViViT-B Model 2 (``vivit_b_16x2_fe``, 32 x 224^2): every window whole (``reuse=False``) vs slice reuse (each
  tubelet-time slice encoded once, ``vivit.tasks.reuse``), in torch and OpenVINO float32, and with token merging on
  the spatial encoder (OpenVINO, reuse);
- ViViT-B Model 1 (``vivit_b_16x2``, 8 x 160^2): dense torch, OpenVINO float32 (and with token merging), static-token
  skipping (``drop_static``, RLT's default; torch, as ``vivit.optimize`` runs it) with and without token merging.

Each row also says where its time went: the model (or, with reuse, the spatial and temporal encoders) and the rest
(decoding, resizing, cropping, slice keys, top-k). OpenVINO models are converted before timing (a later run finds them
in ``vivit.optimize``'s cache). bfloat16 runs only where the CPU has it natively (elsewhere ``vivit.optimize`` runs
float32 for it, and the table says so). The CPU's float32 matmul rate and Model 2's GFLOPs per video second say how
far real time is from what the CPU can do.

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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

import vivit
from vivit.data.transforms import eval_transform
from vivit.model.static import DROP_STATIC_DEFAULT, static_keep
from vivit.tasks.optimize import native_bfloat16
from vivit.tasks.reuse import SpatialHalf, slice_reuse
from vivit.tasks.timeline import timeline

FPS = 25
M2, M1 = ("vivit_b_16x2_fe", 32), ("vivit_b_16x2", 8)
TOME = {"M2": 16, "M1": 32}  # ToMe's r per block: about half of a frame's 196 (M2) / the clip's 400 (M1) tokens merged
SETTINGS = {  # label: (architecture and frames, create_model extras, backend, token merging, timeline extras)
    "M2 dense": (M2, {}, "torch", False, {"reuse": False}),
    "M2 reuse": (M2, {}, "torch", False, {"reuse": True}),
    "M2 OV": (M2, {}, "openvino", False, {"reuse": False}),
    "M2 OV reuse": (M2, {}, "openvino", False, {"reuse": True}),
    "M2 OV reuse ToMe": (M2, {}, "openvino", True, {"reuse": True}),
    "M1 dense": (M1, {}, "torch", False, {}),
    "M1 OV": (M1, {}, "openvino", False, {}),
    "M1 OV ToMe": (M1, {}, "openvino", True, {}),
    "M1 static": (M1, {"drop_static": DROP_STATIC_DEFAULT}, "torch", False, {}),
    "M1 static ToMe": (M1, {"drop_static": DROP_STATIC_DEFAULT}, "torch", True, {}),
}
PAIRS = (("M2 dense", "M2 reuse"), ("M2 OV", "M2 OV reuse"), ("M2 OV reuse", "M2 OV reuse ToMe"),
         ("M2 dense", "M2 OV reuse"), ("M2 dense", "M2 OV reuse ToMe"), ("M1 dense", "M1 OV"), ("M1 OV", "M1 OV ToMe"),
         ("M1 dense", "M1 static"), ("M1 dense", "M1 static ToMe"))


def openvino_available() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def matmul_gflops(seconds: float = 2.0) -> float:
    """What this CPU does in a large float32 matrix product (torch, its threads): the ceiling a ViT's linears reach."""
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    a @ b
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        done += 1
    return 2 * 2048 ** 3 * done / (time.perf_counter() - start) / 1e9


def m2_gflop_per_video_second(model: torch.nn.Module, reuse: bool) -> float:
    """Model 2's GFLOPs (2 per multiply-add) per second of video at the default step, long-video steady state: each
    step adds half a window, so reuse encodes half the window's slices and dense all of them, plus one temporal pass."""
    from torch.utils.flop_counter import FlopCounterMode

    frames = torch.zeros(1, model.in_chans, model.tubelet_size[0], *model.img_size)
    with FlopCounterMode(display=False) as spatial, torch.inference_mode():
        tokens = model.forward_slices(frames)
    with FlopCounterMode(display=False) as temporal, torch.inference_mode():
        model.forward_from_slices(tokens[:, :1].expand(1, model.grid_size[0], -1).contiguous())
    slices = model.grid_size[0] // 2 if reuse else model.grid_size[0]
    step_seconds = model.num_frames * model.pretrained_cfg.get("frame_stride", 1) / 2 / FPS
    return (slices * spatial.get_total_flops() + temporal.get_total_flops()) / step_seconds / 1e9


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


class Timed:
    """Seconds spent in a callable (the model's halves), to split a run into model work and the rest."""

    def __init__(self, fn: Callable) -> None:
        self.fn, self.seconds = fn, 0.0
        self.backend = getattr(fn, "backend", None)

    def __call__(self, *args: Any) -> Any:
        start = time.perf_counter()
        try:
            return self.fn(*args)
        finally:
            self.seconds += time.perf_counter() - start


def run_once(model: torch.nn.Module, fast: Any, video: Path, extras: dict) -> dict[str, float]:
    """Wall and process CPU seconds for the whole timeline of ``video``, its window count, and the seconds in the
    spatial encoder (reuse), the temporal encoder (reuse) or the whole model (dense)."""
    timers, cls, patched = {}, type(model), {}
    if extras.get("reuse") and model.default_cfg["architecture"].endswith("_fe"):
        # Timed on the class (an instance attribute would be a changed model to vivit.optimize's check)
        patched = {"forward_from_slices": cls.forward_from_slices}
        if fast is not None:  # OpenVINO: the converted spatial half slice_reuse keeps for this optimized model
            slice_reuse(model, fast, eval_transform(model), None, torch.float32)
            timers["spatial"] = SpatialHalf.converted[fast] = Timed(SpatialHalf.converted[fast])
        else:
            patched["forward_slices"] = cls.forward_slices
        run = fast
    elif fast is not None:
        run = timers["model"] = Timed(fast)
    else:
        run, patched = None, {"forward": cls.forward}
    for name, method in patched.items():
        key = {"forward_from_slices": "temporal", "forward_slices": "spatial"}.get(name, "model")
        timers[key] = Timed(method)
        setattr(cls, name, lambda self, *a, _t=timers[key]: _t(self, *a))
    start, cpu = time.perf_counter(), time.process_time()
    try:
        windows = len(list(timeline(model, video, run=run, **extras)))
    finally:
        for name, method in patched.items():
            setattr(cls, name, method)
        if fast is not None and isinstance(SpatialHalf.converted.get(fast), Timed):
            SpatialHalf.converted[fast] = SpatialHalf.converted[fast].fn
    seconds = time.perf_counter() - start
    parts = {name: t.seconds for name, t in timers.items()}
    return {"seconds": seconds, "cpu_seconds": time.process_time() - cpu, "windows": windows, **parts,
            "other": seconds - sum(parts.values())}


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
    ov = openvino_available()
    parser.add_argument("--settings", nargs="+", choices=list(SETTINGS),
                        default=[k for k, v in SETTINGS.items() if ov or v[2] == "torch"])
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
    models, fast, sizes = {}, {}, {}
    depth = {} if args.depth is None else {"depth": args.depth, "temporal_depth": args.depth}
    for label in args.settings:
        (arch, frames), extra, backend, merging, _ = SETTINGS[label]
        family = label[:2]
        sizes[label] = (frames, args.m2_size if family == "M2" else args.m1_size)
        model = vivit.create_model(arch, num_frames=frames, img_size=sizes[label][1], **extra, **depth).eval()
        models[label] = model
        if merging:
            model.set_token_merging(TOME[family])
        # Converted (and cached) before timing, as every run after the first finds it in vivit.optimize's cache.
        fast[label] = vivit.optimize(model, "float32", backend="openvino") if backend == "openvino" else None
    runs: dict[str, list[dict[str, float]]] = {label: [] for label in args.settings}
    gflops = matmul_gflops()
    with tempfile.TemporaryDirectory() as tmp:
        video = write_fixed_camera(Path(tmp) / "fixed.mp4", args.seconds, width, height)
        for label, model in models.items():  # warm-up: one clip through each
            with torch.inference_mode():
                frames, size = sizes[label]
                (fast[label] or model)(torch.zeros(1, 3, frames, size, size))
        for _ in range(args.repeats):
            for label in args.settings:
                runs[label].append(run_once(models[label], fast[label], video, SETTINGS[label][4]))
        kept = kept_fraction(models["M1 static"], video) if "M1 static" in models else None
    print(f"vivit timeline real-time factor on {cpu_name()}; {args.seconds:g} s of {width}x{height} at {FPS} fps, "
          f"fixed camera, default step (half a window), median of {args.repeats} interleaved repeats; load average "
          f"{os.getloadavg()[0]:.1f} (on a shared machine the CPU seconds say more than the wall clock); a 2048^2 "
          f"float32 matmul runs at {gflops:.0f} GFLOP/s here")
    rows = {}
    for label in args.settings:
        med = {key: statistics.median(r[key] for r in runs[label]) for key in runs[label][0]}
        rows[label] = {"seconds": round(med["seconds"], 3), "rtf": round(med["seconds"] / args.seconds, 3),
                       "windows": int(med["windows"]), "cpu_seconds": round(med["cpu_seconds"], 3),
                       **{k: round(v, 3) for k, v in med.items() if k in ("spatial", "temporal", "model", "other")}}
        frames, size = sizes[label]
        parts = ", ".join(f"{k} {rows[label][k]:.2f}" for k in ("spatial", "temporal", "model", "other")
                          if k in rows[label])
        print(f"  {label:17s} {frames}x{size}^2: {med['seconds']:7.2f} s for {rows[label]['windows']} windows, "
              f"real-time factor {rows[label]['rtf']:.2f}; {med['cpu_seconds']:7.2f} CPU-s ({parts} s)")
    for dense, faster in PAIRS:
        if dense in rows and faster in rows:
            print(f"  speed-up {faster} vs {dense}: {rows[dense]['seconds'] / rows[faster]['seconds']:.2f}x wall, "
                  f"{rows[dense]['cpu_seconds'] / rows[faster]['cpu_seconds']:.2f}x CPU time")
    if not native_bfloat16():
        print("  bfloat16: this CPU has no native bfloat16 (AVX512-BF16 / AMX), so vivit.optimize runs OpenVINO in "
              "float32 for dtype='bfloat16': the OV rows stand for both")
    work = {}
    m2 = vivit.create_model(M2[0], num_frames=M2[1], img_size=args.m2_size, **depth).eval()
    work = {name: m2_gflop_per_video_second(m2, reuse) for name, reuse in (("dense", False), ("reuse", True))}
    m2.set_token_merging(TOME["M2"])
    work["reuse + ToMe"] = m2_gflop_per_video_second(m2, True)
    print(f"  Model 2 needs {work['dense']:.0f} GFLOP per second of video whole, {work['reuse']:.0f} with reuse, "
          f"{work['reuse + ToMe']:.0f} with reuse and ToMe r={TOME['M2']}: real time needs "
          f"{work['reuse'] / gflops:.2f}x / {work['reuse + ToMe'] / gflops:.2f}x this CPU's matmul rate")
    if kept is not None:
        print(f"  static skipping keeps {kept:.1%} of Model 1's tokens (tau = {DROP_STATIC_DEFAULT})")
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps({"cpu": cpu_name(), "seconds": args.seconds, "size": args.size, "rows": rows,
                                "kept": kept, "matmul_gflops": round(gflops, 1), "load": os.getloadavg()[0],
                                "m2_gflop_per_video_second": work}) + "\n")


if __name__ == "__main__":
    main()
