"""ViViT as a timm backbone: intermediates, features_only, layer decay, torch.compile, torch.export and ONNX."""

from __future__ import annotations

import pytest
import torch
from einops import rearrange

import vivit
from tests.conftest import TINY
from vivit.zoo import ARCHS

timm = pytest.importorskip("timm")

# One architecture per variant: the s size has all four (ti has no Model 4).
VARIANT_ARCHS = {
    "spacetime": "vivit_s_16x2",
    "factorized_encoder": "vivit_s_16x2_fe",
    "factorized_self_attention": "vivit_s_16x2_fsa",
    "factorized_dot_product": "vivit_s_16x2_fdp",
}
GRID = (2, 2, 2)  # TINY: 4 frames of 32 x 32 in 2 x 16 x 16 tubelets


def clip(batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, TINY["num_frames"], TINY["img_size"], TINY["img_size"])


def tiny(variant: str, **kwargs) -> vivit.ViViT:
    """A tiny model with a non-zero head (the reference's zero head would make every output compare equal)."""
    model = vivit.create_model(VARIANT_ARCHS[variant], **{**TINY, **kwargs})
    if isinstance(model.head, torch.nn.Linear):
        torch.nn.init.normal_(model.head.weight, std=0.02)
    return model.eval()


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: with intra-op threads on a busy 2-core runner every op waits for a thread (7 ms vs 0.3 ms)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(params=list(VARIANT_ARCHS))
def variant(request) -> str:
    return request.param


# ---------------------------------------------------------------------------------------------- every architecture
@pytest.mark.parametrize("name", sorted(ARCHS))
def test_every_architecture_is_a_timm_backbone_without_graph_breaks(name):
    model = timm.create_model(name, **TINY).eval()
    assert isinstance(model, vivit.ViViT)
    x = clip()
    final, maps = model.forward_intermediates(x)
    assert [m.shape for m in maps] == [(2, model.embed_dim, *model.grid_size)] * len(model.feature_info)
    torch.testing.assert_close(final, model.forward_features(x))

    features = timm.create_model(name, features_only=True, **TINY)
    assert [m.shape for m in features(x)] == [(2, model.embed_dim, *model.grid_size)]
    assert features.feature_info.channels() == [model.embed_dim]
    assert features.feature_info.reduction() == [model.tubelet_size[1]]

    explain = torch._dynamo.explain(model)(x)
    assert explain.graph_break_count == 0, explain.break_reasons
    assert explain.graph_count == 1

    model.reset_classifier(0)
    assert model(x).shape == (2, model.num_features)
    cfg = model.pretrained_cfg
    assert cfg["input_size"] == (3, TINY["num_frames"], TINY["img_size"], TINY["img_size"])
    for key in ("mean", "std", "crop_pct", "num_classes", "label_set", "license", "paper_ids", "hf_hub_id"):
        assert key in cfg, key
    assert model.default_cfg is cfg


# ------------------------------------------------------------------------------------------------- intermediates
def test_intermediates_follow_timms_index_semantics(variant):
    model = tiny(variant, depth=4)
    x = clip()
    every = model.forward_intermediates(x, intermediates_only=True)
    assert len(every) == 4
    for indices, expected in ((2, [2, 3]), ([0, -1], [0, 3]), ((1,), [1])):
        taken = model.forward_intermediates(x, indices=indices, intermediates_only=True)
        assert len(taken) == len(expected)
        for got, i in zip(taken, expected, strict=True):
            torch.testing.assert_close(got, every[i])
        early = model.forward_intermediates(x, indices=indices, intermediates_only=True, stop_early=True)
        for got, want in zip(early, taken, strict=True):
            torch.testing.assert_close(got, want)
    for bad in (0, 5, [4], [-5], []):
        with pytest.raises(ValueError, match="blocks"):
            model.forward_intermediates(x, indices=bad)
    with pytest.raises(ValueError, match="NCTHW"):
        model.forward_intermediates(x, output_fmt="NCHW")


def test_normed_last_intermediate_is_the_encoders_normed_output(variant):
    model = tiny(variant, depth=2)
    x = clip()
    (last,) = model.forward_intermediates(x, indices=1, norm=True, output_fmt="NLC", intermediates_only=True)
    (last_map,) = model.forward_intermediates(x, indices=1, norm=True, intermediates_only=True)
    torch.testing.assert_close(rearrange(last_map, "b d t h w -> b (t h w) d"), last)
    if hasattr(model.encoder, "spatial"):  # Model 2: the spatial encoder's per-frame output
        tokens = rearrange(model.patch_embed(x), "b (t s) d -> b t s d", t=GRID[0])
        expected = rearrange(model.encoder.spatial(tokens)[:, :, 1:], "b t s d -> b (t s) d")
    else:
        expected = model.forward_features(x)[:, model.encoder.num_prefix_tokens:]
    torch.testing.assert_close(last, expected)


def test_prefix_tokens_are_the_cls_tokens():
    x = clip()
    (pair,) = tiny("spacetime").forward_intermediates(x, return_prefix_tokens=True, intermediates_only=True)
    assert pair[0].shape == (2, 384, *GRID) and pair[1].shape == (2, 1, 384)
    (pair,) = tiny("factorized_encoder").forward_intermediates(x, return_prefix_tokens=True, intermediates_only=True)
    assert pair[0].shape == (2, 384, *GRID) and pair[1].shape == (2, GRID[0], 1, 384)  # one spatial CLS per frame
    (plain,) = tiny("factorized_dot_product").forward_intermediates(x, return_prefix_tokens=True,
                                                                    intermediates_only=True)
    assert plain.shape == (2, 384, *GRID)  # no CLS token: plain maps, as timm


def test_model2_final_features_come_from_the_temporal_encoder():
    model = tiny("factorized_encoder", temporal_depth=2)
    final, maps = model.forward_intermediates(clip())
    assert final.shape == (2, 1 + GRID[0], 384) and maps[0].shape == (2, 384, *GRID)


def test_prune_keeps_what_the_intermediates_need(variant):
    model = tiny(variant, depth=4, representation_size=8)
    x = clip()
    before = model.forward_intermediates(x, indices=[0, 1], intermediates_only=True)
    assert model.prune_intermediate_layers([0, 1]) == [0, 1]
    assert len(model.feature_info) == 2 and model.num_classes == 0 and model.num_features == 384
    assert isinstance(model.pre_logits, torch.nn.Identity)
    assert getattr(model.encoder, "temporal", None) is None  # Model 2: the temporal encoder reads no intermediate
    after = model.forward_intermediates(x, indices=[0, 1], intermediates_only=True)
    for got, want in zip(after, before, strict=True):
        torch.testing.assert_close(got, want)
    assert model(x).shape == (2, 384)


# ------------------------------------------------------------------------------------------------- features_only
def test_features_only_uses_every_parameter_it_keeps(variant):
    features = timm.create_model(VARIANT_ARCHS[variant], features_only=True, out_indices=(0, -1), **{**TINY,
                                 "depth": 3, "num_classes": 5})
    maps = features(clip())
    assert [m.shape for m in maps] == [(2, 384, *GRID)] * 2
    assert features.feature_info.module_name() == [features.model.feature_info[i]["module"] for i in (0, 2)]
    for name in features.feature_info.module_name():
        features.model.get_submodule(name)
    sum(m.sum() for m in maps).backward()  # no unused parameters (DDP would need find_unused_parameters)
    assert all(p.grad is not None for p in features.parameters())
    assert "num_classes" not in features.pretrained_cfg and features.pretrained_cfg["input_size"][1] == 4


def test_features_only_options():
    tokens = timm.create_model("vivit_ti_16x2_fe", features_only=True, output_fmt="NLC", norm=True, **TINY)
    assert [t.shape for t in tokens(clip())] == [(2, 8, 192)]
    default = timm.create_model("vivit_ti_16x2", features_only=True, **{**TINY, "depth": 5})
    assert default.feature_info.module_name() == ["encoder.blocks.2", "encoder.blocks.3", "encoder.blocks.4"]
    with pytest.raises(ValueError, match="getter"):
        timm.create_model("vivit_ti_16x2", features_only=True, feature_cls="dict", **TINY)


# -------------------------------------------------------------------------------------------------- layer decay
def test_layer_decay_groups_run_from_stem_to_head(variant):
    from timm.models import group_parameters
    from timm.optim import param_groups_layer_decay

    model = tiny(variant, depth=2, temporal_depth=2, representation_size=8)
    layer_of = group_parameters(model, model.group_matcher(coarse=False), reverse=True)
    assert set(layer_of) == {n for n, _ in model.named_parameters()}
    assert layer_of["patch_embed.proj.weight"] == 0
    blocks = [n for n in layer_of if ".blocks." in n and "temporal" not in n]
    assert {layer_of[n] for n in blocks} == {1, 2}
    assert all(layer_of[n] == int(n.split("blocks.")[1][0]) + 1 for n in blocks)
    last_block = max(layer_of[n] for n in layer_of if ".blocks." in n)
    if hasattr(model.encoder, "temporal"):  # Model 2: temporal layers come after every spatial one
        temporal = {layer_of[n] for n in layer_of if n.startswith("encoder.temporal.")}
        assert min(temporal) == 3 and max(temporal) == last_block
    norms = [n for n in layer_of if n.startswith("encoder.") and ".norm." in n and ".blocks." not in n]
    assert all(layer_of[n] in (2, last_block) for n in norms)  # final norms join their encoder's last block
    assert layer_of["head.weight"] == layer_of["pre_logits.fc.weight"] == last_block + 1

    groups = param_groups_layer_decay(model, weight_decay=0.05, no_weight_decay_list=model.no_weight_decay(),
                                      layer_decay=0.5)
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    scales = sorted({g["lr_scale"] for g in groups})
    assert scales[-1] == 1.0 and len(scales) == last_block + 2
    no_decay = {id(p) for g in groups if g["weight_decay"] == 0 for p in g["params"]}
    params = dict(model.named_parameters())
    assert model.no_weight_decay() <= set(params)
    assert all(id(params[n]) in no_decay for n in model.no_weight_decay())


# ------------------------------------------------------------------------------------------- compile and export
def test_compiled_training_step_matches_eager_with_checkpointing_and_channels_last(variant):
    model = tiny(variant, drop_path_rate=0.0).train()
    model.set_grad_checkpointing(True)
    x = clip().contiguous(memory_format=torch.channels_last_3d)
    eager = model(x)
    eager.square().sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    # fullgraph=True raises on any graph break. aot_eager traces forward and backward as inductor does, without its
    # C++ compilation (minutes on a 2-core CPU runner).
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    out = compiled(x)
    out.square().sum().backward()
    torch.testing.assert_close(out, eager, atol=1e-5, rtol=1e-5)
    for name, param in model.named_parameters():
        torch.testing.assert_close(param.grad, grads[name], atol=1e-5, rtol=1e-4, msg=name)
    torch._dynamo.reset()


def test_inductor_compiles_the_spacetime_model_in_one_graph():
    model = tiny("spacetime")
    x = clip()
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(model, fullgraph=True)(x), model(x), atol=1e-5, rtol=1e-5)
    torch._dynamo.reset()


def test_eager_attention_maps_survive_compilation():
    model = tiny("factorized_dot_product", attn_impl="eager")
    x = clip()
    explain = torch._dynamo.explain(model)(x)
    assert explain.graph_break_count == 0, explain.break_reasons
    torch._dynamo.reset()
    maps = model.forward_attention_maps(x)
    assert maps["encoder.blocks.0.attn"]["time"].shape == (2, 4, 3, 2, 2)


def test_export_with_dynamic_batch(variant):
    model = tiny(variant)
    model.set_grad_checkpointing(True)
    batch = torch.export.Dim("batch", max=64)
    program = torch.export.export(model, (clip(),), dynamic_shapes={"x": {0: batch}})
    x = clip(3).contiguous(memory_format=torch.channels_last_3d)
    torch.testing.assert_close(program.module()(x), model(x), atol=1e-5, rtol=1e-5)

    features = timm.create_model(VARIANT_ARCHS[variant], features_only=True, **TINY).eval()
    program = torch.export.export(features, (clip(),))
    for got, want in zip(program.module()(clip()), features(clip()), strict=True):
        assert got.shape == want.shape == (2, 384, *GRID)


def test_onnx_export_matches_eager(variant, tmp_path):
    pytest.importorskip("onnxscript", reason="the dynamo ONNX exporter needs onnxscript")
    ort = pytest.importorskip("onnxruntime", reason="checking the ONNX graph needs onnxruntime")
    model = tiny(variant)
    batch = torch.export.Dim("batch", max=64)
    program = torch.onnx.export(model, (clip(),), dynamo=True, dynamic_shapes={"x": {0: batch}}, verbose=False)
    path = tmp_path / "vivit.onnx"
    program.save(str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = clip(3)
    (logits,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    torch.testing.assert_close(torch.from_numpy(logits), model(x).detach(), atol=1e-4, rtol=1e-4)
