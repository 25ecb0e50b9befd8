"""Attention paths, stochastic depth, activation and pooling."""

from __future__ import annotations

import math

import pytest
import torch

from vivit.model.layers import Attention, Block, DropPath, FactorizedDotProductAttention, Mlp, attend, pool_tokens


@pytest.mark.parametrize("shape", [(2, 3, 5, 4), (2, 3, 4, 3, 7, 4), (1, 2, 1, 8)])
def test_sdpa_equals_eager_for_any_grouping(shape):
    q, k, v = (torch.randn(shape) for _ in range(3))
    fused, _ = attend(q, k, v, "sdpa")
    eager, weights = attend(q, k, v, "eager", return_weights=True)
    torch.testing.assert_close(fused, eager, atol=1e-6, rtol=1e-5)
    assert weights.shape == (*shape[:-1], shape[-2])
    torch.testing.assert_close(weights.sum(-1), torch.ones(shape[:-1]))


def test_eager_attention_is_softmax_of_scaled_scores():
    q, k, v = (torch.randn(1, 1, 3, 4) for _ in range(3))
    out, _ = attend(q, k, v, "eager")
    expected = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(4), -1) @ v
    torch.testing.assert_close(out, expected)


def test_sdpa_cannot_return_weights():
    q = torch.randn(1, 1, 2, 4)
    with pytest.raises(ValueError, match="eager"):
        attend(q, q, q, "sdpa", return_weights=True)


def test_attention_rejects_bad_settings():
    with pytest.raises(ValueError, match="divisible"):
        Attention(10, 3)
    with pytest.raises(ValueError, match="attn_impl"):
        Attention(8, 2, attn_impl="flash")
    with pytest.raises(ValueError, match="even"):
        FactorizedDotProductAttention(12, 3)


def test_factorized_dot_product_splits_heads_between_time_and_space():
    torch.manual_seed(0)
    attn = FactorizedDotProductAttention(8, 2, attn_impl="eager").eval()
    x = torch.randn(2, 3, 5, 8)  # b t s d
    # Head 0 attends over time only: perturbing another frame at another position must not reach it.
    out = attn(x)
    x2 = x.clone()
    x2[:, 1, 2] += 1.0  # frame 1, position 2
    out2 = attn(x2)
    delta = (out2 - out).abs().sum(-1)  # (b, t, s)
    # A token at another frame AND another position sees neither through time nor through space attention.
    assert delta[:, 0, 0].max() < 1e-6
    # Same position, other frame: reached through the time heads.
    assert delta[:, 0, 2].min() > 1e-4
    # Same frame, other position: reached through the space heads.
    assert delta[:, 1, 0].min() > 1e-4


def test_sdpa_equals_eager_in_blocks_and_factorized_attention():
    for attn_cls in (Attention, FactorizedDotProductAttention):
        torch.manual_seed(0)
        a = Block(16, 4, 32, attn_impl="sdpa", attn_cls=attn_cls).eval()
        b = Block(16, 4, 32, attn_impl="eager", attn_cls=attn_cls).eval()
        b.load_state_dict(a.state_dict())
        x = torch.randn(2, 3, 6, 16)
        torch.testing.assert_close(a(x), b(x), atol=1e-5, rtol=1e-5)


def test_drop_path_keeps_branch_unscaled_and_drops_whole_examples():
    drop = DropPath(0.5).train()
    x = torch.ones(4000, 3, 2)
    y = drop(x)
    per_example = y.flatten(1)
    assert set(per_example.unique().tolist()) <= {0.0, 1.0}  # no 1 / (1 - p) rescaling
    assert (per_example.min(1).values == per_example.max(1).values).all()  # one draw per example
    assert 0.4 < per_example[:, 0].mean() < 0.6
    assert torch.equal(drop.eval()(x), x)


def test_mlp_uses_tanh_gelu_by_default():
    mlp = Mlp(4, 8)
    assert mlp.act.approximate == "tanh"
    assert Mlp(4, 8, act_layer="gelu").act.approximate == "none"
    with pytest.raises(ValueError, match="act_layer"):
        Mlp(4, 8, act_layer="relu6")


def test_pool_tokens():
    x = torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(2, 4, 3)
    torch.testing.assert_close(pool_tokens(x, "token", 1), x[:, 0])
    torch.testing.assert_close(pool_tokens(x, "avg", 1), x[:, 1:].mean(1))
    torch.testing.assert_close(pool_tokens(x, "max", 0), x.amax(1))
    torch.testing.assert_close(pool_tokens(x, "sum", 0), x.sum(1))
    with pytest.raises(ValueError, match="global_pool"):
        pool_tokens(x, "gap")
