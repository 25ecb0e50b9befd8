"""vivit.data.transforms: the reference's scaling, short-side resize, crops, eval pipeline from a cfg, train
augmentation."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

import vivit
from tests.conftest import TINY
from vivit import transforms as T


def _frames(t: int = 4, h: int = 48, w: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (t, h, w, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def _tf_resize_bilinear(img: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """tf.image.resize(method=BILINEAR, antialias=False) on (H, W): half-pixel centres, as TF's kernel computes."""
    def weights(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        scale = in_size / out_size
        x = (np.arange(out_size) + 0.5) * scale - 0.5
        lower = np.maximum(np.floor(x), 0).astype(int)
        upper = np.minimum(np.ceil(x), in_size - 1).astype(int)
        return lower, upper, x - np.floor(x)

    y0, y1, fy = weights(img.shape[0], out_h)
    x0, x1, fx = weights(img.shape[1], out_w)
    img = img.astype(np.float64)
    top = img[y0][:, x0] + (img[y0][:, x1] - img[y0][:, x0]) * fx
    bottom = img[y1][:, x0] + (img[y1][:, x1] - img[y1][:, x0]) * fx
    return top + (bottom - top) * fy[:, None]


# ------------------------------------------------------------------------------------------------ scaling
def test_to_float_is_the_reference_scaling_bit_for_bit():
    frames = _frames()
    out = T.to_float(frames)
    assert out.shape == (3, 4, 48, 64) and out.dtype == torch.float32
    # dmvr normalize_image: frames * (2.0 / 255.0) - 1.0 in float32
    expected = frames.numpy().astype(np.float32) * np.float32(2.0 / 255.0) - np.float32(1.0)
    np.testing.assert_array_equal(out.numpy(), expected.transpose(3, 0, 1, 2))
    edges = T.to_float(torch.tensor([0, 255], dtype=torch.uint8).view(1, 1, 2, 1).expand(1, 1, 2, 3))
    assert edges[:, 0, 0, 0].tolist() == [-1.0] * 3 and edges[:, 0, 0, 1].tolist() == [1.0] * 3


def test_other_mean_and_std_normalise_per_channel():
    frames = _frames()
    mean, std = (0.45, 0.45, 0.45), (0.225, 0.225, 0.225)
    out = T.to_float(frames, mean, std)
    expected = (frames.permute(3, 0, 1, 2).float() / 255 - 0.45) / 0.225
    torch.testing.assert_close(out, expected)


def test_to_float_rejects_float_or_channels_first_input():
    with pytest.raises(ValueError, match=r"expected uint8 frames \(T, H, W, C\)"):
        T.to_float(torch.rand(4, 48, 64, 3))


# ------------------------------------------------------------------------------------------------ geometry
@pytest.mark.parametrize(("hw", "expected"), [((720, 1280), (256, 455)), ((1280, 720), (455, 256)),
                                              ((240, 320), (256, 341)), ((256, 256), (256, 256)),
                                              ((17, 33), (256, 496))])
def test_short_side_size_uses_dmvr_integer_arithmetic(hw, expected):
    assert T.short_side_size(*hw, 256) == expected
    assert T.resize_short_side(torch.zeros(1, 3, *hw, dtype=torch.uint8)).shape[-2:] == expected


@pytest.mark.parametrize(("size", "out"), [((48, 64), (24, 37)), ((48, 64), (100, 130)), ((17, 33), (256, 496))])
def test_bilinear_resize_matches_tensorflow_half_pixel_sampling(size, out):
    img = torch.rand(*size, dtype=torch.float64) * 255
    ours = T.resize(img.float()[None], out)[0].double().numpy()
    np.testing.assert_allclose(ours, _tf_resize_bilinear(img.numpy(), *out), atol=1e-3)


def test_uint8_resize_truncates_like_the_reference_cast():
    frames = _frames(2, 48, 64)
    ours = T.resize_short_side(frames.permute(0, 3, 1, 2), 100).permute(0, 2, 3, 1).numpy().astype(int)
    expected = np.stack([np.stack([_tf_resize_bilinear(f[..., c], 100, 133) for c in range(3)], -1)
                         for f in frames.numpy()])
    expected = np.floor(expected + 1e-9).astype(int)  # tf.cast(float -> uint8) truncates
    assert np.abs(ours - expected).max() <= 1
    assert (ours == expected).mean() > 0.99


def test_resize_gives_the_same_result_for_any_memory_layout():
    frames = _frames(5, 40, 70)
    channels_last = T.resize(frames.permute(0, 3, 1, 2), (30, 50))  # a view of THWC memory
    contiguous = T.resize(frames.permute(0, 3, 1, 2).contiguous(), (30, 50))
    planes = T.resize(frames.permute(3, 0, 1, 2), (30, 50))  # (C, T, H, W)
    assert torch.equal(channels_last, contiguous)
    assert torch.equal(planes, contiguous.transpose(0, 1))


def test_center_crop_offsets_floor_like_dmvr():
    video = torch.arange(9 * 12).view(1, 9, 12)
    crop = T.center_crop(video, 4)
    assert crop.shape == (1, 4, 4) and crop[0, 0, 0] == video[0, 2, 4]  # (9-4)//2, (12-4)//2
    assert T.center_crop(video, (3, 5))[0, 0, 0] == video[0, 3, 3]


def test_three_crops_run_along_the_long_side_with_a_ceil_centre():
    land = torch.arange(8 * 15).view(1, 8, 15)
    crops = T.three_crops(land, 8)
    assert crops.shape == (3, 1, 8, 8)
    assert [int(c[0, 0, 0]) for c in crops] == [land[0, 0, 0], land[0, 0, 4], land[0, 0, 7]]  # ceil(7 / 2) = 4
    portrait = torch.arange(15 * 8).view(1, 15, 8)
    crops = T.three_crops(portrait, 8)
    assert [int(c[0, 0, 0]) for c in crops] == [portrait[0, 0, 0], portrait[0, 4, 0], portrait[0, 7, 0]]
    square = torch.arange(10 * 10).view(1, 10, 10)
    assert [int(c[0, 0, 0]) for c in T.three_crops(square, 7)] == [square[0, 2, 0], square[0, 2, 2], square[0, 2, 3]]


def test_crops_larger_than_the_frame_are_refused():
    with pytest.raises(ValueError, match=r"frames of 8x15 are smaller than the 10x10 crop; resize first"):
        T.three_crops(torch.zeros(1, 8, 15), 10)
    with pytest.raises(ValueError, match="smaller than the"):
        T.center_crop(torch.zeros(1, 8, 15), 10)


# ------------------------------------------------------------------------------------------------ eval
def test_eval_transform_from_a_released_cfg_is_256_then_224():
    transform = T.eval_transform("vivit_b_16x2.k400")
    assert (transform.resize_size, transform.crop_size) == (256, (224, 224))
    assert transform.mean == transform.std == (0.5, 0.5, 0.5) and transform.interpolation == "bilinear"
    out = transform(_frames(2, 240, 320))
    assert out.shape == (3, 2, 224, 224) and out.min() >= -1 and out.max() <= 1


def test_eval_transform_is_resize_crop_scale_in_that_order():
    cfg = {"input_size": (3, 4, 32, 32), "crop_pct": 0.8, "mean": (0.5,) * 3, "std": (0.5,) * 3}
    frames = _frames(4, 48, 64)
    resized = T.resize_short_side(frames.permute(3, 0, 1, 2), 40)
    torch.testing.assert_close(T.eval_transform(cfg)(frames), T.normalize(T.center_crop(resized, 32)),
                               rtol=0, atol=0)
    three = T.eval_transform(cfg, num_crops=3)(frames)
    assert three.shape == (3, 3, 4, 32, 32)
    torch.testing.assert_close(three, T.normalize(T.three_crops(resized, 32)), rtol=0, atol=0)


def test_eval_transform_follows_the_model_it_is_built_from():
    model = vivit.create_model("vivit_ti_16x2", **TINY)
    transform = T.eval_transform(model)
    assert transform.crop_size == (32, 32) and transform.resize_size == 36  # floor(32 / 0.875)
    assert T.resolve_data_config(model)["input_size"] == (3, 4, 32, 32)
    x = transform(_frames(4, 50, 80))
    assert model(x[None]).shape == (1, model.num_classes)


def test_eval_transform_reads_each_preprocessing_field():
    cfg = {"input_size": (3, 8, 112, 96), "mean": (0.1, 0.2, 0.3), "std": (0.9, 0.8, 0.7), "crop_pct": 0.5,
           "interpolation": "bicubic"}
    transform = T.eval_transform(cfg)
    assert transform == T.EvalTransform(192, (112, 96), (0.1, 0.2, 0.3), (0.9, 0.8, 0.7), "bicubic", 1)


@pytest.mark.parametrize(("cfg", "message"), [
    ({"input_size": (3, 224, 224)}, r"input_size must be \(C, T, H, W\)"),
    ({"mean": (0.5, 0.5)}, "mean must have one value per channel"),
    ({"crop_pct": 1.5}, r"crop_pct must be in \(0, 1\]"),
    ({"interpolation": "lanczos"}, "interpolation must be one of"),
])
def test_bad_cfgs_are_refused(cfg, message):
    with pytest.raises(ValueError, match=message):
        T.eval_transform(cfg)


def test_eval_transform_checks_its_input():
    with pytest.raises(ValueError, match=r"expected 3 channels last \(T, H, W, 3\)"):
        T.eval_transform({})(torch.zeros(3, 8, 64, 64, dtype=torch.uint8))
    with pytest.raises(TypeError, match="expected a ViViT model"):
        T.eval_transform(3.0)


# ------------------------------------------------------------------------------------------------ training
needs_torchvision = pytest.mark.skipif(importlib.util.find_spec("torchvision") is None,
                                       reason="training transforms need torchvision")


@needs_torchvision
@pytest.mark.parametrize("recipe", sorted(T.TRAIN_RECIPES))
def test_train_transform_gives_model_input_for_every_recipe(recipe):
    transform = T.train_transform({"input_size": (3, 4, 32, 32)}, recipe)
    out = transform(_frames(4, 48, 64))
    assert out.shape == (3, 4, 32, 32) and out.dtype == torch.float32
    assert out.min() >= -1 and out.max() <= 1


@needs_torchvision
def test_train_transform_is_reproducible_under_a_seed():
    transform = T.train_transform({"input_size": (3, 4, 32, 32)}, "epic_kitchens")
    torch.manual_seed(3)
    a = transform(_frames())
    torch.manual_seed(3)
    assert torch.equal(a, transform(_frames()))


@needs_torchvision
@pytest.mark.parametrize("recipe", sorted(T.TRAIN_RECIPES))
def test_train_augmentation_treats_every_frame_alike(recipe):
    still = _frames(1, 48, 64).expand(6, -1, -1, -1)  # identical frames must stay identical
    for seed in range(5):
        torch.manual_seed(seed)
        out = T.train_transform({"input_size": (3, 6, 32, 32)}, recipe, random_resized_crop=(0.3, 1) if seed % 2
                                else None)(still)
        assert (out == out[:, :1]).all()


@needs_torchvision
def test_train_transform_steps_follow_the_recipe_and_overrides():
    kinetics = repr(T.train_transform(None, "kinetics"))
    assert "ResizeShortSide(256" in kinetics and "ScaleJitter(scale=(0.9, 1.33), prob=1.0)" in kinetics
    assert "RandomCrop" in kinetics and "ColorAugment(prob=0.8, drop_prob=0.1)" in kinetics
    assert "RandAugment" not in kinetics
    ek = repr(T.train_transform(None, "epic_kitchens"))
    assert "VideoRandAugment(num_layers=2, magnitude=15.0)" in ek and "ColorAugment" not in ek
    custom = repr(T.train_transform(None, "kinetics", scale_jitter=False, flip=False, color_augment=0,
                                    color_drop=0, random_resized_crop=None, rand_augment=(1, 5)))
    assert "ScaleJitter" not in custom and "Flip" not in custom and "ColorAugment" not in custom
    assert "VideoRandAugment(num_layers=1" in custom
    rrc = repr(T.train_transform(None, "kinetics", random_resized_crop=(0.5, 1.0)))
    assert "RandomResizedCrop" in rrc and "ResizeShortSide" not in rrc
    with pytest.raises(ValueError, match="recipe must be one of"):
        T.train_transform(None, "imagenet")


def test_scale_jitter_scales_height_and_width_within_bounds():
    jitter = T.ScaleJitter((0.9, 1.33), prob=1.0)
    sizes = {tuple(jitter(torch.zeros(2, 3, 100, 200, dtype=torch.uint8)).shape[-2:]) for _ in range(50)}
    assert len(sizes) > 10
    assert all(90 <= h <= 133 and 180 <= w <= 266 for h, w in sizes)
    assert T.ScaleJitter(prob=0.0)(torch.zeros(1, 3, 10, 10)).shape == (1, 3, 10, 10)


def test_color_augment_stays_in_range_and_drops_colour():
    video = torch.rand(3, 3, 8, 8)
    out = T.ColorAugment(prob=1.0, drop_prob=0.0)(video)
    assert out.shape == video.shape and out.min() >= 0 and out.max() <= 1 and not torch.equal(out, video)
    grey = T.ColorAugment(prob=0.0, drop_prob=1.0)(video)
    assert torch.equal(grey[:, 0], grey[:, 1]) and torch.equal(grey[:, 1], grey[:, 2])
    assert torch.equal(T.ColorAugment(prob=0.0, drop_prob=0.0)(video), video)


def test_hsv_round_trip_is_exact_enough():
    rgb = torch.rand(2, 3, 16, 16)
    torch.testing.assert_close(T._hsv_to_rgb(T._rgb_to_hsv(rgb)), rgb, atol=1e-5, rtol=0)


@needs_torchvision
@pytest.mark.parametrize("op", T.VideoRandAugment.OPS)
def test_every_rand_augment_op_keeps_uint8_shape_and_frame_consistency(op):
    still = _frames(1, 24, 20).permute(0, 3, 1, 2).expand(4, -1, -1, -1).contiguous()
    augment = T.VideoRandAugment(2, 15)
    c, t, h, w = 3, 4, 24, 20
    out = augment._apply(op, still.permute(1, 0, 2, 3).reshape(c, t * h, w), t).reshape(c, t, h, w)
    assert out.dtype == torch.uint8
    if op not in ("Sharpness",):  # the 3x3 blur of the tall image reaches across frame borders, as in the reference
        assert (out == out[:, :1]).all(), op


@needs_torchvision
def test_rand_augment_magnitudes_follow_tf_models_levels():
    image = torch.arange(256, dtype=torch.uint8).view(1, 16, 16).expand(3, -1, -1).contiguous()
    augment = T.VideoRandAugment(1, 15)
    assert torch.equal(augment._apply("Solarize", image, 1), image)  # threshold int(1.5 * 256) > 255: a no-op
    assert torch.equal(augment._apply("Posterize", image, 1), image & 0b11111100)  # int(1.5 * 4) = 6 bits
    added = augment._apply("SolarizeAdd", image, 1)  # + int(1.5 * 110) = 165 below 128
    assert added[0, 0, 10] == 175 and added[0, 15, 15] == 255
    torch.manual_seed(0)
    cut = T.VideoRandAugment(1, 5, cutout_const=4)._apply("Cutout", torch.full((3, 40, 10), 9, dtype=torch.uint8), 2)
    assert (cut == 0).any() and (cut.view(3, 2, 20, 10)[:, 0] == cut.view(3, 2, 20, 10)[:, 1]).all()


@needs_torchvision
def test_rand_augment_refuses_float_video():
    with pytest.raises(ValueError, match=r"expects uint8 \(T, C, H, W\)"):
        T.VideoRandAugment()(torch.rand(2, 3, 8, 8))


# ------------------------------------------------------------------------------------------------ mixup
def test_mixup_blends_with_the_reversed_batch():
    torch.manual_seed(0)
    videos = torch.arange(4, dtype=torch.float32).view(4, 1, 1, 1, 1).expand(4, 3, 2, 2, 2)
    mixed, targets = T.mixup(videos, torch.tensor([0, 1, 2, 3]), 0.3, num_classes=5)
    weight = float(targets[0, 0])
    assert targets.shape == (4, 5)
    torch.testing.assert_close(targets.sum(1), torch.ones(4))
    torch.testing.assert_close(targets[0, 3], torch.tensor(1 - weight))
    expected = weight * torch.arange(4.0) + (1 - weight) * torch.arange(4.0).flip(0)
    torch.testing.assert_close(mixed[:, 0, 0, 0, 0], expected)


def test_mixup_needs_num_classes_for_index_labels():
    with pytest.raises(ValueError, match="pass num_classes"):
        T.mixup(torch.zeros(2, 3), torch.tensor([0, 1]))
    _, soft = T.mixup(torch.zeros(2, 3), torch.eye(2), 1.0)
    assert soft.shape == (2, 2)
