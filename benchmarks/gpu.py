"""GPU throughput of the ViViT-B variants and ViViT-L FE at 32x224²: clips/s, MFU, peak memory, SDPA backend.

Usage (on a machine with a CUDA GPU): ``python benchmarks/gpu.py [--dtype bf16] [--batch 8] [--train] [--json f]``.
MFU = model FLOPs per second / the GPU's dense peak (``--peak-tflops``; H100 SXM bf16 dense ~989). Model FLOPs are
counted with ``torch.utils.flop_counter`` on the meta device (2 x MACs; a training step counts 3x the forward) for
``model(x)``, the work the timed forward does (its last block computes only the CLS token under token pooling).
The SDPA backend is pinned in turn to flash and memory-efficient: a variant whose attention shapes the fused kernels
refuse raises, so "math" (a materialised attention matrix) can never run silently.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

import vivit

MODELS = ("vivit_b_16x2", "vivit_b_16x2_fe", "vivit_b_16x2_fsa", "vivit_b_16x2_fdp", "vivit_l_16x2_fe")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def forward_flops(name: str) -> float:
    """FLOPs (2 x MACs) of one 32x224² clip."""
    with torch.device("meta"):
        model = vivit.create_model(name).eval()
        x = torch.empty(1, 3, 32, 224, 224)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    return float(counter.get_total_flops())


def run(name: str, dtype: torch.dtype, batch: int, train: bool, steps: int, backend: SDPBackend) -> dict:
    """Median-free simple timing: ``steps`` timed iterations after 3 warm-ups."""
    model = vivit.create_model(name).cuda()
    model.train(train)
    x = torch.randn(batch, 3, 32, 224, 224, device="cuda")
    opt = torch.optim.SGD(model.parameters(), lr=1e-3) if train else None
    torch.cuda.reset_peak_memory_stats()

    def step() -> None:
        with sdpa_kernel(backend), torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
            if train:
                model(x).float().logsumexp(-1).mean().backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
            else:
                with torch.inference_mode():
                    model(x)

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / steps
    return {"model": name, "batch": batch, "train": train, "backend": backend.name, "seconds_per_step": seconds,
            "clips_per_s": batch / seconds, "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--train", action="store_true", help="time a training step instead of inference")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="dense peak of the GPU in this dtype")
    parser.add_argument("--json", help="append results to this JSON-lines file")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/gpu.py needs a CUDA GPU")
    rows = []
    for name in args.models:
        flops = forward_flops(name) * (3 if args.train else 1)
        for backend in (SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION):
            try:
                row = run(name, DTYPES[args.dtype], args.batch, args.train, args.steps, backend)
            except RuntimeError as err:  # the kernel refused these shapes / dtype
                print(f"{name} {backend.name}: not available ({str(err).splitlines()[0][:120]})")
                torch.cuda.empty_cache()
                continue
            row["mfu"] = flops * row["clips_per_s"] / (args.peak_tflops * 1e12)
            row["dtype"] = args.dtype
            rows.append(row)
            print(f"{name:18s} {backend.name:20s} {row['clips_per_s']:8.1f} clips/s  MFU {row['mfu'] * 100:5.1f}%  "
                  f"peak {row['peak_mem_gib']:.1f} GiB", flush=True)
            torch.cuda.empty_cache()
    if args.json:
        with open(args.json, "a") as f:
            for row in rows:
                f.write(json.dumps({**row, "gpu": torch.cuda.get_device_name(), "torch": torch.__version__}) + "\n")


if __name__ == "__main__":
    main()
