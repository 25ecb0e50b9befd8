"""Train ``vivit_motion``, the small ViViT whose weights ship inside the package.

The task (``vivit.data.synthetic``) is built so that one frame cannot tell its classes apart, and the script proves it:
next to the video model it trains the same architecture on clips made of one frame repeated, which stays near chance.

    python scripts/train_motion.py                     # writes vivit/weights/vivit_motion.{safetensors,json}
    python scripts/train_motion.py --steps 20 --out /tmp/motion   # a quick determinism check
    python scripts/train_motion.py --variant spacetime --baseline-steps 0 --out /tmp/m1   # Model 1, not shipped

Reproducible: data come from seeded NumPy generators, torch is seeded, deterministic algorithms are on and the thread
count is fixed (different thread counts may sum in different orders). 2-5 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

import vivit
from vivit.data.synthetic import MOTION_CLASSES, make_dataset

_logger = logging.getLogger("train_motion")

# Model 2 (factorised encoder): a spatial encoder per tubelet, then a temporal one over the 4 tubelet tokens.
# Measured on this task (1500 steps): 4-frame tubelets let one tubelet see a shape move 6-10 px, and width 128 leaves
# the initial loss plateau within ~200 steps; 2-frame tubelets or width 64 stayed near chance for 1000+ steps.
# Average pooling gives every patch's motion evidence a direct path to the head.
MODEL_ARGS: dict[str, Any] = dict(
    variant="factorized_encoder", img_size=32, num_frames=16, tubelet_size=(4, 8, 8), embed_dim=128, depth=2,
    num_heads=4, mlp_dim=256, temporal_depth=2, global_pool="avg", num_classes=len(MOTION_CLASSES),
)
# Model 1 (spacetime) on the same task, for measuring static-token skipping (benchmarks/static_accuracy.py): the
# same tubelets, width and pooling, and as many blocks (4) as Model 2's two encoders together. It does not ship.
SPACETIME_ARGS: dict[str, Any] = {**{k: v for k, v in MODEL_ARGS.items() if k != "temporal_depth"},
                                  "variant": "spacetime", "depth": 4}
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {  # variant -> (file stem, model arguments)
    "factorized_encoder": ("vivit_motion", MODEL_ARGS), "spacetime": ("vivit_motion_spacetime", SPACETIME_ARGS)}
WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "vivit" / "assets"


def to_input(videos: np.ndarray) -> torch.Tensor:
    """uint8 ``N x T x H x W x C`` -> float ``N x C x T x H x W`` scaled as the reference does (``x * 2 / 255 - 1``)."""
    return torch.from_numpy(videos).permute(0, 4, 1, 2, 3).float().mul_(2 / 255).sub_(1)


def single_frame(videos: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each clip replaced by one of its frames (chosen at random) repeated over time: the single-frame baseline's
    input, shaped like a clip so the very same architecture sees it."""
    idx = rng.integers(videos.shape[1], size=len(videos))
    frames = videos[np.arange(len(videos)), idx]
    return np.repeat(frames[:, None], videos.shape[1], axis=1)


def lr_at(step: int, steps: int, lr: float, warmup: int) -> float:
    """Linear warm-up, then cosine decay to zero."""
    if step < warmup:
        return lr * (step + 1) / warmup
    return 0.5 * lr * (1 + math.cos(math.pi * (step - warmup) / max(steps - warmup, 1)))


def train(videos: np.ndarray, labels: np.ndarray, *, steps: int, batch_size: int, lr: float, weight_decay: float,
          seed: int, frames_only: bool = False, log_every: int = 100,
          model_args: dict[str, Any] | None = None) -> tuple[nn.Module, list[float]]:
    """Train a fresh ``ViViT(**model_args)`` (default :data:`MODEL_ARGS`) with AdamW and a cosine schedule.

    Args:
        videos: uint8 ``N x T x H x W x C`` training clips.
        labels: ``N`` class indices.
        steps: Optimiser steps.
        batch_size: Clips per step.
        lr: Peak learning rate.
        weight_decay: AdamW weight decay (not applied to positional embeddings, CLS tokens, norms and biases).
        seed: Seeds the initialisation, the batch order and (``frames_only``) the frame choice.
        frames_only: Train the single-frame baseline: each clip becomes one random frame repeated, drawn anew at
            every visit.
        log_every: Steps between progress lines.
        model_args: The architecture (default :data:`MODEL_ARGS`, ``vivit_motion``'s).

    Returns:
        The trained model (eval mode) and the loss of every step.
    """
    torch.manual_seed(seed)
    model = vivit.ViViT(**(MODEL_ARGS if model_args is None else model_args))
    no_decay = model.no_weight_decay()
    decay = [p for n, p in model.named_parameters() if n not in no_decay and p.ndim > 1]
    rest = [p for n, p in model.named_parameters() if n in no_decay or p.ndim <= 1]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay}, {"params": rest,
                                   "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.999))
    order_gen = torch.Generator().manual_seed(seed)
    frame_rng = np.random.default_rng([seed, 2])
    warmup = max(steps // 20, 1)
    losses: list[float] = []
    order = torch.empty(0, dtype=torch.int64)
    model.train()
    start, correct, seen = time.perf_counter(), 0, 0
    for step in range(steps):
        if len(order) < batch_size:  # a new epoch: reshuffle
            order = torch.cat([order, torch.randperm(len(videos), generator=order_gen)])
        idx, order = order[:batch_size].numpy(), order[batch_size:]
        clips = single_frame(videos[idx], frame_rng) if frames_only else videos[idx]
        x, y = to_input(clips), torch.from_numpy(labels[idx])
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, steps, lr, warmup)
        logits = model(x)
        loss = nn.functional.cross_entropy(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
        correct += int((logits.argmax(1) == y).sum())
        seen += len(y)
        if (step + 1) % log_every == 0 or step + 1 == steps:
            _logger.info("step %5d/%d  loss %.4f  train acc %.3f  lr %.2e  %.0fs", step + 1, steps,
                         float(np.mean(losses[-log_every:])), correct / seen, lr_at(step, steps, lr, warmup),
                         time.perf_counter() - start)
            correct = seen = 0
    return model.eval(), losses


@torch.no_grad()
def evaluate(model: nn.Module, videos: np.ndarray, labels: np.ndarray, batch_size: int = 256) -> float:
    """Top-1 accuracy on uint8 clips."""
    correct = 0
    for i in range(0, len(videos), batch_size):
        logits = model(to_input(videos[i:i + batch_size]))
        correct += int((logits.argmax(1) == torch.from_numpy(labels[i:i + batch_size])).sum())
    return correct / len(videos)


def main(argv: list[str] | None = None) -> None:
    """Train the video model and the single-frame baseline, evaluate both, write weights and metadata."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-train", type=int, default=16000, help="training clips (generated once, reused)")
    parser.add_argument("--num-test", type=int, default=2000, help="held-out clips, from a different seed")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--baseline-steps", type=int, default=None, help="default: half of --steps; 0: skip it")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3, help="peak; 2e-3 and above stall at chance")
    parser.add_argument("--weight-decay", type=float, default=0.05)
    parser.add_argument("--threads", type=int, default=2, help="fixed so that reductions run in the same order")
    parser.add_argument("--variant", choices=list(VARIANTS), default="factorized_encoder",
                        help="factorized_encoder: vivit_motion (Model 2); spacetime: a Model 1 that does not ship")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for <stem>.{safetensors,json} (default, for vivit_motion only: vivit/assets)")
    args = parser.parse_args(argv)
    stem, model_args = VARIANTS[args.variant]
    if args.out is None:
        if args.variant != "factorized_encoder":
            parser.error(f"--variant {args.variant} needs --out: only vivit_motion ships in {WEIGHTS_DIR}")
        args.out = WEIGHTS_DIR
    if args.baseline_steps is not None and args.baseline_steps < 0:
        parser.error(f"--baseline-steps must be >= 0 (0 skips the single-frame baseline), got {args.baseline_steps}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")

    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    size, num_frames = model_args["img_size"], model_args["num_frames"]
    t0 = time.perf_counter()
    # [seed, 0] and [seed, 1] are independent streams: no held-out clip can repeat a training one.
    train_x, train_y = make_dataset(args.num_train, [args.seed, 0], num_frames=num_frames, size=size)
    test_x, test_y = make_dataset(args.num_test, [args.seed, 1], num_frames=num_frames, size=size)
    _logger.info("generated %d train + %d held-out clips %s in %.1fs", len(train_x), len(test_x), train_x.shape[1:],
                 time.perf_counter() - t0)

    t0 = time.perf_counter()
    model, losses = train(train_x, train_y, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                          weight_decay=args.weight_decay, seed=args.seed, model_args=model_args)
    train_seconds = time.perf_counter() - t0
    held_out = evaluate(model, test_x, test_y)
    _logger.info("video model: held-out accuracy %.4f (%.0fs training); first losses %s", held_out, train_seconds,
                 [round(v, 6) for v in losses[:3]])

    baseline_steps = args.steps // 2 if args.baseline_steps is None else args.baseline_steps
    single: float | None = None
    baseline_seconds = 0.0
    if baseline_steps:
        t0 = time.perf_counter()
        baseline, _ = train(train_x, train_y, steps=baseline_steps, batch_size=args.batch_size, lr=args.lr,
                            weight_decay=args.weight_decay, seed=args.seed, frames_only=True, model_args=model_args)
        baseline_seconds = time.perf_counter() - t0
        test_frames = single_frame(test_x, np.random.default_rng([args.seed, 3]))
        single = evaluate(baseline, test_frames, test_y)
        _logger.info("single-frame baseline: held-out accuracy %.4f (chance %.4f, %.0fs training)", single,
                     1 / len(MOTION_CLASSES), baseline_seconds)

    args.out.mkdir(parents=True, exist_ok=True)
    weights = args.out / f"{stem}.safetensors"
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(weights),
              metadata={"format": "pt"})  # one key: a Rust HashMap orders several differently per run
    meta = {
        "model_args": {k: list(v) if isinstance(v, tuple) else v for k, v in model_args.items()},
        "classes": MOTION_CLASSES,
        "held_out_accuracy": held_out,
        "single_frame_accuracy": single,
        "chance_accuracy": 1 / len(MOTION_CLASSES),
        "num_train": len(train_x),
        "num_test": len(test_x),
        "seed": args.seed,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "train_seconds": round(train_seconds, 1),
        "baseline_train_seconds": round(baseline_seconds, 1),
        "threads": args.threads,
        "torch_version": torch.__version__,
        "input": "uint8 RGB clips scaled x * 2 / 255 - 1, float B x C x T x H x W",
        "generator": "vivit.data.synthetic.make_dataset",
    }
    (args.out / f"{stem}.json").write_text(json.dumps(meta, indent=2) + "\n")
    _logger.info("wrote %s (%.0f kB) and %s", weights, weights.stat().st_size / 1e3, args.out / f"{stem}.json")


if __name__ == "__main__":
    main()
