"""Token merging (ToMe): speed-up against r for ViViT-B Models 1 and 2, and accuracy against r for ``vivit_motion``.

Speed: one clip (batch 1, random weights: merging's cost does not depend on them) per forward, eager, on CPU by
default; every repeat runs every r once in turn (interleaved), so a load change on a shared machine hits all r alike,
and the median per r is reported. Accuracy: the bundled ``vivit_motion`` (Model 2, 2 spatial blocks of 16 tokens per
frame) on held-out generated clips, the seed stream ``scripts/train_motion.py`` holds out ([seed, 1]).

Usage: ``python benchmarks/token_merging.py [--sizes 8x160 32x224] [--repeats 3] [--num-test 2000] [--json out.jsonl]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

import vivit
from vivit.data.synthetic import make_dataset

MODELS = {"Model 1": "vivit_b_16x2", "Model 2": "vivit_b_16x2_fe"}
# r per block for each model and clip size: up to Pollard & Wray's r=300 at 32x224 (Model 1, 3137 tokens);
# Model 2 merges within frames of h*w tokens (100 at 160^2, 196 at 224^2).
R_VALUES = {
    ("Model 1", 8): [0, 8, 16, 24, 32], ("Model 1", 32): [0, 100, 200, 300],
    ("Model 2", 8): [0, 2, 4, 6, 8], ("Model 2", 32): [0, 4, 8, 12, 16],
}


def speed(label: str, frames: int, size: int, repeats: int, device: str, r_values: list[int] | None) -> dict:
    """Median seconds per clip for each r, measured interleaved."""
    torch.manual_seed(0)
    model = vivit.create_model(MODELS[label], num_frames=frames, img_size=size).eval().to(device)
    video = torch.rand(1, 3, frames, size, size, device=device) * 2 - 1
    r_values = r_values or R_VALUES.get((label, frames), [0, 4, 8])
    times: dict[int, list[float]] = {r: [] for r in r_values}
    with torch.inference_mode():
        for r in r_values:  # warm-up, one pass per r
            model.set_token_merging(r)
            model(video)
        for _ in range(repeats):
            for r in r_values:
                model.set_token_merging(r)
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                start = time.perf_counter()
                model(video)
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                times[r].append(time.perf_counter() - start)
    seconds = {r: statistics.median(t) for r, t in times.items()}
    fastest = {r: min(t) for r, t in times.items()}  # least disturbed by other load on a shared machine
    return {"model": MODELS[label], "label": label, "frames": frames, "size": size, "device": device,
            "threads": torch.get_num_threads(),
            "seconds": seconds, "speedup": {r: seconds[r_values[0]] / s for r, s in seconds.items()},
            "min_seconds": fastest, "min_speedup": {r: fastest[r_values[0]] / s for r, s in fastest.items()}}


@torch.inference_mode()
def accuracy(r_values: list[int], num_test: int, seed: int = 0, batch_size: int = 250) -> dict:
    """Held-out top-1 of ``vivit_motion`` for each r (the same clips for every r)."""
    model = vivit.create_model("vivit_motion", pretrained=True).eval()
    videos, labels = make_dataset(num_test, [seed, 1], num_frames=model.num_frames, size=model.img_size[0])
    clips = torch.from_numpy(videos).permute(0, 4, 1, 2, 3).float().mul_(2 / 255).sub_(1)
    top1 = {}
    for r in r_values:
        model.set_token_merging(r)
        preds = torch.cat([model(clips[i:i + batch_size]).argmax(1) for i in range(0, len(clips), batch_size)])
        top1[r] = float((preds.numpy() == labels).mean())
    tokens = model.grid_size[1] * model.grid_size[2]
    return {"model": "vivit_motion", "num_test": num_test, "tokens_per_frame": tokens, "top1": top1}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["8x160", "32x224"], help="FRAMESxSIZE clips")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--r", type=int, nargs="+", help="r values to time (default: per model and size)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--num-test", type=int, default=2000, help="held-out vivit_motion clips (0: skip accuracy)")
    parser.add_argument("--motion-r", type=int, nargs="+", default=list(range(9)))
    parser.add_argument("--json", help="append the results to this JSON-lines file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = []
    for size in args.sizes:
        frames, pixels = (int(v) for v in size.split("x"))
        for label in args.models:
            row = speed(label, frames, pixels, args.repeats, args.device, args.r)
            rows.append(row)
            cells = ", ".join(f"r={r}: {s * 1000:.0f} ms ({row['speedup'][r]:.2f}x; min {row['min_speedup'][r]:.2f}x)"
                              for r, s in row["seconds"].items())
            print(f"{label} ({row['model']}) {frames}x{pixels}² {args.device}, {torch.get_num_threads()} threads: "
                  f"{cells}", flush=True)
    if args.num_test:
        row = accuracy(args.motion_r, args.num_test)
        rows.append(row)
        cells = ", ".join(f"r={r}: {acc:.2%}" for r, acc in row["top1"].items())
        print(f"vivit_motion held-out top-1 ({args.num_test} clips, {row['tokens_per_frame']} tokens per frame, "
              f"2 spatial blocks): {cells}", flush=True)
    if args.json:
        with open(args.json, "a") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
