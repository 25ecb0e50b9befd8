"""vivit vs transformers' ``VivitForVideoClassification`` on the same weights, same input, same process (CPU).

Runs are interleaved (A, B, A, B, ...) so drift in machine load hits both sides alike; each side's time is the median.
transformers is timed with each attention implementation it offers and its best is the baseline. A speed is only
reported when the two outputs agree at 1e-4 (float32); with ``--dtype bfloat16`` both models are cast and each must
stay within 2 % of the logits' scale of the float32 result.

Usage: ``python benchmarks/vs_transformers.py [--sizes 8x160 32x224] [--repeats 5] [--compile] [--dtype bfloat16]
[--compile-mode max-autotune] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch

import vivit


def build_pair(num_frames: int, img_size: int, attn_impl: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    """A random-weight ViViT-B/16x2 transformers model and its vivit conversion."""
    from transformers import VivitConfig, VivitForVideoClassification

    config = VivitConfig(image_size=img_size, num_frames=num_frames, tubelet_size=[2, 16, 16], num_labels=400,
                         hidden_act="gelu_fast", layer_norm_eps=1e-6, attn_implementation=attn_impl)
    torch.manual_seed(0)
    hf = VivitForVideoClassification(config).eval()
    for p in hf.parameters():  # non-trivial weights so the equality check means something
        torch.nn.init.normal_(p, std=0.02)
    torch.nn.init.normal_(hf.classifier.weight, std=1.0)  # logits of order 1, not 1e-3
    ours = vivit.convert.from_transformers(hf).eval()
    return hf, ours


def timed(fn: Callable[[], torch.Tensor]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench(num_frames: int, img_size: int, repeats: int, compile_models: bool,
          dtype: torch.dtype = torch.float32, compile_mode: str | None = None) -> dict:
    """Median seconds per forward of vivit and of transformers' best attention setting."""
    video = torch.rand(1, 3, num_frames, img_size, img_size) * 2 - 1
    results: dict[str, list[float]] = {}
    outputs: dict[str, torch.Tensor] = {}
    runners: dict[str, Callable[[], torch.Tensor]] = {}
    float32_logits = None
    for impl in ("sdpa", "eager"):
        hf, ours = build_pair(num_frames, img_size, impl)
        if dtype != torch.float32 and float32_logits is None:
            with torch.inference_mode():
                float32_logits = ours(video)
        hf, ours = hf.to(dtype), ours.to(dtype)
        if compile_models:
            hf, ours = torch.compile(hf, mode=compile_mode), torch.compile(ours, mode=compile_mode)
        runners[f"transformers[{impl}]"] = lambda hf=hf: hf(pixel_values=video.permute(0, 2, 1, 3, 4)).logits
        if impl == "sdpa":
            runners["vivit"] = lambda ours=ours: ours(video)
    video = video.to(dtype)
    with torch.inference_mode():
        for name, run in runners.items():
            outputs[name] = run().float()  # warm-up (and compilation)
        reference = outputs["vivit"]
        for name, out in outputs.items():
            if float32_logits is None:
                agree = torch.allclose(out, reference, atol=1e-4, rtol=1e-4)
            else:
                agree = (out - float32_logits).abs().max() <= 0.02 * float32_logits.abs().max()
            if not agree:
                raise SystemExit(f"{name} disagrees with vivit (max |diff| {(out - reference).abs().max():.2e}); "
                                 "refusing to report a speed")
        for _ in range(repeats):
            for name, run in runners.items():
                results.setdefault(name, []).append(timed(run))
    medians = {name: statistics.median(ts) for name, ts in results.items()}
    best_hf = min((v, k) for k, v in medians.items() if k.startswith("transformers"))
    return {"frames": num_frames, "size": img_size, "compiled": compile_models, "compile_mode": compile_mode,
            "dtype": str(dtype).split(".")[-1],
            "seconds": medians,
            "transformers_best": best_hf[1], "speedup": best_hf[0] / medians["vivit"],
            "max_abs_diff": max(float((o - reference).abs().max()) for o in outputs.values())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["8x160", "32x224"], help="FRAMESxSIZE clips")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--compile", action="store_true", help="torch.compile both models")
    parser.add_argument("--compile-mode", default=None, help="torch.compile mode for both, e.g. max-autotune")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="cast both models")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--json", help="append the results to this JSON file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for size in args.sizes:
        frames, pixels = (int(v) for v in size.split("x"))
        row = bench(frames, pixels, args.repeats, args.compile or bool(args.compile_mode), getattr(torch, args.dtype),
                    args.compile_mode)
        rows.append(row)
        times = ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in row["seconds"].items())
        how = f"compiled ({args.compile_mode or 'default'})" if row["compiled"] else "eager"
        print(f"{frames}x{pixels}² {args.dtype} {how}: {times}; "
              f"vivit is {row['speedup']:.2f}x transformers' best ({row['transformers_best']}), "
              f"max |Δlogits| {row['max_abs_diff']:.1e}", flush=True)
    if args.json:
        with open(args.json, "a") as f:
            for row in rows:
                f.write(json.dumps({**row, "torch": torch.__version__, "threads": torch.get_num_threads()}) + "\n")


if __name__ == "__main__":
    main()
