"""Weights from other implementations: the reference (scenic/flax) and Hugging Face transformers."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from vivit.model.vivit import ViViT
from vivit.weights.config import construct
from vivit.weights.convert.checkpoint import read_scenic_checkpoint
from vivit.weights.convert.scenic import convert_scenic_params, flatten_params, model_args_from_scenic, weights_grid
from vivit.weights.convert.transformers import from_transformers
from vivit.weights.fit import LoadReport, fit_pos_embeds, remember_load
from vivit.weights.read import check_finite

__all__ = ["from_scenic", "from_transformers", "read_scenic_checkpoint"]


def from_scenic(
    params_or_path: Mapping[str, Any] | str,
    config: Mapping[str, Any],
    *,
    img_size: int | tuple[int, int],
    num_frames: int | None = None,
    allow_non_finite: bool = False,
    **model_kwargs: Any,
) -> ViViT:
    """Build a ViViT from reference (scenic) parameters and the reference config.

    Args:
        params_or_path: ``'/'``-joined flax paths -> arrays (a leading ``params/`` is stripped), a nested flax params
            tree, or the path of a reference checkpoint file.
        config: The scenic ``ConfigDict`` as a plain dict (``model``, ``dataset_configs``).
        img_size: Frame size ``H`` or ``(H, W)`` the model takes; positional embeddings are resampled when it differs
            from the trained size.
        num_frames: Clip length; defaults to ``config["dataset_configs"]["num_frames"]``.
        allow_non_finite: Accept parameters holding NaN or infinite values (refused by default, naming them).
        **model_kwargs: Overrides of runtime options (``attn_impl``, ``drop_path_rate``, ...).

    Returns:
        A ``ViViT`` in eval mode whose logits match the reference's.
    """
    if isinstance(params_or_path, (str, bytes)) or hasattr(params_or_path, "__fspath__"):
        params = read_scenic_checkpoint(params_or_path)
        source = str(params_or_path)
    else:
        params = flatten_params(params_or_path)
        source = "the scenic parameters"
    params = {k: np.asarray(v) for k, v in params.items()}
    args = model_args_from_scenic(params, config, img_size=img_size, num_frames=num_frames, source=source)
    args.update(model_kwargs)
    model = construct(args)
    state = convert_scenic_params(params, args["variant"], source=source)
    if not allow_non_finite:
        check_finite(state, source)
    resampled = fit_pos_embeds(state, model, weights_grid(params, config, args, model.grid_size))
    model.load_state_dict(state, strict=True)
    remember_load(model, LoadReport(source, resampled=resampled))
    return model.eval()
