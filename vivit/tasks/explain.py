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
from vivit.model.vivit import ViViT


def attention_heatmap(model: ViViT, clip: torch.Tensor) -> torch.Tensor:
    """Attention received per token of the last spatial attention layer.

    Args:
        model: A ViViT built with ``attn_impl="eager"``.
        clip: One normalised clip ``(C, T, H, W)`` (or a batch of one).

    Returns:
        ``(t', h', w')`` heatmap on the model's token grid, scaled to ``[0, 1]``.
    """
    video = clip if clip.ndim == 5 else clip[None]
    if video.shape[0] != 1:
        raise ValueError(f"attention_heatmap explains one clip; got a batch of {video.shape[0]}")
    maps = model.forward_attention_maps(video)
    # The last layer that attends over space: Model 2's temporal and Model 3's time attention are skipped.
    name = [n for n in maps if ".temporal." not in n and not n.endswith("attn_time")][-1]
    weights = maps[name]["space"] if isinstance(maps[name], dict) else maps[name]  # (1, [t,] heads, q, k)
    t, h, w = model.grid_size
    keys = h * w if weights.ndim == 5 else t * h * w
    prefix = weights.shape[-1] - keys
    received = weights[..., 0, prefix:] if prefix else weights.mean(dim=-2)  # (1, [t,] heads, keys)
    heat = received.mean(dim=-2).reshape(t, h, w)
    return (heat - heat.min()) / (heat.max() - heat.min()).clamp_min(1e-12)


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
    """Draw ``heat`` ``(t', h', w')`` over ``frames`` ``(t', H, W, C)`` as one PNG row; returns the path.

    The image is written to a temporary file beside ``path`` and renamed, so ``path`` is either the previous file or
    the complete new image: a failed or interrupted write leaves nothing behind.

    Raises:
        OSError: ``path`` cannot be written (a read-only folder, a full disk); the message names ``path``.
    """
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

