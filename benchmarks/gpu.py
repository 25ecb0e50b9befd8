"""GPU throughput of the ViViT-B variants and ViViT-L FE at 32x224²: clips/s, MFU, peak memory, SDPA backend.

Usage (on a machine with a CUDA GPU)::

    python benchmarks/gpu.py [--dtype bf16] [--batch 8 | --batch max] [--train] [--json results.jsonl]
    python benchmarks/gpu.py --memory-sweep --frames 8 16 32 64 128   # activation memory vs clip length

MFU = model FLOPs per second / the GPU's dense peak in that dtype (16-bit peaks of known GPUs are looked up by name;
other GPUs, and fp32, need ``--peak-tflops``, else no MFU is reported). Model FLOPs are counted with
``torch.utils.flop_counter`` on the meta device (2 x MACs; a training step counts 3x the forward) for ``model(x)``,
the work the timed forward does (its last block computes only the CLS token under token pooling). The SDPA backend
is pinned in turn to flash and memory-efficient: a variant whose attention shapes a fused kernel refuses raises, so
"math" (a materialised attention matrix) can never run silently.
``--batch max`` doubles the batch until the GPU runs out of memory and times the largest that fits.
``--device cpu`` runs the same code on the CPU (tiny settings only; the test suite uses it to keep the script working).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

import vivit

MODELS = ("vivit_b_16x2", "vivit_b_16x2_fe", "vivit_b_16x2_fsa", "vivit_b_16x2_fdp", "vivit_l_16x2_fe")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
BACKENDS = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION}
# Dense (no sparsity) bf16/fp16 tensor-core peaks, TFLOP/s, from the vendors' data sheets.
PEAK_TFLOPS = {"H200": 989.0, "H100 PCIe": 756.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0}


def peak_tflops(device_name: str) -> float | None:
    """The dense 16-bit peak of a known GPU (longest matching name wins), else ``None``."""
    hits = [key for key in PEAK_TFLOPS if key in device_name]
    return PEAK_TFLOPS[max(hits, key=len)] if hits else None


DEPTH: dict[str, int] = {}  # --depth: fewer blocks than the variant's (the test's plumbing run)


def forward_flops(name: str, frames: int, size: int) -> float:
    """FLOPs (2 x MACs) of ``model(x)`` for one clip."""
    with torch.device("meta"):
        model = vivit.create_model(name, num_frames=frames, img_size=size, **DEPTH).eval()
        x = torch.empty(1, 3, frames, size, size)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    return float(counter.get_total_flops())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_step(model: torch.nn.Module, x: torch.Tensor, train: bool, dtype: torch.dtype,
              backend: SDPBackend) -> Callable[[], None]:
    """One inference forward, or one training step (forward, backward, SGD update), under the pinned backend."""
    opt = torch.optim.SGD(model.parameters(), lr=1e-3) if train else None
    autocast = dict(device_type=x.device.type, dtype=dtype, enabled=dtype != torch.float32)

    def step() -> None:
        with sdpa_kernel(backend), torch.autocast(**autocast):
            if opt is not None:
                model(x).float().logsumexp(-1).mean().backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
            else:
                with torch.inference_mode():
                    model(x)

    return step


def run(name: str, dtype: torch.dtype, batch: int, train: bool, steps: int, backend: SDPBackend,
        device: torch.device, frames: int = 32, size: int = 224) -> dict:
    """Seconds per step (mean of ``steps`` after 3 warm-ups) and the peak memory above the weights."""
    model = vivit.create_model(name, num_frames=frames, img_size=size, **DEPTH).to(device).train(train)
    x = torch.randn(batch, 3, frames, size, size, device=device)
    step = make_step(model, x, train, dtype, backend)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        baseline = torch.cuda.memory_allocated(device)
    for _ in range(3):
        step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    seconds = (time.perf_counter() - start) / steps
    peak = (torch.cuda.max_memory_allocated(device) - baseline) / 2**30 if device.type == "cuda" else None
    return {"model": name, "batch": batch, "frames": frames, "size": size, "train": train, "backend": backend.name,
            "seconds_per_step": seconds, "clips_per_s": batch / seconds, "peak_mem_above_weights_gib": peak}


def largest_batch(name: str, dtype: torch.dtype, train: bool, backend: SDPBackend, device: torch.device,
                  frames: int, size: int, limit: int = 1024) -> int:
    """Double the batch from 1 until a step runs out of memory; the last one that fitted (0 if none)."""
    fitted, batch = 0, 1
    while batch <= limit:
        try:
            run(name, dtype, batch, train, 1, backend, device, frames, size)
        except torch.cuda.OutOfMemoryError:
            break
        finally:
            if device.type == "cuda":
                torch.cuda.empty_cache()
        fitted, batch = batch, batch * 2
    return fitted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    parser.add_argument("--batch", default="8", help="clips per step, or 'max' (largest power of two that fits)")
    parser.add_argument("--train", action="store_true", help="time a training step instead of inference")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--frames", nargs="+", type=int, default=[32], help="clip lengths (several: a sweep)")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--backends", nargs="+", choices=sorted(BACKENDS), default=["flash", "efficient"])
    parser.add_argument("--memory-sweep", action="store_true",
                        help="batch 1 over --frames: peak memory should grow linearly with tokens")
    parser.add_argument("--peak-tflops", type=float, default=None, help="dense peak of the GPU in this dtype")
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu for a smoke run")
    parser.add_argument("--depth", type=int, help="blocks of each encoder (default the variant's; a smoke run)")
    parser.add_argument("--json", help="append results to this JSON-lines file")
    args = parser.parse_args()
    if args.depth:
        DEPTH["depth"] = args.depth
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("benchmarks/gpu.py needs a CUDA GPU (or --device cpu for a smoke run)")
    gpu_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    # The lookup table holds 16-bit tensor-core peaks; an fp32 MFU needs the fp32 (or TF32) peak given explicitly.
    peak = args.peak_tflops or (peak_tflops(gpu_name) if args.dtype != "fp32" else None)
    if device.type == "cuda" and peak is None and args.dtype != "fp32":
        raise SystemExit(f"unknown dense peak for {gpu_name!r}: pass --peak-tflops")
    if args.memory_sweep:
        args.batch = "1"
    rows = []
    for name in args.models:
        for frames in args.frames:
            flops = forward_flops(name, frames, args.size) * (3 if args.train else 1)
            for backend in (BACKENDS[b] for b in args.backends):
                try:
                    batch = (largest_batch(name, DTYPES[args.dtype], args.train, backend, device, frames, args.size)
                             if args.batch == "max" else int(args.batch))
                    if batch == 0:
                        raise torch.cuda.OutOfMemoryError("batch 1 does not fit")
                    row = run(name, DTYPES[args.dtype], batch, args.train, args.steps, backend, device, frames,
                              args.size)
                except RuntimeError as err:  # the kernel refused these shapes / dtype, or out of memory
                    print(f"{name} {frames}f {backend.name}: not available ({str(err).splitlines()[0][:120]})")
                    continue
                finally:
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
                row["mfu"] = flops * row["clips_per_s"] / (peak * 1e12) if peak else None
                row["dtype"] = args.dtype
                rows.append(row)
                mem, mfu = row["peak_mem_above_weights_gib"], row["mfu"]
                mfu_text = "-" if mfu is None else f"{mfu:.1%}"
                mem_text = "-" if mem is None else f"{mem:.2f} GiB"
                print(f"{name:18s} {frames:4d}f {backend.name:20s} batch {row['batch']:4d} "
                      f"{row['clips_per_s']:8.2f} clips/s  MFU {mfu_text}  memory {mem_text}", flush=True)
    if args.json:
        with open(args.json, "a") as f:
            for row in rows:
                f.write(json.dumps({**row, "gpu": gpu_name, "torch": torch.__version__}) + "\n")


if __name__ == "__main__":
    main()
