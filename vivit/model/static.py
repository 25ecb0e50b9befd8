"""Static-token skipping: which tubelets of a clip to encode (Run-Length Tokenization's rule).

Choudhury et al., "Don't Look Twice: Faster Video Transformers with Run-Length Tokenization" (NeurIPS 2024) drop,
before the encoder, every tubelet whose pixels barely differ from the same patch one tubelet earlier; the tokens left
keep their own positional embeddings, so a pretrained model runs on them unchanged. This module holds the rule only;
``ViViT.set_drop_static`` applies it (Model 1).
"""

from __future__ import annotations

import math

import torch
from einops import reduce

# RLT's threshold is 0.1 in ImageNet-normalised units ((x / 255 - mean) / std, std ~ 0.226): a pixel change of
# 0.1 * 0.226 * 255 ~ 5.8 grey levels, which is 0.1 / mean(1 / std) * 2 = 0.045 in the model's [-1, 1] units.
DROP_STATIC_DEFAULT = 0.045


def parse_drop_static(tau: float | bool | None) -> float:
    """The threshold ``tau`` as a float: ``True`` is :data:`DROP_STATIC_DEFAULT`; ``0``, ``False``, ``None`` are off.

    Raises:
        ValueError: ``tau`` outside ``[0, 2]`` (a mean absolute difference of ``[-1, 1]`` pixels), or no number.
    """
    if tau is None or tau is False:
        return 0.0
    if tau is True:
        return DROP_STATIC_DEFAULT
    if not isinstance(tau, int | float) or not math.isfinite(tau) or not 0 <= tau <= 2:
        raise ValueError(f"drop_static must be a threshold in [0, 2] (mean absolute change of a tubelet's pixels in "
                         f"the model's [-1, 1] units; 0 is off, True is the default {DROP_STATIC_DEFAULT}), got "
                         f"{tau!r}")
    return float(tau)


def static_keep(x: torch.Tensor, tubelet_size: tuple[int, int, int], tau: float) -> torch.Tensor:
    """Which tubelets of ``x`` ``(b, c, T, H, W)`` to keep: bool ``(b, t*h*w)``, t-major like the tokens.

    A tubelet is kept when the mean absolute difference between its last frame and the first frame of the tubelet
    before it (same patch), averaged over the patch and the channels, exceeds ``tau``; the first tubelet of each
    patch is always kept. Frames and pixels past the last whole tubelet are ignored, as the embedding ignores them.
    """
    t, ph, pw = tubelet_size
    nt, nh, nw = x.shape[2] // t, x.shape[3] // ph, x.shape[4] // pw
    x = x[:, :, :nt * t, :nh * ph, :nw * pw].float()
    last = x[:, :, 2 * t - 1::t]  # last frame of tubelets 1 .. nt-1
    previous_first = x[:, :, 0:(nt - 1) * t:t]  # first frame of tubelets 0 .. nt-2
    change = reduce((last - previous_first).abs(), "b c t (h p) (w q) -> b t h w", "mean", p=ph, q=pw)
    first = torch.ones(x.shape[0], 1, nh, nw, dtype=torch.bool, device=x.device)
    return torch.cat([first, change > tau], dim=1).flatten(1)


__all__ = ["DROP_STATIC_DEFAULT", "parse_drop_static", "static_keep"]
