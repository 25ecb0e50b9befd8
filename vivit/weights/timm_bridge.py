"""timm bridge: registers every architecture and pretrained tag into timm's registry, translates our configs into
timm's ``pretrained_cfg`` fields and wraps models for ``features_only``.

After ``import vivit``, ``timm.create_model("vivit_b_16x2_fe")`` goes through vivit's one builder
(:func:`vivit.weights.build.build`), as :func:`vivit.create_model` does. timm itself is
imported inside the functions: vivit works without it.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

from vivit.model.vivit import ViViT
from vivit.weights.build import build
from vivit.weights.load import Weights, load_pretrained, load_weights_into, saved_source
from vivit.weights.source import HUB_PREFIXES, parse_source
from vivit.zoo import ARCHS, GENERIC_ARCH, PRETRAINED, PretrainedCfg, arch_defaults, tagged_name

default_cfgs: dict[str, Any] = {}  # timm's register_model reads this module attribute
_FEATURE_KWARGS = ("out_indices", "feature_cls", "output_fmt", "norm", "prune", "flatten_sequential", "out_map",
                   "return_dict")
# pretrained_cfg_overlay keys that name a weights source, in timm's order of priority (_resolve_pretrained_source)
_OVERLAY_SOURCES = ("state_dict", "file", "hf_hub_id", "url")


def _timm_cfg(cfg: PretrainedCfg) -> dict[str, Any]:
    """Our cfg in timm's ``PretrainedCfg`` fields (timm drops nothing it knows; it refuses unknown fields).

    ``fixed_input_size`` is true because a registered architecture refuses other sizes unless it is created with
    ``dynamic_input_size=True`` (the model's own ``pretrained_cfg`` then says false); ``pool_size`` is ``None``: the
    features are tokens, not a 2-D map. ``custom_load`` is false: timm never reads these weights itself, the
    entrypoint loads them with vivit's readers (which convert the reference's and transformers' layouts).
    """
    return dict(url=cfg.url or "", hf_hub_id=cfg.hf_hub_id, file=cfg.file, num_classes=cfg.num_classes,
                input_size=cfg.input_size, fixed_input_size=True, pool_size=None, custom_load=False,
                mean=cfg.mean, std=cfg.std, crop_pct=cfg.crop_pct, crop_mode=cfg.crop_mode,
                interpolation=cfg.interpolation, license=cfg.license, paper_ids=cfg.paper_ids,
                paper_name=cfg.paper_name, origin_url=cfg.origin_url, first_conv=cfg.first_conv,
                classifier=cfg.classifier, notes=cfg.notes or None)


def _features_only(model: ViViT, out_indices: int | list[int] | tuple[int, ...] | None = None,
                   feature_cls: str = "getter", **feature_kwargs: Any) -> Any:
    """Wrap ``model`` in timm's feature extractor, as timm wraps its ViTs.

    ``feature_cls="getter"`` (default): ``FeatureGetterNet`` over ``forward_intermediates``, giving the chosen blocks'
    ``B x D x T' x H' x W'`` maps. ``"fx"`` (``FeatureGraphNet``, torch.fx) and ``"hook"`` (``FeatureHookNet``) give
    the blocks' raw outputs, as for timm's ViTs: tokens ``B x [1+]N x D`` (Models 3 and 4: ``B x T' x H'W' x D``).
    ``out_indices`` defaults to the last three blocks, as timm's ViT (fewer if the model has fewer).
    """
    from timm.models._builder import pretrained_cfg_for_features
    from timm.models._features import FeatureGetterNet, FeatureHookNet
    from timm.models._features_fx import FeatureGraphNet

    classes = {"getter": FeatureGetterNet, "fx": FeatureGraphNet, "hook": FeatureHookNet}
    if feature_cls not in classes:
        raise ValueError(f"vivit models support feature_cls 'getter' (forward_intermediates maps), 'fx' or 'hook' "
                         f"(raw block outputs), got {feature_cls!r}")
    if out_indices is None:
        out_indices = min(3, len(model.feature_info))
    if feature_cls == "getter":
        output_fmt = feature_kwargs.pop("output_fmt", "NCTHW")
        features = FeatureGetterNet(model, out_indices=out_indices, **feature_kwargs)
        features.output_fmt = output_fmt  # timm's Format enum knows only 2-D layouts; forward passes this through
    else:
        if isinstance(out_indices, int):  # the graph and hook nets take explicit indices
            out_indices = list(range(len(model.feature_info) - out_indices, len(model.feature_info)))
        features = classes[feature_cls](model, out_indices=out_indices, **feature_kwargs)
    features.pretrained_cfg = features.default_cfg = pretrained_cfg_for_features(model.pretrained_cfg)
    return features


def _refuse_scriptable() -> None:
    from timm.layers import is_scriptable

    if is_scriptable():
        raise RuntimeError("vivit models are not TorchScript-scriptable (scriptable=True): einops patterns and "
                           "torch.fx-wrapped helpers are outside TorchScript. Use torch.compile, torch.export or "
                           "torch.fx (feature_cls='fx') instead")


def _overlay_source(overlay: dict[str, Any]) -> tuple[str, Any] | None:
    """The weights source a ``pretrained_cfg_overlay`` names, if any: exactly that source is loaded."""
    for key in _OVERLAY_SOURCES:
        if overlay.get(key):
            return key, overlay[key]
    return None


def _load_overlay_source(model: ViViT, key: str, value: Any) -> None:
    if key == "state_dict":
        load_weights_into(model, Weights(dict(value)))
        return
    if key == "file" and not Path(value).exists():
        raise FileNotFoundError(f"pretrained_cfg_overlay file {str(value)!r} does not exist; no weights were "
                                "loaded (pass an existing weights file or folder)")
    if key == "hf_hub_id" and not str(value).startswith(HUB_PREFIXES):
        value = f"hf-hub:{value}"
    load_pretrained(model, parse_source(str(value)))


def _timm_entrypoint(arch: str):
    def entrypoint(pretrained: bool = False, pretrained_cfg: Any = None, pretrained_cfg_overlay: Any = None,
                   features_only: bool = False, **kwargs: Any) -> Any:
        kwargs.pop("pretrained_model_args", None)
        kwargs.pop("cache_dir", None)
        device, dtype = kwargs.pop("device", None), kwargs.pop("dtype", None)
        feature_kwargs = dict(kwargs.pop("feature_cfg", None) or {})
        feature_kwargs.update({k: kwargs.pop(k) for k in _FEATURE_KWARGS if features_only and k in kwargs})
        _refuse_scriptable()
        overlay = dict(pretrained_cfg_overlay or {})
        name, source = arch, None  # source: the weights a saved config names
        if isinstance(pretrained_cfg, str):  # timm passes the tag of "arch.tag"
            name = tagged_name(arch, pretrained_cfg)
        elif pretrained_cfg is not None:
            cfg = pretrained_cfg if isinstance(pretrained_cfg, dict) else pretrained_cfg.to_dict()
            saved = saved_source(cfg)  # timm.create_model("hf-hub:org/repo") read our config.json
            source = parse_source(saved) if saved else None
            if source is None and cfg.get("tag"):
                name = tagged_name(arch, cfg["tag"])
        named = _overlay_source(overlay)
        if arch == GENERIC_ARCH and pretrained and source is None and named is None:
            raise ValueError("the generic 'vivit' architecture has no weights of its own; name a source")
        # timm passes device/dtype to every model (factory kwargs): build under the device, then cast.
        with torch.device(device) if device is not None else nullcontext():
            # registry weights load here unless the overlay or a saved config names another source; the generic
            # arch (a saved custom configuration) is built from config.json's model_args, which are the kwargs
            model = build(parse_source(name), pretrained and source is None and named is None,
                          cfg_overlay={k: v for k, v in overlay.items() if k != "state_dict"}, **kwargs)
        if pretrained and named is not None:
            _load_overlay_source(model, *named)
        elif pretrained and source is not None:
            load_pretrained(model, source)
        if dtype is not None:
            model.to(dtype=dtype)
        return _features_only(model, **feature_kwargs) if features_only else model

    entrypoint.__name__ = entrypoint.__qualname__ = arch
    entrypoint.__module__ = __name__
    entrypoint.__doc__ = f"timm entrypoint of vivit's {arch} (vivit.weights.build.build does the work)."
    return entrypoint


def register_timm_models(archs: Iterable[str] | None = None) -> bool:
    """Register architectures (default: all of ``ARCHS``, their pretrained tags and the generic ``vivit``) into timm's
    registry (timm is a core dependency); returns ``True``.

    Args:
        archs: Only these names of ``ARCHS`` (e.g. test architectures added to ``ARCHS`` after import).
    """
    from timm.models import generate_default_cfgs, register_model

    names = (*ARCHS, GENERIC_ARCH) if archs is None else tuple(archs)
    cfgs = {cfg.name if cfg.tag else cfg.architecture: _timm_cfg(cfg) for cfg in PRETRAINED.values()
            if cfg.architecture in names}
    for arch in names:  # the generic arch too, so timm.data.resolve_data_config sees a video size
        if not any(cfg.architecture == arch for cfg in PRETRAINED.values()):
            cfgs[arch] = _timm_cfg(arch_defaults(arch))
    default_cfgs.update(generate_default_cfgs(cfgs))
    for arch in names:
        register_model(_timm_entrypoint(arch))
    return True
