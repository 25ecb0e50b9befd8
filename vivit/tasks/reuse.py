"""Overlapping windows without repeated work: Model 2's slice tokens computed once, reused by every window.

Model 2 (factorised encoder) encodes each tubelet-time slice alone, with the spatial CLS token and positional embedding
only (scenic ``projects/vivit/model.py`` at 4a38d47, lines 622-632); only its temporal encoder sees the window as a
whole (lines 636-643). So a slice's token depends on its frames alone and overlapping windows share it: at the
timeline's default step (half a window) every slice is in two windows, and half the spatial work, by far the larger
part, is saved. :class:`SliceReuse` keys each slice by a digest of its decoded uint8 frames and keeps the last window's
tokens only (a later window starts later: what it shares with the past is in the last one), one window's memory.
"""

from __future__ import annotations

import hashlib
import weakref
from collections.abc import Callable, Sequence
from typing import ClassVar

import torch
from einops import rearrange

from vivit.tasks.optimize import Optimized, optimize

_Transform = Callable[[torch.Tensor], torch.Tensor]


def supports_reuse(model: torch.nn.Module) -> bool:
    """Whether ``model`` splits into per-slice and per-window halves (Model 2 with tubelet embedding)."""
    try:
        model._check_slices_supported()
    except (AttributeError, ValueError):
        return False
    return True


def slice_reuse(model: torch.nn.Module, run: Callable[[torch.Tensor], torch.Tensor] | None, transform: _Transform,
                device: torch.device | None, dtype: torch.dtype) -> SliceReuse | None:
    """The timeline's reuse for ``model`` as ``run`` would run it, or ``None`` where reuse does not apply.

    ``run`` ``None`` is the model; an :class:`~vivit.tasks.optimize.Optimized` on torch reuses with the module it runs,
    on OpenVINO with its spatial half converted (:meth:`SpatialHalf.of`; the temporal half runs in torch).
    """
    if not supports_reuse(model):
        return None
    if run is None:
        return SliceReuse(model, transform, device, dtype)
    backend = getattr(run, "backend", None)
    if backend == "openvino":
        param = next(model.parameters())
        return SliceReuse(model, transform, param.device, param.dtype, spatial=SpatialHalf.of(model, run))
    if backend == "torch" and getattr(getattr(run, "_run", None), "autocast", 1) is None:
        param = next(run.model.parameters(), None)
        device, dtype = (param.device, param.dtype) if param is not None else (device, dtype)
        return SliceReuse(run.model, transform, device, dtype)
    return None


class SpatialHalf(torch.nn.Module):
    """Model 2's spatial half as a module of one slice (for ``vivit.optimize``): ``(B, C, t, H, W) -> (B, D)``."""

    # An OpenVINO run -> its converted spatial half: converted once and shared by every video the run classifies (a
    # listing's), with no reload or recompile; the keys are weak, so a half goes when its run does.
    converted: ClassVar[weakref.WeakKeyDictionary[Optimized, Optimized]] = weakref.WeakKeyDictionary()

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_slices(x)[:, 0]

    @classmethod
    def of(cls, model: torch.nn.Module, run: Optimized) -> Optimized:
        """``model``'s spatial half optimized as ``run`` is (OpenVINO, its precision), converted on the first call."""
        if run not in cls.converted:
            size = (model.in_chans, model.tubelet_size[0], *model.img_size)
            cls.converted[run] = optimize(cls(model), run.dtype, backend="openvino", input_size=size)
        return cls.converted[run]


class SliceReuse:
    """Window logits from slice tokens, each slice encoded once while windows that hold it are open.

    ``model`` is a Model 2 ``ViViT`` in eval mode; ``transform`` the timeline's per-frame one (uint8 ``(T, H, W, 3)``
    -> ``(C, T, h, w)``, or ``(3, C, T, h, w)`` with three crops); ``device`` and ``dtype`` the model's. ``spatial``
    (an optimized :class:`SpatialHalf`) computes the slice tokens from float32 CPU slices instead of the model.
    """

    def __init__(self, model: torch.nn.Module, transform: _Transform, device: torch.device | None,
                 dtype: torch.dtype, spatial: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        model._check_slices_supported()  # raises the model's own explanation
        self.model, self.transform, self.device, self.dtype, self.spatial = model, transform, device, dtype, spatial
        self.tubelet, self.slices = model.tubelet_size[0], model.grid_size[0]
        self.cache: dict[bytes, torch.Tensor] = {}  # digest -> (crops, d) slice tokens
        self.computed = self.reused = 0

    @torch.inference_mode()
    def __call__(self, windows: Sequence[torch.Tensor]) -> torch.Tensor:
        """Logits ``(len(windows) * crops, classes)`` of uint8 windows ``(T, H, W, 3)``, windows then crops (the
        layout the dense timeline gives)."""
        t = self.tubelet  # a digest per whole slice, hashed in place; frames past the last are dropped, as by the model
        keys = [[hashlib.blake2b(w.contiguous().numpy()[i * t:(i + 1) * t].data, digest_size=16).digest()
                 for i in range(self.slices)] for w in windows]
        new = {key: w[i * t:(i + 1) * t] for w, window_keys in zip(windows, keys, strict=True)
               for i, key in enumerate(window_keys) if key not in self.cache}  # a key's frames are one slice's
        if new:
            x = self.transform(torch.cat(list(new.values())))  # per frame: the pixels the dense path sees
            x = rearrange(x if x.ndim == 5 else x[None], "v c (n t) h w -> (n v) c t h w", t=t)
            x = x.contiguous()
            tokens = (self.model.forward_slices(x.to(self.device, self.dtype))[:, 0] if self.spatial is None
                      else self.spatial(x.float()).to(self.device, self.dtype))
            self.cache.update(zip(new, rearrange(tokens, "(n v) d -> n v d", n=len(new)), strict=True))
        self.computed += len(new)
        self.reused += sum(len(k) for k in keys) - len(new)
        x = torch.stack([torch.stack([self.cache[k] for k in window_keys], 1) for window_keys in keys])
        logits = self.model.forward_from_slices(rearrange(x, "b v t d -> (b v) t d"))
        self.cache = {k: self.cache[k] for k in (keys[-1] if keys else ())}  # what a later window can still share
        return logits


__all__ = ["SliceReuse", "SpatialHalf", "slice_reuse", "supports_reuse"]
