"""Image ViT -> ViViT inflation: every reference vector (golden/scenic/inflation) leaf for leaf, and our extensions."""

from __future__ import annotations

import json
from fractions import Fraction

import numpy as np
import pytest
import torch

from tests.conftest import GOLDEN_DIR
from vivit.model.vivit import ViViT
from vivit.weights.convert.scenic import convert_scenic_params, model_args_from_scenic, scenic_key_table
from vivit.weights.inflate import average_arp_weights, inflate, inflate_kernel

INFLATION_DIR = GOLDEN_DIR / "scenic" / "inflation"
GOLDEN_FILES = sorted(p.stem for p in INFLATION_DIR.glob("*.json")) if INFLATION_DIR.is_dir() else []
KERNEL_INIT_FROM_SCENIC = {
    "central_frame_initializer": "central_frame",
    "average_frame_initializer": "average",
    "average_arp_frame_initializer": "average_arp",
}


def load_inflation_golden(golden_dir, stem):
    sidecar = json.loads((golden_dir / "scenic" / "inflation" / f"{stem}.json").read_text())
    arrays = dict(np.load(golden_dir / "scenic" / "inflation" / f"{stem}.npz"))
    groups = {
        group: {k[len(group) + 1:]: v for k, v in arrays.items() if k.startswith(f"{group}/")}
        for group in ("vit_params", "target_init_params", "vivit_params")
    }
    return sidecar, groups, arrays


def timm_state_from_flax(vit_params):
    """A scenic image ViT -> timm keys: our table gives ``encoder.*`` keys, which are timm's without the prefix."""
    state = convert_scenic_params(vit_params, "spacetime")
    return {k.removeprefix("encoder."): v for k, v in state.items()}


def golden_target(sidecar, groups):
    """The target ViViT holding the reference's pre-inflation parameters."""
    shape = sidecar["input_shape_NTHWC"]
    args = model_args_from_scenic(groups["target_init_params"], sidecar["target_scenic_config"],
                                  img_size=tuple(shape[2:4]))
    model = ViViT(**args).eval()
    model.load_state_dict(convert_scenic_params(groups["target_init_params"], args["variant"]), strict=True)
    return model, args["variant"]


def golden_timm_vit(sidecar, state):
    """The golden source as a timm VisionTransformer (flax gelu is tanh-approximate)."""
    vit_cls = pytest.importorskip("timm.models.vision_transformer").VisionTransformer
    cfg = sidecar["vit_scenic_config"]["model"]
    patch = cfg["patches"]["size"][0]
    img = sidecar["vit_input_shape_NHWC"][1]
    vit = vit_cls(img_size=img, patch_size=patch, embed_dim=cfg["hidden_size"], depth=cfg["num_layers"],
                  num_heads=cfg["num_heads"], mlp_ratio=cfg["mlp_dim"] / cfg["hidden_size"],
                  num_classes=sidecar["vit_num_classes"], act_layer="gelu_tanh")
    vit.load_state_dict(state, strict=True)
    return vit.eval()


def inflate_golden(golden_dir, stem, source_kind):
    sidecar, groups, arrays = load_inflation_golden(golden_dir, stem)
    model, variant = golden_target(sidecar, groups)
    source = timm_state_from_flax(groups["vit_params"])
    if source_kind == "timm_module":
        source = golden_timm_vit(sidecar, source)
    inflate(model, source, kernel_init=KERNEL_INIT_FROM_SCENIC[sidecar["kernel_init_method"]],
            posemb_init=sidecar["positional_embed_size_change"])
    return model, variant, sidecar, groups, arrays


def test_golden_inflation_files_are_present(golden_dir):
    assert len(GOLDEN_FILES) >= 8, GOLDEN_FILES


@pytest.mark.parametrize("source_kind", ["state_dict", "timm_module"])
@pytest.mark.parametrize("stem", GOLDEN_FILES)
def test_inflation_matches_reference_leaf_for_leaf(golden_dir, stem, source_kind):
    model, variant, sidecar, groups, _ = inflate_golden(golden_dir, stem, source_kind)
    provenance = sidecar["vivit_param_provenance"]
    expected = groups["vivit_params"]
    state = model.state_dict()
    table = scenic_key_table(expected, variant)
    assert {key for _, key, _ in table} == set(state)  # every leaf of the model is checked
    for sources, key, fn in table:
        want = np.asarray(fn(*(expected[p] for p in sources)), dtype=np.float32)
        derived = any(provenance[p].startswith("derived") for p in sources)
        tol = 1e-6 if derived else 0.0  # copied and kept leaves must be bit-identical
        np.testing.assert_allclose(state[key].numpy(), want, atol=tol, rtol=tol, err_msg=f"{key} <- {sources}")


@pytest.mark.parametrize("stem", GOLDEN_FILES)
def test_inflated_model_reproduces_reference_logits(golden_dir, stem):
    model, _, _, _, arrays = inflate_golden(golden_dir, stem, "state_dict")
    video = torch.from_numpy(arrays["input"]).permute(0, 4, 1, 2, 3)  # NTHWC -> B C T H W
    with torch.no_grad():
        logits = model(video)
    np.testing.assert_allclose(logits.numpy(), arrays["logits"], atol=1e-5, rtol=1e-5)


def test_golden_source_as_timm_vit_reproduces_reference_vit_logits(golden_dir):
    """Checks this file's flax -> timm conversion of the source, on which every golden test relies."""
    sidecar, groups, arrays = load_inflation_golden(golden_dir, GOLDEN_FILES[0])
    vit = golden_timm_vit(sidecar, timm_state_from_flax(groups["vit_params"]))
    with torch.no_grad():
        logits = vit(torch.from_numpy(arrays["vit_input"]).permute(0, 3, 1, 2))
    np.testing.assert_allclose(logits.numpy(), arrays["vit_logits"], atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------------------ tiny helpers
def tiny_vit(**kwargs):
    """A randomised timm image ViT: 32 wide, 2 blocks, 4 heads, 4x4 patches, 16x16 images (exact GELU)."""
    vit_cls = pytest.importorskip("timm.models.vision_transformer").VisionTransformer
    args = dict(img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=4, mlp_ratio=2.0, num_classes=5)
    vit = vit_cls(**{**args, **kwargs})
    with torch.no_grad():
        for p in vit.parameters():
            p.copy_(torch.randn_like(p) * 0.2 + (1.0 if p.ndim == 1 and p.shape[0] == 32 else 0.0))
    return vit.eval()


def tiny_vivit(**kwargs):
    args = dict(img_size=16, num_frames=8, tubelet_size=(2, 4, 4), embed_dim=32, depth=2, num_heads=4, mlp_dim=64,
                num_classes=5, act_layer="gelu")
    return ViViT(**{**args, **kwargs}).eval()


def bilinear_align_corners(grid, out_h, out_w):
    """Independent bilinear resize with aligned corners, ``(h, w, d) -> (out_h, out_w, d)``, one sample at a time."""
    h, w, d = grid.shape
    out = np.empty((out_h, out_w, d))
    for i in range(out_h):
        y = i * (h - 1) / (out_h - 1)
        y0 = min(int(np.floor(y)), h - 2)
        for j in range(out_w):
            x = j * (w - 1) / (out_w - 1)
            x0 = min(int(np.floor(x)), w - 2)
            fy, fx = y - y0, x - x0
            out[i, j] = ((1 - fy) * (1 - fx) * grid[y0, x0] + (1 - fy) * fx * grid[y0, x0 + 1]
                         + fy * (1 - fx) * grid[y0 + 1, x0] + fy * fx * grid[y0 + 1, x0 + 1])
    return out


# ------------------------------------------------------------------------------------------------------ kernels
@pytest.mark.parametrize("t", [1, 2, 3, 4])
def test_kernel_inits_follow_the_formulas(t):
    kernel = torch.randn(8, 3, 4, 4)
    central = inflate_kernel(kernel, t, "central_frame")
    for i in range(t):
        torch.testing.assert_close(central[:, :, i], kernel if i == t // 2 else torch.zeros_like(kernel),
                                   atol=0, rtol=0)
        torch.testing.assert_close(inflate_kernel(kernel, t, "average")[:, :, i], kernel / t, atol=0, rtol=0)
    if t == 1:
        return
    harmonic = [sum((Fraction(1, k) for k in range(1, n + 1)), Fraction(0)) for n in range(t + 1)]
    weights = [2 * (t - i + 1) - (t + 1) * (harmonic[t] - harmonic[i - 1]) for i in range(1, t + 1)]
    np.testing.assert_allclose(average_arp_weights(t), [float(w) for w in weights], rtol=1e-12)
    arp = inflate_kernel(kernel, t, "average_arp")
    for i, w in enumerate(weights):
        torch.testing.assert_close(arp[:, :, i], (kernel.double() * float(w) / t).float(), atol=1e-7, rtol=1e-6)


def test_average_arp_factors_for_two_frames_are_the_reference_values():
    np.testing.assert_allclose(average_arp_weights(2) / 2, [-0.25, 0.25])


def test_average_arp_refuses_a_one_frame_tubelet():
    with pytest.raises(ValueError, match="all-zero"):
        inflate_kernel(torch.randn(8, 3, 4, 4), 1, "average_arp")


# --------------------------------------------------------------------------------------------- positional embed
def test_hand_written_bilinear_matches_the_reference_scipy_zoom(golden_dir):
    """Validates the independent resize used below against the reference's scipy output (square 4x4 -> 6x6)."""
    _, groups, _ = load_inflation_golden(golden_dir, "inflate_factorized_encoder_central_frame_resize24")
    source = groups["vit_params"]["Transformer/posembed_input/pos_embedding"][0, 1:].reshape(4, 4, -1)
    want = groups["vivit_params"]["SpatialTransformer/posembed_input/pos_embedding"][0, 1:].reshape(6, 6, -1)
    np.testing.assert_allclose(bilinear_align_corners(source.astype(np.float64), 6, 6), want, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("source_kind", ["timm_module", "state_dict"])
def test_non_square_resize_tile_matches_independent_bilinear(source_kind):
    vit = tiny_vit(img_size=(16, 24))  # 4 x 6 patch grid
    model = tiny_vivit(img_size=(24, 28), num_frames=4)  # 2 x 6 x 7 token grid
    init_cls_slot = model.encoder.pos_embed[:, :1].clone()
    source = vit if source_kind == "timm_module" else vit.state_dict()
    inflate(model, source, posemb_init="resize_tile", grid_size=None if source_kind == "timm_module" else (4, 6))
    pos = vit.pos_embed.detach().numpy()[0]
    frame = bilinear_align_corners(pos[1:].reshape(4, 6, -1).astype(np.float64), 6, 7).reshape(42, -1)
    want = np.concatenate([pos[:1], frame, frame])
    np.testing.assert_allclose(model.encoder.pos_embed.detach().numpy()[0], want, atol=1e-6, rtol=1e-6)
    assert not torch.equal(model.encoder.pos_embed[:, :1], init_cls_slot)


def test_non_square_resize_into_the_factorized_encoder_spatial_grid():
    vit = tiny_vit(img_size=(16, 24))
    model = tiny_vivit(variant="factorized_encoder", img_size=(20, 32), num_frames=4, temporal_depth=1)
    inflate(model, vit, posemb_init="resize")
    pos = vit.pos_embed.detach().numpy()[0]
    want = np.concatenate([pos[:1], bilinear_align_corners(pos[1:].reshape(4, 6, -1).astype(np.float64), 5, 8)
                           .reshape(40, -1)])
    np.testing.assert_allclose(model.encoder.spatial.pos_embed.detach().numpy()[0], want, atol=1e-6, rtol=1e-6)


def test_a_non_square_state_dict_needs_grid_size():
    model = tiny_vivit(img_size=(24, 28), num_frames=4)
    with pytest.raises(ValueError, match=r"not a square grid: pass grid_size=\(h, w\)"):
        inflate(model, tiny_vit(img_size=(16, 24)).state_dict(), posemb_init="resize_tile")
    with pytest.raises(ValueError, match="grid_size"):
        inflate(model, tiny_vit(img_size=(16, 24)).state_dict(), posemb_init="resize_tile", grid_size=(5, 5))


def test_a_non_square_state_dict_of_exactly_the_per_frame_grid_is_tiled_as_that_grid():
    """3 x 4 image tokens into 12 x 16 frames of 4 x 4 patches: the count says the grid, as the reference tiles it."""
    vit = tiny_vit(img_size=(12, 16))
    model = tiny_vivit(img_size=(12, 16), num_frames=4)
    inflate(model, vit.state_dict(), posemb_init="tile")
    pos = vit.pos_embed.detach()
    want = torch.cat([pos[:, :1], pos[:, 1:].repeat(1, 2, 1)], dim=1)
    torch.testing.assert_close(model.encoder.pos_embed.detach(), want, atol=0, rtol=0)
    with pytest.raises(ValueError, match="not a square grid"):  # 12 tokens into a 4 x 4 frame: still ambiguous
        inflate(tiny_vivit(num_frames=4), vit.state_dict(), posemb_init="resize_tile")


def test_tile_and_resize_refuse_grids_they_cannot_map():
    with pytest.raises(ValueError, match="use posemb_init='resize_tile'"):
        inflate(tiny_vivit(img_size=24), tiny_vit(), posemb_init="tile")
    with pytest.raises(ValueError, match="covers 4 frames"):
        inflate(tiny_vivit(img_size=24), tiny_vit(), posemb_init="resize")


def test_pooled_target_drops_the_cls_slot_and_token():
    vit = tiny_vit()
    model = tiny_vivit(global_pool="avg")
    inflate(model, vit)
    pos = vit.pos_embed.detach()
    torch.testing.assert_close(model.encoder.pos_embed.detach(), pos[:, 1:].repeat(1, 4, 1), atol=0, rtol=0)


def test_source_without_cls_leaves_the_target_cls_at_init():
    vit = tiny_vit(class_token=False, global_pool="avg", fc_norm=False)
    model = tiny_vivit()
    cls, cls_slot = model.encoder.cls_token.clone(), model.encoder.pos_embed[:, :1].clone()
    inflate(model, vit)
    torch.testing.assert_close(model.encoder.cls_token, cls, atol=0, rtol=0)
    torch.testing.assert_close(model.encoder.pos_embed[:, :1], cls_slot, atol=0, rtol=0)
    torch.testing.assert_close(model.encoder.pos_embed[:, 1:17], vit.pos_embed.detach(), atol=0, rtol=0)


# ----------------------------------------------------------------------------------------------- whole models
def test_one_frame_inflation_reproduces_the_image_vit():
    """With a 1-frame tubelet the inflated Model 1 is the image ViT: same features, LayerScale folded exactly."""
    vit = tiny_vit(init_values=0.5)  # DeiT-III style LayerScale
    model = tiny_vivit(num_frames=1, tubelet_size=(1, 4, 4))
    inflate(model, vit)
    image = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(model.forward_features(image[:, :, None]), vit.forward_features(image),
                                   atol=1e-5, rtol=1e-5)


def test_factorized_self_attention_copies_attention_into_space_and_time():
    vit = tiny_vit()
    model = tiny_vivit(variant="factorized_self_attention")
    norm_time = model.encoder.blocks[0].norm_time.weight.clone()
    inflate(model, vit)
    block, src = model.encoder.blocks[1], vit.blocks[1]
    for ours in (block.attn_space, block.attn_time):
        torch.testing.assert_close(ours.qkv.weight, src.attn.qkv.weight, atol=0, rtol=0)
        torch.testing.assert_close(ours.proj.bias, src.attn.proj.bias, atol=0, rtol=0)
    torch.testing.assert_close(block.norm_space.weight, src.norm1.weight, atol=0, rtol=0)
    torch.testing.assert_close(block.norm_mlp.bias, src.norm2.bias, atol=0, rtol=0)
    torch.testing.assert_close(model.encoder.blocks[0].norm_time.weight, norm_time, atol=0, rtol=0)


def test_pre_logits_are_copied_only_into_a_target_with_representation_size():
    state = tiny_vit().state_dict()
    state["pre_logits.fc.weight"], state["pre_logits.fc.bias"] = torch.randn(16, 32), torch.randn(16)
    with_rep = inflate(tiny_vivit(representation_size=16), state)
    torch.testing.assert_close(with_rep.pre_logits.fc.weight, state["pre_logits.fc.weight"], atol=0, rtol=0)
    inflate(tiny_vivit(), state)  # dropped, as the reference pops it
    plain = {k: v for k, v in state.items() if not k.startswith("pre_logits")}
    model = tiny_vivit(representation_size=16)
    kept = model.pre_logits.fc.weight.clone()
    inflate(model, plain)
    torch.testing.assert_close(model.pre_logits.fc.weight, kept, atol=0, rtol=0)


def test_head_is_not_copied():
    model = tiny_vivit()
    inflate(model, tiny_vit())
    assert not model.head.weight.any() and not model.head.bias.any()


def test_timm_name_creates_the_pretrained_model_lazily(monkeypatch):
    timm = pytest.importorskip("timm")
    calls = []

    def fake_create_model(name, pretrained=False, **kwargs):
        calls.append((name, pretrained))
        return tiny_vit()

    monkeypatch.setattr(timm, "create_model", fake_create_model)
    inflate(tiny_vivit(), "vit_tiny_test.augreg_in21k")
    assert calls == [("vit_tiny_test.augreg_in21k", True)]


# ------------------------------------------------------------------------------------------------------ errors
def test_exact_gelu_source_into_tanh_gelu_model_says_to_use_gelu():
    with pytest.raises(ValueError, match='act_layer="gelu"'):
        inflate(tiny_vivit(act_layer="gelu_tanh"), tiny_vit())
    inflate(tiny_vivit(act_layer="gelu_tanh"), tiny_vit().state_dict())  # a bare state dict states no activation


def test_unknown_init_methods_are_refused():
    with pytest.raises(ValueError, match="kernel_init must be one of"):
        inflate(tiny_vivit(), tiny_vit(), kernel_init="inflate")
    with pytest.raises(ValueError, match="posemb_init must be one of"):
        inflate(tiny_vivit(), tiny_vit(), posemb_init="interpolate")


@pytest.mark.parametrize(
    ("model_kwargs", "vit_kwargs", "message"),
    [
        (dict(embed_dim=64, num_heads=4, mlp_dim=128), {}, "embed_dim=64, the image ViT has 32"),
        (dict(depth=3), {}, "depth=3, the image ViT has 2 blocks"),
        (dict(num_heads=2), {}, "num_heads=2, the image ViT has 4"),
        (dict(mlp_dim=96), {}, r"expects shape \(96, 32\), the image ViT gives \(64, 32\)"),
        (dict(tubelet_size=(2, 8, 8)), {}, r"\(in_chans, h, w\) = \(3, 8, 8\) patches, the image ViT \(3, 4, 4\)"),
        ({}, dict(class_token=False, global_pool="avg"), "no place for.*fc_norm"),
    ],
)
def test_mismatches_say_expected_and_found(model_kwargs, vit_kwargs, message):
    model = tiny_vivit(**model_kwargs)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=message):
        inflate(model, tiny_vit(**vit_kwargs))
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # a failed inflation changes nothing


def test_a_timm_name_with_the_hub_unreachable_is_one_clear_error_within_seconds(tmp_path):
    """Offline, inflate once printed 71 lines over 56 s and ended in a raw huggingface_hub error."""
    import os
    import socket
    import subprocess
    import sys
    pytest.importorskip("timm")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "VIVIT_"))}
    root = str(__import__("pathlib").Path(__file__).resolve().parents[2])
    env.update(HF_ENDPOINT=f"http://127.0.0.1:{port}", HF_HOME=str(tmp_path / "hf"), NO_PROXY="127.0.0.1",
               PYTHONPATH=os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")])))
    code = ("import time, vivit\nm = vivit.ViViT(img_size=16, num_frames=4, tubelet_size=(2, 4, 4), embed_dim=32, "
            "depth=1, num_heads=4, mlp_dim=64, act_layer='gelu')\nstart = time.monotonic()\ntry:\n"
            "    vivit.inflate(m, 'vit_base_patch16_224')\nexcept RuntimeError as err:\n    print('ERROR', err)\n"
            "print(time.monotonic() - start)\n")
    proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=root, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr  # no retry warnings, no traceback
    message, seconds = proc.stdout.strip().splitlines()
    assert message.startswith("ERROR cannot get 'model.safetensors' from Hub repo 'timm/vit_base_patch16_224")
    assert "could not be reached" in message
    assert float(seconds) < 5, seconds  # the call itself, start-up aside
