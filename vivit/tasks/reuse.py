"""Overlapping windows without repeated work: Model 2's slice tokens computed once, reused by every window.

Model 2 (factorised encoder) encodes each tubelet-time slice (``t`` frames, ``t`` the tubelet length) alone, with the
spatial CLS token and positional embedding only (scenic ``projects/vivit/model.py`` at 4a38d47, lines 622-632:
``jax.vmap(vit_body, in_axes=1)`` over time); only its temporal encoder, whose CLS token and positional embedding
depend on a slice's place in the window, sees the window as a whole (lines 636-643). So a slice's token is a function
of its frames alone, and windows that overlap share them: at the timeline's default step (half a window) every slice
is in two windows, and half of the spatial work, by far the larger part, is saved.

:class:`SliceReuse` keys each slice by a digest of its decoded uint8 frames (identical frames give the identical
token, whatever window they sit in) and keeps the tokens of the last window only: a later window starts later, so the
frames it shares with the past are all in the last window. Memory is one window's slice tokens per crop.
"""

from __future__ import annotations

import hashlib
import weakref
from collections.abc import Callable, Sequence

import torch
from einops import rearrange

from vivit.tasks.optimize import optimize

_Transform = Callable[[torch.Tensor], torch.Tensor]


def supports_reuse(model: torch.nn.Module) -> bool:
    """Whether ``model`` splits into per-slice and per-window halves (Model 2 with tubelet embedding)."""
    check = getattr(model, "_check_slices_supported", None)
    if check is None:
        return False
    try:
        check()
    except ValueError:
        return False
    return True


def slice_reuse(model: torch.nn.Module, run: Callable[[torch.Tensor], torch.Tensor] | None, transform: _Transform,
                device: torch.device | None, dtype: torch.dtype) -> SliceReuse | None:
    """The timeline's reuse for ``model`` as ``run`` would run it, or ``None`` where reuse does not apply.

    ``run`` ``None`` is the model itself; an :class:`~vivit.tasks.optimize.Optimized` on the torch backend reuses with
    the module it runs; on OpenVINO the spatial half is converted (and cached) as a model of its own, in the same
    precision, and the small temporal half runs in torch. Other callables compute whole windows.
    """
    if not supports_reuse(model):
        return None
    if run is None:
        return SliceReuse(model, transform, device, dtype)
    backend = getattr(run, "backend", None)
    if backend == "openvino":
        spatial = _SPATIAL.get(run)
        if spatial is None:  # once per optimized model: every video of a listing reuses it, no reload or recompile
            size = (model.in_chans, model.tubelet_size[0], *model.img_size)
            spatial = _SPATIAL[run] = optimize(SpatialHalf(model), run.dtype, backend="openvino", input_size=size)
        param = next(model.parameters())
        return SliceReuse(model, transform, param.device, param.dtype, spatial=spatial)
    if backend == "torch" and getattr(getattr(run, "_run", None), "autocast", 1) is None:
        param = next(run.model.parameters(), None)
        device, dtype = (param.device, param.dtype) if param is not None else (device, dtype)
        return SliceReuse(run.model, transform, device, dtype)
    return None


_SPATIAL: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # an OpenVINO run -> its converted spatial half


class SpatialHalf(torch.nn.Module):
    """Model 2's spatial half as a module of one video input (for ``vivit.optimize``): ``(B, C, t, H, W) -> (B, D)``,
    one tubelet-time slice per clip."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, t, H, W) -> (B, D)``."""
        return self.model.forward_slices(x)[:, 0]


class SliceReuse:
    """Window logits from slice tokens, each slice encoded once while windows that hold it are open.

    Args:
        model: A Model 2 ``ViViT`` (``supports_reuse``), in eval mode while called.
        transform: The timeline's per-frame transform: uint8 ``(T, H, W, 3)`` -> ``(C, T, h, w)`` or, with three
            crops, ``(3, C, T, h, w)``.
        device: Where the model runs.
        dtype: The model's dtype.
        spatial: Computes the slice tokens ``(B, C, t, H, W) -> (B, D)`` from float32 CPU slices instead of the
            model (an optimized :class:`SpatialHalf`).
    """

    def __init__(self, model: torch.nn.Module, transform: _Transform, device: torch.device | None,
                 dtype: torch.dtype, spatial: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        if not supports_reuse(model):
            model._check_slices_supported()  # raises the model's own explanation
        self.model, self.transform, self.device, self.dtype = model, transform, device, dtype
        self.spatial = spatial
        self.tubelet = model.tubelet_size[0]
        self.slices = model.grid_size[0]
        self.cache: dict[bytes, torch.Tensor] = {}  # digest -> (crops, d) slice tokens
        self.computed = self.reused = 0

    def _keys(self, frames: torch.Tensor) -> list[bytes]:
        """One digest per slice of a window's uint8 frames (frames past the last whole slice are dropped, as the
        tubelet embedding drops them)."""
        t, data = self.tubelet, frames.contiguous().numpy()
        return [hashlib.blake2b(data[i * t:(i + 1) * t].data, digest_size=16).digest()  # hashed in place, no copy
                for i in range(self.slices)]

    @torch.inference_mode()
    def __call__(self, windows: Sequence[torch.Tensor]) -> torch.Tensor:
        """Logits ``(len(windows) * crops, classes)`` of uint8 windows ``(T, H, W, 3)``, windows then crops (the
        layout the dense timeline gives)."""
        keys = [self._keys(w) for w in windows]
        new: dict[bytes, torch.Tensor] = {}
        for window, window_keys in zip(windows, keys, strict=True):
            for i, key in enumerate(window_keys):
                if key not in self.cache and key not in new:
                    new[key] = window[i * self.tubelet:(i + 1) * self.tubelet]
        if new:
            x = self.transform(torch.cat(list(new.values())))  # per frame: the pixels the dense path sees
            x = rearrange(x if x.ndim == 5 else x[None], "v c (n t) h w -> (n v) c t h w", t=self.tubelet)
            if self.spatial is None:
                tokens = self.model.forward_slices(x.contiguous().to(self.device, self.dtype))[:, 0]
            else:
                tokens = self.spatial(x.contiguous().float()).to(self.device, self.dtype)
            tokens = rearrange(tokens, "(n v) d -> n v d", n=len(new))
            self.cache.update(zip(new, tokens, strict=True))
        self.computed += len(new)
        self.reused += sum(len(k) for k in keys) - len(new)
        x = torch.stack([torch.stack([self.cache[k] for k in window_keys], 1) for window_keys in keys])
        logits = self.model.forward_from_slices(rearrange(x, "b v t d -> (b v) t d"))
        last = set(keys[-1]) if keys else set()
        self.cache = {k: v for k, v in self.cache.items() if k in last}  # what a later window can still share
        return logits


__all__ = ["SliceReuse", "SpatialHalf", "slice_reuse", "supports_reuse"]
