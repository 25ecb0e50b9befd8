"""timm bridge: registers every architecture and pretrained tag into timm's registry, translates our configs into
timm's ``pretrained_cfg`` fields and wraps models for ``features_only``.

After ``import vivit``, ``timm.create_model("vivit_b_16x2_fe")`` goes through :func:`vivit.create_model`. timm itself is
imported inside the functions: vivit works without it.
"""

from __future__ import annotations

from typing import Any

from .factory import create_model
from .load import load_pretrained, saved_source
from .model import ViViT
from .zoo import ARCHS, GENERIC_ARCH, PRETRAINED, PretrainedCfg, arch_defaults

default_cfgs: dict[str, Any] = {}  # timm's register_model reads this module attribute


def _timm_cfg(cfg: PretrainedCfg) -> dict[str, Any]:
    """Our cfg in timm's ``PretrainedCfg`` fields (timm drops nothing it knows; it refuses unknown fields)."""
    return dict(url=cfg.url or "", hf_hub_id=cfg.hf_hub_id, file=cfg.file, num_classes=cfg.num_classes,
                input_size=cfg.input_size,
                mean=cfg.mean, std=cfg.std, crop_pct=cfg.crop_pct, crop_mode=cfg.crop_mode,
                interpolation=cfg.interpolation, license=cfg.license, paper_ids=cfg.paper_ids,
                paper_name=cfg.paper_name, origin_url=cfg.origin_url, first_conv=cfg.first_conv,
                classifier=cfg.classifier, notes=cfg.notes or None)


def _features_only(model: ViViT, out_indices: int | list[int] | tuple[int, ...] | None = None,
                   feature_cls: str = "getter", **feature_kwargs: Any) -> Any:
    """Wrap ``model`` in timm's ``FeatureGetterNet``, as timm wraps its ViTs (``feature_cls='getter'``).

    ``out_indices`` defaults to the last three blocks, as timm's ViT (fewer if the model has fewer). Returns a module
    whose forward gives the chosen blocks' ``B x D x T' x H' x W'`` maps.
    """
    from timm.models._builder import pretrained_cfg_for_features
    from timm.models._features import FeatureGetterNet

    if feature_cls != "getter":
        raise ValueError(f"vivit models support feature_cls='getter' (forward_intermediates), got {feature_cls!r}")
    output_fmt = feature_kwargs.pop("output_fmt", "NCTHW")
    if out_indices is None:
        out_indices = min(3, len(model.feature_info))
    features = FeatureGetterNet(model, out_indices=out_indices, **feature_kwargs)
    features.output_fmt = output_fmt  # timm's Format enum knows only 2-D layouts; forward passes this through
    features.pretrained_cfg = features.default_cfg = pretrained_cfg_for_features(model.pretrained_cfg)
    return features


def _timm_entrypoint(arch: str):
    def entrypoint(pretrained: bool = False, pretrained_cfg: Any = None, pretrained_cfg_overlay: Any = None,
                   features_only: bool = False, **kwargs: Any) -> Any:
        kwargs.pop("pretrained_model_args", None)
        kwargs.pop("cache_dir", None)
        feature_kwargs = {k: kwargs.pop(k) for k in ("out_indices", "feature_cls", "output_fmt", "norm", "prune")
                          if features_only and k in kwargs}
        name, source = arch, None
        if isinstance(pretrained_cfg, str):  # timm passes the tag of "arch.tag"
            name = f"{arch}.{pretrained_cfg}" if pretrained_cfg else arch
        elif pretrained_cfg is not None:
            cfg = pretrained_cfg if isinstance(pretrained_cfg, dict) else pretrained_cfg.to_dict()
            source = saved_source(cfg)  # timm.create_model("hf-hub:org/repo") read our config.json
            if source is None and cfg.get("tag"):
                name = f"{arch}.{cfg['tag']}"
        if arch == GENERIC_ARCH:  # a saved custom configuration: config.json's model_args are the kwargs
            if pretrained and source is None:
                raise ValueError("the generic 'vivit' architecture has no weights of its own; name a source")
            model = ViViT(**kwargs)
        else:
            model = create_model(name, pretrained=pretrained and source is None, **kwargs)
        if pretrained and source is not None:
            load_pretrained(model, source)
        return _features_only(model, **feature_kwargs) if features_only else model

    entrypoint.__name__ = entrypoint.__qualname__ = arch
    entrypoint.__module__ = __name__
    entrypoint.__doc__ = f"timm entrypoint of vivit's {arch} (vivit.create_model does the work)."
    return entrypoint


def register_timm_models() -> bool:
    """Register every architecture and pretrained tag into timm's registry; ``False`` if timm is not installed."""
    try:
        from timm.models import generate_default_cfgs, register_model
    except ImportError:
        return False
    cfgs = {cfg.name if cfg.tag else cfg.architecture: _timm_cfg(cfg) for cfg in PRETRAINED.values()}
    for arch in ARCHS:
        if not any(cfg.architecture == arch for cfg in PRETRAINED.values()):
            cfgs[arch] = _timm_cfg(arch_defaults(arch))
    default_cfgs.clear()
    default_cfgs.update(generate_default_cfgs(cfgs))
    for arch in (*ARCHS, GENERIC_ARCH):
        register_model(_timm_entrypoint(arch))
    return True
