"""Accuracy of static-token skipping (``drop_static``, Run-Length Tokenization's rule) on the motion task.

A small Model 1 trained like ``vivit_motion`` (``scripts/train_motion.py --variant spacetime``; it does not ship) is
scored on held-out clips of its generator (``vivit.data.synthetic``, seed ``[seed, 1]``: the training script's
held-out stream, never a training clip) densely and with ``drop_static`` at several thresholds: top-1, the mean share
of tokens kept, the largest logit change against dense, and per-class top-1 for the classes where a threshold changes
it. Accuracy only: speed is in ``benchmarks/timeline.py``.

Usage: ``python benchmarks/static_accuracy.py --model DIR`` (a folder with
``vivit_motion_spacetime.{safetensors,json}``), or ``--steps N`` to train one first into a temporary folder (a quick
plumbing check).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file

import vivit
from vivit.data.synthetic import MOTION_CLASSES, make_dataset
from vivit.model.static import DROP_STATIC_DEFAULT, static_keep

ROOT = Path(__file__).resolve().parents[1]
STEM = "vivit_motion_spacetime"


def load(folder: Path) -> tuple[vivit.ViViT, dict]:
    """The Model 1 in ``folder`` and its training metadata."""
    meta = json.loads((folder / f"{STEM}.json").read_text())
    args = {k: tuple(v) if isinstance(v, list) else v for k, v in meta["model_args"].items()}
    if args.get("variant") != "spacetime":
        raise SystemExit(f"{folder / STEM}.json describes a {args.get('variant')!r} model; static skipping needs "
                         "Model 1 (train one with scripts/train_motion.py --variant spacetime)")
    model = vivit.ViViT(**args)
    model.load_state_dict(load_file(str(folder / f"{STEM}.safetensors")))
    return model.eval(), meta


def train(folder: Path, steps: int, num_train: int) -> None:
    """A Model 1 trained by the training script (its own process: it fixes threads and determinism globally)."""
    cmd = [sys.executable, str(ROOT / "scripts" / "train_motion.py"), "--variant", "spacetime", "--steps", str(steps),
           "--num-train", str(num_train), "--num-test", "8", "--baseline-steps", "0", "--out", str(folder)]
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)


@torch.no_grad()
def logits_of(model: vivit.ViViT, x: torch.Tensor, tau: float, batch_size: int = 256) -> torch.Tensor:
    """Logits of every clip with ``drop_static=tau`` (0: dense)."""
    model.set_drop_static(tau)
    try:
        return torch.cat([model(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])
    finally:
        model.set_drop_static(0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help=f"folder with {STEM}.{{safetensors,json}}")
    parser.add_argument("--steps", type=int, default=0, help="without --model: train one for this many steps")
    parser.add_argument("--num-train", type=int, default=16000, help="training clips with --steps")
    parser.add_argument("--clips", type=int, default=2000, help="held-out clips")
    parser.add_argument("--taus", type=float, nargs="+", default=[0.02, DROP_STATIC_DEFAULT, 0.09, 0.18],
                        help="drop_static thresholds, in the model's [-1, 1] units (0: dense, exactly)")
    parser.add_argument("--json", type=Path, help="append the results as one JSON line")
    args = parser.parse_args()
    if (args.model is None) == (args.steps <= 0):
        parser.error("give a trained model (--model DIR) or --steps N to train one, not both")
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.model
        if folder is None:
            folder = Path(tmp)
            train(folder, args.steps, args.num_train)
        model, meta = load(folder)
    cfg = model.model_args
    videos, labels = make_dataset(args.clips, [meta["seed"], 1], num_frames=cfg["num_frames"], size=cfg["img_size"])
    x = torch.from_numpy(videos).permute(0, 4, 1, 2, 3).float().mul_(2 / 255).sub_(1)  # as the training script
    y = torch.from_numpy(labels)
    dense = logits_of(model, x, 0.0)
    settings = {"dense": (0.0, dense), **{f"tau={tau:g}" + (" (default)" if tau == DROP_STATIC_DEFAULT else ""):
                                          (tau, logits_of(model, x, tau)) for tau in args.taus}}
    rows, per_class = {}, {}
    for name, (tau, logits) in settings.items():
        right = (logits.argmax(1) == y).numpy()
        kept = float(static_keep(x, model.tubelet_size, tau).float().mean()) if tau else 1.0
        rows[name] = {"tau": tau, "top1": round(float(right.mean()), 4), "kept": round(kept, 4),
                      "max_logit_diff": float((logits - dense).abs().max()),
                      "agree": round(float((logits.argmax(1) == dense.argmax(1)).float().mean()), 4)}
        per_class[name] = [float(right[labels == c].mean()) if (labels == c).any() else None  # no clip of c
                           for c in range(len(MOTION_CLASSES))]
    print(f"Model 1 ({STEM}, {meta['steps']} steps, {cfg['depth']} blocks of width {cfg['embed_dim']}, tubelets "
          f"{'x'.join(map(str, model.tubelet_size))}) on {args.clips} held-out motion clips (seed [{meta['seed']}, 1])")
    print("\n| setting | top-1 | tokens kept | top-1 agrees with dense | max abs logit change |")
    print("|---|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {100 * r['top1']:.1f} % | {100 * r['kept']:.1f} % | {100 * r['agree']:.1f} % "
              f"| {r['max_logit_diff']:.3g} |")
    changed = [c for c in range(len(MOTION_CLASSES))
               if any(v[c] != per_class["dense"][c] for v in per_class.values())]  # the same clips: exact
    print("\nper-class top-1 where a threshold changes it" + ("" if changed else ": none changes"))
    if changed:
        print("\n| class | " + " | ".join(settings) + " |")
        print("|---|" + "---|" * len(settings))
        for c in changed:
            print(f"| {MOTION_CLASSES[c]} | " + " | ".join(f"{100 * v[c]:.1f} %" for v in per_class.values()) + " |")
    if args.json:
        with args.json.open("a") as f:
            f.write(json.dumps({"clips": args.clips, "steps": meta["steps"], "rows": rows,
                                "per_class": {k: dict(zip(MOTION_CLASSES, v, strict=True))
                                              for k, v in per_class.items()}}) + "\n")


if __name__ == "__main__":
    main()
