"""What runs the model: one setup for every task and CLI command, saying in one line which runtime, dtype and device
it chose. ``backend`` names the runtime everywhere (``"torch"``: the model as it is; ``"auto"`` / ``"openvino"``:
:func:`vivit.optimize`); the video decoder is ``decoder``."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from vivit.tasks.optimize import Optimized, as_dtype, check_backend, dtype_name, optimize, param_dtype

_logger = logging.getLogger(__name__)


@dataclass
class Runtime:
    """A model made ready to run.

    Attributes:
        model: The module on ``device`` in eval mode (cast to ``dtype`` on the torch backend).
        fn: What to call on a batch: the model (its pre-logits with ``pre_logits``), or :func:`vivit.optimize`'s.
        backend: The runtime that runs: ``"torch"`` or ``"openvino"`` (never ``"auto"``).
        dtype: The precision the model runs in.
        device: Where inputs go.
        note: The one line saying so.
    """

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
    """Make ``model`` ready on ``backend`` and say which runtime, dtype and device run it (``say``, default a log line).

    Args:
        model: The model (moved, and on the torch backend cast, in place).
        device: Default the model's.
        dtype: ``"bfloat16"``, ``torch.float16`` ...; default the weights'.
        backend: ``"torch"``, ``"auto"``, ``"openvino"``, or an :func:`vivit.optimize` callable of this model.
        token_merging: ToMe's ``r`` to set (``None`` keeps the model's).
        pre_logits: Run the pooled pre-logits features instead of the logits.
        compile: ``torch.compile`` the torch backend's callable.
        forward: What the torch backend calls, made from the model (e.g. one block's features); default (or when it
            returns ``None``) the model.
        say: Called with the one line.
    """
    if token_merging is not None:
        model.set_token_merging(token_merging)
    if device is None:
        param = next(model.parameters(), None)
        device = param.device if param is not None else "cpu"
    device = torch.device(device)
    model = model.to(device).eval()
    if isinstance(backend, str) and backend != "torch":
        backend = optimize(model, dtype, backend=backend, pre_logits=pre_logits)
    if isinstance(backend, Optimized):
        runtime = Runtime(model, backend, backend.backend, backend.dtype, device, backend.note)
    else:
        wanted = as_dtype(dtype)
        model = model if wanted is None else model.to(wanted)
        fn = (forward(model) if forward else None) or model
        if pre_logits and fn is model:
            fn = lambda x: model.forward_head(model.forward_features(x), pre_logits=True)  # noqa: E731
        how = "eager, SDPA, compiled" if compile else "eager, SDPA"
        runtime = Runtime(model, torch.compile(fn) if compile else fn, "torch", param_dtype(model), device,
                          f"torch {torch.__version__} ({how}), {dtype_name(param_dtype(model))} on {device}")
    (say or _logger.info)(f"backend {runtime.note}")
    return runtime


__all__ = ["Runtime", "as_dtype", "check_backend", "dtype_name", "param_dtype", "setup_runtime"]
