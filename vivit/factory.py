"""``create_model``: a name (zoo tag or architecture, ``hf-hub:``, ``local-dir:``) -> model arguments and a weights
source -> a ``ViViT``, with its weights loaded when asked."""

from __future__ import annotations

from typing import Any

from .load import create_from_folder, create_from_hub, load_pretrained
from .model import ViViT
from .zoo import ARCHS, list_models, resolve_name


def create_model(
    name: str,
    pretrained: bool = False,
    *,
    num_classes: int | None = None,
    num_frames: int | None = None,
    img_size: int | tuple[int, int] | None = None,
    **kwargs: Any,
) -> ViViT:
    """Create a registered ViViT, optionally with weights.

    Args:
        name: ``"vivit_b_16x2_fe"``, ``"vivit_b_16x2_fe.k400"`` (a pretrained tag), ``"hf-hub:org/repo[@rev]"`` or
            ``"local-dir:PATH"`` (a ``save_pretrained`` or transformers ViViT folder).
        pretrained: Load the tag's weights (the architecture's first released tag when none is named).
        num_classes: New head size; with weights, only the head is left at its (zero) init.
        num_frames: Clip length; positional embeddings of loaded weights are resampled to it.
        img_size: Frame size; positional embeddings are resampled to it.
        **kwargs: Any other ``ViViT`` keyword (``drop_path_rate``, ``attn_impl``, ``depth`` ...).
    """
    overrides = {k: v for k, v in dict(num_classes=num_classes, num_frames=num_frames, img_size=img_size).items()
                 if v is not None}
    if name.startswith(("hf-hub:", "hf_hub:")):
        return create_from_hub(name, pretrained=pretrained, **overrides, **kwargs)
    if name.startswith("local-dir:"):
        return create_from_folder(name[len("local-dir:"):], pretrained=pretrained, **overrides, **kwargs)
    arch, cfg = resolve_name(name)
    args = {**ARCHS[arch], "num_classes": cfg.num_classes, **overrides, **kwargs}
    model = ViViT(**args)
    model.pretrained_cfg = {**cfg.to_dict(), "input_size": (args.get("in_chans", 3), model.num_frames, *model.img_size)}
    if pretrained:
        if not cfg.has_weights:
            released = [n for n in list_models(pretrained=True) if n.startswith(arch + ".")]
            raise ValueError(
                f"{name!r} has no released weights"
                + (f"; released tags: {', '.join(released)}" if released else "")
                + ". Load your own with vivit.load_pretrained(model, path) or inflate an image ViT with vivit.inflate."
            )
        load_pretrained(model, cfg.name)
    return model
