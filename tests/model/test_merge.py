"""Token merging (ToMe): equal to a transcription of the reference code, exact no-op at r=0, clear refusals."""

from __future__ import annotations

import json

import pytest
import torch

import vivit
from tests import reference_tome as ref
from vivit.model.merge import parse_r

# 8 frames of 32^2 in 2x8x8 tubelets: 4 x 4 x 4 = 64 patch tokens (+ CLS), 32 per frame group in Model 2 (16 + CLS).
SMALL = dict(img_size=32, num_frames=8, tubelet_size=(2, 8, 8), embed_dim=64, depth=3, num_heads=4, mlp_dim=128,
             temporal_depth=2, num_classes=7)
R_FORMS = {"int": 8, "pair": (8, -1.0), "list": [4, 10, 7]}
FE_R_FORMS = {"int": 3, "pair": (3, 1.0), "list": [2, 7]}


def _model(variant: str = "spacetime", **kwargs) -> vivit.ViViT:
    torch.manual_seed(0)
    model = vivit.ViViT(variant=variant, **{**SMALL, **kwargs}).eval()
    with torch.no_grad():  # random weights everywhere (the zero-initialised head and CLS would hide mistakes)
        for p in model.parameters():
            p.normal_(0, 0.2)
    return model


def _video(batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, SMALL["num_frames"], SMALL["img_size"], SMALL["img_size"],
                       generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("attn_impl", ["sdpa", "eager"])
@pytest.mark.parametrize("form", list(R_FORMS))
def test_model1_logits_equal_the_reference_tome(form, attn_impl):
    model, x = _model(attn_impl=attn_impl), _video()
    model.set_token_merging(R_FORMS[form])
    with torch.no_grad():
        expected = ref.model1_logits(model, x, R_FORMS[form])
        torch.testing.assert_close(model(x), expected, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(model.forward_head(model.forward_features(x)), expected, atol=1e-4, rtol=1e-4)
        dense = _model(attn_impl=attn_impl)(x)
    assert (model(x) - dense).abs().max() > 1e-3  # merging did change something


def test_model1_without_cls_merges_every_token_like_the_reference():
    model, x = _model(global_pool="avg"), _video()
    model.set_token_merging(9)
    with torch.no_grad():
        tokens, info = ref.tome_transformer(model.encoder, ref.patch_tokens(model, x), 9)
        torch.testing.assert_close(model.forward_features(x), tokens, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(model.token_sizes, info["size"])
    assert model.forward_features(x).shape[1] == 64 - 3 * 9


@pytest.mark.parametrize("pool", ["token", "avg"])
@pytest.mark.parametrize("form", list(FE_R_FORMS))
def test_model2_merges_within_each_frame_like_the_reference(form, pool):
    model, x = _model("factorized_encoder", global_pool=pool), _video()
    model.set_token_merging(FE_R_FORMS[form])
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref.model2_logits(model, x, FE_R_FORMS[form], pool), atol=1e-4, rtol=1e-4)
        features = model.forward_features(x)
    prefix = int(pool == "token")
    assert features.shape == (2, prefix + 4, 64)  # the temporal encoder keeps one token per frame
    merged = sum(parse_r(FE_R_FORMS[form], 3))
    assert model.token_sizes.shape == (2, 4, prefix + 16 - merged, 1)
    assert torch.all(model.token_sizes.sum(dim=(-2, -1)) == prefix + 16)


def test_sizes_and_sources_account_for_every_input_token():
    model, x = _model(), _video()
    model.set_token_merging(8, trace_source=True)
    with torch.no_grad():
        features = model.forward_features(x)
        _, info = ref.tome_transformer(model.encoder, ref.patch_tokens(model, x), 8, trace_source=True)
    sources, sizes = model.token_sources, model.token_sizes
    assert features.shape == (2, 65 - 24, 64) and sizes.shape == (2, 41, 1)
    torch.testing.assert_close(sources, info["source"].to(sources.dtype))
    assert torch.all(sources.sum(dim=1) == 1)  # each input token lands in exactly one output token
    torch.testing.assert_close(sources.sum(dim=-1, keepdim=True), sizes)
    assert sizes[:, 0, 0].tolist() == [1.0, 1.0] and sources[:, 0, 0].tolist() == [1.0, 1.0]  # CLS alone, first


@pytest.mark.parametrize("variant", ["spacetime", "factorized_encoder"])
def test_r_zero_is_bit_identical_to_the_dense_model(variant):
    x = _video()
    dense = _model(variant)
    merged = _model(variant, token_merging=2)
    with torch.no_grad():
        before = dense(x)
        assert not torch.equal(merged(x), before)
        merged.set_token_merging(0)
        assert torch.equal(merged(x), before)
        assert torch.equal(merged.forward_features(x), dense.forward_features(x))
    assert merged.state_dict().keys() == dense.state_dict().keys()
    assert merged.token_sizes is None and "token_merging" not in merged.model_args


@pytest.mark.parametrize("attn_impl", ["sdpa", "eager"])
def test_sdpa_and_eager_agree_with_merging(attn_impl):
    x = _video()
    outs = [_model(attn_impl=impl, token_merging=(6, -0.5))(x) for impl in ("sdpa", attn_impl)]
    torch.testing.assert_close(outs[0], outs[1], atol=1e-5, rtol=1e-5)


def test_create_model_takes_token_merging_and_gradients_flow_with_checkpointing():
    model = vivit.create_model("vivit_ti_16x2", token_merging=[3, 2], depth=2, img_size=32, num_frames=4,
                               num_classes=3, drop_path_rate=0.1)
    assert model.token_merging == [3, 2] and model.encoder.token_merging == [3, 2]
    x = torch.randn(2, 3, 4, 32, 32)
    model.eval()
    expected = model(x)
    model.set_grad_checkpointing(True)
    out = model(x)
    torch.testing.assert_close(out, expected)
    out.sum().backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if not n.startswith("head"))


@pytest.mark.parametrize("variant", ["spacetime", "factorized_encoder"])
def test_forward_intermediates_refuses_merged_tokens_clearly(variant):
    model = _model(variant, token_merging=4)
    with pytest.raises(ValueError, match="set_token_merging\\(0\\)"):
        model.forward_intermediates(_video())
    model.set_token_merging(0)
    model.forward_intermediates(_video())


def test_torch_compile_traces_merging_in_one_graph():
    model, x = _model(token_merging=(8, -1.0)), _video()
    with torch.no_grad():
        expected = model.forward_features(x)
        compiled = torch.compile(model.forward_features, fullgraph=True, backend="aot_eager")
        torch.testing.assert_close(compiled(x), expected, atol=1e-5, rtol=1e-5)
    assert model.token_sizes.shape == (2, expected.shape[1], 1)  # set by the compiled call too


@pytest.mark.parametrize("variant", ["factorized_self_attention", "factorized_dot_product"])
def test_models_3_and_4_refuse_token_merging(variant):
    model = _model(variant)  # token_merging=0 is accepted
    with pytest.raises(ValueError, match="full t x h x w grid"):
        model.set_token_merging(4)
    with pytest.raises(ValueError, match="full t x h x w grid"):
        vivit.ViViT(variant=variant, **SMALL, token_merging=[1])


@pytest.mark.parametrize("r, match", [
    (-1, "int >= 0"), (2.0, "pass an int"), (True, "int >= 0"), ("8", "int >= 0"), ([1, -2], "int >= 0"),
    ([1, 2, 3, 4], "4 values for 3 blocks"), ((8, 2.0), "inflection in"), ((8,), "inflection in"),
    ((8.0, 0.5), "inflection in"), (33, "at most 32"), ((20, -1.0), "merges up to 40"), ([0, 40], "at most 32"),
])
def test_bad_r_is_one_clear_value_error(r, match):
    with pytest.raises(ValueError, match=match):
        _model(token_merging=r)


def test_parse_r_matches_the_reference_schedule():
    for r, depth in [(8, 12), ((8, -1.0), 12), ((16, 0.5), 12), ((5, 1), 4), ([1, 2], 5), ((7, -0.3), 3)]:
        assert parse_r(r, depth) == ref.parse_r(depth, list(r) if isinstance(r, list) else r)
    assert parse_r((8, -1.0), 1) == [16]  # ToMe divides by depth - 1; one block takes the schedule's start


# ---------------------------------------------------------------------------------------------- command line
@pytest.fixture(scope="module")
def motion_listing(tmp_path_factory):
    pytest.importorskip("av")
    import numpy as np

    from vivit.data.synthetic import MOTION_CLASSES, make_clip
    from vivit.data.video import write_video

    root = tmp_path_factory.mktemp("clips")
    rng = np.random.default_rng(0)
    rows = ["path,label"]
    for label in (0, 3, 5):
        path = write_video(root / f"clip{label}.mp4", make_clip(label, rng, num_frames=16, size=32), fps=8)
        rows.append(f"{path.name},{MOTION_CLASSES[label]}")
    (root / "list.csv").write_text("\n".join(rows) + "\n")
    return root / "list.csv"


def _cli(*argv, capsys) -> tuple[int, str, str]:
    from vivit import cli

    try:
        code = cli.main([str(a) for a in argv])
    except SystemExit as exit_:  # argparse usage errors
        code = exit_.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_evaluate_records_token_merging_and_refuses_to_resume_with_another_r(motion_listing, tmp_path, capsys):
    args = ("evaluate", motion_listing, "--model", "vivit_motion", "--workers", "0", "--batch-size", "2")
    assert _cli(*args, "--out", tmp_path / "a", "--token-merging", "(4, -1)", capsys=capsys)[0] == 0
    report = json.loads((tmp_path / "a" / "report.json").read_text())
    assert report["token_merging"] == {"r": 4, "inflection": -1}
    assert _cli(*args, "--out", tmp_path / "b", "--token-merging", "4", "--stop-after", "1", capsys=capsys)[0] == 3
    code, _, err = _cli(*args, "--out", tmp_path / "b", "--token-merging", "2", capsys=capsys)
    assert code == 2 and "token_merging was 4, now 2" in err  # the flags against run.json: bad usage


def test_classify_and_extract_take_token_merging(motion_listing, tmp_path, capsys):
    video = motion_listing.parent / "clip3.mp4"
    code, out, _ = _cli("classify", video, "--model", "vivit_motion", "--token-merging", "[4, 2]", "--json",
                        capsys=capsys)
    assert code == 0 and json.loads(out)["top_k"][0]["label"]
    code, _, _ = _cli("extract", motion_listing, "--model", "vivit_motion", "--out", tmp_path, "--workers", "0",
                      "--token-merging", "4", capsys=capsys)
    assert code == 0 and json.loads((tmp_path / "run.json").read_text())["token_merging"] == 4


@pytest.mark.parametrize("value, code, message", [
    ("2.5", 2, "expected an int r"), ("four", 2, "expected an int r"),
    # found from the zoo's data before the model loads: bad usage, with the model's token count
    ("[1, 2, 3]", 2, "3 values for 2 blocks"), ("9", 2, "16 tokens (CLS excepted) in a frame"),
])
def test_bad_token_merging_on_the_command_line_is_one_line(motion_listing, value, code, message, capsys):
    video = motion_listing.parent / "clip0.mp4"
    got, _, err = _cli("classify", video, "--model", "vivit_motion", "--token-merging", value, capsys=capsys)
    assert got == code and message in err and "Traceback" not in err
