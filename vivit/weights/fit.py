"""Fitting weights to a model's token grid: which grid a state dict was trained on, and resampling its positional
embeddings to the model's (SPEC 4.3). Used by the converters and by loading."""

from __future__ import annotations

import logging
import math
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from vivit.model.embed import resample_pos_embed
from vivit.model.grid import grid_of_args, infer_plane

__all__ = ["LoadReport", "adapt_input_channels", "fit_input_channels", "fit_pos_embeds", "grid_of_args", "last_load",
           "measured_checkpoint", "remember_load", "source_grid"]

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
        if key not in state or key not in target:  # another variant's key: the strict load names it
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


def fit_pos_embeds(state: dict[str, torch.Tensor], model: ViViT,
                   source_grid: tuple[int, int, int]) -> list[tuple[str, tuple[int, ...], tuple[int, ...]]]:
    """Resample every positional embedding in ``state`` from ``source_grid`` to the model's token grid (SPEC 4.3).

    Returns:
        ``(key, old grid, new grid)`` of each embedding resampled.
    """
    target = model.state_dict()
    done = []
    for key in ("encoder.pos_embed", "encoder.spatial.pos_embed", "encoder.temporal.pos_embed"):
        if key not in state or key not in target:
            continue
        old, new = _grid_for_key(key, tuple(source_grid)), _grid_for_key(key, model.grid_size)
        if old != new:
            prefix = target[key].shape[1] - math.prod(new)
            state[key] = resample_pos_embed(state[key], old, new, prefix)
            _logger.info("resampled %s from grid %s to %s", key, old, new)
            done.append((key, old, new))
    return done


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


def fit_input_channels(state: dict[str, torch.Tensor], model: ViViT) -> tuple[int, int] | None:
    """Adapt ``state``'s patch-embedding kernel to the model's ``in_chans`` (see ``adapt_input_channels``).

    Returns:
        ``(channels in the weights, channels of the model)`` when adapted, else ``None``.
    """
    key = "patch_embed.proj.weight"
    if key in state and state[key].ndim >= 3 and state[key].shape[1] != model.in_chans:
        source = int(state[key].shape[1])
        _logger.info("adapting %s from %d to %d input channels", key, source, model.in_chans)
        state[key] = adapt_input_channels(state[key], model.in_chans)
        return (source, model.in_chans)
    return None


@dataclass
class LoadReport:
    """What loading did to fit the weights to the model; ``lines()`` says it in words (the CLI prints them)."""

    source: str
    checkpoint: str | None = None  # the released "arch.tag" the weights are, when loaded as they are
    resampled: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    new_head: tuple[int | None, int] | None = None  # (classes in the weights, classes in the model)
    adapted_channels: tuple[int, int] | None = None
    missing: list[str] = field(default_factory=list)  # strict=False only
    unexpected: list[str] = field(default_factory=list)

    @property
    def unchanged(self) -> bool:
        """The model holds the weights exactly as they were published."""
        return not (self.resampled or self.new_head or self.adapted_channels or self.missing or self.unexpected)

    def lines(self) -> list[str]:
        """One line per change."""
        out = [f"resampled {key} from grid {old} to {new}" for key, old, new in self.resampled]
        if self.new_head:
            out.append(f"new classifier: {self.new_head[0]} classes in the weights, {self.new_head[1]} in the model; "
                       "head left at init")
        if self.adapted_channels:
            out.append("adapted the patch embedding from {} to {} input channels".format(*self.adapted_channels))
        return out


_LAST_LOAD: weakref.WeakKeyDictionary[torch.nn.Module, tuple[LoadReport, tuple[Any, ...] | None]] = \
    weakref.WeakKeyDictionary()


def _fingerprint(model: torch.nn.Module) -> tuple[Any, ...] | None:
    # Each tensor's storage and in-place version counter: training steps, load_state_dict, .to() and a new head all
    # change it, at no cost (no hashing of the weights). Tensors made under torch.inference_mode() keep no counter:
    # then nothing can be vouched for (None never equals a fingerprint, so no accuracy is claimed).
    tensors = model.state_dict(keep_vars=True).items()
    if any(t.is_inference() for _, t in tensors):
        return None
    return tuple((k, t.data_ptr(), t._version) for k, t in tensors)


def remember_load(model: torch.nn.Module, report: LoadReport) -> None:
    """Record ``report`` as the last load into ``model`` (see ``last_load``)."""
    _LAST_LOAD[model] = (report, _fingerprint(model))


def last_load(model: torch.nn.Module) -> LoadReport | None:
    """The report of the last load into ``model`` by vivit, or ``None``."""
    found = _LAST_LOAD.get(model)
    return found[0] if found else None


def measured_checkpoint(model: torch.nn.Module) -> str | None:
    """The released ``arch.tag`` whose weights ``model`` holds untouched since they were loaded, else ``None``.

    Only for those weights do the zoo's accuracy figures hold: fine-tuned, resampled, re-headed or random weights get
    no claim in a model card or summary.
    """
    found = _LAST_LOAD.get(model)
    if found is None or not found[0].unchanged or found[1] is None or found[1] != _fingerprint(model):
        return None
    return found[0].checkpoint
