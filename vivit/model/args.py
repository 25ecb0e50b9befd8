"""ViViT's constructor arguments and inputs, checked before anything is built: what is expected, what was found."""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from vivit.model.encoders import ENCODERS
from vivit.model.grid import checked_sides, grid_of_args, is_int
from vivit.model.layers import ACT_LAYERS, ATTN_IMPLS, HEAD_POOL_TYPES, fx_tracing
from vivit.model.merge import TokenMerging, parse_r

VARIANTS = tuple(ENCODERS)
ATTENTION_ORDERS = ("space_time", "time_space")
EMBEDDINGS = ("tubelet", "frame_sampling")
# scenic ViViT.__call__: the factorised-attention variants cannot have a CLS token.
NO_CLS_VARIANTS = ("factorized_self_attention", "factorized_dot_product")


def default_pool(variant: str, global_pool: str | None) -> str:
    """The pooling a model builds: ``global_pool``, else ``avg`` without a CLS token and ``token`` with one."""
    return global_pool or ("avg" if variant in NO_CLS_VARIANTS else "token")


def check_args(args: dict[str, Any]) -> None:
    """Refuse constructor arguments that would fail deep inside a layer or build a model that outputs NaN.

    ``args`` are the constructor's keyword arguments; every message says what is expected and what was found.
    Warns (``UserWarning``) when the tubelet does not tile the clip: the leftover pixels or frames are dropped, as
    the reference drops them.
    """
    _check_choices(args)
    img, tubelet = _sizes(args, "img_size", 2), _sizes(args, "tubelet_size", 3)
    _check_numbers(args)
    _check_combinations(args, img, tubelet)
    _warn_leftovers(args, img, tubelet)


def _check_choices(args: dict[str, Any]) -> None:
    choices = {"variant": VARIANTS, "embedding": EMBEDDINGS, "attention_order": ATTENTION_ORDERS,
               "act_layer": tuple(ACT_LAYERS), "attn_impl": ATTN_IMPLS, "global_pool": (None, *HEAD_POOL_TYPES)}
    for name, allowed in choices.items():
        if args[name] not in allowed:
            raise ValueError(f"{name} must be one of {tuple(a for a in allowed if a is not None)}, got {args[name]!r}")


def _sizes(args: dict[str, Any], name: str, length: int) -> tuple[int, ...]:
    try:
        return checked_sides(name, args[name], length)
    except TypeError as err:  # every bad constructor argument is a ValueError
        raise ValueError(str(err)) from None


def _check_numbers(args: dict[str, Any]) -> None:
    fe = args["variant"] == "factorized_encoder" and not args["spatial_only_baseline"]
    required = {"num_frames": 1, "in_chans": 1, "embed_dim": 1, "depth": 1, "num_heads": 1, "mlp_dim": 1,
                "temporal_depth": 1 if fe else 0, "num_classes": 0}
    optional = {"temporal_num_heads": 1, "temporal_mlp_dim": 1, "representation_size": 0, "n_sampled_frames": 1}
    for name, low in (required | optional).items():
        value = args[name]
        if not (name in optional and value is None) and not (is_int(value) and value >= low):
            raise ValueError(f"{name} must be an int >= {low}{' or None' if name in optional else ''}, got {value!r}")
    for name in ("num_heads", "temporal_num_heads"):
        heads = args[name]
        if heads is not None and args["embed_dim"] % heads:
            raise ValueError(f"embed_dim {args['embed_dim']} must be divisible by {name} {heads} (each head gets "
                             "embed_dim / num_heads channels)")
    for name in ("drop_rate", "attn_drop_rate", "drop_path_rate"):
        if not (isinstance(args[name], int | float) and 0 <= args[name] <= 1):
            raise ValueError(f"{name} must be a probability in [0, 1], got {args[name]!r}")
    eps = args["norm_eps"]
    if not (isinstance(eps, int | float) and math.isfinite(eps) and eps > 0):
        raise ValueError(f"norm_eps must be a small positive number (the reference uses 1e-6), got {eps!r}")


def _check_combinations(args: dict[str, Any], img: tuple[int, ...], tubelet: tuple[int, ...]) -> None:
    """Arguments that are fine alone but not together."""
    variant = args["variant"]
    if variant in NO_CLS_VARIANTS and default_pool(variant, args["global_pool"]) in ("token", "first"):
        raise ValueError(f"{variant} has no CLS token (scenic forbids it): use global_pool 'avg', 'max' or 'sum'")
    if args["embedding"] == "frame_sampling":
        if tubelet[0] != 1:
            raise ValueError(f"frame_sampling embeds 2D patches: tubelet_size must be (1, h, w), "
                             f"got {args['tubelet_size']}")
        if args["n_sampled_frames"] is None:
            raise ValueError("embedding='frame_sampling' needs n_sampled_frames")
        if variant != "spacetime" and img[0] % tubelet[1]:
            raise ValueError(f"{variant} needs frame-aligned tokens: the patch height {tubelet[1]} must divide the "
                             f"frame height {img[0]}")
    if args["dynamic_input_size"] and args["embedding"] != "tubelet":
        raise ValueError("dynamic_input_size=True needs embedding='tubelet': frame sampling picks its frames from "
                         "the clip length fixed at creation; use set_input_size(num_frames=...) to change it")


def _warn_leftovers(args: dict[str, Any], img: tuple[int, ...], tubelet: tuple[int, ...]) -> None:
    # The reference's conv has no padding: leftovers are dropped. Faithful, but never silent.
    # Frame sampling stacks the sampled frames along height first, so only its columns are cut like a tubelet's.
    dims = [("pixel columns", img[1], tubelet[2])]
    if args["embedding"] == "tubelet":
        dims = [("pixel rows", img[0], tubelet[1]), *dims, ("frames", args["num_frames"], tubelet[0])]
    dropped = [f"the last {size % step} {what} ({size} is not a multiple of {step})" for what, size, step in dims
               if size >= step and size % step]
    if dropped:
        # stacklevel: this function, check_args, ViViT.__init__, then the caller that built the model
        warnings.warn(f"ViViT with img_size={img}, num_frames={args['num_frames']}, tubelet_size={tubelet}: "
                      f"{'; '.join(dropped)} are dropped by the tubelet embedding, as the reference drops them; pick "
                      "multiples of the tubelet to use every pixel", UserWarning, stacklevel=4)


def merged_tokens(args: Mapping[str, Any]) -> int | None:
    """Tokens (CLS excepted) of the one sequence each block of a ``ViViT(**args)`` merges in: Model 1 the clip's
    ``t * h * w``, Model 2 one frame's ``h * w`` (its spatial encoder merges); ``None`` for Models 3 and 4, which
    cannot merge. The encoders' own bound (``set_token_merging``) is half of this; a test holds the two equal."""
    t, h, w = grid_of_args(args)
    variant = args.get("variant", "spacetime")
    return t * h * w if variant == "spacetime" else h * w if variant == "factorized_encoder" else None


def check_token_merging(args: Mapping[str, Any], r: TokenMerging) -> None:
    """Refuse, from ``ViViT(**args)``'s arguments alone, a token-merging ``r`` the model would refuse (nothing is
    built: the CLI asks before any weights are read). The message states the token count and the largest valid r.

    Raises:
        ValueError: A malformed ``r``, merging on Models 3 and 4, or more tokens than a block holds.
    """
    depth = args.get("depth", 12)
    schedule = parse_r(r, depth)  # a malformed r: merge's own message
    if not any(schedule):
        return
    tokens = merged_tokens(args)
    if tokens is None:
        raise ValueError(f"Models 3 and 4 ({args.get('variant')!r}) attend along the axes of the full t x h x w grid, "
                         "so they cannot merge tokens; token merging needs Model 1 (spacetime) or Model 2 "
                         "(factorized_encoder)")
    most = tokens // 2
    if max(schedule) <= most:
        return
    where = "a clip" if args.get("variant", "spacetime") == "spacetime" else "a frame (Model 2 merges per frame)"
    if isinstance(r, list):
        largest = f"each block's r can be at most {most}"
    else:  # the largest r of the same form whose busiest block fits (a block's count grows with r: bisect)
        low, high = 0, 2 * most + 1
        while high - low > 1:
            mid = (low + high) // 2
            low, high = (mid, high) if max(parse_r(_with_base(r, mid), depth)) <= most else (low, mid)
        largest = f"the largest valid r is {low}"
    raise ValueError(f"r={r!r} merges up to {max(schedule)} tokens in a block, but the model has {tokens} tokens "
                     f"(CLS excepted) in {where} and a block merges at most half of them: {largest}")


def _with_base(r: TokenMerging, base: int) -> TokenMerging:
    return (base, r[1]) if isinstance(r, tuple) else base


def static_refusal(variant: str, embedding: str) -> str | None:
    """Why a model of ``variant`` with ``embedding`` cannot skip static tubelets (``set_drop_static``), or ``None``."""
    if variant == "spacetime" and embedding == "tubelet":
        return None
    return (f"drop_static needs Model 1 (variant 'spacetime') with tubelet embedding, got {variant!r} with "
            f"{embedding!r} embedding: Models 2-4 encode the full t x h x w grid per frame or per axis, so no tubelet "
            "can be left out")


def check_grid(grid: Sequence[int], num_frames: int, img_size: tuple[int, int], tubelet: Sequence[int]) -> None:
    """Refuse an input smaller than one tubelet (no tokens)."""
    if min(grid) < 1:
        raise ValueError(f"input {num_frames}x{img_size[0]}x{img_size[1]} is smaller than one tubelet "
                         f"{tuple(tubelet)}: no tokens")


def check_pool_switch(current: str, new: str, has_cls: bool) -> None:
    """Refuse a ``reset_classifier(global_pool=new)`` that is unknown or would add or remove the CLS token."""
    if new not in HEAD_POOL_TYPES:
        raise ValueError(f"global_pool must be one of {HEAD_POOL_TYPES}, got {new!r}")
    if new != "" and (new == "token") != has_cls:
        raise ValueError(f"cannot switch global_pool from {current!r} to {new!r}: it changes whether the model has a "
                         "CLS token; create a new model instead")


def check_video(model: Any, x: Any) -> None:
    """Raise unless ``x`` is a float ``B x C x T x H x W`` tensor of ``model``'s size and dtype (``ViViT.check_input``).

    ``TypeError`` for something that is no tensor (a numpy array: ``torch.from_numpy(x)``) or a float dtype other
    than the model's (outside autocast, which casts for itself); ``ValueError`` for a wrong shape (a
    ``B x T x C x H x W`` clip, the transformers layout, names the ``permute`` that fixes it) or integer frames.
    Skipped while ``torch.fx`` traces (shapes are proxies then).
    """
    if fx_tracing():
        return
    if not isinstance(x, torch.Tensor):
        hint = " (torch.from_numpy(x) converts it)" if type(x).__module__ == "numpy" else ""
        raise TypeError(f"expected a torch.Tensor video B x C x T x H x W, got {type(x).__module__}."
                        f"{type(x).__qualname__}{hint}")
    t, h, w = model.num_frames, *model.img_size
    expected = "B x {} x {} x {} x {}".format(model.in_chans, *(("T", "H", "W") if model.dynamic_input_size
                                                               else (t, h, w)))
    if x.ndim == 5 and x.shape[2] == model.in_chans and x.shape[1] != model.in_chans:
        raise ValueError(
            f"expected a video B x C x T x H x W = {expected}, got shape {tuple(x.shape)}, which looks like "
            "B x T x C x H x W (the transformers layout): pass x.permute(0, 2, 1, 3, 4)"
        )
    if model.dynamic_input_size:
        tt, th, tw = model.tubelet_size
        bad = x.ndim != 5 or x.shape[1] != model.in_chans or any(
            n < k or n % k for n, k in zip(x.shape[2:], model.tubelet_size, strict=True))
        fix = f"T, H, W must be positive multiples of the tubelet {tt} x {th} x {tw}"
    else:
        bad = x.ndim != 5 or tuple(x.shape[1:]) != (model.in_chans, t, h, w)
        fix = ("Resample frames/resize to match, call model.set_input_size(num_frames=, img_size=), or create the "
               "model with dynamic_input_size=True")
    if bad:
        raise ValueError(f"expected a video tensor B x C x T x H x W = {expected}, got shape {tuple(x.shape)}. "
                         f"{fix}.")
    if not x.is_floating_point():
        raise ValueError(
            f"expected a float video ({expected}) scaled to [-1, 1], got dtype {x.dtype}; "
            "convert uint8 frames with x.float() * 2 / 255 - 1 (vivit.data.transforms does this)"
        )
    dtype = model.patch_embed.proj.weight.dtype
    if x.dtype != dtype and not torch.is_autocast_enabled(x.device.type):
        raise TypeError(f"expected a {dtype} video to match the model's weights, got {x.dtype}; convert the "
                        f"clip with x.to({dtype}) or the model with model.to({x.dtype})")


__all__ = ["ATTENTION_ORDERS", "VARIANTS", "check_args", "check_grid", "check_pool_switch", "check_video",
           "default_pool"]
