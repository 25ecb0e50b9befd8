"""How often the approximate options keep the dense model's window labels on a long generated video.

``vivit_motion`` (a small Model 2, the embedded motion classifier) is run over a generated video whose motion class
changes every few seconds (``vivit.data.synthetic``, the classes it was trained on, a seed the training never saw):
densely, with slice reuse (exact: it must agree everywhere), and with token merging on its spatial encoder at several
``r``. For each setting: the share of windows whose top-1 label equals the dense model's, and the share that equals
the true motion for the windows that lie inside one motion.
Usage: ``python benchmarks/timeline_agreement.py [--changes 60] [--json out]``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

import vivit
from vivit.data.synthetic import MOTION_CLASSES, make_sequence
from vivit.data.video import write_video
from vivit.tasks.timeline import timeline

FPS, SECONDS_EACH = 8, 3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--changes", type=int, default=60, help="motion segments in the video")
    parser.add_argument("--merging", type=int, nargs="+", default=[2, 4, 6, 8], help="ToMe r per block to try")
    parser.add_argument("--seed", type=int, default=2029)
    parser.add_argument("--json", type=Path, help="append the results as one JSON line")
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    labels = [int(rng.integers(len(MOTION_CLASSES)))]
    while len(labels) < args.changes:
        labels.append(int((labels[-1] + rng.integers(1, len(MOTION_CLASSES))) % len(MOTION_CLASSES)))
    frames = make_sequence(labels, rng, frames_each=FPS * SECONDS_EACH, size=32).repeat(2, 1).repeat(2, 2)
    model = vivit.create_model("vivit_motion", pretrained=True).eval()
    settings = {"dense": ({"reuse": False}, 0), "reuse": ({}, 0),
                **{f"reuse + ToMe r={r}": ({}, r) for r in args.merging}}
    tops = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = write_video(Path(tmp) / "changes.mp4", frames, fps=FPS)
        for name, (extras, r) in settings.items():
            model.set_token_merging(r)
            windows = timeline(model, path, top_k=1, **extras)
            tops[name] = [(w["top"][0]["label"], w["start"], w["end"]) for w in windows]
    # the true motion of windows inside one segment (a window across a change has two)
    segment = [(int(start // SECONDS_EACH), int((end - 1e-3) // SECONDS_EACH)) for _, start, end in tops["dense"]]
    truth = [MOTION_CLASSES[labels[a]] if a == b else None for a, b in segment]
    rows = {}
    print(f"vivit_motion over {len(labels)} generated motions ({len(labels) * SECONDS_EACH} s, {len(truth)} windows, "
          f"seed {args.seed}): top-1 agreement with the dense model, and accuracy on the "
          f"{sum(t is not None for t in truth)} windows inside one motion")
    for name, got in tops.items():
        agree = float(np.mean([a[0] == b[0] for a, b in zip(got, tops["dense"], strict=True)]))
        right = float(np.mean([a[0] == t for a, t in zip(got, truth, strict=True) if t is not None]))
        rows[name] = {"agreement": round(agree, 4), "accuracy": round(right, 4)}
        print(f"  {name:18s} agrees with dense {agree:6.1%}   right {right:6.1%}")
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps({"changes": len(labels), "windows": len(truth), "rows": rows}) + "\n")


if __name__ == "__main__":
    main()
