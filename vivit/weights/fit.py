"""Fitting weights to a model's token grid: which grid a state dict was trained on, and resampling its positional
embeddings to the model's (SPEC 4.3). Used by the converters and by loading."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch

from vivit.model.embed import resample_pos_embed
from vivit.model.grid import grid_of_args, infer_plane

__all__ = ["adapt_input_channels", "fit_input_channels", "fit_pos_embeds", "grid_of_args", "source_grid"]

if TYPE_CHECKING:
    from vivit.model.vivit import ViViT

_logger = logging.getLogger(__name__)


def source_grid(state: Mapping[str, torch.Tensor], model: ViViT,
                known: tuple[int, int, int] | None) -> tuple[int, int, int]:
    """The token grid the weights were made for: as stated by the source, else inferred from posemb lengths."""
    if known is not None:
        return tuple(known)
    t, h, w = model.grid_size
    target = model.state_dict()

    def tokens(key: str) -> int | None:
        if key not in state:
            return None
        prefix = target[key].shape[1] - math.prod(_grid_for_key(key, (t, h, w)))
        return state[key].shape[1] - prefix

    def plane(n: int, known: tuple[tuple[int, int], ...] = ()) -> tuple[int, int]:
        found = infer_plane(n, known)
        if found is None:
            raise ValueError(f"cannot tell the token grid of {n} positions; load into a model built for the weights' "
                             "own frames/size, or convert with a config that states them")
        return found

    if (s := tokens("encoder.spatial.pos_embed")) is not None:
        return (tokens("encoder.temporal.pos_embed") or t, *plane(s, ((h, w),)))
    if (n := tokens("encoder.pos_embed")) is None or n == t * h * w:
        return (t, h, w)
    if n % (h * w) == 0:
        return (n // (h * w), h, w)
    if n % t == 0:
        return (t, *plane(n // t))
    raise ValueError(f"the weights' positional embedding has {n} positions, which fits neither the model's "
                     f"{t}x{h}x{w} grid with another clip length nor with another frame size")


def _grid_for_key(key: str, grid: tuple[int, int, int]) -> tuple[int, ...]:
    return {"encoder.spatial.pos_embed": grid[1:], "encoder.temporal.pos_embed": grid[:1]}.get(key, grid)


def fit_pos_embeds(state: dict[str, torch.Tensor], model: ViViT, source_grid: tuple[int, int, int]) -> None:
    """Resample every positional embedding in ``state`` from ``source_grid`` to the model's token grid (SPEC 4.3)."""
    target = model.state_dict()
    for key in ("encoder.pos_embed", "encoder.spatial.pos_embed", "encoder.temporal.pos_embed"):
        if key not in state or key not in target:
            continue
        old, new = _grid_for_key(key, tuple(source_grid)), _grid_for_key(key, model.grid_size)
        if old != new:
            prefix = target[key].shape[1] - math.prod(new)
            state[key] = resample_pos_embed(state[key], old, new, prefix)
            _logger.info("resampled %s from grid %s to %s", key, old, new)


def adapt_input_channels(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """A patch kernel ``(d, c, *k)`` trained on ``c`` channels, made to read ``in_chans`` channels (timm's rule).

    One channel: the sum over the source channels (a grey clip replicated to RGB gives the same tokens). Other counts:
    the source channels repeated cyclically, scaled by ``c / in_chans`` so the summed response keeps its size.
    """
    source = weight.shape[1]
    if in_chans == source:
        return weight
    dtype = weight.dtype
    weight = weight.float()  # sum in float32 whatever the stored dtype
    if in_chans == 1:
        adapted = weight.sum(dim=1, keepdim=True)
    else:
        repeats = math.ceil(in_chans / source)
        adapted = weight.repeat(1, repeats, *(1,) * (weight.ndim - 2))[:, :in_chans] * (source / in_chans)
    return adapted.to(dtype)


def fit_input_channels(state: dict[str, torch.Tensor], model: ViViT) -> None:
    """Adapt ``state``'s patch-embedding kernel to the model's ``in_chans`` (see ``adapt_input_channels``)."""
    key = "patch_embed.proj.weight"
    if key in state and state[key].ndim >= 3 and state[key].shape[1] != model.in_chans:
        _logger.info("adapting %s from %d to %d input channels", key, state[key].shape[1], model.in_chans)
        state[key] = adapt_input_channels(state[key], model.in_chans)
