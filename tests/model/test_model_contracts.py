"""What timm users rely on from a model: input errors, classifier resets, meta-device init, torch.fx tracing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vivit import ViViT

VARIANTS = ["spacetime", "factorized_encoder", "factorized_self_attention", "factorized_dot_product"]
SIZE = (4, 16, 24)


def tiny(variant: str = "spacetime", **kwargs) -> ViViT:
    args = dict(variant=variant, img_size=SIZE[1:], num_frames=SIZE[0], tubelet_size=(2, 8, 8), embed_dim=16, depth=2,
                num_heads=2, mlp_dim=32, temporal_depth=1, num_classes=3)
    model = ViViT(**{**args, **kwargs})
    with torch.no_grad():  # the zero head would hide upstream mistakes
        for p in model.parameters():
            p.normal_(std=0.2)
    return model.eval()


def clip(dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(2, 3, *SIZE, generator=torch.Generator().manual_seed(0)).to(dtype)


# ------------------------------------------------------------------------------------------------------ input checks
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_input_of_another_float_dtype_names_both_dtypes_and_the_fix(dtype):
    with pytest.raises(TypeError, match=rf"expected a torch.float32 video .* got {dtype}; convert the clip with "
                                        r"x.to\(torch.float32\) or the model with model.to"):
        tiny()(clip(dtype))


def test_autocast_inputs_of_the_autocast_dtype_are_accepted():
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert tiny()(clip(torch.bfloat16)).dtype == torch.bfloat16


def test_a_model_converted_to_float64_takes_float64_clips():
    model = tiny().double()
    assert model(clip(torch.float64)).dtype == torch.float64


@pytest.mark.parametrize("make, match", [
    (lambda: clip().numpy(), r"got numpy.ndarray \(torch.from_numpy\(x\) converts it\)"),
    (lambda: clip().tolist(), "got builtins.list"),
])
def test_non_tensor_input_is_a_type_error_saying_what_to_pass(make, match):
    with pytest.raises(TypeError, match=r"expected a torch.Tensor video B x C x T x H x W, " + match):
        tiny()(make())


def test_transformers_layout_names_the_permute_that_fixes_it():
    x = clip().permute(0, 2, 1, 3, 4)  # B x T x C x H x W
    with pytest.raises(ValueError, match=r"looks like B x T x C x H x W .*: pass x.permute\(0, 2, 1, 3, 4\)"):
        tiny()(x)
    assert tiny()(x.permute(0, 2, 1, 3, 4)).shape == (2, 3)


def test_numpy_float64_clip_is_refused_before_anything_runs():
    with pytest.raises(TypeError, match="numpy"):
        tiny().forward_features(np.zeros((1, 3, *SIZE)))


# ------------------------------------------------------------------------------------------------- classifier resets
def test_reset_classifier_builds_the_head_on_the_models_device_dtype_and_mode():
    model = tiny().double()
    model.reset_classifier(5)
    assert model.head.weight.dtype == torch.float64 and not model.head.training
    assert model(clip(torch.float64)).shape == (2, 5)
    model.to("meta")
    model.reset_classifier(2)
    assert model.head.weight.device.type == "meta"


@pytest.mark.parametrize("variant, kwargs", [(v, {}) for v in VARIANTS]
                         + [("factorized_encoder", dict(spatial_only_baseline=True))])
def test_global_pool_empty_returns_unpooled_tokens_like_timm_vit(variant, kwargs):
    model = tiny(variant, **kwargs)
    features = model.forward_features(clip())
    model.reset_classifier(0, "")
    assert model.global_pool == ""
    torch.testing.assert_close(model(clip()), features)  # every token, CLS included, no head
    torch.testing.assert_close(model.forward_head(features, pre_logits=True), features)
    model.reset_classifier(4)  # keeps pool "": a head on every token
    assert model(clip()).shape == (*features.shape[:2], 4)


@pytest.mark.parametrize("variant", VARIANTS)
def test_global_pool_empty_at_creation_equals_reset_classifier(variant):
    pooled = tiny(variant, num_classes=0)
    torch.manual_seed(0)
    unpooled = tiny(variant, num_classes=0, global_pool="")
    unpooled.load_state_dict(pooled.state_dict())  # same parameters: "" keeps the variant's CLS token (or none)
    pooled.reset_classifier(0, "")
    torch.testing.assert_close(unpooled(clip()), pooled(clip()))


# ------------------------------------------------------------------------------------------------ meta-device init
@pytest.mark.parametrize("variant, kwargs", [
    *((v, {}) for v in VARIANTS),
    ("spacetime", dict(embedding="frame_sampling", tubelet_size=(1, 8, 8), n_sampled_frames=2)),
    ("spacetime", dict(representation_size=8)),
])
def test_init_weights_after_meta_creation_and_to_empty_sets_every_tensor(variant, kwargs):
    with torch.device("meta"):
        model = ViViT(variant=variant, img_size=SIZE[1:], num_frames=SIZE[0], **{"tubelet_size": (2, 8, 8), **kwargs},
                      embed_dim=16, depth=2, num_heads=2, mlp_dim=32, temporal_depth=1, num_classes=3)
    model = model.to_empty(device="cpu").eval()
    with torch.no_grad():  # poison: anything init_weights misses stays NaN (or an out-of-range frame index)
        for tensor in [*model.parameters(), *model.buffers()]:
            tensor.fill_(float("nan") if tensor.is_floating_point() else 10**6)
    model.init_weights()
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        assert torch.isfinite(tensor.float()).all(), name
    norms = [m for m in model.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert all(torch.equal(n.weight, torch.ones_like(n.weight)) for n in norms)
    pos = [p for name, p in model.named_parameters() if name.endswith("pos_embed")]
    assert all(0.01 < p.std().item() < 0.03 for p in pos)  # scenic AddPositionEmbs: normal(0.02)
    assert all(torch.count_nonzero(p) == 0 for name, p in model.named_parameters() if name.endswith("cls_token"))
    assert torch.isfinite(model(clip())).all()


# ------------------------------------------------------------------------------------------------------------ torch.fx
@pytest.mark.parametrize("variant, kwargs", [
    *((v, {}) for v in VARIANTS),
    ("spacetime", dict(embedding="frame_sampling", tubelet_size=(1, 8, 8), n_sampled_frames=2)),
    ("factorized_encoder", dict(dynamic_input_size=True)),
])
def test_symbolic_trace_gives_the_same_outputs_in_eval_and_train(variant, kwargs):
    model = tiny(variant, **kwargs)
    graph = torch.fx.symbolic_trace(model)
    assert torch.equal(graph(clip()), model(clip()))
    train = torch.fx.symbolic_trace(tiny(variant, drop_path_rate=0.5, **kwargs).train())
    train(clip()).sum().backward()  # stochastic depth traces as a call, not as Python on proxies


def test_torchvision_feature_extractor_returns_block_outputs():
    from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

    model = tiny("factorized_dot_product")
    _, nodes = get_graph_node_names(model)
    assert "encoder.blocks.1.add_1" in nodes  # the residual sum ending each block is a node of its own
    extractor = create_feature_extractor(model, return_nodes=["encoder.blocks.0", "encoder.blocks.1"])
    out = extractor(clip())
    _, maps = model.forward_intermediates(clip(), output_fmt="NLC")
    for got, want in zip(out.values(), maps, strict=True):
        torch.testing.assert_close(got.flatten(1, 2), want)  # Model 4 blocks see (b, t, s, d)
