"""``create_model`` and :func:`build`, the one builder: a parsed source (zoo tag or architecture, ``hf-hub:``,
``local-dir:``, a folder) -> model arguments and a weights source -> a ``ViViT``, with its weights loaded when asked."""

from __future__ import annotations

import difflib
import inspect
import os
from pathlib import Path
from typing import Any

from vivit.model.vivit import ViViT
from vivit.weights.load import create_from_folder, create_from_hub, fetch_release, fetch_weights, load_weights_into
from vivit.weights.source import Source, parse_source
from vivit.zoo import ARCHS, GENERIC_ARCH, PRETRAINED, arch_defaults, list_models, resolve_name

_VIVIT_KWARGS = frozenset(inspect.signature(ViViT.__init__).parameters) - {"self"}


def _check_kwargs(kwargs: dict[str, Any]) -> None:
    """A misspelt keyword (``num_frame=8``) names the argument it was probably meant to be."""
    for key in kwargs:
        if key not in _VIVIT_KWARGS:
            close = difflib.get_close_matches(key, sorted(_VIVIT_KWARGS), n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else f"; ViViT takes {', '.join(sorted(_VIVIT_KWARGS))}"
            raise TypeError(f"create_model() got an unexpected keyword argument {key!r}{hint}")


def _from_path(source: Source, pretrained: bool, overrides: dict[str, Any]) -> ViViT:
    """``create_model("my_saved_dir")``: a folder is loaded as ``local-dir:``; anything else says what to write."""
    name = source.text
    path = Path(name).expanduser()
    if path.is_dir():
        return create_from_folder(path, pretrained=pretrained, **overrides)
    if path.is_file():
        raise ValueError(f"{name!r} is a weights file, not a model name: name the architecture it belongs to, "
                         f"e.g. vivit.create_model('vivit_b_16x2', pretrained={name!r})")
    hub = f" For a Hugging Face Hub repo write 'hf-hub:{name}'." if name.count("/") == 1 else ""
    raise FileNotFoundError(f"{name!r} is neither a registered model nor an existing folder.{hub} See "
                            "vivit.list_models() for registered names.")


def _with_weights_from(arch: str, source: Source, args: dict[str, Any], num_classes: int | None,
                       force_download: bool = False, allow_non_finite: bool = False) -> ViViT:
    """``create_model(arch, pretrained=SOURCE)``: the architecture, filled from any source ``load_pretrained`` takes.

    The head takes the size of the weights' head unless ``num_classes`` is given (then only the head is reset).
    """
    cfg = PRETRAINED[source.name] if source.kind == "tag" else arch_defaults(arch)
    model = ViViT(**{**args, "num_classes": num_classes if num_classes is not None else cfg.num_classes})
    weights = fetch_weights(source, model, force_download=force_download)
    source_head = weights.state.get("head.weight")
    if num_classes is None and source_head is not None and source_head.shape[0] != model.num_classes:
        model.reset_classifier(source_head.shape[0])
    model.pretrained_cfg = {**cfg.to_dict(), "num_classes": model.num_classes, **model.input_cfg()}
    if source.kind != "tag":  # say where the weights came from, not where the arch's released ones live
        where = dict(hf_hub_id=None, url=None, file=None)
        if source.kind == "hub":
            where.update(source="hf-hub", hf_hub_id=source.text.split(":", 1)[1])
        elif source.kind == "url":
            where.update(source="url", url=source.url)
        else:
            where.update(source="local-dir", file=source.text)
        model.pretrained_cfg.update(where, tag="", label_set=None, top1=None, eval_views=None)
    return load_weights_into(model, weights, allow_non_finite=allow_non_finite)


def _from_zoo(name: str, overrides: dict[str, Any], pretrained: bool, force_download: bool,
              allow_non_finite: bool) -> ViViT:
    """A zoo name (``arch`` or ``arch.tag``), with the release's weights when ``pretrained``."""
    if name == GENERIC_ARCH:  # timm's name for a saved custom configuration: the keywords are the architecture
        if pretrained:
            raise ValueError(f"the generic {GENERIC_ARCH!r} architecture has no weights of its own; name a source "
                             "(pretrained='hf-hub:org/repo', a file or a folder) or a released architecture")
        model = ViViT(**overrides)
        model.pretrained_cfg = {**arch_defaults(name).to_dict(), **model.input_cfg()}
        return model
    arch, cfg = resolve_name(name)
    model = ViViT(**{**ARCHS[arch], "num_classes": cfg.num_classes, **overrides})
    model.pretrained_cfg = {**cfg.to_dict(), **model.input_cfg()}
    if pretrained:
        if not cfg.has_weights:
            released = [n for n in list_models(pretrained=True) if n.startswith(arch + ".")]
            raise ValueError(
                f"{name!r} has no released weights"
                + (f"; released tags: {', '.join(released)}" if released else "")
                + ". Load your own with vivit.load_pretrained(model, path) or inflate an image ViT with vivit.inflate."
            )
        weights = fetch_release(cfg, model, force_download=force_download)  # the cfg itself: no name round trip
        load_weights_into(model, weights, allow_non_finite=allow_non_finite)
    return model


def build(
    source: Source,
    weights: bool | Source = False,
    *,
    num_classes: int | None = None,
    num_frames: int | None = None,
    img_size: int | tuple[int, int] | None = None,
    force_download: bool = False,
    allow_non_finite: bool = False,
    **kwargs: Any,
) -> ViViT:
    """The one builder: a parsed ``source`` (what to build) and ``weights`` (``True``: the source's own; a parsed
    ``Source``: those weights into the named architecture). ``create_model``, ``ViViT.from_pretrained``, the timm
    entry points and the CLI all build here; the keywords are ``create_model``'s.
    """
    _check_kwargs(kwargs)
    overrides = {k: v for k, v in dict(num_classes=num_classes, num_frames=num_frames, img_size=img_size).items()
                 if v is not None}
    if isinstance(weights, Source) and source.kind not in ("tag", "name"):
        raise ValueError(f"{source.text!r} brings its own weights: use pretrained=True, or name an architecture to "
                         f"load {weights.text!r} into")
    trust = dict(allow_non_finite=allow_non_finite)
    if source.kind == "hub":
        return create_from_hub(source, pretrained=weights is True, force_download=force_download, **trust,
                               **overrides, **kwargs)
    if source.kind == "local-dir":
        return create_from_folder(source.path, pretrained=weights is True, **trust, **overrides, **kwargs)
    if source.kind in ("folder", "file", "missing", "url"):
        return _from_path(source, weights is True, {**trust, **overrides, **kwargs})
    if isinstance(weights, Source):
        arch, _ = resolve_name(source.text)
        args = {**ARCHS[arch], **overrides, **kwargs}
        return _with_weights_from(arch, weights, args, args.pop("num_classes", None), force_download,
                                  allow_non_finite)
    return _from_zoo(source.text, {**overrides, **kwargs}, bool(weights), force_download, allow_non_finite)


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
