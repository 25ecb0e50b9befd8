"""Video -> tokens: tubelet embedding, uniform frame sampling, and positional-embedding resampling."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from vivit.model.grid import frame_sampling_grid, sample_frame_indices, tubelet_grid

__all__ = ["FrameSamplingEmbed", "TubeletEmbed", "frame_sampling_grid", "resample_pos_embed", "sample_frame_indices"]


class TubeletEmbed(nn.Module):
    """``Conv3d`` tubelets, tokens flattened t-major then h then w; leftover frames/pixels are dropped."""

    def __init__(
        self, img_size: tuple[int, int], num_frames: int, tubelet_size: tuple[int, int, int], in_chans: int, dim: int
    ) -> None:
        super().__init__()
        self.tubelet_size = tuple(tubelet_size)
        self.proj = nn.Conv3d(in_chans, dim, kernel_size=tubelet_size, stride=tubelet_size)
        self.set_input_size(img_size, num_frames)

    def set_input_size(self, img_size: tuple[int, int], num_frames: int) -> None:
        """Set the clip size the embedding (and ``grid_size``) is for; the weights do not depend on it."""
        self.grid_size = self.grid_for(num_frames, *img_size)

    def grid_for(self, num_frames: int, height: int, width: int) -> tuple[int, int, int]:
        """Token grid ``(t, h, w)`` of a ``num_frames x height x width`` clip."""
        return tubelet_grid(num_frames, (height, width), self.tubelet_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(b, c, T, H, W) -> (b, t*h*w, d)``."""
        # b d t h w -> b (t h w) d, in plain torch ops so torch.fx can trace it
        return self.proj(x).flatten(2).transpose(1, 2)


class FrameSamplingEmbed(nn.Module):
    """Uniform frame sampling + 2D patches of the frames stacked along height (scenic ``temporal_sampling``)."""

    def __init__(
        self,
        img_size: tuple[int, int],
        num_frames: int,
        patch_size: tuple[int, int],
        in_chans: int,
        dim: int,
        n_sampled_frames: int,
        exact_frame_count: bool = False,
    ) -> None:
        super().__init__()
        self.n_sampled_frames, self.exact_frame_count, self.patch_size = n_sampled_frames, exact_frame_count, patch_size
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=patch_size)
        self.set_input_size(img_size, num_frames)

    def set_input_size(self, img_size: tuple[int, int], num_frames: int) -> None:
        """Set the clip size: recomputes the sampled frame indices and ``grid_size``."""
        self.frame_index_list = sample_frame_indices(num_frames, self.n_sampled_frames, exact=self.exact_frame_count)
        device = self.proj.weight.device
        self.register_buffer("frame_indices", torch.tensor(self.frame_index_list, device=device), persistent=False)
        self.grid_size = frame_sampling_grid(len(self.frame_index_list), img_size, self.patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(b, c, T, H, W) -> (b, n, d)``."""
        # b c t h w -> b c (t h) w -> conv -> b (h w) d, in plain torch ops so torch.fx can trace it
        x = x.index_select(2, self.frame_indices).flatten(2, 3)
        return self.proj(x).flatten(2).transpose(1, 2)


def resample_pos_embed(
    pos_embed: torch.Tensor,
    old_grid: tuple[int, ...],
    new_grid: tuple[int, ...],
    num_prefix_tokens: int = 0,
    *,
    always: bool = False,
) -> torch.Tensor:
    """Resample a learned positional embedding ``(1, prefix + prod(grid), d)`` to another token grid.

    The grid is ``(t, h, w)`` (or ``(h, w)`` / ``(t,)``); the spatial plane is resized bilinearly with
    ``align_corners=True`` (the reference's ``scipy.ndimage.zoom(order=1)`` keeps the corner samples), the time axis
    linearly, also with aligned corners. Prefix (CLS) slots are kept unchanged. ``always=True`` interpolates even
    between equal grids (an identity with aligned corners), so a graph exported with symbolic sizes has no branch on
    them.
    """
    old_grid, new_grid = tuple(old_grid), tuple(new_grid)
    if len(old_grid) != len(new_grid):
        raise ValueError(f"grids must have the same rank, got {old_grid} and {new_grid}")
    expected = num_prefix_tokens + math.prod(old_grid)  # math, not numpy: torch.compile traces numpy into tensors
    if pos_embed.ndim != 3 or pos_embed.shape[1] != expected:
        raise ValueError(
            f"pos_embed of shape {tuple(pos_embed.shape)} does not fit grid {old_grid} with {num_prefix_tokens} "
            f"prefix tokens (expected (1, {expected}, d))"
        )
    if not always and old_grid == new_grid:
        return pos_embed
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    full_old = (1,) * (3 - len(old_grid)) + old_grid
    full_new = (1,) * (3 - len(new_grid)) + new_grid
    dtype = grid.dtype
    grid = grid.to(torch.promote_types(dtype, torch.float32))  # interpolate in at least float32
    grid = rearrange(grid, "1 (t h w) d -> t d h w", t=full_old[0], h=full_old[1], w=full_old[2])
    if always or full_old[1:] != full_new[1:]:
        grid = F.interpolate(grid, size=full_new[1:], mode="bilinear", align_corners=True)
    if always or full_old[0] != full_new[0]:
        tokens = rearrange(grid, "t d h w -> (h w) d t")
        tokens = F.interpolate(tokens, size=full_new[0], mode="linear", align_corners=True)
        grid = rearrange(tokens, "(h w) d t -> t d h w", h=full_new[1])
    grid = rearrange(grid, "t d h w -> 1 (t h w) d").to(dtype)
    return torch.cat([prefix, grid], dim=1)
