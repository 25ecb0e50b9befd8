"""The generated motion task: deterministic, well-formed, uninformative frame by frame; the shipped model solves it."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import vivit
from vivit.data.synthetic import MOTION_CLASSES, make_clip, make_dataset

WEIGHTS = Path(vivit.__file__).parent / "assets"


def test_same_seed_gives_same_clips_and_other_seed_does_not() -> None:
    a, la = make_dataset(20, 7)
    b, lb = make_dataset(20, 7)
    c, _ = make_dataset(20, 8)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(la, lb)
    assert not np.array_equal(a, c)
    np.testing.assert_array_equal(make_clip(3, np.random.default_rng(1)), make_clip(3, np.random.default_rng(1)))


@pytest.mark.parametrize("num_frames, size", [(16, 32), (8, 64), (1, 17)])
def test_shapes_dtypes_and_every_class_present(num_frames: int, size: int) -> None:
    videos, labels = make_dataset(25, 0, num_frames=num_frames, size=size)
    assert videos.shape == (25, num_frames, size, size, 3) and videos.dtype == np.uint8
    assert labels.dtype == np.int64
    counts = np.bincount(labels, minlength=len(MOTION_CLASSES))
    assert len(counts) == len(MOTION_CLASSES) and counts.min() >= 2 and counts.max() <= 3  # balanced


def test_bad_label_or_size_is_refused() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="label"):
        make_clip(len(MOTION_CLASSES), rng)
    with pytest.raises(ValueError, match="size"):
        make_clip(0, rng, size=4)


def test_classes_differ_over_time() -> None:
    """Static clips change only by noise; every other class changes visibly between frames."""
    rng = np.random.default_rng(0)
    for label, name in enumerate(MOTION_CLASSES):
        clip = make_clip(label, rng, noise_std=0.0).astype(np.int16)
        change = np.abs(np.diff(clip, axis=0)).sum(axis=(1, 2, 3))
        assert (change == 0).all() if name == "static" else change.max() > 0, name


def _frame_stats(frames: np.ndarray) -> np.ndarray:
    """Per frame: mean brightness, foreground area, foreground centroid (x, y) and foreground brightness.

    The background fills most of the frame, so pixels far from the frame's median colour are the shape.
    """
    median = np.median(frames.reshape(len(frames), -1, 3), axis=1)[:, None, None, :]
    fg = np.abs(frames.astype(np.float32) - median).sum(-1) > 40
    area = fg.mean(axis=(1, 2))
    ys, xs = np.mgrid[: frames.shape[1], : frames.shape[2]]
    weight = fg / np.maximum(fg.sum(axis=(1, 2), keepdims=True), 1)
    fg_bright = (frames.mean(-1) * weight).sum(axis=(1, 2))
    return np.stack([frames.mean(axis=(1, 2, 3)), area, (xs * weight).sum(axis=(1, 2)),
                     (ys * weight).sum(axis=(1, 2)), fg_bright], axis=1)


@pytest.mark.parametrize("frame", [0, 15])
def test_single_frame_statistics_do_not_depend_on_the_class(frame: int) -> None:
    """Every class draws one frame from the same distribution: per-class means of simple statistics of frame
    ``frame`` agree within sampling error (|z| < 4 against the other classes pooled)."""
    videos, labels = make_dataset(2000, 123, num_frames=16, size=24)
    stats = _frame_stats(videos[:, frame])
    for label, name in enumerate(MOTION_CLASSES):
        own, rest = stats[labels == label], stats[labels != label]
        z = (own.mean(0) - rest.mean(0)) / np.sqrt(own.var(0) / len(own) + rest.var(0) / len(rest))
        assert np.abs(z).max() < 4, f"{name}: z = {np.round(z, 2)} (brightness, area, x, y, fg brightness)"


def test_a_single_frame_does_not_separate_the_classes() -> None:
    """A nearest-class-mean classifier on the raw pixels of one frame stays at chance."""
    train_x, train_y = make_dataset(2000, 1, num_frames=4, size=16)
    test_x, test_y = make_dataset(1000, 2, num_frames=4, size=16)

    def accuracy(features: Callable[[np.ndarray], np.ndarray]) -> float:
        a, b = features(train_x), features(test_x)
        means = np.stack([a[train_y == k].mean(0) for k in range(len(MOTION_CLASSES))])
        pred = ((b[:, None] - means[None]) ** 2).sum(-1).argmin(1)
        return float((pred == test_y).mean())

    chance = 1 / len(MOTION_CLASSES)
    assert accuracy(lambda v: v[:, 0].reshape(len(v), -1).astype(np.float32)) < chance + 0.05


@pytest.fixture(scope="module")
def motion_model() -> tuple[torch.nn.Module, dict]:
    path = WEIGHTS / "vivit_motion.safetensors"
    if not path.is_file():
        pytest.skip(f"{path} not found: run scripts/train_motion.py")
    meta = json.loads((WEIGHTS / "vivit_motion.json").read_text())
    model = vivit.ViViT(**meta["model_args"])
    model.load_state_dict(load_file(path), strict=True)
    return model.eval(), meta


def test_shipped_weights_are_small_and_described(motion_model: tuple[torch.nn.Module, dict]) -> None:
    _, meta = motion_model
    assert (WEIGHTS / "vivit_motion.safetensors").stat().st_size < 5e6
    assert meta["classes"] == MOTION_CLASSES
    assert meta["held_out_accuracy"] >= 0.95
    assert meta["single_frame_accuracy"] < 1 / len(MOTION_CLASSES) + 0.05


def test_shipped_model_classifies_fresh_clips(motion_model: tuple[torch.nn.Module, dict]) -> None:
    model, meta = motion_model
    args = meta["model_args"]
    videos, labels = make_dataset(64, 20240611, num_frames=args["num_frames"], size=args["img_size"])
    x = torch.from_numpy(videos).permute(0, 4, 1, 2, 3).float() * 2 / 255 - 1  # the reference's scaling
    with torch.no_grad():
        accuracy = (model(x).argmax(1).numpy() == labels).mean()
    assert accuracy >= 0.9
