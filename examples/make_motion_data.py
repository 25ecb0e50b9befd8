"""Write a small labelled video dataset of generated motion clips, for trying ``examples/train.py`` offline.

Clips come from ``vivit.data.synthetic`` (a shape that moves in one of 8 directions, blinks between two colours or stays
still: ``MOTION_CLASSES``; one frame cannot tell the classes apart) and are encoded as H.264 ``.mp4`` files with PyAV,
so training reads them exactly as it reads real videos::

    python examples/make_motion_data.py data/motion --train 200 --val 40 --classes 4
    # data/motion/train.csv, val.csv (path,label), classes.txt, videos/*.mp4
    python examples/make_motion_data.py data/motion --layout folders    # train/<class>/*.mp4, val/<class>/*.mp4
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

from vivit.data.synthetic import MOTION_CLASSES, make_clip

LAYOUTS = ("csv", "folders")
# Classes in the order --classes N takes them: the four axis-aligned directions first (the easiest to learn).
_AXIS = ("moving_up", "moving_down", "moving_left", "moving_right")
CLASS_ORDER = [*_AXIS, *(c for c in MOTION_CLASSES if c not in _AXIS)]


def write_clip(path: Path, frames: np.ndarray, fps: int = 12) -> Path:
    """Encode uint8 ``(T, H, W, 3)`` frames as H.264 (yuv420p, near-lossless) into ``path``."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps, options={"crf": "12", "preset": "ultrafast"})
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for image in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_motion_dataset(root: str | Path, num_train: int = 24, num_val: int = 8, *, num_classes: int = 4,
                         num_frames: int = 12, size: int = 32, seed: int = 0, layout: str = "csv") -> Path:
    """Write ``num_train`` + ``num_val`` clips of the first ``num_classes`` motion classes under ``root``.

    Args:
        root: Output folder (created).
        num_train: Training clips, class-balanced.
        num_val: Validation clips, from an independent random stream.
        num_classes: How many classes to use, the first of ``CLASS_ORDER`` (4: up, down, left, right).
        num_frames: Frames per clip.
        size: Frame height and width (even, for yuv420p).
        seed: Seed of the generators; same seed, same files.
        layout: ``"csv"`` (``videos/`` plus ``train.csv`` / ``val.csv`` with ``path,label`` rows, paths relative to
            the CSV) or ``"folders"`` (``train/<class>/*.mp4``, ``val/<class>/*.mp4``).

    Returns:
        ``root``.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, found {layout!r}")
    if not 2 <= num_classes <= len(MOTION_CLASSES):
        raise ValueError(f"num_classes must be in [2, {len(MOTION_CLASSES)}], found {num_classes}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)  # the CSVs are written even when a split has no clips (--train 0)
    classes = CLASS_ORDER[:num_classes]
    for split, count, stream in (("train", num_train, 0), ("val", num_val, 1)):
        rng = np.random.default_rng([seed, stream])
        labels = rng.permutation(np.arange(count) % num_classes)
        rows = []
        for i, label in enumerate(labels):
            name = classes[int(label)]
            folder = root / split / name if layout == "folders" else root / "videos"
            folder.mkdir(parents=True, exist_ok=True)
            path = write_clip(folder / f"{split}_{i:05d}.mp4",
                              make_clip(MOTION_CLASSES.index(name), rng, num_frames=num_frames, size=size))
            rows.append((path.relative_to(root).as_posix(), name))
        if layout == "csv":
            with open(root / f"{split}.csv", "w", newline="") as f:
                csv.writer(f).writerows([("path", "label"), *rows])
    (root / "classes.txt").write_text("\n".join(classes) + "\n")
    return root


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path, help="output folder")
    parser.add_argument("--train", type=int, default=24, help="training clips")
    parser.add_argument("--val", type=int, default=8, help="validation clips")
    parser.add_argument("--classes", type=int, default=4, help=f"the first N of {CLASS_ORDER}")
    parser.add_argument("--frames", type=int, default=12, help="frames per clip")
    parser.add_argument("--size", type=int, default=32, help="frame height and width")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--layout", choices=LAYOUTS, default="csv")
    args = parser.parse_args(argv)
    write_motion_dataset(args.root, args.train, args.val, num_classes=args.classes, num_frames=args.frames,
                         size=args.size, seed=args.seed, layout=args.layout)
    print(f"wrote {args.train} training and {args.val} validation clips to {args.root}")


if __name__ == "__main__":
    main()
