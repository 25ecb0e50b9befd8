"""uint8 ``T x H x W x C`` frames -> float ``C x T x H x W`` model input, as the reference preprocesses it.

Evaluation (SPEC 4.1): resize the short side to ``floor(crop / crop_pct)`` (256 for 224 crops), take a centre crop or
three crops along the long side, scale ``x * 2 / 255 - 1``. :func:`eval_transform` reads every number from a model's
``pretrained_cfg``, so weights and preprocessing cannot drift apart. Training: the reference configs' scale jitter,
random crop, flip, colour augmentation or RandAugment (:func:`train_transform`, torchvision v2) and :func:`mixup`.

Spatial functions take any ``(..., H, W)`` tensor, so ``(C, T, H, W)`` and ``(T, C, H, W)`` both work. Only
``torch`` is needed for evaluation; torchvision is imported when a training transform is built.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F

DATA_KEYS = ("input_size", "mean", "std", "crop_pct", "crop_mode", "interpolation", "frame_stride")
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")
_CHUNK = 12  # planes resized at once: bounds the float copy of a long high-resolution clip

# Training recipes of the reference configs (scenic/projects/vivit/configs/*/...py, dataset_configs.augmentation_params
# and config.mixup). All use the dmvr train pipeline: random clip, resize short side, then these, random crop, flip.
TRAIN_RECIPES: dict[str, dict[str, Any]] = {
    # kinetics400/vivit_base_k400.py, vivit_*_factorised_encoder.py, kinetics600/vivit_large_factorised_encoder.py
    "kinetics": dict(scale_jitter=(0.9, 1.33), scale_jitter_prob=1.0, flip=True, color_augment=0.8, color_drop=0.1,
                     rand_augment=None, mixup_alpha=0.0, label_smoothing=0.0, frame_stride=2),
    # epic_kitchens/vivit_large_factorised_encoder.py (do_color_augment False, RandAugment 2 layers at 15,
    # mixup.alpha 0.1, label_smoothing 0.2, dataset_configs.stride 1)
    "epic_kitchens": dict(scale_jitter=(0.9, 1.33), scale_jitter_prob=1.0, flip=True, color_augment=0.0,
                          color_drop=0.0, rand_augment=(2, 15), mixup_alpha=0.1, label_smoothing=0.2, frame_stride=1),
    # something_something_v2/vivit_large_factorised_encoder.py (min_resize 288, crop 256; dmvr keeps random flip on)
    "ssv2": dict(scale_jitter=(0.9, 1.33), scale_jitter_prob=1.0, flip=True, color_augment=0.0, color_drop=0.0,
                 rand_augment=(2, 20), mixup_alpha=0.3, label_smoothing=0.3, frame_stride=1),
}


# ------------------------------------------------------------------------------------------------ config
def resolve_data_config(model_or_cfg: Any) -> dict[str, Any]:
    """The preprocessing fields of a model's pretrained cfg, defaults filled from ``zoo.PretrainedCfg``.

    Args:
        model_or_cfg: A ViViT (its ``pretrained_cfg``; ``input_size`` from the model itself, so a model built with
            other ``num_frames``/``img_size`` gets matching clips), a ``pretrained_cfg`` dict, a ``PretrainedCfg``,
            or a registered name such as ``"vivit_b_16x2.k400"``.

    Returns:
        ``input_size`` ``(C, T, H, W)``, ``mean``, ``std``, ``crop_pct``, ``crop_mode``, ``interpolation``,
        ``frame_stride``.
    """
    from vivit.zoo import PretrainedCfg

    defaults = {f.name: f.default for f in fields(PretrainedCfg) if f.name in DATA_KEYS}
    if isinstance(model_or_cfg, str):
        from vivit.zoo import resolve_name

        if model_or_cfg.startswith("hf-hub:"):
            raise ValueError(f"{model_or_cfg!r}: create the model first (vivit.create_model) and pass the model")
        cfg: dict[str, Any] = resolve_name(model_or_cfg)[1].to_dict()
    elif isinstance(model_or_cfg, torch.nn.Module):
        cfg = dict(getattr(model_or_cfg, "pretrained_cfg", None) or {})
        if hasattr(model_or_cfg, "num_frames") and hasattr(model_or_cfg, "img_size"):
            img = model_or_cfg.img_size
            img = (img, img) if isinstance(img, int) else tuple(img)
            cfg["input_size"] = (getattr(model_or_cfg, "in_chans", 3), model_or_cfg.num_frames, *img)
    elif hasattr(model_or_cfg, "to_dict"):
        cfg = model_or_cfg.to_dict()
    elif isinstance(model_or_cfg, Mapping):
        cfg = dict(model_or_cfg)
    else:
        raise TypeError(f"expected a ViViT model, a pretrained_cfg dict, a PretrainedCfg or a model name, found "
                        f"{type(model_or_cfg).__name__}")
    out = {k: cfg.get(k) if cfg.get(k) is not None else defaults[k] for k in DATA_KEYS}
    size = tuple(int(v) for v in out["input_size"])
    if len(size) != 4 or min(size) < 1:
        raise ValueError(f"input_size must be (C, T, H, W), found {out['input_size']!r}")
    out["input_size"] = size
    for key in ("mean", "std"):
        out[key] = tuple(float(v) for v in out[key])
        if len(out[key]) != size[0]:
            raise ValueError(f"{key} must have one value per channel ({size[0]}), found {out[key]!r}")
    if not 0 < float(out["crop_pct"]) <= 1:
        raise ValueError(f"crop_pct must be in (0, 1], found {out['crop_pct']!r}")
    if out["interpolation"] not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, found {out['interpolation']!r}")
    return out


# ------------------------------------------------------------------------------------------------ scaling
def normalize(video: torch.Tensor, mean: Sequence[float] = (0.5, 0.5, 0.5),
              std: Sequence[float] = (0.5, 0.5, 0.5)) -> torch.Tensor:
    """Scale ``(..., C, T, H, W)`` values in [0, 255] (uint8 or float) to float32 model input.

    With ``mean = std = 0.5`` (the reference) this is computed as the reference does, ``x * (2 / 255) - 1``, so the
    values match it bit for bit; otherwise ``(x / 255 - mean) / std``.
    """
    x = video.float()
    if all(m == 0.5 for m in mean) and all(s == 0.5 for s in std):
        return x * (2.0 / 255.0) - 1.0  # dmvr processors.normalize_image(zero_centering_image=True)
    shape = (len(mean), 1, 1, 1)
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(shape)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(shape)
    return (x / 255.0 - m) / s


def to_float(video: torch.Tensor, mean: Sequence[float] = (0.5, 0.5, 0.5),
             std: Sequence[float] = (0.5, 0.5, 0.5)) -> torch.Tensor:
    """uint8 ``(T, H, W, C)`` frames (what :func:`vivit.data.video.read_video` returns) -> float ``(C, T, H, W)``.

    The default is the reference's scaling ``x * 2 / 255 - 1`` into [-1, 1] (mean = std = 0.5).
    """
    _check_frames(video)
    return normalize(video.permute(3, 0, 1, 2), mean, std)


# ------------------------------------------------------------------------------------------------ geometry
def resize(video: torch.Tensor, size: tuple[int, int], interpolation: str = "bilinear") -> torch.Tensor:
    """Resize the last two dims of ``(..., H, W)`` to ``size`` without antialiasing, as ``tf.image.resize`` does.

    uint8 in, uint8 out: values are computed in float and truncated, as the reference's ``tf.cast`` does.
    """
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, found {interpolation!r}")
    h, w = video.shape[-2:]
    out_h, out_w = int(size[0]), int(size[1])
    if (out_h, out_w) == (h, w):
        return video
    # 4-D input is resized as (N, C, H, W) in slices of N, whatever its memory layout (THWC frames permuted to
    # (T, C, H, W) are channels-last), so no full-size copy is made; other ranks go through (planes, 1, H, W).
    batch = video if video.ndim == 4 else video.reshape(-1, 1, h, w)
    out = torch.empty(*batch.shape[:2], out_h, out_w, dtype=video.dtype, device=video.device)
    step = max(1, _CHUNK // batch.shape[1])
    kwargs = {} if interpolation == "nearest" else {"align_corners": False, "antialias": False}
    for start in range(0, batch.shape[0], step):
        # align_corners=False is TF2's half-pixel sampling; bicubic uses a=-0.75 where TF uses -0.5
        chunk = F.interpolate(batch[start : start + step].float(), (out_h, out_w), mode=interpolation, **kwargs)
        if video.dtype == torch.uint8:
            chunk = chunk.clamp_(0, 255)  # .to(uint8) then truncates, like tf.cast in dmvr resize_smallest
        out[start : start + step] = chunk.to(video.dtype)
    return out.reshape(*video.shape[:-2], out_h, out_w)


def short_side_size(height: int, width: int, size: int) -> tuple[int, int]:
    """Output size of :func:`resize_short_side`: dmvr ``resize_smallest``'s integer arithmetic."""
    return max(size, (height * size) // width), max(size, (width * size) // height)


def resize_short_side(video: torch.Tensor, size: int = 256, interpolation: str = "bilinear") -> torch.Tensor:
    """Resize ``(..., H, W)`` so that ``min(H, W) == size``, keeping the aspect ratio (floored, as the reference)."""
    h, w = video.shape[-2:]
    return resize(video, short_side_size(h, w, size), interpolation)


def resize_size(crop: Sequence[int], crop_pct: float) -> int:
    """Short side to resize to before cropping ``crop``: ``floor(min(crop) / crop_pct)`` (256 for 224 at 0.875)."""
    return math.floor(min(crop) / crop_pct + 1e-6)


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))


def _check_fits(video: torch.Tensor, size: tuple[int, int], what: str) -> None:
    h, w = video.shape[-2:]
    if h < size[0] or w < size[1]:
        raise ValueError(f"{what}: frames of {h}x{w} are smaller than the {size[0]}x{size[1]} crop; resize first "
                         "(resize_short_side) or crop smaller")


def center_crop(video: torch.Tensor, size: int | Sequence[int] = 224) -> torch.Tensor:
    """Central ``size`` crop of ``(..., H, W)``; offsets ``(H - h) // 2`` as dmvr ``crop_image(random=False)``."""
    ch, cw = _pair(size)
    _check_fits(video, (ch, cw), "center_crop")
    h, w = video.shape[-2:]
    top, left = (h - ch) // 2, (w - cw) // 2
    return video[..., top : top + ch, left : left + cw]


def three_crops(video: torch.Tensor, size: int | Sequence[int] = 224) -> torch.Tensor:
    """Three crops along the long side: left/centre/right (landscape, square) or top/centre/bottom (portrait).

    As scenic ``video_ops.three_spatial_crops``: the centre offset is ``ceil((H - h) / 2)``, one more than
    :func:`center_crop` for odd margins.

    Returns:
        ``(3, ..., h, w)``.
    """
    ch, cw = _pair(size)
    _check_fits(video, (ch, cw), "three_crops")
    h, w = video.shape[-2:]
    y, x = math.ceil((h - ch) / 2), math.ceil((w - cw) / 2)
    if h > w:
        boxes = [(0, x), (y, x), (h - ch, x)]
    else:
        boxes = [(y, 0), (y, x), (y, w - cw)]
    return torch.stack([video[..., t : t + ch, left : left + cw] for t, left in boxes])


def _check_frames(video: torch.Tensor, channels: int | None = None) -> None:
    if not isinstance(video, torch.Tensor) or video.ndim != 4 or video.dtype != torch.uint8:
        found = f"{tuple(video.shape)} {video.dtype}" if isinstance(video, torch.Tensor) else type(video).__name__
        raise ValueError(f"expected uint8 frames (T, H, W, C) as vivit.data.video.read_video returns, found {found}")
    if channels is not None and video.shape[-1] != channels:
        raise ValueError(f"expected {channels} channels last (T, H, W, {channels}), found shape {tuple(video.shape)}")


# ------------------------------------------------------------------------------------------------ evaluation
@dataclass(frozen=True)
class EvalTransform:
    """uint8 ``(T, H, W, C)`` -> float ``(C, T, h, w)`` (one crop) or ``(3, C, T, h, w)`` (three crops).

    Attributes:
        resize_size: Short side after resizing.
        crop_size: ``(h, w)`` of the crops (the model's ``img_size``).
        mean: Per-channel mean on the [0, 1] scale.
        std: Per-channel std on the [0, 1] scale.
        interpolation: Resize filter.
        num_crops: 1 (centre) or 3 (along the long side).
    """

    resize_size: int
    crop_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str = "bilinear"
    num_crops: int = 1

    @classmethod
    def from_cfg(cls, cfg: Mapping[str, Any], num_crops: int = 1) -> EvalTransform:
        """The transform of a preprocessing cfg as :func:`resolve_data_config` returns it (nothing is resolved)."""
        if num_crops not in (1, 3):
            raise ValueError(f"num_crops must be 1 or 3, found {num_crops}")
        crop = tuple(cfg["input_size"][2:])
        return cls(resize_size=resize_size(crop, cfg["crop_pct"]), crop_size=crop, mean=tuple(cfg["mean"]),
                   std=tuple(cfg["std"]), interpolation=cfg["interpolation"], num_crops=num_crops)

    def __call__(self, video: torch.Tensor) -> torch.Tensor:
        """Apply the transform; ``video`` is uint8 ``(T, H, W, C)``."""
        _check_frames(video, len(self.mean))
        x = resize_short_side(video.permute(0, 3, 1, 2), self.resize_size, self.interpolation)  # (T, C, H, W)
        x = three_crops(x, self.crop_size) if self.num_crops == 3 else center_crop(x, self.crop_size)
        return normalize(x.transpose(-4, -3), self.mean, self.std)


def eval_transform(model_or_cfg: Any, *, num_crops: int = 1) -> EvalTransform:
    """The reference's test preprocessing for a model, built from its ``pretrained_cfg``.

    Args:
        model_or_cfg: As in :func:`resolve_data_config`.
        num_crops: 1 for a centre crop, 3 for the multi-view crops along the long side.
    """
    if num_crops not in (1, 3):
        raise ValueError(f"num_crops must be 1 or 3, found {num_crops}")
    return EvalTransform.from_cfg(resolve_data_config(model_or_cfg), num_crops)


# ------------------------------------------------------------------------------------------------ training
class ScaleJitter:
    """dmvr ``scale_jitter_augm``: scale height and width by independent factors, with probability ``prob``.

    Works on ``(..., H, W)``; one draw per call, so every frame of a clip gets the same scale.
    """

    def __init__(self, scale: tuple[float, float] = (0.9, 1.33), prob: float = 1.0,
                 interpolation: str = "bilinear") -> None:
        if not 0 <= prob <= 1 or not 0 < scale[0] <= scale[1]:
            raise ValueError(f"expected 0 < scale[0] <= scale[1] and prob in [0, 1], found {scale}, {prob}")
        self.scale, self.prob, self.interpolation = scale, prob, interpolation

    def __call__(self, video: torch.Tensor) -> torch.Tensor:
        lo, hi = self.scale
        sh, sw = (lo + (hi - lo) * torch.rand(2)).tolist()
        if torch.rand(()).item() >= self.prob:
            return video
        h, w = video.shape[-2:]
        return resize(video, (int(sh * h), int(sw * w)), self.interpolation)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(scale={self.scale}, prob={self.prob})"


def _rgb_to_hsv(rgb: torch.Tensor) -> torch.Tensor:
    """``(..., 3, H, W)`` RGB in [0, 1] -> HSV in [0, 1] (hue as a fraction of a turn)."""
    r, g, b = rgb.unbind(-3)
    maxc, _ = rgb.max(-3)
    minc, _ = rgb.min(-3)
    delta = maxc - minc
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    h = torch.where(maxc == r, (g - b) / safe, torch.where(maxc == g, (b - r) / safe + 2, (r - g) / safe + 4))
    h = torch.where(delta > 0, (h / 6) % 1.0, torch.zeros_like(h))
    s = torch.where(maxc > 0, delta / torch.where(maxc > 0, maxc, torch.ones_like(maxc)), torch.zeros_like(maxc))
    return torch.stack([h, s, maxc], -3)


def _hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    h, s, v = hsv.unbind(-3)
    i = torch.floor(h * 6)
    f = h * 6 - i
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    i = i.long() % 6
    r = torch.stack([v, q, p, p, t, v], -3).gather(-3, i.unsqueeze(-3)).squeeze(-3)
    g = torch.stack([t, v, v, q, p, p], -3).gather(-3, i.unsqueeze(-3)).squeeze(-3)
    b = torch.stack([p, p, t, v, v, q], -3).gather(-3, i.unsqueeze(-3)).squeeze(-3)
    return torch.stack([r, g, b], -3)


class ColorAugment:
    """dmvr ``color_default_augm`` on float ``(T, 3, H, W)`` in [0, 1]: one draw per clip, fixed order.

    With probability ``prob``: brightness ``+U(-32/255, 32/255)``, saturation ``x U(0.6, 1.4)`` (HSV), contrast
    ``x U(0.6, 1.4)`` about each frame's per-channel mean, hue ``+U(-0.2, 0.2)`` turns, clip to [0, 1]; then with
    probability ``drop_prob`` grey (ITU-R 601 weights, as ``tf.image.rgb_to_grayscale``).
    """

    def __init__(self, prob: float = 0.8, drop_prob: float = 0.1) -> None:
        if not (0 <= prob <= 1 and 0 <= drop_prob <= 1):
            raise ValueError(f"prob and drop_prob must be in [0, 1], found {prob}, {drop_prob}")
        self.prob, self.drop_prob = prob, drop_prob

    def __call__(self, video: torch.Tensor) -> torch.Tensor:
        if torch.rand(()).item() < self.prob:
            brightness, saturation, contrast, hue = torch.rand(4).tolist()
            x = video + (brightness * 2 - 1) * 32 / 255
            hsv = _rgb_to_hsv(x.clamp(0, 1))  # clipped so HSV stays defined; TF clips only at the end
            hsv[..., 1, :, :] = (hsv[..., 1, :, :] * (0.6 + 0.8 * saturation)).clamp(0, 1)
            x = _hsv_to_rgb(hsv)
            mean = x.mean(dim=(-2, -1), keepdim=True)
            x = (x - mean) * (0.6 + 0.8 * contrast) + mean
            hsv = _rgb_to_hsv(x.clamp(0, 1))
            hsv[..., 0, :, :] = (hsv[..., 0, :, :] + (hue * 2 - 1) * 0.2) % 1.0
            video = _hsv_to_rgb(hsv).clamp(0, 1)
        if torch.rand(()).item() < self.drop_prob:
            weights = torch.tensor([0.2989, 0.5870, 0.1140], dtype=video.dtype, device=video.device)
            grey = (video * weights.view(3, 1, 1)).sum(-3, keepdim=True)
            video = grey.expand_as(video).clone()
        return video

    def __repr__(self) -> str:
        return f"{type(self).__name__}(prob={self.prob}, drop_prob={self.drop_prob})"


class VideoRandAugment:
    """scenic ``video_ops.distort_image_with_randaugment`` on uint8 ``(T, 3, H, W)``.

    The clip is laid out as one tall image so every op sees (and changes) all frames alike; only ops that do not move
    pixels are used, plus a cutout at the same place in every frame. Each of ``num_layers`` rounds picks one of the 11
    ops or, with probability 1/12, none; magnitudes follow tf-models ``augment.level_to_arg`` (max level 10, so the
    reference's 15 and 20 go beyond it). Pixel rounding may differ from TensorFlow's by one level.
    """

    OPS = ("AutoContrast", "Equalize", "Invert", "Posterize", "Solarize", "Color", "Contrast", "Brightness",
           "Sharpness", "Cutout", "SolarizeAdd")
    MAX_LEVEL = 10.0

    def __init__(self, num_layers: int = 2, magnitude: float = 15, cutout_const: int = 40) -> None:
        self.num_layers, self.magnitude, self.cutout_const = num_layers, magnitude, cutout_const

    def __call__(self, video: torch.Tensor) -> torch.Tensor:
        if video.dtype != torch.uint8 or video.ndim != 4:
            raise ValueError(f"VideoRandAugment expects uint8 (T, C, H, W), found {video.dtype} {tuple(video.shape)}")
        t, c, h, w = video.shape
        image = video.permute(1, 0, 2, 3).reshape(c, t * h, w)
        for _ in range(self.num_layers):
            op = int(torch.randint(len(self.OPS) + 1, ()))  # the extra index is tf.switch_case's identity default
            if op < len(self.OPS):
                image = self._apply(self.OPS[op], image, t)
        return image.reshape(c, t, h, w).permute(1, 0, 2, 3).contiguous()

    def _apply(self, name: str, image: torch.Tensor, num_frames: int) -> torch.Tensor:
        from torchvision.transforms.v2 import functional as TF

        level = self.magnitude / self.MAX_LEVEL
        factor = level * 1.8 + 0.1
        if name == "AutoContrast":
            return TF.autocontrast(image)
        if name == "Equalize":
            return TF.equalize(image)
        if name == "Invert":
            return TF.invert(image)
        if name == "Posterize":
            return TF.posterize(image, min(int(level * 4), 8))
        if name == "Solarize":
            threshold = int(level * 256)
            return image if threshold > 255 else TF.solarize(image, threshold)  # above 255 nothing inverts
        if name == "Color":
            return TF.adjust_saturation(image, factor)
        if name == "Contrast":
            return TF.adjust_contrast(image, factor)
        if name == "Brightness":
            return TF.adjust_brightness(image, factor)
        if name == "Sharpness":
            return TF.adjust_sharpness(image, factor)
        if name == "SolarizeAdd":
            added = (image.int() + int(level * 110)).clamp(0, 255).to(torch.uint8)
            return torch.where(image < 128, added, image)
        # Cutout: scenic passes (pad_size, num_frames) only, so the box is filled with the default 0
        pad = int(level * self.cutout_const)
        c, th, w = image.shape
        h = th // num_frames
        cy, cx = int(torch.randint(h, ())), int(torch.randint(w, ()))
        frames = image.reshape(c, num_frames, h, w).clone()
        frames[..., max(cy - pad, 0) : cy + pad, max(cx - pad, 0) : cx + pad] = 0
        return frames.reshape(c, th, w)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(num_layers={self.num_layers}, magnitude={self.magnitude})"


class TrainTransform:
    """uint8 ``(T, H, W, C)`` -> float ``(C, T, h, w)`` with the reference's training augmentation.

    Order as in the dmvr graph: resize short side, scale jitter (or random resized crop), random crop, flip,
    RandAugment (uint8), colour augmentation (on [0, 1]), normalisation.
    """

    def __init__(self, steps: list[Any], mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        from torchvision.transforms import v2

        self.uint8_steps = v2.Compose(steps[0])
        self.float_steps = steps[1]
        self.mean, self.std = mean, std

    def __call__(self, video: torch.Tensor) -> torch.Tensor:
        from torchvision import tv_tensors

        _check_frames(video, len(self.mean))
        x = self.uint8_steps(tv_tensors.Video(video.permute(0, 3, 1, 2)))  # (T, C, H, W): torchvision's video layout
        x = x.as_subclass(torch.Tensor).float() / 255.0
        for step in self.float_steps:
            x = step(x)
        return normalize(x.permute(1, 0, 2, 3) * 255.0, self.mean, self.std)

    def __repr__(self) -> str:
        inner = ", ".join(repr(s) for s in [*self.uint8_steps.transforms, *self.float_steps])
        return f"{type(self).__name__}([{inner}], mean={self.mean}, std={self.std})"


def train_transform(model_or_cfg: Any = None, recipe: str = "kinetics", *,
                    scale_jitter: tuple[float, float] | bool | None = None, scale_jitter_prob: float | None = None,
                    random_resized_crop: tuple[float, float] | None = None, flip: bool | None = None,
                    color_augment: float | None = None, color_drop: float | None = None,
                    rand_augment: tuple[int, float] | bool | None = None) -> TrainTransform:
    """The reference's training augmentation for one clip (frame sampling is ``clip_indices(mode="random")``).

    Args:
        model_or_cfg: Model or cfg giving crop size, ``crop_pct`` (short side ``floor(crop / crop_pct)``), mean/std;
            ``None`` uses the registry defaults (224 crops from 256).
        recipe: A key of ``TRAIN_RECIPES`` (``"kinetics"``, ``"epic_kitchens"``, ``"ssv2"``); the arguments
            below override it; ``None`` keeps the recipe's value, ``False`` turns a step off.
        scale_jitter: ``(min, max)`` factors for height and width.
        scale_jitter_prob: Probability of jittering.
        random_resized_crop: ``(min_area, max_area)``: crop a random area (aspect 0.5-2) and resize it to the crop
            size with bicubic filtering, instead of resize + jitter + random crop (scenic ``crop_resize``).
        flip: Random horizontal flip (turn off for direction-dependent labels).
        color_augment: Probability of colour augmentation (0 to skip).
        color_drop: Probability of turning the clip grey.
        rand_augment: ``(num_layers, magnitude)``.
    """
    try:
        from torchvision.transforms import v2
    except ImportError as err:
        raise ImportError("training transforms need torchvision: pip install torchvision") from err
    if recipe not in TRAIN_RECIPES:
        raise ValueError(f"recipe must be one of {sorted(TRAIN_RECIPES)}, found {recipe!r}")
    r = TRAIN_RECIPES[recipe]
    jitter = r["scale_jitter"] if scale_jitter is None or scale_jitter is True else scale_jitter or None
    rand_aug = r["rand_augment"] if rand_augment is None or rand_augment is True else rand_augment or None
    cfg = resolve_data_config(model_or_cfg if model_or_cfg is not None else {})
    crop = cfg["input_size"][2:]
    uint8_steps: list[Any] = []
    if random_resized_crop is not None:
        aspect = crop[1] / crop[0]
        uint8_steps.append(v2.RandomResizedCrop(crop, scale=random_resized_crop, ratio=(0.5 * aspect, 2.0 * aspect),
                                                interpolation=v2.InterpolationMode.BICUBIC, antialias=False))
    else:
        short = resize_size(crop, cfg["crop_pct"])
        uint8_steps.append(_ResizeShortSide(short, cfg["interpolation"]))
        if jitter is not None:
            prob = r["scale_jitter_prob"] if scale_jitter_prob is None else scale_jitter_prob
            uint8_steps.append(ScaleJitter(tuple(jitter), prob))
        uint8_steps.append(v2.RandomCrop(crop, pad_if_needed=True))
    if r["flip"] if flip is None else flip:
        uint8_steps.append(v2.RandomHorizontalFlip())
    if rand_aug is not None:
        uint8_steps.append(VideoRandAugment(int(rand_aug[0]), float(rand_aug[1])))
    float_steps: list[Any] = []
    color = r["color_augment"] if color_augment is None else color_augment
    drop = r["color_drop"] if color_drop is None else color_drop
    if color > 0 or drop > 0:
        float_steps.append(ColorAugment(color, drop))
    return TrainTransform([uint8_steps, float_steps], cfg["mean"], cfg["std"])


class _ResizeShortSide:
    def __init__(self, size: int, interpolation: str) -> None:
        self.size, self.interpolation = size, interpolation

    def __call__(self, video: torch.Tensor) -> torch.Tensor:
        return resize_short_side(video.as_subclass(torch.Tensor), self.size, self.interpolation)

    def __repr__(self) -> str:
        return f"ResizeShortSide({self.size}, {self.interpolation!r})"


def mixup(videos: torch.Tensor, labels: torch.Tensor, alpha: float = 0.1, *,
          num_classes: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """scenic ``dataset_utils.mixup``: blend the batch with itself reversed, one Beta(alpha, alpha) weight per batch.

    Args:
        videos: ``(B, ...)`` float batch.
        labels: ``(B,)`` class indices (then ``num_classes`` is needed) or ``(B, K)`` one-hot / soft targets.
        alpha: Beta parameter (reference: 0.1 Epic Kitchens, 0.3 SSv2).
        num_classes: Number of classes for index labels.

    Returns:
        ``(mixed videos, mixed float targets (B, K))``.
    """
    if alpha <= 0:
        raise ValueError(f"alpha must be > 0, found {alpha}")
    if labels.ndim == 1:
        if num_classes is None:
            raise ValueError("labels are class indices: pass num_classes to make one-hot targets")
        labels = F.one_hot(labels.long(), num_classes)
    if labels.ndim != 2 or labels.shape[0] != videos.shape[0]:
        raise ValueError(f"expected labels (B,) or (B, K) with B = {videos.shape[0]}, found {tuple(labels.shape)}")
    labels = labels.to(videos.dtype if videos.is_floating_point() else torch.float32)
    weight = float(torch.distributions.Beta(alpha, alpha).sample())
    return weight * videos + (1 - weight) * videos.flip(0), weight * labels + (1 - weight) * labels.flip(0)


__all__ = ["DATA_KEYS", "TRAIN_RECIPES", "ColorAugment", "EvalTransform", "ScaleJitter", "TrainTransform",
           "VideoRandAugment", "center_crop", "eval_transform", "mixup", "normalize", "resize", "resize_short_side",
           "resize_size", "resolve_data_config", "short_side_size", "three_crops", "to_float", "train_transform"]
