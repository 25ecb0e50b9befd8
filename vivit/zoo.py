"""The model zoo as data: architectures (``ARCHS``), pretrained configs (``PRETRAINED``), name resolution.

Everything else that lists models (the factory, timm registration, the docs table, model cards) reads these two dicts.
This module imports nothing else of vivit: it is the bottom of the weights path.
"""

from __future__ import annotations

import difflib
import fnmatch
from dataclasses import asdict, dataclass, field
from typing import Any

PAPER_ID = "arXiv:2103.15691"
REFERENCE_URL = "https://storage.googleapis.com/scenic-bucket/vivit"
# The reference scales RGB to [-1, 1] (x * 2 / 255 - 1), i.e. mean = std = 0.5 on [0, 1] inputs.
REFERENCE_MEAN = (0.5, 0.5, 0.5)
REFERENCE_STD = (0.5, 0.5, 0.5)

# size -> embed_dim, depth, num_heads, mlp_dim, FE temporal depth (SPEC 1.0)
_SIZES = {
    "ti": (192, 12, 3, 768, 4),
    "s": (384, 12, 6, 1536, 4),
    "b": (768, 12, 12, 3072, 4),
    "l": (1024, 24, 16, 4096, 24),
    "h": (1280, 32, 16, 5120, 4),
}
_VARIANT_SUFFIX = {
    "": "spacetime",
    "_fe": "factorized_encoder",
    "_fsa": "factorized_self_attention",
    "_fdp": "factorized_dot_product",
}


def _arch_args(size: str, variant: str) -> dict[str, Any]:
    dim, depth, heads, mlp, temporal_depth = _SIZES[size]
    args = dict(variant=variant, img_size=224, num_frames=32, tubelet_size=(2, 16, 16), embed_dim=dim, depth=depth,
                num_heads=heads, mlp_dim=mlp)
    if variant == "factorized_encoder":
        args["temporal_depth"] = temporal_depth
    return args


ARCHS: dict[str, dict[str, Any]] = {
    f"vivit_{size}_16x2{suffix}": _arch_args(size, variant)
    for size in _SIZES
    for suffix, variant in _VARIANT_SUFFIX.items()
    if not (variant == "factorized_dot_product" and _SIZES[size][2] % 2)  # Model 4 splits heads in halves
}
# Not a paper model: a small FE trained here on vivit.data.synthetic clips (scripts/train_motion.py); its weights ship
# inside the package so the first minute works offline.
ARCHS["vivit_motion"] = dict(variant="factorized_encoder", img_size=32, num_frames=16, tubelet_size=(4, 8, 8),
                             embed_dim=128, depth=2, num_heads=4, mlp_dim=256, temporal_depth=2, global_pool="avg")


def tagged_name(architecture: str | None, tag: str | None) -> str | None:
    """``arch.tag``, or just ``arch`` when there is no tag (timm's name for a pretrained config)."""
    return f"{architecture}.{tag}" if architecture and tag else architecture


@dataclass(frozen=True)
class PretrainedCfg:
    """Where a set of weights lives and how its inputs must look (timm ``pretrained_cfg`` fields plus provenance)."""

    architecture: str
    tag: str = ""
    hf_hub_id: str | None = None
    url: str | None = None
    file: str | None = None  # package-relative path of weights shipped with vivit
    sha256: str | None = None  # the release's digest of the weights file, where it is known (checked when fetched)
    source_format: str | None = None  # "transformers", "scenic", "vivit"
    num_classes: int = 400
    input_size: tuple[int, int, int, int] = (3, 32, 224, 224)  # C, T, H, W
    frame_stride: int = 2
    mean: tuple[float, float, float] = REFERENCE_MEAN
    std: tuple[float, float, float] = REFERENCE_STD
    crop_pct: float = 224 / 256
    crop_mode: str = "center"
    interpolation: str = "bilinear"
    label_set: str | None = "kinetics400"
    class_splits: tuple[int, ...] | None = None
    top1: float | None = None
    eval_views: str | None = None
    license: str = "apache-2.0"
    paper_ids: str = PAPER_ID
    paper_name: str = "ViViT: A Video Vision Transformer"
    origin_url: str = "https://github.com/google-research/scenic/tree/main/scenic/projects/vivit"
    notes: tuple[str, ...] = field(default_factory=tuple)
    first_conv: str = "patch_embed.proj"
    classifier: str = "head"

    @property
    def name(self) -> str:
        """``arch.tag`` (just ``arch`` for the untagged default)."""
        return tagged_name(self.architecture, self.tag)

    @property
    def has_weights(self) -> bool:
        """Whether a download location is known."""
        return bool(self.hf_hub_id or self.url or self.file)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (what ``model.pretrained_cfg`` holds)."""
        return asdict(self)


def _released(arch: str, tag: str, **kwargs: Any) -> PretrainedCfg:
    return PretrainedCfg(architecture=arch, tag=tag, **kwargs)


# SPEC 3.2: the released checkpoints and where they really are.
PRETRAINED: dict[str, PretrainedCfg] = {
    cfg.name: cfg
    for cfg in (
        _released("vivit_b_16x2", "k400", hf_hub_id="google/vivit-b-16x2-kinetics400", source_format="transformers",
                  top1=79.9, eval_views="4x3"),
        _released("vivit_b_16x2_fe", "k400", url=f"{REFERENCE_URL}/kinetics_400/vivit_base_16x2_fe/checkpoint",
                  source_format="scenic", top1=78.4, eval_views="4x3"),
        _released("vivit_l_16x2_fe", "k400", url=f"{REFERENCE_URL}/kinetics_400/vivit_large_16x2_fe/checkpoint",
                  source_format="scenic", top1=80.3, eval_views="4x3"),
        _released("vivit_l_16x2_fe", "k600", url=f"{REFERENCE_URL}/kinetics_600/vivit_large_16x2_fe/checkpoint",
                  source_format="scenic", num_classes=600, label_set="kinetics600", top1=81.6, eval_views="4x3"),
        _released("vivit_l_16x2_fe", "ek100", url=f"{REFERENCE_URL}/epic_kitchens/vivit_large_16x2_fe/checkpoint",
                  source_format="scenic", num_classes=397, label_set="epic_kitchens100", class_splits=(300, 97),
                  # scenic configs/epic_kitchens/vivit_large_factorised_encoder.py: dataset_configs.stride = 1
                  frame_stride=1, top1=43.6, eval_views="4x1",
                  notes=("logits 0-299 are nouns, 300-396 verbs (scenic class_splits [300, 97])",)),
        _released("vivit_motion", "synthetic", file="assets/vivit_motion.safetensors", source_format="vivit",
                  sha256="947a53d593e220417f7d650117068adec9adaeb5bae07618b04cb91cc259ef38",
                  num_classes=10, input_size=(3, 16, 32, 32), frame_stride=1, crop_pct=1.0, label_set="motion",
                  top1=99.6, eval_views="1x1", paper_name="vivit_motion (not in the paper)",
                  origin_url="scripts/train_motion.py",
                  notes=("trained on vivit.data.synthetic clips; a single-frame baseline reaches 10.75% "
                         "(chance 10%)",)),
    )
}


def arch_defaults(arch: str) -> PretrainedCfg:
    """The untagged cfg every architecture has: its input size (from ``ARCHS``) and preprocessing, no weights."""
    args = ARCHS.get(arch)
    if args is None:  # the generic "vivit" of saved custom models: the paper's input
        return PretrainedCfg(architecture=arch)
    # an int or (H, W): the model's grid.pair, written out here because the zoo imports nothing of vivit
    img = args.get("img_size", 224)
    h, w = (img, img) if isinstance(img, int) else img
    return PretrainedCfg(architecture=arch, input_size=(args.get("in_chans", 3), args.get("num_frames", 32), h, w))


def default_pretrained_cfg(arch: str) -> PretrainedCfg:
    """The first released tag of ``arch``, or its weightless defaults."""
    for cfg in PRETRAINED.values():
        if cfg.architecture == arch:
            return cfg
    return arch_defaults(arch)


# Names the naming scheme suggests but that cannot be built, with the reason (the unknown-name error says it).
NOT_REGISTERED: dict[str, str] = {
    f"vivit_{size}_16x2_fdp": (f"Model 4 (factorized dot-product) gives half its heads to time and half to space, so "
                               f"it needs an even head count and ViViT-{size.capitalize()} has {heads}; that size "
                               f"exists as Models 1-3 (vivit_{size}_16x2, vivit_{size}_16x2_fe, vivit_{size}_16x2_fsa)")
    for size, (_, _, heads, _, _) in _SIZES.items() if heads % 2
}


def _unknown(name: str) -> ValueError:
    arch = name.partition(".")[0]
    if arch in NOT_REGISTERED:
        return ValueError(f"{name!r} is not a registered model: {NOT_REGISTERED[arch]}. See vivit.list_models() for "
                          "all names.")
    known = list(ARCHS) + list(PRETRAINED)
    close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
    hint = f" Closest: {', '.join(close)}." if close else ""
    return ValueError(f"unknown model {name!r}.{hint} See vivit.list_models() for all names.")


def resolve_name(name: str) -> tuple[str, PretrainedCfg]:
    """``"arch"`` or ``"arch.tag"`` -> (arch, pretrained cfg); unknown names raise listing the closest ones."""
    arch, _, tag = name.partition(".")
    if arch not in ARCHS:
        raise _unknown(name)
    if not tag:
        return arch, default_pretrained_cfg(arch)
    if name not in PRETRAINED:
        raise _unknown(name)
    return arch, PRETRAINED[name]


def list_models(filter: str = "", pretrained: bool = False) -> list[str]:
    """Registered architectures matching an ``fnmatch`` pattern; with ``pretrained=True`` the ``arch.tag`` names
    that have released weights."""
    names = [cfg.name for cfg in PRETRAINED.values() if cfg.has_weights] if pretrained else list(ARCHS)
    return sorted(n for n in names if not filter or fnmatch.fnmatch(n, filter))


# save_pretrained names a model that is no registered architecture "vivit"; timm rebuilds it from model_args.
GENERIC_ARCH = "vivit"
