"""``create_model`` and :func:`build`, the one builder: a parsed source (zoo tag or architecture, ``hf-hub:``,
``local-dir:``, a folder) -> what to build (arguments, ``pretrained_cfg`` base, class names) and its weights, read by
the loader -> the model, constructed once (``config.construct``) -> the weights loaded into it."""

from __future__ import annotations

import difflib
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from vivit.model.vivit import ViViT
from vivit.weights.config import VIVIT_ARGS, construct, with_defaults
from vivit.weights.load import (
    ModelSpec,
    fetch_release,
    fetch_weights,
    head_classes,
    load_weights_into,
    read_folder_model,
    read_hub_model,
    source_fields,
)
from vivit.weights.source import Source, parse_source
from vivit.zoo import ARCHS, GENERIC_ARCH, PRETRAINED, arch_defaults, list_models, resolve_name

__all__ = ["build", "create_model", "parse_source"]


def _check_kwargs(kwargs: dict[str, Any]) -> None:
    """A misspelt keyword (``num_frame=8``) names the argument it was probably meant to be."""
    for key in kwargs:
        if key not in VIVIT_ARGS:
            close = difflib.get_close_matches(key, sorted(VIVIT_ARGS), n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else f"; ViViT takes {', '.join(sorted(VIVIT_ARGS))}"
            raise TypeError(f"create_model() got an unexpected keyword argument {key!r}{hint}")


def _saved(spec: ModelSpec, overrides: dict[str, Any]) -> ModelSpec:
    return replace(spec, args={**spec.args, **overrides})


def _path_spec(source: Source, pretrained: bool, overrides: dict[str, Any]) -> ModelSpec:
    """``create_model("my_saved_dir")``: a folder is loaded as ``local-dir:``; anything else says what to write."""
    name = source.text
    path = Path(name).expanduser()
    if path.is_dir():
        return _saved(read_folder_model(source, pretrained), overrides)
    if path.is_file():
        raise ValueError(f"{name!r} is a weights file, not a model name: name the architecture it belongs to, "
                         f"e.g. vivit.create_model('vivit_b_16x2', pretrained={name!r})")
    hub = f" For a Hugging Face Hub repo write 'hf-hub:{name}'." if name.count("/") == 1 else ""
    raise FileNotFoundError(f"{name!r} is neither a registered model nor an existing folder.{hub} See "
                            "vivit.list_models() for registered names.")


def _arch_spec(name: str, source: Source, overrides: dict[str, Any], force_download: bool) -> ModelSpec:
    """``create_model(arch, pretrained=SOURCE)``: the architecture, filled from any source ``load_pretrained`` takes.

    The head takes the size of the weights' head unless ``num_classes`` is given (then only the head is new).
    """
    arch, _ = resolve_name(name)
    args = {**ARCHS[arch], **overrides}
    cfg = PRETRAINED[source.name] if source.kind == "tag" else arch_defaults(arch)
    weights = fetch_weights(source, with_defaults(args), force_download=force_download)
    if args.get("num_classes") is None:
        found = head_classes(weights.state)
        args["num_classes"] = cfg.num_classes if found is None else found
    base = {**cfg.to_dict(), "num_classes": args["num_classes"]}
    if source.kind != "tag":  # say where the weights came from, not where the arch's released ones live
        base.update(source_fields(source), tag="", label_set=None, top1=None, eval_views=None)
    return ModelSpec(args, base, weights=weights)


def _zoo_spec(name: str, overrides: dict[str, Any], pretrained: bool, force_download: bool) -> ModelSpec:
    """A zoo name (``arch`` or ``arch.tag``), with the release's weights when ``pretrained``."""
    if name == GENERIC_ARCH:  # timm's name for a saved custom configuration: the keywords are the architecture
        if pretrained:
            raise ValueError(f"the generic {GENERIC_ARCH!r} architecture has no weights of its own; name a source "
                             "(pretrained='hf-hub:org/repo', a file or a folder) or a released architecture")
        return ModelSpec(dict(overrides), arch_defaults(name).to_dict())
    arch, cfg = resolve_name(name)
    args = {**ARCHS[arch], "num_classes": cfg.num_classes, **overrides}
    if not pretrained:
        return ModelSpec(args, cfg.to_dict())
    if not cfg.has_weights:
        released = [n for n in list_models(pretrained=True) if n.startswith(arch + ".")]
        raise ValueError(
            f"{name!r} has no released weights"
            + (f"; released tags: {', '.join(released)}" if released else "")
            + ". Load your own with vivit.load_pretrained(model, path) or inflate an image ViT with vivit.inflate."
        )
    weights = fetch_release(cfg, with_defaults(args), force_download=force_download)  # the cfg: no name round trip
    return ModelSpec(args, cfg.to_dict(), weights=weights)


def _spec(source: Source, weights: bool | Source, overrides: dict[str, Any], force_download: bool) -> ModelSpec:
    """What ``source`` says to build, its weights read (by the loader) when asked."""
    if isinstance(weights, Source):
        if source.kind not in ("tag", "name"):
            raise ValueError(f"{source.text!r} brings its own weights: use pretrained=True, or name an architecture to "
                             f"load {weights.text!r} into")
        return _arch_spec(source.text, weights, overrides, force_download)
    if source.kind == "hub":
        return _saved(read_hub_model(source, weights, force_download=force_download), overrides)
    if source.kind == "local-dir":
        return _saved(read_folder_model(source, weights), overrides)
    if source.kind in ("folder", "file", "missing", "url"):
        return _path_spec(source, weights, overrides)
    return _zoo_spec(source.text, overrides, weights, force_download)


def build(
    source: Source,
    weights: bool | Source = False,
    *,
    num_classes: int | None = None,
    num_frames: int | None = None,
    img_size: int | tuple[int, int] | None = None,
    force_download: bool = False,
    allow_non_finite: bool = False,
    cfg_overlay: dict[str, Any] | None = None,
    **kwargs: Any,
) -> ViViT:
    """The one builder: a parsed ``source`` (what to build) and ``weights`` (``True``: the source's own; a parsed
    ``Source``: those weights into the named architecture). ``create_model``, ``ViViT.from_pretrained``, the timm
    entry points and the CLI all build here; the keywords are ``create_model``'s, and ``cfg_overlay`` is timm's
    ``pretrained_cfg_overlay`` (its fields win in ``pretrained_cfg``).

    The walk: a ``ModelSpec`` (the loader fetches and reads the weights; the head size is decided here, before the model
    exists) -> ``construct`` (the one ``ViViT(...)`` and ``pretrained_cfg``) -> ``load_weights_into``.
    """
    _check_kwargs(kwargs)
    overrides = {k: v for k, v in dict(num_classes=num_classes, num_frames=num_frames, img_size=img_size).items()
                 if v is not None}
    spec = _spec(source, weights, {**overrides, **kwargs}, force_download)
    model = construct(spec.args, spec.cfg, spec.label_names, cfg_overlay)
    if spec.weights is not None:
        load_weights_into(model, spec.weights, allow_non_finite=allow_non_finite)
    return model


def create_model(
    name: str,
    pretrained: bool | str | os.PathLike[str] = False,
    *,
    num_classes: int | None = None,
    num_frames: int | None = None,
    img_size: int | tuple[int, int] | None = None,
    force_download: bool = False,
    allow_non_finite: bool = False,
    **kwargs: Any,
) -> ViViT:
    """Create a registered ViViT, optionally with weights.

    Args:
        name: ``"vivit_b_16x2_fe"``, ``"vivit_b_16x2_fe.k400"`` (a pretrained tag), ``"hf-hub:org/repo[@rev]"``,
            ``"local-dir:PATH"`` or just ``PATH`` (a ``save_pretrained`` or transformers ViViT folder).
        pretrained: ``True`` loads the tag's weights (the architecture's first released tag when none is named); a
            string loads that source into the named architecture: a tag, ``"hf-hub:org/repo"``, a URL, a weights
            file or a saved folder. The head then takes the weights' size unless ``num_classes`` is given.
        num_classes: New head size; with weights, only the head is left at its (zero) init.
        num_frames: Clip length; positional embeddings of loaded weights are resampled to it.
        img_size: Frame size; positional embeddings are resampled to it.
        force_download: With ``pretrained``, download the weights again even when cached.
        allow_non_finite: With ``pretrained``, accept weights holding NaN or infinite values (refused by default).
        **kwargs: Any other ``ViViT`` keyword (``drop_path_rate``, ``attn_impl``, ``depth`` ...).
    """
    source = parse_source(name)
    if isinstance(pretrained, (str, os.PathLike)):
        weights: bool | Source = parse_source(os.fspath(pretrained))
    else:
        weights = bool(pretrained)
    return build(source, weights, num_classes=num_classes, num_frames=num_frames, img_size=img_size,
                 force_download=force_download, allow_non_finite=allow_non_finite, **kwargs)
