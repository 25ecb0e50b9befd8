"""Image ViT (timm) -> ViViT: inflate the patch kernel, tile or resize the positional embedding, copy the blocks.

The rules are the reference's (scenic ``projects/vivit/model_utils.py`` at commit 4a38d47:
``initialise_from_train_state`` L296-395, ``init_posemb`` L398-486, ``init_encoderblock`` L489-545,
``init_embedding`` L548-612), pinned leaf for leaf by ``golden/scenic/inflation/`` (SPEC 3.3).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from einops import repeat
from torch import nn

from vivit.model.embed import resample_pos_embed
from vivit.model.grid import infer_plane, pair
from vivit.model.layers import Attention, Mlp
from vivit.model.vivit import ViViT
from vivit.weights import fetch
from vivit.weights.keys import Entry, apply_key_table, same

KERNEL_INITS = ("central_frame", "average", "average_arp")
POSEMB_INITS = ("tile", "resize", "resize_tile")

# timm block module -> our block modules. scenic init_encoderblock L516-539: Model 3 loads the image attention into
# both the space and the time attention, LayerNorm_0 -> LayerNorm_space, LayerNorm_1 -> LayerNorm_mlp; LayerNorm_time
# is never restored (L529-534 only log init_temporal_layer_norm).
_BLOCK_TABLES: dict[str, dict[str, tuple[str, ...]]] = {
    "block": {
        "norm1": ("norm1",), "attn.qkv": ("attn.qkv",), "attn.proj": ("attn.proj",),
        "norm2": ("norm2",), "mlp.fc1": ("mlp.fc1",), "mlp.fc2": ("mlp.fc2",),
    },
    "factorized_self_attention": {
        "norm1": ("norm_space",), "attn.qkv": ("attn_space.qkv", "attn_time.qkv"),
        "attn.proj": ("attn_space.proj", "attn_time.proj"), "norm2": ("norm_mlp",),
        "mlp.fc1": ("mlp.fc1",), "mlp.fc2": ("mlp.fc2",),
    },
}
# timm LayerScale (DeiT-III and others) multiplies a branch output by gamma: folded into that branch's last Linear.
_LAYER_SCALES = {"attn.proj": "ls1.gamma", "mlp.fc2": "ls2.gamma"}
_UNSUPPORTED_HINT = (
    "timm features without a ViViT counterpart (norm_pre, fc_norm, qk_norm, register tokens, attention pooling) "
    "cannot be inflated"
)


@dataclass
class _Source:
    """An image ViT as a timm-style state dict plus what its module (if any) states."""

    state: dict[str, torch.Tensor]
    grid: tuple[int, int] | None
    act_layer: str | None
    num_heads: int | None


def inflate(
    model: ViViT,
    vit: str | nn.Module | Mapping[str, torch.Tensor],
    *,
    kernel_init: str = "central_frame",
    posemb_init: str = "tile",
    grid_size: tuple[int, int] | None = None,
) -> ViViT:
    """Initialise a ViViT from a 2D image ViT, in place, following the reference (SPEC 3.3).

    The patch kernel is inflated to the tubelet, the positional embedding tiled and/or resized to the token grid,
    the encoder blocks and final norm copied (Model 2: into the spatial encoder; Model 3: the image attention into
    both the space and time attention). The head, the Model 2 temporal encoder and CLS tokens, Model 3's ``norm_time``
    and, without a source CLS token, the target CLS keep their current values. Nothing is changed when an error is
    raised.

    Args:
        model: The ViViT to initialise; its ``act_layer`` is never changed.
        vit: A timm image-ViT name (``"vit_base_patch16_224.augreg_in21k"``, created with pretrained weights), a timm
            ``VisionTransformer``, or its state dict.
        kernel_init: ``"central_frame"`` (the 2D kernel on frame ``t // 2``, zeros elsewhere), ``"average"`` (``K / t``
            on every frame) or ``"average_arp"`` (approximate rank pooling weights).
        posemb_init: ``"tile"`` (repeat the image grid over the ``t'`` frames), ``"resize"`` (bilinear, aligned
            corners, to the model's grid; one frame of tokens only) or ``"resize_tile"`` (both).
        grid_size: The source's ``(h, w)`` patch grid, for a non-square state dict (default: square, as the
            reference assumes). A timm name or module states its own.

    Returns:
        ``model``, initialised.

    Raises:
        ValueError: Unknown ``kernel_init`` / ``posemb_init``, mismatched widths, depths, heads, patch sizes or
            activations, or source parameters with no place in the model.
    """
    if kernel_init not in KERNEL_INITS:
        raise ValueError(f"kernel_init must be one of {KERNEL_INITS}, got {kernel_init!r}")
    if posemb_init not in POSEMB_INITS:
        raise ValueError(f"posemb_init must be one of {POSEMB_INITS}, got {posemb_init!r}")
    if not isinstance(model, ViViT):
        raise TypeError(f"model must be a vivit.ViViT, got {type(model).__name__}")
    source = _load_source(vit, grid_size)
    _check_activation(model, source)
    targets = dict(model.named_parameters())
    table, ignored = _key_table(model, source, kernel_init, posemb_init, targets)

    # compute and check everything before touching the model
    values = apply_key_table(source.state, table, what="image-ViT parameters", into=f"a {model.variant} ViViT",
                             target_shapes={k: v.shape for k, v in targets.items()}, ignored=ignored,
                             complete=False, giver="the image ViT", hint=f"; {_UNSUPPORTED_HINT}")
    with torch.no_grad():
        for key, value in values.items():
            targets[key].copy_(value.to(targets[key].dtype))
    return model


def inflate_kernel(kernel: torch.Tensor, t: int, method: str = "central_frame") -> torch.Tensor:
    """Inflate a 2D patch kernel ``(d, c, h, w)`` to a tubelet kernel ``(d, c, t, h, w)``.

    scenic ``init_embedding`` L567-603: ``central_frame`` puts ``K`` on frame ``t // 2`` (zeros elsewhere),
    ``average`` puts ``K / t`` on every frame, ``average_arp`` puts ``K * w_i / t`` on frame ``i = 1..t`` with
    ``w_i = 2(t - i + 1) - (t + 1)(H_t - H_{i-1})`` (Bilen et al., approximate rank pooling).
    """
    if method not in KERNEL_INITS:
        raise ValueError(f"kernel_init must be one of {KERNEL_INITS}, got {method!r}")
    frames = repeat(kernel, "d c h w -> d c t h w", t=t)
    if method == "central_frame":
        out = torch.zeros_like(frames)
        out[:, :, t // 2] = kernel
        return out
    if method == "average":
        return frames / t  # same float32 division as the reference's np.tile(...) / t
    if t == 1:
        raise ValueError("kernel_init='average_arp' gives an all-zero kernel for a 1-frame tubelet (w_1 = 0); "
                         "use 'central_frame' or 'average'")
    # The reference multiplies by a float64 normaliser and stores float32: compute in float64, round once.
    factors = torch.from_numpy(average_arp_weights(t) / t).to(kernel.device)
    return (frames.double() * factors.view(1, 1, t, 1, 1)).to(kernel.dtype)


def average_arp_weights(t: int) -> np.ndarray:
    """``w_i = 2(t - i + 1) - (t + 1)(H_t - H_{i-1})`` for ``i = 1..t`` (``t = 2``: ``[-0.5, 0.5]``)."""
    i = np.arange(1, t + 1)
    harmonic = np.concatenate([[0.0], np.cumsum(1.0 / i)])  # H_0 .. H_t
    return 2.0 * (t - i + 1) - (t + 1) * (harmonic[t] - harmonic[i - 1])


def inflate_pos_embed(
    pos_embed: torch.Tensor,
    source_grid: tuple[int, int],
    source_prefix: int,
    target: torch.Tensor,
    target_grid: tuple[int, int, int],
    target_prefix: int,
    method: str = "tile",
) -> torch.Tensor:
    """An image posemb ``(1, prefix + h*w, d)`` -> a video posemb ``(1, prefix' + t*h'*w', d)`` (t-major tokens).

    scenic ``init_posemb`` L413-481: the CLS slot is the source's when both have a CLS token, the target's own
    (``target``) when only the target has one, and dropped when the target has none.
    """
    if method not in POSEMB_INITS:
        raise ValueError(f"posemb_init must be one of {POSEMB_INITS}, got {method!r}")
    t, h, w = target_grid
    grid = pos_embed[:, source_prefix:]
    if method == "tile" and tuple(source_grid) != (h, w):
        raise ValueError(
            f"posemb_init='tile' repeats the image grid {tuple(source_grid)} over time, but the model's per-frame "
            f"grid is {(h, w)}: use posemb_init='resize_tile'"
        )
    if method == "resize" and t != 1:
        # The reference would resize all t*h*w tokens as one sqrt(n) x sqrt(n) image grid, ignoring time.
        raise ValueError(
            f"posemb_init='resize' resizes one image grid, but this positional embedding covers {t} frames of "
            f"{h}x{w} tokens: use posemb_init='resize_tile'"
        )
    if method in ("resize", "resize_tile"):
        # align_corners=True is scipy.ndimage.zoom(order=1), the reference's interpolate_positional_embeddings.
        grid = resample_pos_embed(grid, tuple(source_grid), (h, w))
    grid = repeat(grid, "1 s d -> 1 (t s) d", t=t)
    prefix = pos_embed[:, :1] if source_prefix else target[:, :1].detach()
    return torch.cat([prefix[:, :target_prefix].to(grid), grid], dim=1)


# ------------------------------------------------------------------------------------------------------------ source
def _load_source(vit: str | nn.Module | Mapping[str, torch.Tensor], grid_size: tuple[int, int] | None) -> _Source:
    if isinstance(vit, str):
        import timm  # a core dependency, imported only when a name is given

        vit = timm.create_model(vit, pretrained=True, pretrained_cfg_overlay=_timm_weights_file(timm, vit))
    if isinstance(vit, nn.Module):
        if getattr(vit, "no_embed_class", False) or getattr(vit, "num_reg_tokens", 0):
            raise ValueError(f"{type(vit).__name__} has register tokens or a CLS token outside the positional "
                             f"embedding; {_UNSUPPORTED_HINT}")
        own_grid = getattr(getattr(vit, "patch_embed", None), "grid_size", None)
        own_grid = None if own_grid is None else pair(own_grid)
        if grid_size is not None and own_grid is not None and tuple(grid_size) != own_grid:
            raise ValueError(f"grid_size={tuple(grid_size)} contradicts the module's patch_embed.grid_size {own_grid}")
        blocks = getattr(vit, "blocks", None)
        first = blocks[0] if blocks is not None and len(blocks) else None
        act = getattr(getattr(first, "mlp", None), "act", None)
        heads = getattr(getattr(first, "attn", None), "num_heads", None)
        return _Source(_as_tensors(vit.state_dict()), own_grid or grid_size,
                       None if act is None else _act_name(act), heads)
    if isinstance(vit, Mapping):
        return _Source(_as_tensors(vit), None if grid_size is None else pair(grid_size),
                       None, None)
    raise TypeError(f"vit must be a timm model name, a timm VisionTransformer or its state dict, got {type(vit)}")


def _timm_weights_file(timm: Any, name: str) -> dict[str, str]:
    """Fetch a timm name's Hub weights through ``vivit.weights.fetch`` (one clear error offline, checked cache); timm
    then reads that file (``pretrained_cfg_overlay={"file": ...}``) instead of retrying the Hub with its own client."""
    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None or not cfg.hf_hub_id:
        return {}  # unknown names and URL-only weights: timm's own error or download
    if cfg.hf_hub_filename:
        return {"file": str(fetch.hf_hub_file(cfg.hf_hub_id, cfg.hf_hub_filename))}
    # older timm repos hold only the pickle (timm reads it with weights_only=True)
    return {"file": str(fetch.hub_weights_file(cfg.hf_hub_id))}


def _as_tensors(state: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    return {k: (v if isinstance(v, torch.Tensor) else torch.as_tensor(np.asarray(v))).detach()
            for k, v in state.items()}


def _act_name(act: nn.Module) -> str:
    if isinstance(act, nn.GELU):
        return "gelu_tanh" if act.approximate == "tanh" else "gelu"
    name = {"GELU": "gelu", "GELUTanh": "gelu_tanh"}.get(type(act).__name__)
    if name is None:
        raise ValueError(f"the image ViT's activation {type(act).__name__} has no ViViT counterpart "
                         "(act_layer 'gelu' or 'gelu_tanh')")
    return name


def _check_activation(model: ViViT, source: _Source) -> None:
    mlp = next((m for m in model.modules() if isinstance(m, Mlp)), None)
    if source.act_layer is None or mlp is None:
        return
    model_act = _act_name(mlp.act)
    if model_act != source.act_layer:
        raise ValueError(
            f"the image ViT uses act_layer={source.act_layer!r} but the model uses {model_act!r}; inflate never "
            f"changes the activation: create the model with act_layer=\"{source.act_layer}\""
        )


# ------------------------------------------------------------------------------------------------------------- table
def _key_table(model: ViViT, source: _Source, kernel_init: str, posemb_init: str,
               targets: Mapping[str, torch.Tensor]) -> tuple[list[Entry], set[str]]:
    """Every (source keys -> our key) entry, and the source keys dropped on purpose."""
    state = source.state
    fe = model.variant == "factorized_encoder"
    encoder = model.encoder.spatial if fe else model.encoder
    dst = "encoder.spatial" if fe else "encoder"
    _check_sizes(model, encoder, source)

    # scenic L352-362 and L379-386: the head (output_projection) is not restored; pre_logits only into a target with
    # representation_size; `cls` only where the target has a key of that name (Models 1 and 4, not Model 2).
    ignored = {"head.weight", "head.bias", "pre_logits.fc.weight", "pre_logits.fc.bias", "cls_token"}
    table: list[Entry] = []
    conv = model.patch_embed.proj
    if isinstance(conv, nn.Conv3d):
        t = conv.weight.shape[2]
        table.append((("patch_embed.proj.weight",), "patch_embed.proj.weight",
                      lambda k: inflate_kernel(k, t, kernel_init)))
    else:  # frame sampling embeds 2D patches: the kernel shapes agree and the reference copies it (L555, L610)
        table.append((("patch_embed.proj.weight",), "patch_embed.proj.weight", same))
    if "patch_embed.proj.bias" in state:
        table.append((("patch_embed.proj.bias",), "patch_embed.proj.bias", same))
    else:  # e.g. CLIP image towers: a bias-free conv is a zero bias
        table.append(((), "patch_embed.proj.bias", lambda: torch.zeros_like(conv.bias)))

    has_cls = "cls_token" in state
    pos_key = f"{dst}.pos_embed"
    grid = model.grid_size
    target_grid = (1, *grid[1:]) if fe else grid
    source_grid = (_source_grid(state["pos_embed"], int(has_cls), source.grid, target_grid[1:])
                   if "pos_embed" in state else (0, 0))
    table.append((("pos_embed",), pos_key, lambda p: inflate_pos_embed(
        p, source_grid, int(has_cls), targets[pos_key], target_grid, encoder.num_prefix_tokens, posemb_init)))
    if has_cls and not fe and encoder.cls_token is not None:
        table.append((("cls_token",), f"{dst}.cls_token", same))

    block_table = _BLOCK_TABLES["factorized_self_attention" if model.variant == "factorized_self_attention"
                                else "block"]
    for i in range(len(encoder.blocks)):
        table += _block_entries(f"blocks.{i}", f"{dst}.blocks.{i}", block_table, state)
    table += [((f"norm.{p}",), f"{dst}.norm.{p}", same) for p in ("weight", "bias")]
    if "pre_logits.fc.weight" in targets and "pre_logits.fc.weight" in state:
        table += [((f"pre_logits.fc.{p}",), f"pre_logits.fc.{p}", same) for p in ("weight", "bias")]
    return table, ignored


def _block_entries(src: str, dst: str, block_table: Mapping[str, tuple[str, ...]],
                   state: Mapping[str, torch.Tensor]) -> Iterator[Entry]:
    for src_mod, dst_mods in block_table.items():
        for p in ("weight", "bias"):
            sources, fn = (f"{src}.{src_mod}.{p}",), same
            scale = _LAYER_SCALES.get(src_mod)
            if scale and f"{src}.{scale}" in state:
                sources, fn = (*sources, f"{src}.{scale}"), _scale_rows
            for dst_mod in dst_mods:
                yield sources, f"{dst}.{dst_mod}.{p}", fn


def _scale_rows(x: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    return gamma.reshape(-1, *([1] * (x.ndim - 1))) * x


def _source_grid(pos_embed: torch.Tensor, num_prefix: int, grid: tuple[int, int] | None,
                 target_hw: tuple[int, int]) -> tuple[int, int]:
    """The source's patch grid: stated, else the target's per-frame grid when the token counts agree, else square.

    A token count equal to the target's ``h' * w'`` means that grid, square or not: the reference tiles such an
    embedding as is (scenic ``init_posemb`` L448-450, ``tile_positional_embeddings`` repeats the tokens unreshaped).
    """
    n = pos_embed.shape[1] - num_prefix
    if grid is None:
        found = infer_plane(n, (target_hw,))
        if found is None:
            raise ValueError(f"the image ViT's positional embedding holds {n} patch tokens, not a square grid: "
                             "pass grid_size=(h, w)")
        return found
    if grid[0] * grid[1] != n:
        raise ValueError(f"grid_size {tuple(grid)} needs {grid[0] * grid[1]} patch tokens, the image ViT's "
                         f"positional embedding holds {n} (+{num_prefix} CLS)")
    return grid


def _check_sizes(model: ViViT, encoder: nn.Module, source: _Source) -> None:
    """Width, depth, heads and patch size, with expected / found, before any shape-by-shape check."""
    state = source.state
    if "patch_embed.proj.weight" not in state:
        raise ValueError(f"not an image-ViT state dict: no patch_embed.proj.weight among {sorted(state)[:8]}")
    kernel = state["patch_embed.proj.weight"]
    if kernel.ndim != 4:
        raise ValueError(f"expected a 2D patch kernel (d, c, h, w), found shape {tuple(kernel.shape)}")
    if kernel.shape[0] != model.embed_dim:
        raise ValueError(f"width mismatch: the model has embed_dim={model.embed_dim}, the image ViT has "
                         f"{kernel.shape[0]}; create the model with embed_dim={kernel.shape[0]}")
    conv = model.patch_embed.proj.weight
    expected = (conv.shape[1], *conv.shape[-2:])
    if tuple(kernel.shape[1:]) != tuple(expected):
        raise ValueError(f"patch mismatch: the model embeds (in_chans, h, w) = {tuple(expected)} patches, the image "
                         f"ViT {tuple(kernel.shape[1:])}; match in_chans and tubelet_size[1:]")
    depth = len({m.group(1) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))})
    if depth != len(encoder.blocks):
        where = "spatial depth" if model.variant == "factorized_encoder" else "depth"
        raise ValueError(f"depth mismatch: the model has {where}={len(encoder.blocks)}, the image ViT has {depth} "
                         f"blocks; create the model with depth={depth}")
    heads = next(m.num_heads for m in encoder.modules() if isinstance(m, Attention))
    if source.num_heads is not None and source.num_heads != heads:
        raise ValueError(f"heads mismatch: the model has num_heads={heads}, the image ViT has {source.num_heads}; "
                         f"create the model with num_heads={source.num_heads}")
