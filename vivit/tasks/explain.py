"""Where a ViViT looks: last-layer spatial attention over the token grid, drawn over the clip's frames.

The heatmap is the attention the last spatial attention layer pays to each patch token: the CLS token's attention row
when the model has one, else the mean over all query tokens, averaged over heads (Model 4: its space heads). It needs
a model created with ``attn_impl="eager"``. Drawing needs matplotlib (``pip install "vivit[explain]"``).
"""

from __future__ import annotations

from pathlib import Path

import torch
from einops import rearrange

from vivit.data.transforms import resolve_data_config
from vivit.files import write_atomic
from vivit.model.layers import FactorizedSelfAttentionBlock
from vivit.model.vivit import ViViT


def attention_heatmap(model: ViViT, clip: torch.Tensor) -> torch.Tensor:
    """Attention received per token of ``model``'s (built with ``attn_impl="eager"``) last spatial attention layer
    on one normalised ``clip`` ``(C, T, H, W)`` (or a batch of one): a ``(t', h', w')`` heatmap scaled to ``[0, 1]``."""
    video = clip if clip.ndim == 5 else clip[None]
    if video.shape[0] != 1:
        raise ValueError(f"attention_heatmap explains one clip; got a batch of {video.shape[0]}")
    maps = model.forward_attention_maps(video)
    name = _last_spatial_attention(model)
    weights = maps[name]["space"] if isinstance(maps[name], dict) else maps[name]  # (1, [t,] heads, q, k)
    t, h, w = model.grid_size
    keys = h * w if weights.ndim == 5 else t * h * w
    prefix = weights.shape[-1] - keys
    received = weights[..., 0, prefix:] if prefix else weights.mean(dim=-2)  # (1, [t,] heads, keys)
    heat = received.mean(dim=-2).reshape(t, h, w)
    return (heat - heat.min()) / (heat.max() - heat.min()).clamp_min(1e-12)


def _last_spatial_attention(model: ViViT) -> str:
    """Module name of the last attention layer that attends over space: the last of the blocks
    ``forward_intermediates`` walks (Model 2: its spatial encoder's), Model 3's ``attn_space``, else ``attn``."""
    last = model.encoder.get_submodule(model.encoder.intermediate_blocks)[-1]
    attention = last.attn_space if isinstance(last, FactorizedSelfAttentionBlock) else last.attn
    return next(name for name, module in model.named_modules() if module is attention)


def frames_for_tokens(model: ViViT, clip: torch.Tensor) -> torch.Tensor:
    """One displayable uint8 frame ``(t', H, W, C)`` per temporal token: the tubelet's central frame.

    ``clip`` is one normalised clip ``(C, T, H, W)`` (or a batch of one); the normalisation is undone with the
    ``mean``/``std`` of the model's pretrained cfg (the reference's 0.5 when it has none).
    """
    if clip.ndim == 5:
        if clip.shape[0] != 1:
            raise ValueError(f"frames_for_tokens shows one clip; got a batch of {clip.shape[0]}")
        clip = clip[0]
    # The same numbers eval_transform normalised with, so the frames are the decoded pixels again.
    cfg = resolve_data_config(model)
    shape = (-1, 1, 1, 1)
    mean = torch.tensor(cfg["mean"], dtype=torch.float32, device=clip.device).view(shape)
    std = torch.tensor(cfg["std"], dtype=torch.float32, device=clip.device).view(shape)
    pixels = ((clip.float() * std + mean) * 255).clamp(0, 255).round().to(torch.uint8)  # undo (x / 255 - mean) / std
    indices = getattr(model.patch_embed, "frame_indices", None)
    t = model.grid_size[0]
    if indices is None:
        step = model.tubelet_size[0]
        indices = torch.arange(t) * step + step // 2
    return rearrange(pixels[:, indices[:t]], "c t h w -> t h w c")


def save_attention_grid(frames: torch.Tensor, heat: torch.Tensor, path: str | Path, title: str = "") -> Path:
    """Draw ``heat`` ``(t', h', w')`` over ``frames`` ``(t', H, W, C)`` as one PNG row, written whole or not at all;
    returns the path. Raises ``OSError`` naming ``path`` when it cannot be written (a read-only folder, a full disk)."""
    try:
        # A bare Figure renders without pyplot, so the caller's backend (a notebook's inline one) is left alone.
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError('drawing attention maps needs matplotlib: pip install "vivit[explain]"') from None
    t = heat.shape[0]
    fig = Figure(figsize=(2.2 * t, 2.6))
    axes = fig.subplots(1, t, squeeze=False)
    for i, ax in enumerate(axes[0]):
        ax.imshow(frames[i].cpu().numpy())
        size = frames.shape[1:3]
        upsampled = torch.nn.functional.interpolate(heat[i][None, None].float().cpu(), size=size, mode="bilinear")
        ax.imshow(upsampled[0, 0].numpy(), cmap="inferno", alpha=0.5, vmin=0, vmax=1)
        ax.set_title(f"t'={i}", fontsize=8)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # matplotlib picks the format from the name, so the temporary file keeps the suffix.
        write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=100, bbox_inches="tight"), keep_suffix=True)
    except OSError as err:  # named after the target: the temporary name means nothing to the caller
        raise OSError(f"{path}: cannot write the image ({err.strerror or err}); choose a writable folder") from None
    return path

