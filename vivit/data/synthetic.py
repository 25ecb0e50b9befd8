"""Procedural motion clips: shapes that move in one of 8 directions, blink or stay still, where one frame cannot tell
the classes apart.

Every class draws the same things from the same distributions — shape, colours, size, orientation, position — and
differs only in how they change over time. Time is made stationary so that each single frame has one marginal
distribution whatever the class and whatever the frame index:

- positions live on a torus (shapes wrap around the borders), so a uniform start stays uniform after moving;
- shape, orientation and size are drawn once per clip and never change;
- blinking swaps between two colours drawn exchangeably, and the other classes use the first of the same pair.

The task therefore needs a video model: a classifier that sees one frame is at chance (``1 / len(MOTION_CLASSES)``).
Pure NumPy; shapes are rendered with a one-pixel anti-aliased edge from a signed distance, so a clip rendered at a
larger ``size`` and resized down looks like one rendered at the small size.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

MOTION_CLASSES: list[str] = [
    "moving_up",
    "moving_up_right",
    "moving_right",
    "moving_down_right",
    "moving_down",
    "moving_down_left",
    "moving_left",
    "moving_up_left",
    "blinking",
    "static",
]
SHAPES: tuple[str, ...] = ("triangle", "square", "bar", "cross")

# Fractions of the frame size, so clips look alike at any resolution. The largest shape stays within half the frame,
# which the torus distance needs to draw it whole.
_RADIUS_RANGE = (0.12, 0.28)
_SPEED_RANGE = (0.05, 0.08)  # of the frame size per frame
_BLINK_PERIOD = 6  # frames per blink cycle: 3 in one colour, 3 in the other
_LUMA = np.array([0.299, 0.587, 0.114])  # BT.601 weights
_MIN_LUMA_CONTRAST = 50.0  # luma of both colours above the background's
_MIN_COLOUR_DIST = 110.0  # RGB distance between the two colours, so that blinking is plain to see
# Unit vectors in image coordinates (y points down), 45 degrees apart.
_DIRECTIONS = {
    name: (np.sin(k * np.pi / 4), -np.cos(k * np.pi / 4))
    for k, name in enumerate(MOTION_CLASSES[:8])
}


def _colours(rng: np.random.Generator) -> np.ndarray:
    """``(3, 3)`` background, colour, second colour, both colours brighter than the background.

    A fixed contrast polarity lets a tubelet's linear filters see motion direction (a bright edge advancing), which
    makes the task learnable in minutes. The acceptance rule is symmetric in the two colours, so they are
    exchangeable: blinking's second colour has the same distribution as the colour every class uses.
    """
    while True:
        bg, c1, c2 = rng.uniform(0.0, 255.0, size=(3, 3))
        if (min((c1 - bg) @ _LUMA, (c2 - bg) @ _LUMA) > _MIN_LUMA_CONTRAST
                and np.linalg.norm(c1 - c2) > _MIN_COLOUR_DIST):
            return np.stack([bg, c1, c2])


def _signed_distance(shape: str, u: np.ndarray, v: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Approximate signed distance (pixels, negative inside) to a shape of radius ``r`` in its own frame."""
    if shape == "triangle":  # equilateral, circumradius r: three half-planes at apothem r / 2
        normals = [(np.float32(np.cos(a)), np.float32(np.sin(a))) for a in np.pi / 2 + 2 * np.pi * np.arange(3) / 3]
        return np.max([u * nx + v * ny for nx, ny in normals], axis=0) - r / 2
    if shape == "square":  # circumradius r
        return np.maximum(np.abs(u), np.abs(v)) - r * np.float32(np.sqrt(0.5))
    if shape == "bar":
        return np.maximum(np.abs(u) - r, np.abs(v) - 0.4 * r)
    if shape == "cross":
        arm = 0.3 * r
        return np.minimum(np.maximum(np.abs(u) - r, np.abs(v) - arm), np.maximum(np.abs(u) - arm, np.abs(v) - r))
    raise ValueError(f"shape must be one of {SHAPES}, got {shape!r}")


def make_clip(label: int, rng: np.random.Generator, *, num_frames: int = 16, size: int = 32,
              noise_std: float = 3.0) -> np.ndarray:
    """Render one clip of class ``MOTION_CLASSES[label]``.

    Args:
        label: Class index into ``MOTION_CLASSES``.
        rng: Source of all randomness; the same generator state gives the same clip.
        num_frames: Clip length ``T``.
        size: Frame height and width ``H = W`` in pixels.
        noise_std: Per-pixel Gaussian noise (0-255 scale), fresh in every frame, so a model cannot key on exact
            colours and survives video compression.

    Returns:
        uint8 array ``T x H x W x 3`` (RGB).
    """
    if not 0 <= label < len(MOTION_CLASSES):
        raise ValueError(f"label must be in [0, {len(MOTION_CLASSES)}), got {label}")
    if num_frames < 1 or size < 8:
        raise ValueError(f"need num_frames >= 1 and size >= 8, got num_frames={num_frames}, size={size}")
    name = MOTION_CLASSES[label]
    t = np.arange(num_frames, dtype=np.float64)

    # Every clip draws every parameter in the same order, so classes differ only in how they use them.
    shape = SHAPES[rng.integers(len(SHAPES))]
    colours = _colours(rng)
    centre = rng.uniform(0.0, size, size=2)
    theta = rng.uniform(0.0, 2 * np.pi)
    radius = np.exp(rng.uniform(*np.log(np.array(_RADIUS_RANGE) * size)))  # log-uniform: small shapes as common
    speed = rng.uniform(*_SPEED_RANGE) * size
    blink_phase = rng.integers(_BLINK_PERIOD)

    cx = np.full(num_frames, centre[0])
    cy = np.full(num_frames, centre[1])
    colour_idx = np.ones(num_frames, dtype=np.int64)
    if name in _DIRECTIONS:
        dx, dy = _DIRECTIONS[name]
        cx, cy = cx + dx * speed * t, cy + dy * speed * t
    elif name == "blinking":
        colour_idx = 1 + ((t.astype(np.int64) + blink_phase) % _BLINK_PERIOD >= _BLINK_PERIOD // 2)

    # float32 from here on: the per-pixel work dominates the cost and needs no more precision.
    grid = np.arange(size, dtype=np.float32) + 0.5  # pixel centres
    cx, cy, half = cx.astype(np.float32)[:, None, None], cy.astype(np.float32)[:, None, None], np.float32(size / 2)
    # Torus offsets in [-size/2, size/2): shapes leaving one border come back at the other.
    ox = np.mod(grid[None, None, :] - cx + half, size, dtype=np.float32) - half
    oy = np.mod(grid[None, :, None] - cy + half, size, dtype=np.float32) - half
    cos, sin = np.float32(np.cos(theta)), np.float32(np.sin(theta))
    u, v = cos * ox + sin * oy, cos * oy - sin * ox
    distance = _signed_distance(shape, u, v, np.float32(radius))
    alpha = np.clip(np.float32(0.5) - distance, 0.0, 1.0)[..., None]

    colours = colours.astype(np.float32)
    frames = colours[0] + (colours[colour_idx] - colours[0])[:, None, None, :] * alpha
    if noise_std:
        frames += np.float32(noise_std) * rng.standard_normal(frames.shape, dtype=np.float32)
    return np.clip(np.rint(frames), 0, 255).astype(np.uint8)


def make_dataset(n: int, seed: int | Sequence[int], *, num_frames: int = 16, size: int = 32,
                 noise_std: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """A class-balanced set of ``n`` clips in random order.

    Args:
        n: Number of clips; each class gets ``n // len(MOTION_CLASSES)`` or one more.
        seed: Seed for ``numpy.random.default_rng`` (an int or a sequence of ints); same seed, same data.
        num_frames: Clip length ``T``.
        size: Frame height and width.
        noise_std: Per-pixel noise, as in ``make_clip``.

    Returns:
        ``(videos, labels)``: uint8 ``N x T x H x W x 3`` and int64 ``N``.
    """
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % len(MOTION_CLASSES)).astype(np.int64)
    videos = np.empty((n, num_frames, size, size, 3), dtype=np.uint8)
    for i, label in enumerate(labels):
        videos[i] = make_clip(int(label), rng, num_frames=num_frames, size=size, noise_std=noise_std)
    return videos, labels


def make_sequence(labels: Sequence[int], rng: np.random.Generator, *, frames_each: int = 24, size: int = 32,
                  noise_std: float = 3.0) -> np.ndarray:
    """Clips of classes ``labels`` one after another: a video whose motion changes every ``frames_each`` frames.

    Returns:
        uint8 array ``(len(labels) * frames_each) x H x W x 3``.
    """
    if not len(labels):
        raise ValueError("labels is empty; pass at least one class index")
    return np.concatenate([make_clip(int(label), rng, num_frames=frames_each, size=size, noise_std=noise_std)
                           for label in labels])
