"""Token order, frame sampling indices, positional-embedding resampling."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vivit.model.embed import FrameSamplingEmbed, TubeletEmbed, resample_pos_embed, sample_frame_indices


def test_tubelet_tokens_are_t_major_then_h_then_w():
    embed = TubeletEmbed((8, 12), 4, (2, 4, 4), 1, 1)
    with torch.no_grad():
        embed.proj.weight.zero_()
        embed.proj.weight[0, 0, 0, 0, 0] = 1.0  # token value = top-left-first-frame pixel of its tubelet
        embed.proj.bias.zero_()
    t, h, w = torch.meshgrid(torch.arange(4), torch.arange(8), torch.arange(12), indexing="ij")
    video = (t * 10000 + h * 100 + w).float()[None, None]
    tokens = embed(video)[0, :, 0]
    expected = [tt * 2 * 10000 + hh * 4 * 100 + ww * 4 for tt in range(2) for hh in range(2) for ww in range(3)]
    assert tokens.tolist() == expected
    assert embed.grid_size == (2, 2, 3)


def test_tubelet_drops_leftover_frames_and_pixels():
    embed = TubeletEmbed((10, 9), 5, (2, 4, 4), 3, 8)
    assert embed(torch.randn(1, 3, 5, 10, 9)).shape == (1, 2 * 2 * 2, 8)


@pytest.mark.parametrize(
    ("frames", "n", "expected"),
    [(8, 4, [2, 3, 5, 6]), (32, 2, [11, 21, 31]), (8, 5, [1, 3, 4, 5, 7, 7]), (4, 8, [0, 1, 2, 3]), (32, 1, [16])],
)
def test_frame_sampling_reproduces_reference_indices(frames, n, expected):
    assert sample_frame_indices(frames, n) == expected


def test_exact_frame_sampling_is_opt_in():
    assert sample_frame_indices(32, 2, exact=True) == [11, 21]
    assert len(sample_frame_indices(8, 5, exact=True)) == 5
    with pytest.raises(ValueError):
        sample_frame_indices(0, 2)


def test_frame_sampling_embed_uses_the_sampled_frames_stacked_along_height():
    embed = FrameSamplingEmbed((4, 4), 8, (4, 4), 1, 1, n_sampled_frames=4)
    with torch.no_grad():
        embed.proj.weight.zero_()
        embed.proj.weight[0, 0, 0, 0] = 1.0
        embed.proj.bias.zero_()
    video = torch.arange(8, dtype=torch.float32).view(1, 1, 8, 1, 1).expand(1, 1, 8, 4, 4)
    assert embed(video)[0, :, 0].tolist() == [2.0, 3.0, 5.0, 6.0]
    assert embed.grid_size == (4, 1, 1)


def _bilinear_align_corners(grid: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Independent separable linear interpolation with aligned corners (scipy.ndimage.zoom order=1)."""
    def along(a, n, axis):
        m = a.shape[axis]
        pos = np.linspace(0, m - 1, n) if n > 1 else np.zeros(1)
        lo = np.floor(pos).astype(int).clip(0, m - 1)
        hi = (lo + 1).clip(0, m - 1)
        frac = (pos - lo).reshape([-1 if i == axis else 1 for i in range(a.ndim)])
        return np.take(a, lo, axis) * (1 - frac) + np.take(a, hi, axis) * frac
    return along(along(grid, out_h, 0), out_w, 1)


def test_spatial_resample_matches_independent_bilinear_on_non_square_grid():
    pos = torch.randn(1, 1 + 2 * 3 * 4, 5, dtype=torch.float64)
    out = resample_pos_embed(pos, (2, 3, 4), (2, 5, 7), num_prefix_tokens=1)
    assert out.shape == (1, 1 + 2 * 5 * 7, 5)
    torch.testing.assert_close(out[:, :1], pos[:, :1])
    grid = pos[0, 1:].numpy().reshape(2, 3, 4, 5)
    for t in range(2):
        expected = _bilinear_align_corners(grid[t], 5, 7)
        np.testing.assert_allclose(out[0, 1:].numpy().reshape(2, 5, 7, 5)[t], expected, atol=1e-12)


def test_temporal_resample_is_linear_along_time():
    pos = torch.randn(1, 4 * 2 * 2, 3, dtype=torch.float64)
    out = resample_pos_embed(pos, (4, 2, 2), (7, 2, 2))
    grid = pos[0].numpy().reshape(4, 4, 3)  # t, s, d
    expected = _bilinear_align_corners(grid, 7, 4)  # along t only (s unchanged)
    np.testing.assert_allclose(out[0].numpy().reshape(7, 4, 3), expected, atol=1e-12)


def test_resample_identity_and_errors():
    pos = torch.randn(1, 9, 2)
    assert resample_pos_embed(pos, (1, 3, 3), (1, 3, 3)) is pos
    with pytest.raises(ValueError, match="does not fit grid"):
        resample_pos_embed(pos, (2, 3, 3), (1, 3, 3))
