"""``create_model``: a name (zoo tag or architecture, ``hf-hub:``, ``local-dir:``) -> model arguments and a weights
source -> a ``ViViT``, with its weights loaded when asked."""

from __future__ import annotations

import difflib
import inspect
import os
from pathlib import Path
from typing import Any

from vivit.model.vivit import ViViT
from vivit.weights.fetch import HUB_PREFIXES
from vivit.weights.load import create_from_folder, create_from_hub, fetch_weights, load_pretrained, load_weights_into
from vivit.zoo import ARCHS, PRETRAINED, arch_defaults, list_models, resolve_name

_VIVIT_KWARGS = frozenset(inspect.signature(ViViT.__init__).parameters) - {"self"}


def _check_kwargs(kwargs: dict[str, Any]) -> None:
    """A misspelt keyword (``num_frame=8``) names the argument it was probably meant to be."""
    for key in kwargs:
        if key not in _VIVIT_KWARGS:
            close = difflib.get_close_matches(key, sorted(_VIVIT_KWARGS), n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else f"; ViViT takes {', '.join(sorted(_VIVIT_KWARGS))}"
            raise TypeError(f"create_model() got an unexpected keyword argument {key!r}{hint}")


def _path_like(name: str) -> bool:
    return "/" in name or "\\" in name or name.startswith((".", "~")) or Path(name).suffix in (
        ".safetensors", ".pt", ".pth", ".bin", ".npz", ".msgpack")


def _from_path(name: str, pretrained: bool, overrides: dict[str, Any]) -> ViViT:
    """``create_model("my_saved_dir")``: a folder is loaded as ``local-dir:``; anything else says what to write."""
    path = Path(name).expanduser()
    if path.is_dir():
        return create_from_folder(path, pretrained=pretrained, **overrides)
    if path.is_file():
        raise ValueError(f"{name!r} is a weights file, not a model name: name the architecture it belongs to, "
                         f"e.g. vivit.create_model('vivit_b_16x2', pretrained={name!r})")
    hub = f" For a Hugging Face Hub repo write 'hf-hub:{name}'." if name.count("/") == 1 else ""
    raise FileNotFoundError(f"{name!r} is neither a registered model nor an existing folder.{hub} See "
                            "vivit.list_models() for registered names.")


def _with_weights_from(arch: str, source: str, args: dict[str, Any], num_classes: int | None,
                       force_download: bool = False, allow_non_finite: bool = False) -> ViViT:
    """``create_model(arch, pretrained=SOURCE)``: the architecture, filled from any source ``load_pretrained`` takes.

    The head takes the size of the weights' head unless ``num_classes`` is given (then only the head is reset).
    """
    cfg = PRETRAINED[source] if source in PRETRAINED else arch_defaults(arch)
    model = ViViT(**{**args, "num_classes": num_classes if num_classes is not None else cfg.num_classes})
    weights = fetch_weights(source, model, force_download=force_download)
    source_head = weights.state.get("head.weight")
    if num_classes is None and source_head is not None and source_head.shape[0] != model.num_classes:
        model.reset_classifier(source_head.shape[0])
    model.pretrained_cfg = {**cfg.to_dict(), "num_classes": model.num_classes, **model.input_cfg()}
    if source not in PRETRAINED:  # say where the weights came from, not where the arch's released ones live
        where = dict(hf_hub_id=None, url=None, file=None)
        if source.startswith(HUB_PREFIXES):
            where.update(source="hf-hub", hf_hub_id=source.split(":", 1)[1])
        elif source.startswith(("http://", "https://")):
            where.update(source="url", url=source)
        else:
            where.update(source="local-dir", file=source)
        model.pretrained_cfg.update(where, tag="", label_set=None, top1=None, eval_views=None)
    return load_weights_into(model, weights, allow_non_finite=allow_non_finite)


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
    _check_kwargs(kwargs)
    if isinstance(pretrained, os.PathLike):
        pretrained = os.fspath(pretrained)
    overrides = {k: v for k, v in dict(num_classes=num_classes, num_frames=num_frames, img_size=img_size).items()
                 if v is not None}
    a_path = name.partition(".")[0] not in ARCHS and (_path_like(name) or Path(name).exists())
    if isinstance(pretrained, str) and (a_path or name.startswith((*HUB_PREFIXES, "local-dir:"))):
        raise ValueError(f"{name!r} brings its own weights: use pretrained=True, or name an architecture to load "
                         f"{pretrained!r} into")
    trust = dict(allow_non_finite=allow_non_finite)
    if name.startswith(HUB_PREFIXES):
        return create_from_hub(name, pretrained=pretrained, force_download=force_download, **trust, **overrides,
                               **kwargs)
    if name.startswith("local-dir:"):
        return create_from_folder(name[len("local-dir:"):], pretrained=pretrained, **trust, **overrides, **kwargs)
    if a_path:
        return _from_path(name, pretrained is True, {**trust, **overrides, **kwargs})
    arch, cfg = resolve_name(name)
    if isinstance(pretrained, str):
        args = {**ARCHS[arch], **overrides, **kwargs}
        return _with_weights_from(arch, pretrained, args, args.pop("num_classes", None), force_download,
                                  allow_non_finite)
    args = {**ARCHS[arch], "num_classes": cfg.num_classes, **overrides, **kwargs}
    model = ViViT(**args)
    model.pretrained_cfg = {**cfg.to_dict(), **model.input_cfg()}
    if pretrained:
        if not cfg.has_weights:
            released = [n for n in list_models(pretrained=True) if n.startswith(arch + ".")]
            raise ValueError(
                f"{name!r} has no released weights"
                + (f"; released tags: {', '.join(released)}" if released else "")
                + ". Load your own with vivit.load_pretrained(model, path) or inflate an image ViT with vivit.inflate."
            )
        load_pretrained(model, cfg.name, force_download=force_download, allow_non_finite=allow_non_finite)
    return model
