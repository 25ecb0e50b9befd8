"""The token grid: which ``(t, h, w)`` grid of tokens a clip size gives, and which grid a positional embedding of
``n`` tokens was made for. The one home of this arithmetic: the embeddings, weight fitting, the converters and
inflation all ask here. Imports nothing else of vivit (the lowest layer of the model).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np


def pair(size: int | Sequence[int]) -> tuple[int, int]:
    """A frame size ``H`` or ``(H, W)`` as ``(H, W)``."""
    if isinstance(size, int | np.integer):
        return (int(size), int(size))
    return (int(size[0]), int(size[1]))


def sample_frame_indices(num_frames: int, n_sampled_frames: int, exact: bool = False) -> list[int]:
    """Frame indices of the reference's uniform temporal sampling.

    scenic: ``common_lib/video_utils.sample_frames_uniformly``. The float32 ``arange`` can produce
    ``n_sampled_frames + 1`` indices and repeat the last frame (T=32, n=2 -> 11, 21, 31; T=8, n=5 -> 1, 3, 4, 5, 7, 7);
    that is what the reference models were trained with, so it is the default. ``exact=True`` is an opt-in
    correction giving exactly ``min(n, T)`` indices ``round(i * T / (n + 1))``, ``i = 1..n``.
    """
    if num_frames < 1 or n_sampled_frames < 1:
        raise ValueError(f"need num_frames >= 1 and n_sampled_frames >= 1, got {num_frames} and {n_sampled_frames}")
    if exact:
        if n_sampled_frames >= num_frames:
            return list(range(num_frames))
        return np.round(np.arange(1, n_sampled_frames + 1) * num_frames / (n_sampled_frames + 1)).astype(int).tolist()
    if n_sampled_frames < num_frames:
        start = step = num_frames / (n_sampled_frames + 1)
    else:
        start, step = 0, 1
    # jnp.arange with float arguments and x64 disabled computes in float32, as np.arange(dtype=float32) does.
    idx = np.round(np.arange(start, num_frames, step, dtype=np.float32)).astype(np.int64)
    return np.minimum(idx, num_frames - 1).tolist()


def tubelet_grid(num_frames: int, img_size: Sequence[int], tubelet_size: Sequence[int]) -> tuple[int, int, int]:
    """Token grid ``(t, h, w)`` of a ``num_frames x H x W`` clip cut into tubelets (leftovers dropped).

    No ``int()`` here: the model asks with an input's (possibly symbolic) sizes while it is traced or exported.
    """
    height, width = img_size
    t, h, w = tubelet_size
    return (num_frames // t, height // h, width // w)


def frame_sampling_grid(
    num_sampled: int, img_size: Sequence[int], patch_size: Sequence[int]
) -> tuple[int, int, int]:
    """Token grid of sampled frames stacked along height.

    ``(t, h, w)``, or ``(1, rows, w)`` when patch rows straddle frames (the tokens then only form one tall image).
    """
    fh, fw = img_size
    if fh % patch_size[0] == 0:
        return (num_sampled, fh // patch_size[0], fw // patch_size[1])
    return (1, (num_sampled * fh) // patch_size[0], fw // patch_size[1])


def token_grid(
    num_frames: int,
    img_size: Sequence[int],
    tubelet_size: Sequence[int],
    n_sampled_frames: int | None = None,
    exact_frame_count: bool = False,
) -> tuple[int, int, int]:
    """Token grid of either embedding: tubelets, or (``n_sampled_frames`` given) sampled frames with 2D patches."""
    if n_sampled_frames is None:
        return tubelet_grid(num_frames, img_size, tubelet_size)
    sampled = len(sample_frame_indices(num_frames, n_sampled_frames, exact=exact_frame_count))
    return frame_sampling_grid(sampled, img_size, tuple(tubelet_size)[1:])


def grid_of_args(args: Mapping[str, Any]) -> tuple[int, int, int]:
    """The token grid ``(t, h, w)`` a model built with ``ViViT(**args)`` has (ViViT's defaults where absent)."""
    sampled = args.get("n_sampled_frames") if args.get("embedding") == "frame_sampling" else None
    img_size, tubelet = pair(args.get("img_size", 224)), args.get("tubelet_size", (2, 16, 16))
    return token_grid(args.get("num_frames", 32), img_size, tubelet, sampled, bool(args.get("exact_frame_count")))


def infer_plane(tokens: int, known: Iterable[Sequence[int]] = ()) -> tuple[int, int] | None:
    """The ``(h, w)`` plane a positional embedding of ``tokens`` spatial tokens was made for.

    The one rule: the first ``known`` plane (the model's own, a stated one) with that many tokens, else a square
    (``sqrt(tokens)``, as the reference assumes when it resizes), else ``None`` (the caller says what to pass).
    """
    for h, w in known:
        if h * w == tokens:
            return (int(h), int(w))
    side = math.isqrt(tokens) if tokens >= 0 else 0
    return (side, side) if side > 0 and side * side == tokens else None


MAX_SIDE = 8192  # frames, pixel rows or columns, tubelet sides: far above any real clip
MAX_TOKENS = 1 << 18  # tokens of a clip (ViViT-L at 32 x 320²: 6400): the positional embedding is tokens x width
_SHAPES = {1: "an int", 2: "an int or (H, W)", 3: "(t, h, w)"}


def is_int(value: Any) -> bool:
    """An int (numpy's too), and not a bool."""
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def checked_sides(name: str, value: Any, length: int, high: int = MAX_SIDE) -> tuple[int, ...]:
    """The one check of a ViViT size: ``value`` as ``length`` ints in ``[1, high]``.

    ``length`` 1: a frame count (an int); 2: a frame size, an int ``H`` (meaning ``(H, H)``) or ``(H, W)``; 3: a
    tubelet ``(t, h, w)``. The model's constructor, ``set_input_size`` and a saved ``config.json`` all check here.

    Raises:
        TypeError: Not an int (a string, float or bool), or not ``length`` of them; the message names ``name``.
        ValueError: A side outside ``[1, high]``.
    """
    shape = _SHAPES[length]
    if is_int(value) and length < 3:
        values: tuple[Any, ...] | None = (value,) * length
    else:  # a frame count is an int, never a "(4,)"
        values = tuple(value) if isinstance(value, list | tuple) and length > 1 else None
    if values is None or len(values) != length or not all(is_int(v) for v in values):
        kind = f" ({type(value).__name__})" if length == 1 else ""
        raise TypeError(f"{name} must be {shape}{' of positive ints' if length > 1 else ''}, got {value!r}{kind}")
    if not all(1 <= v <= high for v in values):
        raise ValueError(f"{name} must be {shape}{' of ints' if length > 1 else ''} in [1, {high}], got {value!r}")
    return tuple(int(v) for v in values)


def checked_input_size(
    img_size: Any, num_frames: Any, model_args: Mapping[str, Any]
) -> tuple[tuple[int, int], int, tuple[int, int, int]]:
    """``(img_size, num_frames, token grid)`` for ``ViViT.set_input_size``, checked before anything changes.

    Raises:
        TypeError: A size that is not an int (``"64"``, ``3.5``, ``True``) or an ``(H, W)`` pair of ints.
        ValueError: A size out of ``[1, MAX_SIDE]``, a clip smaller than one tubelet, or more than ``MAX_TOKENS``
            tokens (refused before the positional embeddings are resampled).
    """
    try:
        h, w = checked_sides("img_size", img_size, 2)
        (frames,) = checked_sides("num_frames", num_frames, 1)
    except (TypeError, ValueError) as err:
        raise type(err)(f"set_input_size: {err}") from None
    size = (h, w)
    grid = grid_of_args({**model_args, "img_size": size, "num_frames": frames})
    if min(grid) < 1:
        raise ValueError(f"set_input_size: input {frames}x{size[0]}x{size[1]} is smaller than one tubelet "
                         f"{tuple(model_args.get('tubelet_size', ()))}: no tokens")
    if math.prod(grid) > MAX_TOKENS:
        raise ValueError(f"set_input_size: input {frames}x{size[0]}x{size[1]} makes {math.prod(grid)} tokens (grid "
                         f"{grid}), more than {MAX_TOKENS}")
    return size, frames, grid
