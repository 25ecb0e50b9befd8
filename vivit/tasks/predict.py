"""Multi-view evaluation (SPEC 4.2): run a model over a video's views in batches and average the logits."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch


@torch.inference_mode()
def predict_views(model: torch.nn.Module, clips: torch.Tensor, batch_size: int = 4, *,
                  device: torch.device | str | None = None, reduce: bool = True,
                  progress: bool = False, run: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """The ``(K,)`` float32 logits of ``clips`` ``(V, C, T, H, W)`` averaged over views as the reference does (mean
    of logits, no softmax first), on the CPU; ``reduce=False`` returns the per-view ``(V, K)``.

    The model runs in eval mode (its mode is restored afterwards), ``batch_size`` views at a time, moved to ``device``
    (default the model's) batch by batch; ``progress`` shows a tqdm bar; ``run`` is called instead of ``model``
    (e.g. ``vivit.optimize(model)``).
    """
    if clips.ndim != 5:
        raise ValueError(f"expected views (V, C, T, H, W), found shape {tuple(clips.shape)}; add a view dim with "
                         "clips[None] for a single clip")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, found {batch_size}")
    param = next(model.parameters(), None)
    device = torch.device(device) if device is not None else (param.device if param is not None else clips.device)
    dtype = param.dtype if param is not None and param.is_floating_point() else clips.dtype
    batches = range(0, clips.shape[0], batch_size)
    if progress:
        try:
            from tqdm.auto import tqdm
        except ImportError as err:
            raise ImportError('progress bars need tqdm: pip install tqdm (or pip install "vivit[video]")') from err
        batches = tqdm(batches, desc="views", unit="batch", leave=False)
    was_training = model.training
    model.eval()
    try:
        logits = torch.cat([(run or model)(clips[i : i + batch_size].to(device, dtype, non_blocking=True)).float().cpu()
                            for i in batches])
    finally:
        model.train(was_training)
    return logits.mean(0) if reduce else logits


def default_views(model: torch.nn.Module) -> tuple[int, int]:
    """The test views the model's weights were evaluated with (``pretrained_cfg["eval_views"]``), else 4x3."""
    from vivit.data.video import parse_views

    return parse_views(getattr(model, "pretrained_cfg", {}).get("eval_views") or (4, 3))


def predict_video(model: torch.nn.Module, path: str | Path, views: Any = None, batch_size: int = 4, *,
                  device: torch.device | str | None = None, decoder: str = "auto",
                  short_video: str = "loop", run: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """Decode ``path`` into the model's test views and return the view-averaged logits ``(K,)`` (:func:`predict_views`).

    ``views``: ``(clips, crops)`` or ``"4x3"``, default the model's ``eval_views`` (:func:`default_views`); ``decoder``:
    ``"auto"``, ``"pyav"`` or ``"torchcodec"``; ``short_video``: ``"loop"`` (reference) or ``"error"`` for videos
    shorter than one clip.
    """
    from vivit.data.video import multi_view_clips

    clips = multi_view_clips(path, model, default_views(model) if views is None else views, backend=decoder,
                             short_video=short_video)
    return predict_views(model, clips, batch_size, device=device, run=run)


def top_k(logits: torch.Tensor, k: int, labels: Sequence[str] | None = None,
          class_splits: Sequence[int] | None = None) -> list[list[dict[str, Any]]]:
    """The ``k`` most likely classes of one video's ``(K,)`` logits, one list per part of the head.

    A split head (EPIC-Kitchens: 300 nouns, then 97 verbs) holds several classifiers side by side; each part gets its
    own softmax, as the reference scores them. Entries are ``{"label", "index", "score"}``, scores rounded to 6 places
    (probabilities in float64, so a bfloat16 model ranks ties as float32 would).
    """
    splits = list(class_splits) if class_splits else [logits.numel()]
    tops, offset = [], 0
    for size in splits:
        probs = torch.softmax(logits[offset:offset + size].double(), dim=-1)
        values, indices = probs.topk(min(k, size))
        tops.append([{"label": labels[offset + int(i)] if labels else str(offset + int(i)), "index": offset + int(i),
                      "score": round(float(v), 6)} for v, i in zip(values.tolist(), indices.tolist(), strict=True)])
        offset += size
    return tops


__all__ = ["default_views", "predict_video", "predict_views", "top_k"]
