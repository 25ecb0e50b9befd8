"""int8 through ``vivit.optimize(model, "int8", calibration=clips)`` (NNCF on the OpenVINO model): accuracy and speed.

Accuracy: ``vivit_motion`` (the bundled weights) on held-out clips of its generator (``vivit.data.synthetic``, seed
``[0, 1]``, the training script's held-out stream), float32 torch vs OpenVINO float32 vs int8 calibrated on clips of
another stream (seed ``[0, 3]``). Speed: random-weight ViViT-B models at one clip size, every path interleaved in one
run (each repetition calls each path once in turn; median), against OpenVINO's own dense model (``convert_model`` +
``compile_model`` with only the precision hint); also the cosine similarity and top-5 overlap of the int8 logits
against float32 on generated clips.

Usage: ``python benchmarks/int8.py [--clips 2000] [--calibration 300] [--models vivit_b_16x2] [--size 8x160]
[--repeats 5] [--speed-calibration 16]``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings

import numpy as np
import torch

import vivit
from vivit.data.synthetic import make_dataset
from vivit.tasks.optimize import openvino_core


def scaled(videos: np.ndarray) -> torch.Tensor:
    """uint8 ``N x T x H x W x 3`` -> float ``N x 3 x T x H x W`` in [-1, 1], as at inference."""
    return torch.from_numpy(videos).permute(0, 4, 1, 2, 3).float() * (2 / 255) - 1


def batched(run, x: torch.Tensor, batch: int = 50) -> torch.Tensor:
    with torch.inference_mode():
        return torch.cat([run(x[i : i + batch]) for i in range(0, len(x), batch)])


def accuracy(clips: int, calibration: int, cache: str) -> None:
    model = vivit.create_model("vivit_motion", pretrained=True).eval()
    frames, size = model.num_frames, model.img_size[0]
    videos, labels = make_dataset(clips, [0, 1], num_frames=frames, size=size)
    calib, _ = make_dataset(calibration, [0, 3], num_frames=frames, size=size)
    x, y = scaled(videos), torch.from_numpy(labels)
    paths = {"torch float32": model, "openvino float32": vivit.optimize(model, "float32", cache_dir=cache),
             "int8": vivit.optimize(model, "int8", calibration=scaled(calib), cache_dir=cache)}
    logits = {name: batched(run, x) for name, run in paths.items()}
    ref = logits["torch float32"]
    print(f"vivit_motion, {clips} held-out clips, int8 calibrated on {calibration} other clips")
    print("| path | top-1 | agrees with float32 | min cosine to float32 |\n| --- | ---: | ---: | ---: |")
    for name, out in logits.items():
        cos = torch.nn.functional.cosine_similarity(out, ref).min()
        print(f"| {name} | {(out.argmax(1) == y).float().mean() * 100:.2f} % | "
              f"{(out.argmax(1) == ref.argmax(1)).float().mean() * 100:.2f} % | {cos:.4f} |")


def speed(name: str, frames: int, size: int, calibration: int, repeats: int, cache: str) -> None:
    import openvino as ov

    torch.manual_seed(0)
    model = vivit.create_model(name, num_classes=400, num_frames=frames, img_size=size).eval()
    torch.nn.init.normal_(model.head.weight)
    videos, _ = make_dataset(calibration + 8, [0, 4], num_frames=frames, size=size)
    clips = scaled(videos)
    calib, tests = clips[:calibration], clips[calibration:]
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        converted = ov.convert_model(model, example_input=tests[:1])
    runs = {}
    for precision in ("f32", "bf16"):
        compiled = openvino_core().compile_model(converted, "CPU", {"INFERENCE_PRECISION_HINT": precision})
        runs[f"openvino {precision}"] = lambda x, c=compiled: torch.from_numpy(c(x.numpy())[0])
    runs["optimize bfloat16"] = vivit.optimize(model, "bfloat16", cache_dir=cache)
    start = time.perf_counter()
    runs["optimize int8"] = vivit.optimize(model, "int8", calibration=calib, cache_dir=cache)
    print(f"{name}: quantized on {calibration} clips in {time.perf_counter() - start:.0f} s")
    with torch.inference_mode():
        ref = model(tests)
        for key in ("optimize bfloat16", "optimize int8"):
            out = runs[key](tests)
            cos = torch.nn.functional.cosine_similarity(out, ref)
            top5 = [len(set(a.tolist()) & set(b.tolist())) / 5 for a, b in zip(out.topk(5).indices,
                                                                            ref.topk(5).indices, strict=True)]
            print(f"{name} {key} vs torch float32 on {len(tests)} clips: cosine min {cos.min():.4f} mean "
                  f"{cos.mean():.4f}, top-5 overlap {statistics.mean(top5) * 100:.0f} %")
        x = tests[:1]
        times = {k: [] for k in runs}
        for run in runs.values():
            run(x)  # warm-up
        for _ in range(repeats):
            for k, run in runs.items():
                t = time.perf_counter()
                run(x)
                times[k].append(time.perf_counter() - t)
    base = statistics.median(times["openvino bf16"])
    print("| model | clip | path | time | vs OpenVINO bfloat16 |\n| --- | --- | --- | ---: | ---: |")
    for k, v in times.items():
        print(f"| {name} | {frames} × {size}² | {k} | {statistics.median(v) * 1000:.0f} ms | "
              f"{base / statistics.median(v):.2f}× |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=2000)
    parser.add_argument("--calibration", type=int, default=300)
    parser.add_argument("--models", nargs="*", default=["vivit_b_16x2"])
    parser.add_argument("--size", default="8x160", help="FRAMESxSIZE")
    parser.add_argument("--speed-calibration", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    with tempfile.TemporaryDirectory() as cache:
        if args.clips:
            accuracy(args.clips, args.calibration, cache)
        frames, size = (int(v) for v in args.size.split("x"))
        for name in args.models:
            speed(name, frames, size, args.speed_calibration, args.repeats, cache)


if __name__ == "__main__":
    main()
