"""CPU backends side by side: torch eager, torch.compile, OpenVINO and ``vivit.optimize``, float32 and bfloat16.

One interleaved run per model and clip size: every path is warmed up, then each repetition calls every path once in
turn, so a busy machine slows them alike; the table gives the median. For each path: seconds per clip, GFLOP/s (the
forward's FLOPs counted by ``torch.utils.flop_counter``), the fraction of the CPU's peak and the max abs difference of
the logits from eager float32 (random weights; the head is drawn with unit variance so logits are of order 10-100).

The peak is ``cores x clock x FLOPs per cycle per core`` with the clock from ``/proc/cpuinfo`` ("cpu MHz", the
nominal clock on most VMs) and FLOPs per cycle from the instruction set (``PEAK_FLOPS_PER_CYCLE``); ``--peak-gflops``
overrides it.

Usage: ``python benchmarks/cpu_backends.py [--sizes 8x160 32x224] [--models vivit_b_16x2 vivit_b_16x2_fe]
[--paths eager compile openvino optimize] [--dtypes float32 bfloat16] [--repeats 3] [--json out.jsonl]``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import time
import warnings
from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

import vivit
from vivit.tasks.optimize import cpu_flags, openvino_core

PATHS = ("eager", "compile", "openvino", "optimize")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
# FLOPs per cycle per core (one FMA = 2 FLOPs): float32 and bfloat16, by instruction set. Zen 4 runs AVX-512 on two
# 256-bit FMA pipes (half of Intel's two 512-bit ones); AVX512-BF16's dot product doubles the float32 rate; an AMX
# tile unit does 1024 bfloat16 FLOPs per cycle.
PEAK_FLOPS_PER_CYCLE = {
    "amx": (64, 1024),
    "avx512 (Intel, 2 FMA units)": (64, 128),
    "avx512 (AMD Zen 4, 256-bit pipes)": (32, 64),
    "avx2": (32, 32),
}


def cpu_isa() -> str:
    """The instruction set that sets this CPU's peak (a key of ``PEAK_FLOPS_PER_CYCLE``)."""
    flags = cpu_flags()
    if "amx_bf16" in flags:
        return "amx"
    if "avx512f" in flags:
        amd = "AuthenticAMD" in open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else False
        return "avx512 (AMD Zen 4, 256-bit pipes)" if amd else "avx512 (Intel, 2 FMA units)"
    return "avx2"


def cpu_name_and_mhz() -> tuple[str, float]:
    name, mhz = platform.processor() or "unknown CPU", 0.0
    if os.path.exists("/proc/cpuinfo"):
        for line in open("/proc/cpuinfo"):
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                name = value.strip()
            elif key.strip() == "cpu MHz":
                mhz = float(value)
    return name, mhz


def peak_gflops(threads: int, override: float | None, clock_ghz: float | None = None) -> tuple[dict[str, float], str]:
    """Peak GFLOP/s per dtype and how it was computed."""
    if override:
        return {"float32": override, "bfloat16": override}, f"{override} GFLOP/s (--peak-gflops)"
    isa, (name, mhz) = cpu_isa(), cpu_name_and_mhz()
    mhz = clock_ghz * 1e3 if clock_ghz else mhz
    fp32, bf16 = PEAK_FLOPS_PER_CYCLE[isa]
    peaks = {"float32": threads * mhz / 1e3 * fp32, "bfloat16": threads * mhz / 1e3 * bf16}
    how = (f"{name}, {isa}: {threads} cores x {mhz / 1e3:.2f} GHz x {fp32} (float32) / {bf16} (bfloat16) "
           f"FLOPs per cycle = {peaks['float32']:.0f} / {peaks['bfloat16']:.0f} GFLOP/s")
    return peaks, how


def forward_gflop(name: str, frames: int, size: int) -> float:
    """FLOPs (2 per multiply-accumulate) of ``model(x)``, counted on the meta device."""
    with torch.device("meta"):
        model = vivit.create_model(name, num_classes=400, num_frames=frames, img_size=size).eval()
        video = torch.empty(1, 3, frames, size, size)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(video)
    return counter.get_total_flops() / 1e9


def build_paths(model: torch.nn.Module, video: torch.Tensor, paths: list[str],
                dtypes: list[str]) -> dict[str, Callable[[], torch.Tensor]]:
    """``"<path> <dtype>"`` -> a call returning float32 logits."""
    runs: dict[str, Callable[[], torch.Tensor]] = {}
    for dtype_name in dtypes:
        dtype = DTYPES[dtype_name]
        cast = model if dtype == torch.float32 else copy.deepcopy(model).to(dtype)
        x = video.to(dtype)
        if "eager" in paths:
            runs[f"eager {dtype_name}"] = lambda m=cast, x=x: m(x).float()
        if "compile" in paths:
            torch._inductor.config.freezing = True  # weights as constants: Inductor's fastest CPU inference
            compiled = torch.compile(cast)
            runs[f"compile {dtype_name}"] = lambda m=compiled, x=x: m(x).float()
        if "openvino" in paths:
            import openvino as ov

            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")
                converted = ov.convert_model(model, example_input=video)
            hint = {"INFERENCE_PRECISION_HINT": "bf16" if dtype == torch.bfloat16 else "f32"}
            compiled_ov = openvino_core().compile_model(converted, "CPU", hint)  # one Core per process: see the guide
            runs[f"openvino {dtype_name}"] = lambda c=compiled_ov: torch.from_numpy(c(video.numpy())[0])
        if "optimize" in paths:
            optimized = vivit.optimize(model, dtype)
            runs[f"optimize {dtype_name}"] = lambda o=optimized: o(video)
    return runs


def bench(name: str, frames: int, size: int, paths: list[str], dtypes: list[str], repeats: int) -> dict:
    torch.manual_seed(0)
    model = vivit.create_model(name, num_classes=400, num_frames=frames, img_size=size).eval()
    torch.nn.init.normal_(model.head.weight)
    video = torch.rand(1, 3, frames, size, size) * 2 - 1
    with torch.inference_mode():
        ref = model(video)
        runs = build_paths(model, video, paths, dtypes)
        errors = {k: float((run() - ref).abs().max()) for k, run in runs.items()}  # also the warm-up
        times: dict[str, list[float]] = {k: [] for k in runs}
        for _ in range(repeats):
            for k, run in runs.items():
                start = time.perf_counter()
                run()
                times[k].append(time.perf_counter() - start)
    return {"model": name, "frames": frames, "size": size, "gflop": forward_gflop(name, frames, size),
            "seconds": {k: statistics.median(v) for k, v in times.items()}, "max_abs_err": errors,
            "logit_scale": float(ref.abs().max())}


def table(rows: list[dict], peaks: dict[str, float]) -> str:
    lines = ["| model | clip | path | dtype | time | GFLOP/s | of peak | vs OpenVINO | max abs err (of logits up to) |",
             "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for row in rows:
        for key, seconds in row["seconds"].items():
            path, dtype = key.split()
            ov = row["seconds"].get(f"openvino {dtype}")
            ratio = f"{ov / seconds:.2f}×" if ov else ""
            rate = row["gflop"] / seconds
            lines.append(f"| {row['model']} | {row['frames']} × {row['size']}² | {path} | {dtype} | "
                         f"{seconds * 1000:.0f} ms | {rate:.0f} | {rate / peaks[dtype]:.0%} | {ratio} | "
                         f"{row['max_abs_err'][key]:.1e} ({row['logit_scale']:.0f}) |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["vivit_b_16x2", "vivit_b_16x2_fe"])
    parser.add_argument("--sizes", nargs="+", default=["8x160", "32x224"], help="FRAMESxSIZE clips")
    parser.add_argument("--paths", nargs="+", default=list(PATHS), choices=PATHS)
    parser.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--peak-gflops", type=float, help="the CPU's peak, instead of computing it")
    parser.add_argument("--clock-ghz", type=float, help="the clock the peak assumes (default /proc/cpuinfo's, the "
                        "nominal one on most VMs: a boosting CPU then shows more than 100 %%)")
    parser.add_argument("--json", help="append the results to this JSON-lines file")
    args = parser.parse_args()
    peaks, how = peak_gflops(torch.get_num_threads(), args.peak_gflops, args.clock_ghz)
    print(f"peak: {how}; torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    rows = []
    for size in args.sizes:
        frames, pixels = (int(v) for v in size.split("x"))
        for name in args.models:
            row = bench(name, frames, pixels, args.paths, args.dtypes, args.repeats)
            rows.append(row)
            print(table([row], peaks), flush=True)
            if args.json:
                with open(args.json, "a") as f:
                    f.write(json.dumps({**row, "peak": how, "threads": torch.get_num_threads()}) + "\n")
    print("\n" + table(rows, peaks))


if __name__ == "__main__":
    main()
