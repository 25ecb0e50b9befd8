"""What runs the model: one setup for every task and CLI command, saying in one line which runtime, dtype and device
it chose. ``backend`` names the runtime everywhere (``"torch"``: the model as it is; ``"auto"`` / ``"openvino"``:
:func:`vivit.optimize`); the video decoder is ``decoder``."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vivit.tasks.optimize import (
    Optimized,
    PreLogits,
    as_dtype,
    calibration_clips,
    check_backend,
    dtype_name,
    optimize,
    param_dtype,
)

_logger = logging.getLogger(__name__)


@dataclass
class Runtime:
    """A model (``model``, on ``device`` in eval mode) made ready: ``fn`` runs a batch; ``backend`` (never
    ``"auto"``) and ``dtype`` run it, as ``note`` says."""

    model: torch.nn.Module
    fn: Callable[[torch.Tensor], torch.Tensor]
    backend: str
    dtype: torch.dtype
    device: torch.device
    note: str

    @property
    def fast(self) -> Optimized | None:
        """:func:`vivit.optimize`'s callable (it moves and casts float32 inputs itself), ``None`` for the model."""
        return self.fn if isinstance(self.fn, Optimized) else None


def setup_runtime(model: torch.nn.Module, device: str | torch.device | None = None,
                  dtype: str | torch.dtype | None = None, backend: str | Optimized = "torch",
                  token_merging: Any = None, *, pre_logits: bool = False, compile: bool = False,
                  forward: Callable[[Any], Callable[[torch.Tensor], torch.Tensor]] | None = None,
                  say: Callable[[str], Any] | None = None) -> Runtime:
    """``model`` (moved, and on the torch backend cast, in place) ready on ``backend``: ``"torch"``, ``"auto"``,
    ``"openvino"`` or a :func:`vivit.optimize` callable of it (e.g. :func:`int8_backend`'s), with ToMe's ``r`` set to
    ``token_merging`` (``None`` keeps the model's); ``say`` (default a log line) is given the line naming the runtime,
    dtype and device. ``device`` and ``dtype`` default to the model's; ``pre_logits`` runs the pooled features;
    on the torch backend ``forward(model)`` (unless ``None``) is what runs, ``torch.compile``d with ``compile``."""
    _set_token_merging(model, token_merging)
    device = torch.device(device if device is not None else next((p.device for p in model.parameters()), "cpu"))
    model = model.to(device).eval()
    if isinstance(backend, str) and backend != "torch":
        backend = optimize(model, dtype, backend=backend, pre_logits=pre_logits)
    if isinstance(backend, Optimized):
        runtime = Runtime(model, backend, backend.backend, backend.dtype, device, backend.note)
    else:
        wanted = as_dtype(dtype)
        model = model if wanted is None else model.to(wanted)
        fn = (forward(model) if forward else None) or (PreLogits(model) if pre_logits else model)
        how = "eager, SDPA, compiled" if compile else "eager, SDPA"
        runtime = Runtime(model, torch.compile(fn) if compile else fn, "torch", param_dtype(model), device,
                          f"torch {torch.__version__} ({how}), {dtype_name(param_dtype(model))} on {device}")
    (say or _logger.info)(f"backend {runtime.note}")
    return runtime


def int8_backend(model: torch.nn.Module, calibration: str | Path, views: str | Sequence[int],
                 num_clips: int | None = None, *, decoder: str = "auto", token_merging: Any = None,
                 pre_logits: bool = False, say: Callable[[str], Any] | None = None) -> Optimized:
    """``vivit.optimize(model, "int8")`` (OpenVINO on the CPU) calibrated on clips of the listing ``calibration``
    sampled with ``views`` (:func:`vivit.tasks.optimize.calibration_clips`), saying how many it took."""
    _set_token_merging(model, token_merging)  # before quantizing: the quantized graph is the merging one
    clips = calibration_clips(calibration, model.cpu().eval(), views, num_clips, decoder=decoder)
    (say or _logger.info)(f"--dtype int8: {len(clips)} calibration clips from {calibration}")
    return optimize(model, "int8", backend="openvino", calibration=clips, pre_logits=pre_logits)


def _set_token_merging(model: torch.nn.Module, r: Any) -> None:
    """Set ToMe's ``r`` only where it changes the model: no merging asked of a dense model leaves the model alone."""
    if r is not None and (r or getattr(model, "token_merging", 0)):
        model.set_token_merging(r)


__all__ = ["Runtime", "as_dtype", "check_backend", "dtype_name", "int8_backend", "param_dtype", "setup_runtime"]
