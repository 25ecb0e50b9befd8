"""float32 vs bfloat16 inference of the four ViViT-B variants on CPU: time and how far the logits move.

bfloat16 runs two ways: the weights cast (``model.to(torch.bfloat16)``, what ``vivit classify --dtype bfloat16``
does) and ``torch.autocast("cpu", torch.bfloat16)`` over a float32 model. On CPUs with AMX or AVX512-BF16 the matrix
multiplies run several times faster; elsewhere bfloat16 may be slower than float32. The logits are random-weight
logits (a head with unit-variance weights so they are of order 10-100), compared with float32 relative to their scale.

Usage: ``python benchmarks/cpu_dtypes.py [--size 8x160] [--repeats 3] [--json out.jsonl]``.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from collections.abc import Callable

import torch

import vivit

VARIANTS = {"Model 1": "vivit_b_16x2", "Model 2": "vivit_b_16x2_fe", "Model 3": "vivit_b_16x2_fsa",
            "Model 4": "vivit_b_16x2_fdp"}


def median_seconds(run: Callable[[], torch.Tensor], repeats: int) -> float:
    run()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench(name: str, frames: int, size: int, repeats: int) -> dict:
    torch.manual_seed(0)
    model = vivit.create_model(name, num_classes=400, num_frames=frames, img_size=size).eval()
    torch.nn.init.normal_(model.head.weight)
    cast = copy.deepcopy(model).to(torch.bfloat16)
    video = torch.rand(1, 3, frames, size, size) * 2 - 1

    def autocast() -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return model(video)

    runs = {"float32": lambda: model(video), "bfloat16": lambda: cast(video.bfloat16()), "autocast_bf16": autocast}
    with torch.inference_mode():
        logits = {k: run().float() for k, run in runs.items()}
        seconds = {k: median_seconds(run, repeats) for k, run in runs.items()}
    ref = logits["float32"]
    scale = float(ref.abs().max())
    return {
        "model": name, "frames": frames, "size": size, "seconds": seconds,
        "speedup": {k: seconds["float32"] / v for k, v in seconds.items() if k != "float32"},
        "max_rel_diff": {k: float((v - ref).abs().max()) / scale for k, v in logits.items() if k != "float32"},
        "top5_agree": {k: len(set(v.topk(5).indices[0].tolist()) & set(ref.topk(5).indices[0].tolist())) / 5
                       for k, v in logits.items() if k != "float32"},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="8x160", help="FRAMESxSIZE clip")
    parser.add_argument("--models", nargs="+", default=list(VARIANTS.values()))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", help="append the results to this JSON-lines file")
    args = parser.parse_args()
    frames, size = (int(v) for v in args.size.split("x"))
    for name in args.models:
        row = bench(name, frames, size, args.repeats)
        s = row["seconds"]
        print(f"{name} {frames}x{size}²: float32 {s['float32'] * 1000:.0f} ms, bfloat16 {s['bfloat16'] * 1000:.0f} ms "
              f"({row['speedup']['bfloat16']:.2f}x, logits within {row['max_rel_diff']['bfloat16']:.1%} of scale, "
              f"top-5 overlap {row['top5_agree']['bfloat16']:.0%}), autocast {s['autocast_bf16'] * 1000:.0f} ms "
              f"({row['speedup']['autocast_bf16']:.2f}x, {row['max_rel_diff']['autocast_bf16']:.1%}, "
              f"{row['top5_agree']['autocast_bf16']:.0%})", flush=True)
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps({**row, "torch": torch.__version__, "threads": torch.get_num_threads()}) + "\n")


if __name__ == "__main__":
    main()
