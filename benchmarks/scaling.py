"""How the four variants' cost grows with clip length: counted GMACs and measured CPU time and peak memory.

Usage: ``python benchmarks/scaling.py [--frames 8 16 32 64 128] [--depth 1] [--out docs/images/scaling.png]``.
ViViT-B widths at 224²; ``--depth`` blocks per encoder keep the CPU time affordable (cost per block is what scales).
The paper's claim: Model 1's attention grows quadratically with t·h·w tokens, Models 2-4 close to linearly in frames.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

import vivit

VARIANTS = {"Model 1": "vivit_b_16x2", "Model 2": "vivit_b_16x2_fe", "Model 3": "vivit_b_16x2_fsa",
            "Model 4": "vivit_b_16x2_fdp"}


def gmacs(name: str, frames: int, depth: int) -> float:
    with torch.device("meta"):
        model = vivit.create_model(name, num_frames=frames, depth=depth, temporal_depth=depth).eval()
        x = torch.empty(1, 3, frames, 224, 224)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.forward_head(model.forward_features(x))  # the architecture's cost, every token through every block
    return counter.get_total_flops() / 2e9


def cpu_seconds(name: str, frames: int, depth: int) -> float:
    model = vivit.create_model(name, num_frames=frames, depth=depth, temporal_depth=depth).eval()
    x = torch.randn(1, 3, frames, 224, 224)
    def full_forward() -> torch.Tensor:  # model(x) would trim the only block to its CLS token (depth 1)
        return model.forward_head(model.forward_features(x))

    with torch.inference_mode():
        full_forward()
        start = time.perf_counter()
        full_forward()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", nargs="+", type=int, default=[8, 16, 32, 64, 128])
    parser.add_argument("--depth", type=int, default=1)
    parser.add_argument("--no-time", action="store_true", help="count GMACs only")
    parser.add_argument("--out", type=Path, help="write a PNG plot here")
    args = parser.parse_args()
    rows = []
    for label, name in VARIANTS.items():
        for frames in args.frames:
            row = {"model": label, "frames": frames, "gmacs": gmacs(name, frames, args.depth)}
            if not args.no_time:
                row["cpu_s"] = cpu_seconds(name, frames, args.depth)
            row["max_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.out:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        keys = ["gmacs"] + ([] if args.no_time else ["cpu_s"])
        fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 3.4), squeeze=False)
        for ax, key in zip(axes[0], keys, strict=True):
            for label in VARIANTS:
                pts = [(r["frames"], r[key]) for r in rows if r["model"] == label]
                ax.plot(*zip(*pts, strict=True), marker="o", label=label)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("frames (224², tubelet 2×16×16)")
            ax.set_ylabel({"gmacs": f"GMACs ({args.depth} block(s) per encoder)", "cpu_s": "CPU seconds"}[key])
            ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(args.out, dpi=90)
        print(args.out)


if __name__ == "__main__":
    main()
