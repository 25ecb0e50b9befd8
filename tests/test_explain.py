"""Attention heatmaps for every variant and the PNG grid."""

from __future__ import annotations

import pytest
import torch

from tests.test_model import TINY_VARIANTS, tiny
from vivit.explain import attention_heatmap, frames_for_tokens, save_attention_grid


@pytest.mark.parametrize("variant", list(TINY_VARIANTS))
def test_heatmap_covers_the_token_grid_for_every_variant(variant, tmp_path):
    model = tiny(variant, attn_impl="eager")
    clip = torch.rand(3, 4, 16, 24) * 2 - 1
    heat = attention_heatmap(model, clip)
    assert heat.shape == model.grid_size == (2, 2, 3)
    assert heat.min() == 0 and heat.max() == 1
    frames = frames_for_tokens(model, clip)
    assert frames.shape == (2, 16, 24, 3) and frames.dtype == torch.uint8
    path = save_attention_grid(frames, heat, tmp_path / "grid.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_heatmap_follows_the_cls_row():
    model = tiny("spacetime", attn_impl="eager", depth=1)
    with torch.no_grad():  # make the CLS query attend to token 4 only
        qkv = model.encoder.blocks[0].attn.qkv
        qkv.weight.zero_()
        qkv.bias.zero_()
    clip = torch.zeros(3, 4, 16, 24)
    model.encoder.pos_embed.data.zero_()
    model.encoder.pos_embed.data[0, 1 + 4, 0] = 1.0  # token 4 differs from the others
    with torch.no_grad():
        model.encoder.blocks[0].attn.qkv.weight[16, 0] = 50.0  # key channel 0 <- input channel 0
        model.encoder.blocks[0].attn.qkv.bias[0] = 1.0  # every query has q[0] = 1
        model.encoder.blocks[0].norm1.weight.fill_(1.0)
    heat = attention_heatmap(model, clip).flatten()
    assert int(heat.argmax()) == 4


def test_sdpa_models_are_refused():
    with pytest.raises(ValueError, match="eager"):
        attention_heatmap(tiny("spacetime"), torch.zeros(3, 4, 16, 24))
