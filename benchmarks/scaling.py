"""How the four variants' cost grows with clip length: counted GMACs, measured CPU time and forward memory.

Usage: ``python benchmarks/scaling.py [--frames 8 16 32 64 128] [--depth 1] [--out docs/images/scaling.png]``.
ViViT-B widths at 224²; ``--depth`` blocks per encoder keep the CPU time affordable (cost per block is what scales).
Each timed configuration runs in a fresh Python process, so its memory figure is its own: the peak resident memory
during the forward minus the resident memory just before it (activations and kernel workspaces, not the weights).
The paper's claim: Model 1's attention grows quadratically with t·h·w tokens, Models 2-4 close to linearly in frames.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
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


def _rss_gib() -> float:
    """Current resident memory (Linux /proc; elsewhere the peak so far, which over-counts the baseline)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * resource.getpagesize() / 2**30
    except OSError:
        return _peak_rss_gib()


def _peak_rss_gib() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / (2**30 if sys.platform == "darwin" else 2**20)


def measure_here(name: str, frames: int, depth: int) -> dict:
    """Seconds of the second forward and memory of the first one (call in a fresh process for a clean peak)."""
    model = vivit.create_model(name, num_frames=frames, depth=depth, temporal_depth=depth).eval()
    x = torch.randn(1, 3, frames, 224, 224)

    def full_forward() -> torch.Tensor:  # model(x) would trim the only block to its CLS token (depth 1)
        return model.forward_head(model.forward_features(x))

    with torch.inference_mode():
        before = _rss_gib()
        full_forward()
        forward_gib = _peak_rss_gib() - before
        start = time.perf_counter()
        full_forward()
        seconds = time.perf_counter() - start
    return {"cpu_s": seconds, "forward_mem_gib": forward_gib}


def measure(name: str, frames: int, depth: int) -> dict:
    """``measure_here`` in a child process."""
    out = subprocess.run([sys.executable, __file__, "--child", name, str(frames), str(depth)], capture_output=True,
                         text=True, check=False)
    if out.returncode:
        raise RuntimeError(f"{name} at {frames} frames failed:\n{out.stderr}")
    return json.loads(out.stdout.splitlines()[-1])


def plot(rows: list[dict], keys: list[str], depth: int, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = {"gmacs": f"GMACs ({depth} block(s) per encoder)", "cpu_s": "CPU seconds",
              "forward_mem_gib": "forward memory (GiB)"}
    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 3.4), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        for label in VARIANTS:
            pts = [(r["frames"], r[key]) for r in rows if r["model"] == label]
            ax.plot(*zip(*pts, strict=True), marker="o", label=label)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("frames (224², tubelet 2×16×16)")
        ax.set_ylabel(labels[key])
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", nargs="+", type=int, default=[8, 16, 32, 64, 128])
    parser.add_argument("--depth", type=int, default=1)
    parser.add_argument("--models", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--no-time", action="store_true", help="count GMACs only")
    parser.add_argument("--out", type=Path, help="write a PNG plot here")
    parser.add_argument("--json", type=Path, help="append the rows to this JSON-lines file")
    parser.add_argument("--child", nargs=3, metavar=("NAME", "FRAMES", "DEPTH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        name, frames, depth = args.child
        print(json.dumps(measure_here(name, int(frames), int(depth))))
        return
    rows = []
    for label in args.models:
        for frames in args.frames:
            row = {"model": label, "frames": frames, "gmacs": gmacs(VARIANTS[label], frames, args.depth)}
            if not args.no_time:
                row.update(measure(VARIANTS[label], frames, args.depth))
            rows.append(row)
            print(json.dumps(row), flush=True)
            if args.json:
                with args.json.open("a") as f:
                    f.write(json.dumps(row) + "\n")
    if args.out:
        plot(rows, ["gmacs"] + ([] if args.no_time else ["cpu_s", "forward_mem_gib"]), args.depth, args.out)
        print(args.out)


if __name__ == "__main__":
    main()
