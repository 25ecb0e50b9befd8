"""vivit.model.args: every constructor argument and input is checked, with one error saying what was expected."""

from __future__ import annotations

import inspect
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from vivit.model.args import check_args, check_grid, check_pool_switch, check_video, default_pool
from vivit.model.grid import MAX_SIDE
from vivit.model.vivit import ViViT

DEFAULTS = {k: p.default for k, p in inspect.signature(ViViT.__init__).parameters.items() if k != "self"}
SMALL = dict(img_size=32, num_frames=4, tubelet_size=(2, 16, 16), embed_dim=16, depth=1, num_heads=2, mlp_dim=32)


def args(**changes) -> dict:
    return {**DEFAULTS, **SMALL, **changes}


def test_valid_arguments_pass_silently() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_args(args())
        check_args(args(variant="factorized_encoder", temporal_depth=1, img_size=(32, 48), global_pool="avg"))
        check_args(args(embedding="frame_sampling", tubelet_size=(1, 16, 16), n_sampled_frames=2))


@pytest.mark.parametrize(("changes", "match"), [
    (dict(variant="spacetime3d"), r"variant must be one of \('spacetime', "),
    (dict(attn_impl="flash"), "attn_impl must be one of"),
    (dict(img_size="32"), r"img_size must be an int or \(H, W\) of positive ints, got '32'"),
    (dict(img_size=(32,)), r"img_size must be an int or \(H, W\) of positive ints"),
    (dict(img_size=MAX_SIDE + 1), rf"img_size must be .* in \[1, {MAX_SIDE}\]"),
    (dict(tubelet_size=(2, 16)), r"tubelet_size must be \(t, h, w\)"),
    (dict(depth=0), "depth must be an int >= 1, got 0"),
    (dict(num_classes=True), "num_classes must be an int >= 0, got True"),
    (dict(embed_dim=18, num_heads=4), "embed_dim 18 must be divisible by num_heads 4"),
    (dict(drop_path_rate=1.5), r"drop_path_rate must be a probability in \[0, 1\]"),
    (dict(norm_eps=float("nan")), "norm_eps must be a small positive number"),
    (dict(variant="factorized_self_attention", global_pool="token"), "has no CLS token"),
    (dict(embedding="frame_sampling", tubelet_size=(2, 16, 16), n_sampled_frames=2),
     r"tubelet_size must be \(1, h, w\)"),
    (dict(embedding="frame_sampling", tubelet_size=(1, 16, 16)), "needs n_sampled_frames"),
    (dict(dynamic_input_size=True, embedding="frame_sampling", tubelet_size=(1, 16, 16), n_sampled_frames=2),
     "dynamic_input_size=True needs embedding='tubelet'"),
])
def test_each_bad_argument_is_one_value_error_naming_it(changes: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        check_args(args(**changes))


def test_a_tubelet_that_does_not_tile_the_clip_warns_what_is_dropped() -> None:
    with pytest.warns(UserWarning, match=r"the last 4 pixel columns \(36 is not a multiple of 16\)"):
        check_args(args(img_size=(32, 36)))


def test_default_pool_follows_the_cls_token() -> None:
    assert default_pool("spacetime", None) == "token"
    assert default_pool("factorized_dot_product", None) == "avg"
    assert default_pool("spacetime", "max") == "max"


def test_check_grid_refuses_an_input_without_tokens() -> None:
    check_grid((1, 1, 1), 2, (16, 16), (2, 16, 16))
    with pytest.raises(ValueError, match="smaller than one tubelet"):
        check_grid((0, 1, 1), 1, (16, 16), (2, 16, 16))


def test_check_pool_switch_keeps_the_cls_token_as_built() -> None:
    check_pool_switch("token", "", has_cls=True)
    check_pool_switch("avg", "max", has_cls=False)
    with pytest.raises(ValueError, match="global_pool must be one of"):
        check_pool_switch("token", "mean", has_cls=True)
    with pytest.raises(ValueError, match="changes whether the model has a CLS token"):
        check_pool_switch("avg", "token", has_cls=False)


MODEL = SimpleNamespace(num_frames=4, img_size=(32, 32), in_chans=3, dynamic_input_size=False, tubelet_size=(2, 16, 16),
                        patch_embed=SimpleNamespace(proj=SimpleNamespace(weight=torch.zeros(1))))


def test_check_video_accepts_the_models_clip() -> None:
    check_video(MODEL, torch.zeros(2, 3, 4, 32, 32))


@pytest.mark.parametrize(("x", "error", "match"), [
    (np.zeros((1, 3, 4, 32, 32), np.float32), TypeError, r"torch.from_numpy\(x\) converts it"),
    (torch.zeros(1, 4, 3, 32, 32), ValueError, r"x.permute\(0, 2, 1, 3, 4\)"),
    (torch.zeros(1, 3, 4, 32, 16), ValueError, r"B x 3 x 4 x 32 x 32, got shape \(1, 3, 4, 32, 16\)"),
    (torch.zeros(1, 3, 4, 32, 32, dtype=torch.uint8), ValueError, "x.float"),
    (torch.zeros(1, 3, 4, 32, 32, dtype=torch.float64), TypeError, "to match the model's weights"),
])
def test_check_video_names_what_to_do_with_a_wrong_clip(x, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        check_video(MODEL, x)
