"""Static-token skipping for Model 1 (Run-Length Tokenization's rule): which tubelets are kept, and what runs."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import vivit
from vivit.model.encoders import BlockArgs, SpacetimeEncoder
from vivit.model.static import DROP_STATIC_DEFAULT, static_keep

TOL = 1e-5  # one clip at a time vs a batch: float32 BLAS may round a few rows differently
TUBELET = (2, 8, 8)


def _model(**kwargs) -> vivit.ViViT:
    torch.manual_seed(0)
    model = vivit.ViViT(variant="spacetime", img_size=32, num_frames=8, tubelet_size=TUBELET, embed_dim=64,
                        depth=2, num_heads=4, mlp_dim=128, num_classes=5, **kwargs).eval()
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.05)
    return model


def _clip(seed: int, moving: list[tuple[int, int, int]]) -> torch.Tensor:
    """A still clip (1, 3, 8, 32, 32) in [-1, 1] with noise below the default threshold, and a change in each
    ``(frame, patch row, patch column)`` of ``moving`` from that frame on."""
    rng = np.random.default_rng(seed)
    x = np.repeat(rng.uniform(-1, 1, (3, 1, 32, 32)), 8, axis=1)
    x += rng.uniform(-0.01, 0.01, x.shape)  # sensor noise: mean |diff| ~ 0.007, under 0.045
    for frame, i, j in moving:
        x[:, frame:, 8 * i:8 * i + 8, 8 * j:8 * j + 8] += 0.5
    return torch.from_numpy(x).float()[None]


def _rule(x: np.ndarray, tau: float) -> np.ndarray:
    """The rule as the issue words it, one tubelet at a time."""
    t, ph, pw = TUBELET
    nt, nh, nw = x.shape[1] // t, x.shape[2] // ph, x.shape[3] // pw
    keep = np.zeros((nt, nh, nw), bool)
    for k in range(nt):
        for i in range(nh):
            for j in range(nw):
                if k == 0:
                    keep[k, i, j] = True
                    continue
                last = x[:, k * t + t - 1, i * ph:(i + 1) * ph, j * pw:(j + 1) * pw]
                before = x[:, (k - 1) * t, i * ph:(i + 1) * ph, j * pw:(j + 1) * pw]
                keep[k, i, j] = np.abs(last - before).mean() > tau
    return keep.reshape(-1)


def test_kept_tubelets_follow_the_rule():
    x = torch.cat([_clip(0, [(3, 1, 2), (6, 0, 0)]), _clip(1, []), torch.rand(1, 3, 8, 32, 32) * 2 - 1])
    for tau in (DROP_STATIC_DEFAULT, 0.2, 0.6):
        keep = static_keep(x, TUBELET, tau)
        assert keep.shape == (3, 4 * 4 * 4)
        for b in range(3):
            assert keep[b].tolist() == _rule(x[b].numpy(), tau).tolist()
    keep = static_keep(x, TUBELET, DROP_STATIC_DEFAULT)
    # clip 0: first tubelets + the patch changing at frame 3 (tubelet 1, 2 vs 1: last frame 3 changed; tubelet 2
    # compares frame 5 with frame 2: changed too) + the patch changing at frame 6 (tubelets 3 and 3 vs 2)
    assert keep[0].sum() == 16 + 2 + 1 and keep[1].sum() == 16 and keep[2].all()


def test_output_equals_the_dense_encoder_on_the_kept_tokens_alone():
    model = _model(drop_static=DROP_STATIC_DEFAULT)
    x = _clip(0, [(3, 1, 2), (6, 0, 0)])
    keep = static_keep(x, TUBELET, DROP_STATIC_DEFAULT)[0].nonzero()[:, 0]
    enc = model.encoder  # a dense encoder built for the kept tokens only, their positional embeddings picked out
    dense = SpacetimeEncoder((len(keep), 1, 1), 64, 2, 4, 128, use_cls=True, drop_path_rate=0.0, args=BlockArgs())
    dense.blocks, dense.norm, dense.cls_token = enc.blocks, enc.norm, enc.cls_token
    dense.pos_embed = torch.nn.Parameter(torch.cat([enc.pos_embed[:, :1], enc.pos_embed[:, 1:][:, keep]], 1))
    with torch.inference_mode():
        tokens = model.patch_embed(x)[:, keep]
        assert torch.equal(model(x), model.forward_head(dense(tokens, head_token_only=True)))
        assert torch.equal(model.forward_features(x), dense(tokens))


def test_zero_is_the_dense_model_bit_for_bit():
    dense, off = _model(), _model(drop_static=0.0)
    x = torch.cat([_clip(0, [(3, 1, 2)]), torch.rand(1, 3, 8, 32, 32)])
    with torch.inference_mode():
        assert torch.equal(dense(x), off(x))
        assert torch.equal(dense.forward_features(x), off.forward_features(x))
    skipping = _model(drop_static=True)
    skipping.set_drop_static(0)
    with torch.inference_mode():
        assert torch.equal(dense(x), skipping(x))


def test_a_batch_whose_clips_keep_different_counts_equals_each_clip_alone():
    model = _model(drop_static=True)
    x = torch.cat([_clip(0, [(3, 1, 2)]), _clip(1, []), torch.rand(1, 3, 8, 32, 32) * 2 - 1])
    with torch.inference_mode():
        batch = model(x)
        alone = torch.cat([model(x[i:i + 1]) for i in range(3)])
        torch.testing.assert_close(batch, alone, atol=TOL, rtol=TOL)
        with pytest.raises(ValueError, match="do not stack"):
            model.forward_features(x)


def test_composes_with_token_merging():
    model = _model(drop_static=True, token_merging=2)
    x = _clip(0, [(2, 1, 2), (4, 2, 2), (6, 3, 3)])
    reference = copy.deepcopy(model)
    reference.set_drop_static(0)
    keep = static_keep(x, TUBELET, DROP_STATIC_DEFAULT)[0].nonzero()[:, 0]
    with torch.inference_mode():
        out = model(x)
        # the merging blocks run on the kept tokens: the same as merging over the selected, position-embedded tokens
        enc = reference.encoder
        tokens = (model.patch_embed(x) + enc.pos_embed[:, 1:])[:, keep]
        tokens = torch.cat([enc.cls_token + enc.pos_embed[:, :1], tokens], 1)
        expected = reference.forward_head(enc.norm(enc.forward_blocks(tokens, head_token_only=True)))
    assert torch.equal(out, expected) and model.token_sizes.shape[1] < 1 + len(keep)


@pytest.mark.parametrize("name", ["vivit_ti_16x2_fe", "vivit_ti_16x2_fsa"])
def test_models_2_to_4_refuse_with_the_reason(name):
    with pytest.raises(ValueError, match="Model 1"):
        vivit.create_model(name, depth=1, temporal_depth=1, img_size=32, num_frames=4, drop_static=0.05)


@pytest.mark.parametrize("tau", [-0.1, 2.5, float("nan"), "0.1"])
def test_bad_threshold_is_one_clear_error(tau):
    with pytest.raises(ValueError, match=r"drop_static must be a threshold in \[0, 2\]"):
        _model(drop_static=tau)


def test_not_saved_in_the_config_and_intermediates_refused(tmp_path):
    model = _model(drop_static=True)
    assert "drop_static" not in model.model_args
    with pytest.raises(ValueError, match="set_drop_static\\(0\\)"):
        model.forward_intermediates(torch.zeros(1, 3, 8, 32, 32))
