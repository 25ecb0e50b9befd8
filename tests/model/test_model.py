"""The ViViT module: backbone surface, input checks, grad checkpointing, attention maps, drop-path schedules."""

from __future__ import annotations

import pytest
import torch

import vivit
from vivit import ViViT
from vivit.model.layers import Attention

TINY_VARIANTS = {
    "spacetime": {},
    "factorized_encoder": dict(temporal_depth=2, temporal_num_heads=2, temporal_mlp_dim=24),
    "factorized_self_attention": dict(attention_order="time_space"),
    "factorized_dot_product": {},
}


def tiny(variant: str, **kwargs) -> ViViT:
    args = dict(variant=variant, img_size=(16, 24), num_frames=4, tubelet_size=(2, 8, 8), embed_dim=16, depth=2,
                num_heads=4, mlp_dim=32, num_classes=3, **TINY_VARIANTS[variant])
    args.update(kwargs)
    model = ViViT(**args)
    torch.nn.init.normal_(model.head.weight)  # the reference's zero head would hide upstream mistakes
    return model.eval()


@pytest.fixture(params=list(TINY_VARIANTS))
def variant(request) -> str:
    return request.param


def test_forward_is_forward_head_of_forward_features(variant):
    model = tiny(variant)
    x = torch.randn(2, 3, 4, 16, 24)
    features = model.forward_features(x)
    torch.testing.assert_close(model(x), model.forward_head(features))
    assert model.forward_head(features, pre_logits=True).shape == (2, model.num_features)
    assert model(x).shape == (2, 3)


@pytest.mark.parametrize("variant, kwargs", [
    ("spacetime", {}), ("spacetime", dict(global_pool="first")), ("factorized_encoder", {}),
    ("factorized_encoder", dict(spatial_only_baseline=True)), ("factorized_encoder", dict(global_pool="first")),
])
@pytest.mark.parametrize("checkpointing", [False, True])
def test_last_block_computes_token_zero_alone_with_the_same_values_and_gradients(variant, kwargs, checkpointing):
    model = tiny(variant, **kwargs).train()  # no dropout configured, so train mode is deterministic
    model.set_grad_checkpointing(checkpointing)
    x = torch.randn(2, 3, 4, 16, 24)
    seen = []
    last_blocks = [enc.blocks[-1] for enc in (getattr(model.encoder, "spatial", model.encoder),
                                               getattr(model.encoder, "temporal", None)) if enc is not None]
    for block in last_blocks:
        block.mlp.register_forward_hook(lambda m, args, out: seen.append(args[0].shape[-2]))

    full = model.forward_head(model.forward_features(x))
    full_grads = torch.autograd.grad(full.square().sum(), list(model.parameters()), allow_unused=True)
    seen_full, seen[:] = list(seen), []
    trimmed = model(x)
    trimmed_grads = torch.autograd.grad(trimmed.square().sum(), list(model.parameters()), allow_unused=True)

    assert all(n == 1 for n in seen) and all(n > 1 for n in seen_full), (seen, seen_full)
    # One query row instead of many changes the GEMM kernel and its summation order; on CPUs without AMX (AMD EPYC)
    # that moves logits by up to ~5e-6, so compare at the golden tolerance.
    torch.testing.assert_close(trimmed, full, atol=1e-5, rtol=1e-5)
    names = [n for n, _ in model.named_parameters()]
    for name, a, b in zip(names, trimmed_grads, full_grads, strict=True):
        assert (a is None) == (b is None), name
        if a is not None:
            # Summation order differs (fewer rows in the last block), so compare against the gradient's scale; float32
            # backward through every block reaches 1.3e-5 of it on AMD EPYC (GEMV vs GEMM kernels), 5e-5 leaves room.
            assert (a - b).abs().max() <= 5e-5 * b.abs().max(), (name, (a - b).abs().max(), b.abs().max())


@pytest.mark.parametrize("variant", ["factorized_self_attention", "factorized_dot_product"])
def test_regrouped_encoders_ignore_head_token_only(variant):
    model = tiny(variant)  # token pooling is refused for these; their encoders still take the flag safely
    tokens = model.patch_embed(torch.randn(1, 3, 4, 16, 24))
    torch.testing.assert_close(model.encoder(tokens, head_token_only=True), model.encoder(tokens))


def test_forward_features_shapes():
    x = torch.randn(1, 3, 4, 16, 24)  # token grid t=2, h=2, w=3
    assert tiny("spacetime").forward_features(x).shape == (1, 1 + 12, 16)
    assert tiny("factorized_encoder").forward_features(x).shape == (1, 1 + 2, 16)
    assert tiny("factorized_encoder", spatial_only_baseline=True).forward_features(x).shape == (1, 2, 16)
    assert tiny("factorized_self_attention").forward_features(x).shape == (1, 12, 16)
    assert tiny("factorized_dot_product").forward_features(x).shape == (1, 12, 16)


def test_sdpa_and_eager_models_agree(variant):
    a = tiny(variant, attn_impl="sdpa")
    b = tiny(variant, attn_impl="eager")
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 3, 4, 16, 24)
    torch.testing.assert_close(a(x), b(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "shape",
    [(3, 4, 16, 24), (2, 1, 4, 16, 24), (2, 3, 6, 16, 24), (2, 3, 4, 24, 16), (2, 4, 3, 16, 24), (2, 3, 4, 16, 24, 1)],
)
def test_wrong_input_shapes_raise_with_expected_layout(shape):
    with pytest.raises(ValueError, match=r"B x C x T x H x W = B x 3 x 4 x 16 x 24"):
        tiny("spacetime")(torch.randn(shape))


def test_integer_video_is_refused():
    with pytest.raises(ValueError, match="float"):
        tiny("spacetime")(torch.zeros(1, 3, 4, 16, 24, dtype=torch.uint8))


def test_reset_classifier(variant):
    model = tiny(variant)
    model.reset_classifier(7)
    assert model.get_classifier().out_features == 7 and model.num_classes == 7
    assert torch.count_nonzero(model.head.weight) == 0  # reference: zero-initialised output projection
    model.reset_classifier(0)
    assert model(torch.randn(1, 3, 4, 16, 24)).shape == (1, model.num_features)


def test_reset_classifier_refuses_to_add_or_remove_the_cls_token():
    with pytest.raises(ValueError, match="CLS"):
        tiny("spacetime").reset_classifier(3, "avg")
    with pytest.raises(ValueError, match="CLS"):
        tiny("factorized_dot_product").reset_classifier(3, "token")
    model = tiny("factorized_dot_product")
    model.reset_classifier(3, "max")
    assert model.global_pool == "max"


def test_grad_checkpointing_gives_the_same_outputs_and_grads(variant):
    model = tiny(variant).train()
    x = torch.randn(2, 3, 4, 16, 24)
    model(x).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.set_grad_checkpointing(True)
    model(x).sum().backward()
    for name, param in model.named_parameters():
        torch.testing.assert_close(param.grad, grads[name], atol=1e-5, rtol=1e-4, msg=name)


def test_attention_maps_need_eager_and_cover_every_layer(variant):
    with pytest.raises(ValueError, match="eager"):
        tiny(variant).forward_attention_maps(torch.randn(1, 3, 4, 16, 24))
    model = tiny(variant, attn_impl="eager")
    maps = model.forward_attention_maps(torch.randn(1, 3, 4, 16, 24))
    assert maps and all(m is not None for m in maps.values())
    first = next(iter(maps.values()))
    weights = first["time"] if isinstance(first, dict) else first
    torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[:-1]))


def test_attention_map_shapes_follow_each_grouping():
    x = torch.randn(1, 3, 4, 16, 24)  # t=2, s=6
    assert tiny("spacetime", attn_impl="eager").forward_attention_maps(x)["encoder.blocks.0.attn"].shape == (
        1, 4, 13, 13)
    fsa = tiny("factorized_self_attention", attn_impl="eager").forward_attention_maps(x)
    assert fsa["encoder.blocks.0.attn_space"].shape == (1, 2, 4, 6, 6)
    assert fsa["encoder.blocks.0.attn_time"].shape == (1, 6, 4, 2, 2)
    fdp = tiny("factorized_dot_product", attn_impl="eager").forward_attention_maps(x)["encoder.blocks.0.attn"]
    assert fdp["time"].shape == (1, 6, 2, 2, 2) and fdp["space"].shape == (1, 2, 2, 6, 6)


def test_stochastic_depth_schedule_per_encoder():
    model = tiny("factorized_encoder", depth=3, temporal_depth=5, drop_path_rate=0.4)
    spatial = [b.drop_path1.drop_prob for b in model.encoder.spatial.blocks]
    temporal = [b.drop_path1.drop_prob for b in model.encoder.temporal.blocks]
    assert spatial == pytest.approx([0.0, 0.2, 0.4])
    assert temporal == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])
    assert [b.drop_path1.drop_prob for b in tiny("spacetime", depth=1, drop_path_rate=0.3).encoder.blocks] == [0.0]


def test_training_mode_forward_with_all_regularisers(variant):
    model = tiny(variant, drop_rate=0.1, attn_drop_rate=0.1, drop_path_rate=0.2).train()
    x = torch.randn(2, 3, 4, 16, 24)
    assert not torch.equal(model(x), model(x))  # stochastic in training
    model.eval()
    assert torch.equal(model(x), model(x))


def test_no_weight_decay_lists_position_embeddings_and_cls_tokens():
    assert tiny("spacetime").no_weight_decay() == {"encoder.cls_token", "encoder.pos_embed"}
    assert tiny("factorized_encoder").no_weight_decay() == {
        "encoder.spatial.cls_token", "encoder.spatial.pos_embed", "encoder.temporal.cls_token",
        "encoder.temporal.pos_embed"}


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(variant="factorized_self_attention", global_pool="token"), "CLS"),
        (dict(variant="factorized_dot_product", num_heads=3, embed_dim=12), "even"),
        (dict(variant="spacetime", global_pool="gap"), "global_pool"),
        (dict(variant="axial"), "variant"),
        (dict(variant="spacetime", embedding="frame_sampling", tubelet_size=(1, 8, 8)), "n_sampled_frames"),
        (dict(variant="spacetime", embedding="frame_sampling", tubelet_size=(2, 8, 8), n_sampled_frames=2),
         "(1, h, w)"),
        (dict(variant="factorized_encoder", embedding="frame_sampling", tubelet_size=(1, 5, 8), n_sampled_frames=2),
         "divide"),
        (dict(variant="spacetime", num_frames=1), "smaller than one tubelet"),
        (dict(variant="spacetime", attn_impl="flash"), "attn_impl"),
        (dict(variant="spacetime", act_layer="relu"), "act_layer"),
    ],
)
def test_bad_construction_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ViViT(**{**dict(img_size=(16, 24), num_frames=4, tubelet_size=(2, 8, 8), embed_dim=16, depth=1, num_heads=4,
                        mlp_dim=32), **kwargs})


TINY_ARGS = dict(img_size=32, num_frames=4, tubelet_size=(2, 16, 16), embed_dim=16, depth=1, num_heads=2, mlp_dim=32,
                 num_classes=3)


@pytest.mark.parametrize(("kwargs", "match"), [
    (dict(num_classes=-1), r"num_classes must be an int >= 0, got -1"),
    (dict(depth=-1), r"depth must be an int >= 1, got -1"),
    (dict(depth=0), r"depth must be an int >= 1, got 0"),
    (dict(mlp_dim=0), r"mlp_dim must be an int >= 1, got 0"),
    (dict(norm_eps=-1), r"norm_eps must be a small positive number"),
    (dict(norm_eps=float("nan")), r"norm_eps must be a small positive number"),
    (dict(num_heads=0), r"num_heads must be an int >= 1, got 0"),
    (dict(embed_dim=-16), r"embed_dim must be an int >= 1"),
    (dict(in_chans=0), r"in_chans must be an int >= 1"),
    (dict(num_frames=4.0), r"num_frames must be an int >= 1, got 4.0"),
    (dict(depth=True), r"depth must be an int >= 1, got True"),
    (dict(tubelet_size=(4, 8)), r"tubelet_size must be \(t, h, w\) of positive ints, got \(4, 8\)"),
    (dict(tubelet_size=(2, 0, 16)), r"tubelet_size must be \(t, h, w\)"),
    (dict(img_size=(32,)), r"img_size must be an int or \(H, W\) of positive ints, got \(32,\)"),
    (dict(img_size=-32), r"img_size must be an int or \(H, W\)"),
    (dict(embed_dim=30, num_heads=4), r"embed_dim 30 must be divisible by num_heads 4"),
    (dict(variant="factorized_encoder", temporal_num_heads=7), r"embed_dim 16 must be divisible by temporal_num_heads"),
    (dict(variant="factorized_encoder", temporal_depth=0), r"temporal_depth must be an int >= 1"),
    (dict(representation_size=-1), r"representation_size must be an int >= 0 or None"),
    (dict(drop_path_rate=1.5), r"drop_path_rate must be a probability in \[0, 1\]"),
    (dict(variant="model2"), r"variant must be one of \('spacetime'"),
    (dict(global_pool="gap"), r"global_pool must be one of \('token'"),
    (dict(attention_order="time"), r"attention_order must be one of"),
    (dict(embedding="conv"), r"embedding must be one of"),
])
def test_constructor_arguments_are_checked_with_what_is_expected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ViViT(**{**TINY_ARGS, **kwargs})


def test_a_spatial_only_baseline_may_have_no_temporal_blocks():
    model = ViViT(**TINY_ARGS, variant="factorized_encoder", spatial_only_baseline=True, temporal_depth=0)
    assert model(torch.zeros(1, 3, 4, 32, 32)).shape == (1, 3)


def test_pixels_the_tubelet_drops_are_named_once_in_a_warning():
    with pytest.warns(UserWarning, match=r"the last 4 pixel rows \(100 is not a multiple of 16\); the last 4 pixel "
                                         r"columns .*; the last 1 frames \(5 is not a multiple of 2\) are dropped"):
        model = ViViT(**{**TINY_ARGS, "img_size": 100, "num_frames": 5})
    assert model.grid_size == (2, 6, 6)  # kept: the reference drops them too


@pytest.mark.parametrize("name", vivit.list_models())
def test_every_registered_architecture_builds_without_a_warning(name):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with torch.device("meta"):
            vivit.create_model(name)


def test_frame_sampling_model_with_straddling_patches_runs_as_spacetime():
    model = ViViT(variant="spacetime", embedding="frame_sampling", img_size=(12, 16), num_frames=8,
                  tubelet_size=(1, 8, 8), n_sampled_frames=3, embed_dim=16, depth=1, num_heads=2, mlp_dim=32,
                  num_classes=2)
    assert model(torch.randn(1, 3, 8, 12, 16)).shape == (1, 2)
    assert model.grid_size == (1, 4, 2)  # 3 frames x 12 rows = 36 rows -> 4 patch rows


def test_every_variant_runs_in_bfloat16_close_to_float32(variant):
    model = tiny(variant)
    x = torch.rand(2, 3, 4, 16, 24) * 2 - 1
    with torch.no_grad():
        want = model(x)
        cast = model.to(torch.bfloat16)(x.bfloat16())
        model.float()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            autocast = model(x)
    for got in (cast, autocast):
        assert got.dtype == torch.bfloat16
        assert (got.float() - want).abs().max() <= 0.05 * want.abs().max(), (got, want)


def test_sdpa_models_never_form_an_attention_matrix_on_cpu(variant):
    """Every attention call of the default path lands in the fused CPU kernel; no softmax over scores is formed."""
    from torch.profiler import ProfilerActivity, profile

    model = tiny(variant)
    x = torch.randn(1, 3, 4, 16, 24)
    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) as prof:
        model(x)
        model.forward_features(x)
    ops = {e.key: e.count for e in prof.key_averages()}
    fused = ops.get("aten::_scaled_dot_product_flash_attention_for_cpu", 0)
    attention_layers = sum(isinstance(m, Attention) for m in model.modules())
    calls_per_forward = attention_layers * (2 if variant == "factorized_dot_product" else 1)  # time + space heads
    assert fused == 2 * calls_per_forward, ops
    assert not any(k in ops for k in ("aten::softmax", "aten::_softmax", "aten::bmm", "aten::baddbmm")), ops
