"""Clips of other sizes: set_input_size resamples in place, dynamic_input_size resamples on the fly (SPEC 4.3)."""

from __future__ import annotations

import copy

import pytest
import torch

import vivit
from vivit.model.embed import resample_pos_embed

VARIANTS = ["spacetime", "factorized_encoder", "factorized_self_attention", "factorized_dot_product"]
BUILT = (4, 32, 32)
OTHER = (6, 48, 40)  # every axis changes, H != W


def _model(variant: str, **kwargs) -> vivit.ViViT:
    torch.manual_seed(0)
    model = vivit.ViViT(variant=variant, img_size=BUILT[1:], num_frames=BUILT[0], tubelet_size=(2, 8, 8),
                        embed_dim=32, depth=1, temporal_depth=1, num_heads=2, mlp_dim=64, num_classes=5, **kwargs)
    with torch.no_grad():  # the zero head would hide every difference
        for p in model.parameters():
            p.normal_(std=0.2)
    return model.eval()


def _pair(variant: str) -> tuple[vivit.ViViT, vivit.ViViT]:
    fixed = _model(variant)
    dynamic = _model(variant, dynamic_input_size=True)
    dynamic.load_state_dict(fixed.state_dict())
    return fixed, dynamic


def _clip(t: int, h: int, w: int, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, t, h, w, generator=torch.Generator().manual_seed(t * h * w))


@pytest.mark.parametrize("variant", VARIANTS)
def test_set_input_size_equals_loading_resampled_weights_into_a_model_built_for_that_size(variant):
    model = _model(variant)
    built = vivit.ViViT(**{**model.model_args, "num_frames": OTHER[0], "img_size": OTHER[1:]}).eval()
    state = model.state_dict()
    for name, module in model.named_modules():
        if hasattr(module, "pos_embed"):  # resample by hand, one positional embedding per encoder
            target = built.get_submodule(name)
            state[f"{name}.pos_embed"] = resample_pos_embed(module.pos_embed.detach(), module.grid, target.grid,
                                                            module.num_prefix_tokens)
    built.load_state_dict(state)

    model.set_input_size(num_frames=OTHER[0], img_size=OTHER[1:])
    assert (model.num_frames, model.img_size) == (OTHER[0], OTHER[1:])
    assert model.grid_size == built.grid_size
    with torch.no_grad():
        torch.testing.assert_close(model(_clip(*OTHER)), built(_clip(*OTHER)), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="B x 3 x 6 x 48 x 40"):
        model(_clip(*BUILT))


def test_set_input_size_keeps_parameters_frozen_and_refuses_sizes_without_tokens():
    model = _model("factorized_encoder").requires_grad_(False)
    model.set_input_size(img_size=64)
    assert model.encoder.spatial.pos_embed.shape[1] == 1 + 8 * 8
    assert not any(p.requires_grad for p in model.parameters())
    with pytest.raises(ValueError, match="smaller than one tubelet"):
        model.set_input_size(num_frames=1)
    assert model.num_frames == BUILT[0] and model.grid_size == (2, 8, 8)  # the failed call changed nothing


@pytest.mark.parametrize("variant", VARIANTS)
def test_dynamic_input_size_is_bit_identical_at_the_built_size_and_matches_set_input_size_elsewhere(variant):
    fixed, dynamic = _pair(variant)
    resized = copy.deepcopy(fixed)
    resized.set_input_size(num_frames=OTHER[0], img_size=OTHER[1:])
    with torch.no_grad():
        assert torch.equal(dynamic(_clip(*BUILT)), fixed(_clip(*BUILT)))
        torch.testing.assert_close(dynamic(_clip(*OTHER)), resized(_clip(*OTHER)), atol=1e-5, rtol=0)
        assert torch.equal(dynamic(_clip(*BUILT)), fixed(_clip(*BUILT)))  # the cache did not leak into the built size
        final, maps = dynamic.forward_intermediates(_clip(*OTHER), indices=1)
    assert maps[0].shape[2:] == resized.grid_size
    torch.testing.assert_close(final, resized.forward_features(_clip(*OTHER)), atol=1e-5, rtol=0)


def test_dynamic_input_size_caches_per_grid_and_sees_weight_updates():
    _, model = _pair("spacetime")
    with torch.no_grad():
        first = model(_clip(*OTHER))
        cached = model.encoder.pos_embed_for(model.patch_embed.grid_for(*OTHER))
        assert model.encoder.pos_embed_for(model.patch_embed.grid_for(*OTHER)) is cached
        model.encoder.pos_embed.mul_(2)  # an in-place update (load_state_dict, optimiser step) invalidates it
        assert not torch.equal(model(_clip(*OTHER)), first)


def test_dynamic_input_size_trains_through_the_resampled_embedding():
    _, model = _pair("factorized_encoder")
    model.train()
    model(_clip(*OTHER)).sum().backward()
    assert model.encoder.spatial.pos_embed.grad.abs().sum() > 0
    assert model.encoder.temporal.pos_embed.grad.abs().sum() > 0


@pytest.mark.parametrize("shape, match", [
    ((1, 3, 5, 32, 32), "multiples of the tubelet 2 x 8 x 8"),
    ((1, 3, 4, 36, 32), "multiples of the tubelet"),
    ((1, 3, 0, 32, 32), "multiples of the tubelet"),
])
def test_dynamic_input_size_refuses_sizes_that_are_no_multiple_of_the_tubelet(shape, match):
    _, model = _pair("spacetime")
    with pytest.raises(ValueError, match=match):
        model(torch.zeros(shape))


def test_dynamic_input_size_needs_the_tubelet_embedding():
    with pytest.raises(ValueError, match="dynamic_input_size=True needs embedding='tubelet'"):
        vivit.ViViT(embedding="frame_sampling", tubelet_size=(1, 8, 8), n_sampled_frames=2, img_size=32, num_frames=4,
                    embed_dim=32, depth=1, num_heads=2, mlp_dim=64, dynamic_input_size=True)


@pytest.mark.parametrize("variant", VARIANTS)
def test_dynamic_input_size_exports_with_symbolic_frames_and_pixels(variant):
    fixed, dynamic = _pair(variant)
    resized = copy.deepcopy(fixed)
    resized.set_input_size(num_frames=OTHER[0], img_size=OTHER[1:])
    t, h, w = (torch.export.Dim(n, min=1, max=16) for n in "thw")
    program = torch.export.export(dynamic, (_clip(*OTHER),),
                                  dynamic_shapes={"x": {0: torch.export.Dim("batch", max=8), 2: 2 * t, 3: 8 * h,
                                                        4: 8 * w}})
    exported = program.module()
    with torch.no_grad():
        assert torch.equal(exported(_clip(*BUILT)), fixed(_clip(*BUILT)))
        torch.testing.assert_close(exported(_clip(*OTHER)), resized(_clip(*OTHER)), atol=1e-5, rtol=0)
        # (torch specialises sizes 0 and 1, so a token grid with an axis of 1 is outside the exported graph)
        torch.testing.assert_close(exported(_clip(8, 16, 24, batch=1)), dynamic(_clip(8, 16, 24, batch=1)),
                                   atol=1e-5, rtol=0)


def test_dynamic_input_size_compiles_in_one_graph_with_dynamic_shapes():
    _, model = _pair("factorized_encoder")  # the variant with two positional embeddings
    compiled = torch.compile(model, dynamic=True, fullgraph=True, backend="eager")
    with torch.no_grad():
        for size in (BUILT, OTHER, (8, 16, 24)):
            torch.testing.assert_close(compiled(_clip(*size)), model(_clip(*size)), atol=1e-5, rtol=0)
