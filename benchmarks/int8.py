"""int8 through ``vivit.optimize(model, "int8", calibration=clips)`` (NNCF on the OpenVINO model): accuracy and speed.

Accuracy: ``vivit_motion`` (the bundled weights) on held-out clips of its generator (``vivit.data.synthetic``, seed
``[0, 1]``, the training script's held-out stream): torch float32, OpenVINO float32, int8 at each SmoothQuant alpha of
``--alphas`` (``-1``: off) and int8 with token merging at each ``--merging`` r, calibrated on clips of another stream
(seed ``[0, 3]``). Fidelity and speed: random-weight ViViT-B models (head at unit variance) at one clip size; int8
logits against torch float32 on varied clips (generated motion clips of two other streams and uniform noise): cosine
similarity and top-5 overlap; then every path interleaved in one run (each repetition calls each path once in turn;
median), against OpenVINO's own dense model (``convert_model`` + ``compile_model`` with only the precision hint). The
precision each OpenVINO path really runs is read back from the compiled model (a bfloat16 hint on a CPU without native
bfloat16 runs float32).

Usage: ``python benchmarks/int8.py [--clips 2000] [--calibration 300] [--alphas 0.95 0.5 -1] [--merging 4 8]
[--models vivit_b_16x2 vivit_b_16x2_fe] [--size 8x160] [--speed-sizes 8x160 32x224]
[--speed-models vivit_b_16x2 vivit_b_16x2_fe] [--tome 24,188 4,8] [--repeats 5]
[--speed-calibration 16] [--vit-alphas 0.95 -1] [--cache DIR] [--profile] [--gemm 400 3136]``.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import tempfile
import time
import warnings

import numpy as np
import torch

import vivit
from vivit.data.synthetic import make_dataset
from vivit.tasks.optimize import SMOOTH_QUANT_ALPHA, cpu_flags, openvino_core


def scaled(videos: np.ndarray) -> torch.Tensor:
    """uint8 ``N x T x H x W x 3`` -> float ``N x 3 x T x H x W`` in [-1, 1], as at inference."""
    return torch.from_numpy(videos).permute(0, 4, 1, 2, 3).float() * (2 / 255) - 1


def batched(run, x: torch.Tensor, batch: int = 50) -> torch.Tensor:
    with torch.inference_mode():
        return torch.cat([run(x[i : i + batch]) for i in range(0, len(x), batch)])


def merged(model: torch.nn.Module, r: int) -> torch.nn.Module:
    """A copy of ``model`` merging ``r`` tokens per block (the original stays as it is: ``optimize`` holds it)."""
    out = copy.deepcopy(model)
    out.set_token_merging(r)
    return out.eval()


def compare(out: torch.Tensor, ref: torch.Tensor) -> tuple[float, float, float]:
    """Cosine similarity (min, mean) and top-5 overlap of ``out``'s logits against ``ref``'s."""
    cos = torch.nn.functional.cosine_similarity(out, ref)
    top5 = [len(set(a.tolist()) & set(b.tolist())) / 5 for a, b in zip(out.topk(5).indices, ref.topk(5).indices,
                                                                        strict=True)]
    return float(cos.min()), float(cos.mean()), statistics.mean(top5)


def accuracy(clips: int, calibration: int, alphas: list[float], merging: list[int], cache: str) -> None:
    model = vivit.create_model("vivit_motion", pretrained=True).eval()
    frames, size = model.num_frames, model.img_size[0]
    videos, labels = make_dataset(clips, [0, 1], num_frames=frames, size=size)
    calib, _ = make_dataset(calibration, [0, 3], num_frames=frames, size=size)
    x, y, cal = scaled(videos), torch.from_numpy(labels), scaled(calib)
    paths = {"torch float32": model,
             "openvino float32": vivit.optimize(model, "float32", cache_dir=cache, backend="openvino")}
    for alpha in alphas:
        start = time.perf_counter()
        paths[f"int8, SmoothQuant alpha {alpha:g}"] = vivit.optimize(
            model, "int8", calibration=cal, cache_dir=cache, backend="openvino", smooth_quant=alpha)
        print(f"vivit_motion int8 alpha {alpha:g}: ready in {time.perf_counter() - start:.0f} s", flush=True)
    for r in merging:
        paths[f"torch float32, token merging r={r}"] = merged(model, r)
        paths[f"int8 (alpha {SMOOTH_QUANT_ALPHA:g}), token merging r={r}"] = vivit.optimize(
            merged(model, r), "int8", calibration=cal, cache_dir=cache, backend="openvino")
    logits = {name: batched(run, x) for name, run in paths.items()}
    ref = logits["torch float32"]
    print(f"\nvivit_motion, {clips} held-out clips (seed [0, 1]), int8 calibrated on {calibration} clips (seed [0, 3])")
    print("| path | top-1 | vs float32 | argmax agrees with float32 | min / mean cosine to float32 |\n"
          "| --- | ---: | ---: | ---: | ---: |")
    base = float((ref.argmax(1) == y).float().mean() * 100)
    for name, out in logits.items():
        top1 = float((out.argmax(1) == y).float().mean() * 100)
        cos = torch.nn.functional.cosine_similarity(out, ref)
        print(f"| {name} | {top1:.2f} % | {top1 - base:+.2f} | {(out.argmax(1) == ref.argmax(1)).float().mean():.2%} "
              f"| {cos.min():.4f} / {cos.mean():.4f} |", flush=True)


def precision(compiled) -> str:
    """The floating-point precision a compiled OpenVINO model runs (its resolved inference precision)."""
    return str(compiled.get_property("INFERENCE_PRECISION_HINT").to_string())  # "f32", "bf16"


def ran(optimized) -> str:
    run = getattr(optimized, "_run", None)
    return precision(run.compiled) if hasattr(run, "compiled") else "?"


def fidelity(model: torch.nn.Module, name: str, calib: torch.Tensor, tests: torch.Tensor, alphas: list[float],
             cache: str) -> dict:
    """int8 (at each alpha) against torch float32 on ``tests``; returns the int8 runs made."""
    runs = {}
    with torch.inference_mode():
        ref = model(tests)
    for alpha in alphas:
        start = time.perf_counter()
        run = vivit.optimize(model, "int8", calibration=calib, cache_dir=cache, backend="openvino", smooth_quant=alpha)
        took = time.perf_counter() - start
        with torch.inference_mode():
            lo, mean, top5 = compare(run(tests), ref)
        print(f"| {name} | {alpha:g} | {len(calib)} | {len(tests)} | {lo:.4f} | {mean:.4f} | {top5:.0%} | "
              f"{took:.0f} s |", flush=True)
        runs[alpha] = run
    return runs


DEPTH: dict[str, int] = {}  # --depth: fewer blocks than the variant's (the test's plumbing run)


def build(name: str, frames: int, size: int) -> torch.nn.Module:
    torch.manual_seed(0)
    model = vivit.create_model(name, num_classes=400, num_frames=frames, img_size=size, **DEPTH).eval()
    torch.nn.init.normal_(model.head.weight)
    return model


def clips_for(frames: int, size: int, calibration: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Calibration clips (seed [0, 4]) and varied test clips: 8 generated of two other streams and 4 of noise."""
    calib = scaled(make_dataset(calibration, [0, 4], num_frames=frames, size=size)[0])
    tests = [scaled(make_dataset(4, [0, s], num_frames=frames, size=size)[0]) for s in (5, 6)]
    noise = torch.rand(4, 3, frames, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1
    return calib, torch.cat([*tests, noise])


def speed(name: str, frames: int, size: int, calib: torch.Tensor, r: int, repeats: int, cache: str) -> None:
    import openvino as ov

    model = build(name, frames, size)
    x = calib[:1].contiguous()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        converted = ov.convert_model(model, example_input=x)
    runs: dict = {"torch eager float32": model}
    ran_as = {"torch eager float32": "f32"}
    for hint in ("f32", "bf16"):
        compiled = openvino_core().compile_model(converted, "CPU", {"INFERENCE_PRECISION_HINT": hint})
        key = f"OpenVINO {'float32' if hint == 'f32' else 'bfloat16'} (direct)"
        runs[key] = lambda x, c=compiled: torch.from_numpy(c(x.numpy())[0])
        ran_as[key] = precision(compiled)
    for dtype in ("float32", "bfloat16"):
        runs[f"optimize {dtype}"] = vivit.optimize(model, dtype, cache_dir=cache, backend="openvino")
    runs["optimize int8"] = vivit.optimize(model, "int8", calibration=calib, cache_dir=cache, backend="openvino")
    if r:  # Models 3 and 4 cannot merge tokens (r=0)
        runs[f"torch eager float32, token merging r={r}"] = merged(model, r)
        ran_as[f"torch eager float32, token merging r={r}"] = "f32"
        for dtype in ("float32", "bfloat16"):
            runs[f"optimize {dtype}, token merging r={r}"] = vivit.optimize(merged(model, r), dtype, cache_dir=cache,
                                                                            backend="openvino")
        runs[f"optimize int8, token merging r={r}"] = vivit.optimize(merged(model, r), "int8", calibration=calib,
                                                                     cache_dir=cache, backend="openvino")
    for key, run in runs.items():
        ran_as.setdefault(key, ran(run))
    with torch.inference_mode():
        times = {k: [] for k in runs}
        for run in runs.values():
            run(x)  # warm-up
        loads = [os.getloadavg()[0]]
        for _ in range(repeats):
            for k, run in runs.items():
                t = time.perf_counter()
                run(x)
                times[k].append(time.perf_counter() - t)
            loads.append(os.getloadavg()[0])
    base = statistics.median(times["OpenVINO bfloat16 (direct)"])
    print(f"\n{name}, {frames} x {size}², batch 1, median of {repeats} interleaved repeats, load average (1 min) "
          f"{min(loads):.1f}-{max(loads):.1f}")
    print("| model | clip | path | floating point ran as | time | vs OpenVINO bfloat16 (direct) |\n"
          "| --- | --- | --- | --- | ---: | ---: |")
    for k, v in times.items():
        print(f"| {name} | {frames} × {size}² | {k} | {ran_as[k]} | {statistics.median(v) * 1000:.0f} ms | "
              f"{base / statistics.median(v):.2f}× |", flush=True)


def profile(name: str, frames: int, size: int, cache: str, x: torch.Tensor) -> None:
    """Where the time goes: OpenVINO's per-node counters (``PERF_COUNT``) of the dense float32 model and of the int8
    one read back from the cache, summed by node type and the kernel that ran it."""
    import json
    from collections import defaultdict
    from pathlib import Path

    import openvino as ov

    from vivit.tasks.optimize import cache_key

    core, found = openvino_core(), {}
    ours = cache_key(build(name, frames, size), (3, frames, size, size), ov.__version__)
    for manifest in Path(cache).glob("*/manifest.json"):
        key = json.loads(manifest.read_text())  # the cache key the entry was written under
        if all(key.get(k) == v for k, v in ours.items()):  # this dense model's entries (not the merging one's)
            int8 = key.get("int8")
            if int8 is None or int8.get("smooth_quant") == SMOOTH_QUANT_ALPHA:
                found["int8" if int8 else "float32"] = manifest.parent / "model.xml"
    for label, xml in sorted(found.items()):
        compiled = core.compile_model(core.read_model(xml), "CPU", {"PERF_COUNT": True,
                                                                   "INFERENCE_PRECISION_HINT": "f32"})
        request = compiled.create_infer_request()
        for _ in range(2):
            request.infer({0: x.numpy()})
        by_kind: dict[str, float] = defaultdict(float)
        for node in request.profiling_info:
            by_kind[f"{node.node_type} [{node.exec_type}]"] += node.real_time.total_seconds() * 1000
        total = sum(by_kind.values())
        print(f"\n{name} {label}: {total:.0f} ms in OpenVINO's counters; the largest node kinds:")
        for kind, ms in sorted(by_kind.items(), key=lambda kv: -kv[1])[:8]:
            print(f"  {kind}: {ms:.0f} ms ({ms / total:.0%})")


def gemm(tokens: int, dim: int, repeats: int) -> None:
    """What the CPU gives int8 at all: one ``Linear(dim, 4 * dim)`` (ViViT-B's MLP) on ``tokens`` tokens, OpenVINO
    float32 against NNCF int8 of the same layer, interleaved. Without VNNI (or AMX) the int8 kernel has no 8-bit dot
    product instruction to use, so int8 cannot beat float32 however the model around it is quantized."""
    import nncf
    import openvino as ov

    torch.manual_seed(0)
    layer = torch.nn.Linear(dim, 4 * dim).eval()
    x = torch.randn(1, tokens, dim)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        converted = ov.convert_model(layer, example_input=x)
    quantized = nncf.quantize(converted, nncf.Dataset([x.numpy()]), model_type=nncf.ModelType.TRANSFORMER,
                              subset_size=1)
    core = openvino_core()
    runs = {"float32": core.compile_model(converted, "CPU", {"INFERENCE_PRECISION_HINT": "f32"}),
            "int8": core.compile_model(quantized, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})}
    times: dict[str, list[float]] = {k: [] for k in runs}
    for compiled in runs.values():
        compiled(x.numpy())
    for _ in range(repeats):
        for k, compiled in runs.items():
            t = time.perf_counter()
            for _ in range(10):
                compiled(x.numpy())
            times[k].append((time.perf_counter() - t) / 10)
    flops = 2 * tokens * dim * 4 * dim
    print(f"\nOne Linear({dim}, {4 * dim}) on {tokens} tokens, OpenVINO, median of {repeats} interleaved repeats")
    print("| precision | time | GFLOP/s | vs float32 |\n| --- | ---: | ---: | ---: |")
    base = statistics.median(times["float32"])
    for k, v in times.items():
        print(f"| {k} | {statistics.median(v) * 1000:.2f} ms | {flops / statistics.median(v) / 1e9:.0f} | "
              f"{base / statistics.median(v):.2f}× |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=2000, help="vivit_motion held-out clips (0: skip)")
    parser.add_argument("--calibration", type=int, default=300, help="vivit_motion calibration clips")
    parser.add_argument("--alphas", type=float, nargs="*", default=[SMOOTH_QUANT_ALPHA],
                        help="SmoothQuant alphas on vivit_motion (-1: off)")
    parser.add_argument("--merging", type=int, nargs="*", default=[], help="token merging r on vivit_motion")
    parser.add_argument("--models", nargs="*", default=["vivit_b_16x2"], help="ViViT-B variants: int8 fidelity")
    parser.add_argument("--vit-alphas", type=float, nargs="*", default=[SMOOTH_QUANT_ALPHA],
                        help="SmoothQuant alphas for the first of --models")
    parser.add_argument("--size", default="8x160", help="FRAMESxSIZE of the fidelity runs")
    parser.add_argument("--speed-sizes", nargs="*", help="FRAMESxSIZE clips of the speed runs (default --size)")
    parser.add_argument("--speed-models", nargs="*", default=["vivit_b_16x2"])
    parser.add_argument("--tome", nargs="*", default=[], help="token merging r per --speed-models entry, one r per "
                        "speed size joined by commas (24,188: r=24 at the first size, r=188 at the second; 0: none)")
    parser.add_argument("--speed-calibration", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--depth", type=int, help="blocks of the ViViT-B models (default the variant's)")
    parser.add_argument("--cache", help="cache folder (default: a temporary one)")
    parser.add_argument("--profile", action="store_true", help="per-node-kind time of the --speed-models' float32 "
                        "and int8 models (OpenVINO's counters)")
    parser.add_argument("--gemm", type=int, nargs="*", default=[], help="token counts for the one-Linear int8 "
                        "against float32 measurement (e.g. 400 3136)")
    args = parser.parse_args()
    if args.depth:
        DEPTH["depth"] = args.depth
    isa = "VNNI" if {"avx512_vnni", "avx_vnni"} & cpu_flags() else "no VNNI"
    bf16 = "native bfloat16" if {"avx512_bf16", "amx_bf16"} & cpu_flags() else "no native bfloat16"
    name = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
                "?") if os.path.exists("/proc/cpuinfo") else "?"
    print(f"{name}, {os.cpu_count()} CPUs, {isa}, {bf16}; torch {torch.__version__}, {torch.get_num_threads()} "
          f"threads; load average {os.getloadavg()[0]:.1f}", flush=True)
    for tokens in args.gemm:
        gemm(tokens, 768, max(args.repeats, 1))
    with tempfile.TemporaryDirectory() as tmp:
        cache = args.cache or tmp
        if args.clips:
            accuracy(args.clips, args.calibration, args.alphas, args.merging, cache)
        frames, size = (int(v) for v in args.size.split("x"))
        calib, tests = clips_for(frames, size, args.speed_calibration)
        if args.models:
            print(f"\nint8 against torch float32, {frames} × {size}², random weights (head at unit variance)")
            print("| model | SmoothQuant alpha | calibration clips | test clips | min cosine | mean cosine | "
                  "top-5 overlap | quantized in |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for i, name in enumerate(args.models):
            fidelity(build(name, frames, size), name, calib, tests,
                     args.vit_alphas if i == 0 else [SMOOTH_QUANT_ALPHA], cache)
        for i, speed_size in enumerate(args.speed_sizes or [args.size]):
            frames, size = (int(v) for v in speed_size.split("x"))
            calib = clips_for(frames, size, args.speed_calibration)[0]
            for name, rs in zip(args.speed_models, args.tome + ["0"] * len(args.speed_models), strict=False):
                r = [int(v) for v in rs.split(",")]
                if args.repeats:
                    speed(name, frames, size, calib, r[min(i, len(r) - 1)], args.repeats, cache)
                if args.profile:
                    profile(name, frames, size, cache, calib[:1].contiguous())


if __name__ == "__main__":
    main()
