"""Throughput of the dataset-evaluation pipeline (``vivit evaluate``) next to its two stages, measured in one run.

Generated motion clips (``vivit.data.synthetic``) are written as real H.264 files, then for 0, 1 and 2 DataLoader
workers:

- **decode-only**: the evaluation dataset (decode + resize + crop every test view) through the loader, no model;
- **model-only**: forward passes of ready-made view batches, no decoding (workers do not change it; measured before
  and after each end-to-end run, the fastest kept);
- **end-to-end**: :func:`vivit.tasks.evaluate.evaluate_dataset` on the files (predictions, logits, report included).

The ratio end-to-end / slower stage says how well decoding and the model overlap: 1.0 is a perfect pipeline (the
job runs at the speed of its slower stage); with 0 workers the stages run one after the other, so it is lower.

A **timeline** row does the same for ``vivit timeline`` on one long generated video (``--timeline-seconds``, 25 fps):
windows/s of :func:`vivit.tasks.timeline.timeline_video` next to streaming decode alone (``sliding_windows``, frames
resized to the model's short side) and the model alone (batches of ready-made windows), and their ratio. Decoding and
the model run one after the other in one process there, so 1.0 is out of reach: the ratio to expect is about
``1 / (1 + faster / slower)``.

Usage::

    python benchmarks/pipeline.py                                   # vivit_motion on 32x32 clips: decoding-bound
    python benchmarks/pipeline.py --model vivit_b_16x2 --num-frames 8 --img-size 112 --video-size 128 --views 1x1
    python benchmarks/pipeline.py --videos 4 --workers 0 1 --repeats 1 --json out.jsonl     # a quick smoke run
    python benchmarks/pipeline.py --workers 0 --videos 4 --timeline-seconds 300           # mostly the timeline row
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import vivit
from vivit.data.datasets import EvalVideos, Item, collate_views, make_loader
from vivit.data.stream import VideoStream, sliding_windows
from vivit.data.synthetic import MOTION_CLASSES, make_clip, make_sequence
from vivit.data.transforms import eval_transform, resolve_data_config
from vivit.data.video import parse_views, write_video
from vivit.tasks.evaluate import evaluate_dataset
from vivit.tasks.timeline import timeline_video, window_plan


def write_clips(folder: Path, count: int, frames: int, size: int) -> Path:
    """``count`` motion clips of ``frames`` frames at ``size``² as .mp4 files, and a listing of them."""
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        label = i % len(MOTION_CLASSES)
        paths.append(write_video(folder / f"clip_{i:04d}.mp4", make_clip(label, rng, num_frames=frames, size=size),
                                 fps=25))
    listing = folder / "videos.txt"
    listing.write_text("\n".join(map(str, paths)) + "\n")
    return listing


def best_of(repeats: int, run) -> float:
    """The fastest of ``repeats`` timed runs (seconds): the least disturbed by other work on the machine."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def decode_only(paths: list[str], model: torch.nn.Module, views: tuple[int, int], batch_size: int,
                workers: int) -> None:
    ds = EvalVideos([Item(p) for p in paths], resolve_data_config(model), views)
    per_batch = max(1, batch_size // math.prod(views))
    for batch in make_loader(ds, batch_size=per_batch, workers=workers, collate_fn=collate_views):
        assert batch["views"] is not None


def model_only(model: torch.nn.Module, views: tuple[int, int], batch_size: int, videos: int,
               device: torch.device) -> None:
    cfg = resolve_data_config(model)
    dtype = next(model.parameters()).dtype
    total = videos * math.prod(views)
    x = torch.randn(min(batch_size, total), *cfg["input_size"], device=device, dtype=dtype)
    with torch.inference_mode():
        for start in range(0, total, batch_size):
            model(x[: min(batch_size, total - start)]).float().cpu()


def timeline_row(model: torch.nn.Module, seconds: int, size: int, batch_size: int, repeats: int,
                 folder: Path) -> dict:
    """Windows/s of ``timeline_video`` on one generated video, next to streaming decode alone and the model alone."""
    rng = np.random.default_rng(0)
    labels = [int(c) for c in rng.integers(0, len(MOTION_CLASSES), max(1, seconds // 3))]
    path = write_video(folder / "long.mp4", make_sequence(labels, rng, frames_each=75, size=size), fps=25)
    transform = eval_transform(model)

    def decode() -> int:
        with VideoStream(path, transform.resize_size, transform.interpolation) as stream:
            return sum(1 for _ in sliding_windows(stream, *window_plan(model, stream.info.fps)))

    windows = decode()
    decode_s = best_of(repeats, decode)
    model_s = best_of(repeats, lambda: model_only(model, (1, 1), batch_size, windows, next(model.parameters()).device))
    runs = []
    for r in range(repeats):
        start = time.perf_counter()
        result = timeline_video(path, model, folder / f"timeline-{r}", batch_size=batch_size, plot=False,
                                progress_bar=False)
        runs.append(time.perf_counter() - start)
        assert result is not None and result["windows"] == windows, result
    rates = {"decode_only": windows / decode_s, "model_only": windows / model_s, "end_to_end": windows / min(runs)}
    slower = min(rates["decode_only"], rates["model_only"])
    row = {"job": "timeline", "video": f"{seconds}s x {size}x{size} at 25 fps", "windows": windows,
           "batch_size": batch_size, "windows_per_s": {k: round(v, 2) for k, v in rates.items()},
           "slower_stage": "decode" if rates["decode_only"] < rates["model_only"] else "model",
           "ratio": round(rates["end_to_end"] / slower, 3)}
    print(f"timeline: {windows} windows, end-to-end {rates['end_to_end']:7.2f} windows/s | decode-only "
          f"{rates['decode_only']:7.2f} | model-only {rates['model_only']:7.2f} | slower stage {row['slower_stage']}, "
          f"end-to-end / slower = {row['ratio']:.2f}", flush=True)
    return row


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="vivit_motion", help="architecture (random weights) or tag")
    p.add_argument("--num-frames", type=int, help="model clip length (default: the architecture's)")
    p.add_argument("--img-size", type=int, help="model frame size (default: the architecture's)")
    p.add_argument("--videos", type=int, default=48, help="generated videos")
    p.add_argument("--video-frames", type=int, default=48, help="frames per generated video")
    p.add_argument("--video-size", type=int, default=64, help="side of the generated videos (resized by the eval "
                                                             "transform)")
    p.add_argument("--views", default="1x1")
    p.add_argument("--batch-size", type=int, default=16, help="views per forward pass")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, help="torch intra-op threads of the main process (default: torch's)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per measurement (the fastest is kept)")
    p.add_argument("--json", type=Path, help="append one JSON line per worker count")
    p.add_argument("--timeline-seconds", type=int, default=60, help="length of the timeline row's video (0: no row)")
    args = p.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    overrides = {k: v for k, v in dict(num_frames=args.num_frames, img_size=args.img_size).items() if v is not None}
    model = vivit.create_model(args.model, pretrained=args.model == "vivit_motion", **overrides)
    model = model.to(device, getattr(torch, args.dtype)).eval()
    views = parse_views(args.views)
    rows = []
    with tempfile.TemporaryDirectory(prefix="vivit-pipeline-") as tmp:
        listing = write_clips(Path(tmp), args.videos, args.video_frames, args.video_size)
        paths = listing.read_text().split()
        model_only(model, views, args.batch_size, 1, device)  # warm-up
        model_s = math.inf
        for workers in args.workers:
            # Measured again next to each end-to-end run, keeping the fastest: on a shared machine a single early
            # measurement can catch a busy moment and make the pipeline look faster than its model.
            model_s = min(model_s, best_of(args.repeats,
                                           lambda: model_only(model, views, args.batch_size, args.videos, device)))
            decode_s = best_of(args.repeats, lambda w=workers: decode_only(paths, model, views, args.batch_size, w))
            runs: list[float] = []
            for r in range(args.repeats):
                out = Path(tmp) / f"out-{workers}-{r}"
                start = time.perf_counter()
                report = evaluate_dataset(listing, model, out, views=views, batch_size=args.batch_size,
                                          workers=workers, device=device, log_every=10**9, progress_bar=False)
                runs.append(time.perf_counter() - start)
                assert report is not None and report["num_evaluated"] == args.videos, report
            model_s = min(model_s, best_of(args.repeats,
                                           lambda: model_only(model, views, args.batch_size, args.videos, device)))
            rates = {"decode_only": args.videos / decode_s, "model_only": args.videos / model_s,
                     "end_to_end": args.videos / min(runs)}
            slower = min(rates["decode_only"], rates["model_only"])
            row = {"model": args.model, "input": list(resolve_data_config(model)["input_size"]),
                   "views": args.views, "batch_size": args.batch_size, "dtype": args.dtype, "device": str(device),
                   "videos": args.videos, "video": f"{args.video_frames}x{args.video_size}x{args.video_size}",
                   "workers": workers, "threads": torch.get_num_threads(),
                   "videos_per_s": {k: round(v, 2) for k, v in rates.items()},
                   "slower_stage": "decode" if rates["decode_only"] < rates["model_only"] else "model",
                   "ratio": round(rates["end_to_end"] / slower, 3),
                   "end_to_end_spread": round(statistics.pstdev(runs) / statistics.mean(runs), 3)}
            rows.append(row)
            print(f"workers {workers}: end-to-end {rates['end_to_end']:7.2f} videos/s | decode-only "
                  f"{rates['decode_only']:7.2f} | model-only {rates['model_only']:7.2f} | slower stage "
                  f"{row['slower_stage']}, end-to-end / slower = {row['ratio']:.2f}", flush=True)
            if args.json:
                with open(args.json, "a") as f:
                    f.write(json.dumps(row) + "\n")
        if args.timeline_seconds > 0:
            row = timeline_row(model, args.timeline_seconds, args.video_size, args.batch_size, args.repeats, Path(tmp))
            rows.append(row)
            if args.json:
                with open(args.json, "a") as f:
                    f.write(json.dumps(row) + "\n")
    return rows


if __name__ == "__main__":
    main()
