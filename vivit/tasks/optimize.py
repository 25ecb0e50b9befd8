"""Inference at the hardware's speed: :func:`optimize` runs a model through the fastest backend for its device.

On CPU that is OpenVINO (the optional extra ``vivit[openvino]``): the model is converted once, kept in the vivit
cache as OpenVINO IR keyed by its weights, structure, input size and the versions that made it, and compiled for the
CPU (bfloat16 through the CPU plugin's inference precision). Without the extra, and on CUDA, it is torch (SDPA).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import shutil
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from vivit._version import __version__ as _vivit_version
from vivit.files import weights_digest, write_folder_atomic
from vivit.weights.fetch import default_cache_dir
from vivit.weights.read import file_sha256

_logger = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "openvino")
INSTALL_HINT = 'pip install "vivit[openvino]"'
BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags of native bfloat16 matrix instructions
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_ENTRY_FILES = ("model.xml", "model.bin")
_said: set[str] = set()


class BackendUnavailable(RuntimeError):
    """OpenVINO cannot run this model here; ``backend="auto"`` falls back to torch with this message."""


def _say_once(message: str) -> None:
    if message not in _said:
        _said.add(message)
        _logger.warning(message)


def cpu_flags() -> set[str]:
    """The CPU's feature flags from ``/proc/cpuinfo`` (empty where it does not exist)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


def native_bfloat16() -> bool:
    """Whether the CPU multiplies bfloat16 matrices natively (AVX512-BF16 or AMX)."""
    return bool(set(BF16_FLAGS) & cpu_flags())


def auto_dtype(device: torch.device | str | None = None) -> torch.dtype:
    """bfloat16 on a CPU with native bfloat16 (2-4x faster there), else float32."""
    device = torch.device(device or "cpu")
    return torch.bfloat16 if device.type == "cpu" and native_bfloat16() else torch.float32


class Optimized:
    """``model(x)`` through a faster backend; call it with the model's ``B x C x T x H x W`` float input.

    Outputs are float32 torch tensors on the model's device. Not thread-safe: the OpenVINO path reuses one request.

    Attributes:
        model: The module it runs (the torch path's own low-precision copy where it made one).
        backend: ``"openvino"`` or ``"torch"``.
        dtype: The precision the model runs in.
        note: One line saying what runs, for logs and the CLI.
    """

    def __init__(self, model: torch.nn.Module, backend: str, dtype: torch.dtype,
                 run: Callable[[torch.Tensor], Any], note: str) -> None:
        self.model, self.backend, self.dtype, self.note = model, backend, dtype, note
        self._run = run

    def __call__(self, x: torch.Tensor) -> Any:
        """``(B, C, T, H, W)`` -> the model's output (logits ``(B, K)``, or features for a headless model)."""
        return self._run(x)

    def __repr__(self) -> str:
        return f"Optimized({self.note})"


class _TorchRun:
    """The model in torch under ``inference_mode``; ``autocast`` on CUDA when asked for a lower precision."""

    def __init__(self, model: torch.nn.Module, autocast: torch.dtype | None) -> None:
        param = next(model.parameters(), None)
        self.model, self.autocast = model, autocast
        self.device = param.device if param is not None else torch.device("cpu")
        self.dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32

    def __call__(self, x: torch.Tensor) -> Any:
        with torch.inference_mode(), torch.autocast(self.device.type, self.autocast or torch.bfloat16,
                                                    enabled=self.autocast is not None):
            out = self.model(x.to(self.device, self.dtype))
        return out.float() if isinstance(out, torch.Tensor) else out


class _OpenVINORun:
    """One compiled model and one reused infer request; inputs are shared with OpenVINO, not copied."""

    def __init__(self, compiled: Any, input_size: tuple[int, ...]) -> None:
        self.compiled = compiled  # held as long as its request: the request must never outlive the compiled model
        self.request = compiled.create_infer_request()
        self.input_size = input_size
        self.num_outputs = len(compiled.outputs)

    def __call__(self, x: torch.Tensor) -> Any:
        if x.ndim != 5 or tuple(x.shape[1:]) != self.input_size:
            size = "x".join(map(str, self.input_size))
            raise ValueError(f"expected a video tensor B x C x T x H x W = B x {size}, got shape {tuple(x.shape)}; "
                             "the optimized model is built for that size: call vivit.optimize(model, input_size=...) "
                             "for another")
        x = x.detach()
        if x.dtype != torch.float32 or x.device.type != "cpu" or not x.is_contiguous():
            x = x.to("cpu", torch.float32).contiguous()
        result = self.request.infer({0: x.numpy()}, share_inputs=True)  # outputs are copied: the request reuses them
        outs = [torch.from_numpy(result[i]) for i in range(self.num_outputs)]
        return outs[0] if self.num_outputs == 1 else tuple(outs)


class _PreLogits(torch.nn.Module):
    """A ViViT's pooled pre-logits features as its forward, so they convert like logits do."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(self.model.forward_features(x), pre_logits=True)


def optimize(model: torch.nn.Module, dtype: torch.dtype | str | None = None, *, backend: str = "auto",
             input_size: Sequence[int] | None = None, pre_logits: bool = False,
             cache_dir: str | Path | None = None) -> Optimized:
    """``model`` compiled for the fastest backend of its device, as a callable with the model's inputs and outputs.

    On CPU: OpenVINO when installed (``pip install "vivit[openvino]"``), converted once and cached on disk; else
    torch eager (SDPA), said once. On CUDA: torch (SDPA flash; ``autocast`` for a lower ``dtype``). The model is put
    in eval mode and otherwise left unchanged.

    Args:
        model: A ViViT (or any module taking one ``B x C x T x H x W`` tensor), on CPU or CUDA.
        dtype: ``torch.float32`` or ``torch.bfloat16`` (CUDA also ``float16``); default the weights' dtype.
        backend: ``"auto"`` (the fastest available; the environment variable ``VIVIT_BACKEND`` may pin what it
            picks, e.g. ``torch`` in a process that must not load OpenVINO), ``"torch"`` or ``"openvino"`` (an error
            where it cannot run).
        input_size: ``(C, T, H, W)`` the OpenVINO model is built for; default the ViViT's own. The batch is free.
        pre_logits: Return the pooled pre-logits features instead of ``model(x)`` (feature extraction).
        cache_dir: Where converted models are kept; default ``<vivit cache>/optimized``.

    Returns:
        An :class:`Optimized`; ``.backend`` and ``.note`` say what runs.
    """
    if backend == "auto":
        backend = os.environ.get("VIVIT_BACKEND") or "auto"
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, found {backend!r}")
    model = (_PreLogits(model) if pre_logits else model).eval()
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = _as_dtype(dtype, param)
    if backend == "torch" or device.type != "cpu":
        if backend == "openvino":
            raise ValueError(f"backend='openvino' runs on the CPU, the model is on {device}: move it with "
                             "model.cpu() or use backend='auto' (torch on CUDA)")
        return _torch(model, dtype, device)
    try:
        import openvino as ov
    except ImportError:
        if backend == "openvino":
            raise ImportError(f"backend='openvino' needs OpenVINO: {INSTALL_HINT}") from None
        _say_once(f"vivit.optimize: OpenVINO is not installed, so the model runs in torch (eager, SDPA); "
                  f"{INSTALL_HINT} makes it 1.2-5x faster on CPU (ViViT-B at 8 x 160² on a 2-core AMD EPYC; "
                  "docs/guides/performance.md)")
        return _torch(model, dtype, device)
    try:
        return _openvino(ov, model, dtype, _input_size(model, input_size), cache_dir)
    except BackendUnavailable as err:
        if backend == "openvino":
            raise
        _say_once(f"vivit.optimize: {err}; running the model in torch (eager, SDPA) instead")
        return _torch(model, dtype, device)


def _as_dtype(dtype: torch.dtype | str | None, param: torch.Tensor | None) -> torch.dtype:
    if dtype is None:
        return param.dtype if param is not None and param.is_floating_point() else torch.float32
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, found {dtype!r}")
        return DTYPES[dtype]
    if dtype not in DTYPES.values():
        raise ValueError(f"dtype must be torch.float32, torch.bfloat16 or torch.float16, found {dtype}")
    return dtype


def _input_size(model: torch.nn.Module, input_size: Sequence[int] | None) -> tuple[int, ...]:
    if input_size is not None:
        size = tuple(int(v) for v in input_size)
        if len(size) != 4 or min(size) < 1:
            raise ValueError(f"input_size must be (C, T, H, W) of positive ints, found {input_size!r}")
        return size
    vit = getattr(model, "model", model) if isinstance(model, _PreLogits) else model
    try:
        return (int(vit.in_chans), int(vit.num_frames), *(int(v) for v in vit.img_size))
    except AttributeError:
        raise ValueError("this model does not say its input size: pass input_size=(C, T, H, W)") from None


def _torch(model: torch.nn.Module, dtype: torch.dtype, device: torch.device) -> Optimized:
    """The torch path: on CPU a low-precision copy of the weights (faster than autocast), on CUDA autocast."""
    param = next(model.parameters(), None)
    weights = param.dtype if param is not None and param.is_floating_point() else dtype
    autocast, how = None, "eager, SDPA"
    if dtype != weights and device.type == "cpu":
        model = copy.deepcopy(model).to(dtype)
        how += f", its own {_name(dtype)} copy of the weights"
    elif dtype != weights:
        autocast, how = dtype, how + f", {_name(dtype)} autocast"
    return Optimized(model, "torch", dtype, _TorchRun(model, autocast),
                     f"torch {torch.__version__} ({how}), {_name(dtype)} on {device}")


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def cache_key(model: torch.nn.Module, input_size: tuple[int, ...], openvino_version: str) -> dict[str, Any]:
    """What a converted model depends on: weights, structure (Models 1 and 4 share weights), input size, versions.

    The precision is not part of it: OpenVINO IR keeps float32 weights and the precision is chosen when it is
    compiled, so float32 and bfloat16 share one entry.
    """
    structure = f"{type(model).__module__}.{type(model).__qualname__}|{model!r}|"
    structure += json.dumps(getattr(model, "model_args", None), sort_keys=True, default=str)
    return {"weights": weights_digest(model), "structure": hashlib.sha256(structure.encode()).hexdigest(),
            "input_size": list(input_size), "openvino": openvino_version, "torch": torch.__version__,
            "vivit": _vivit_version}


def _openvino(ov: Any, model: torch.nn.Module, dtype: torch.dtype, input_size: tuple[int, ...],
              cache_dir: str | Path | None) -> Optimized:
    """Read the converted model from the cache (or convert and cache it), then compile it for the CPU."""
    if dtype == torch.float16:
        raise BackendUnavailable("OpenVINO on CPU runs float32 or bfloat16, not float16")
    core = ov.Core()
    if "CPU" not in core.available_devices:
        raise BackendUnavailable(f"OpenVINO {ov.__version__.split('-')[0]} finds no CPU device it supports here")
    if dtype == torch.bfloat16 and not native_bfloat16():
        _say_once("vivit.optimize: this CPU has no native bfloat16 (AVX512-BF16 or AMX), where bfloat16 is slower "
                  "than float32: OpenVINO runs float32")
        dtype = torch.float32
    key = cache_key(model, input_size, ov.__version__)
    name = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    folder = Path(cache_dir or default_cache_dir() / "optimized").expanduser() / f"openvino-{name}"
    start = time.perf_counter()
    ov_model = _read_entry(core, folder)
    if ov_model is None:
        _logger.info("vivit.optimize: converting the model to OpenVINO once (ViViT-B: ~30 s), cached in %s", folder)
        ov_model = _convert(ov, model, input_size)
        how = f"converted in {time.perf_counter() - start:.0f} s"
        how += f", cached in {folder}" if _write_entry(ov, ov_model, folder, key) else ", not cached"
    else:
        how = f"read from {folder}"
    config = {"INFERENCE_PRECISION_HINT": "bf16" if dtype == torch.bfloat16 else "f32",
              "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": torch.get_num_threads()}
    try:
        compiled = core.compile_model(ov_model, "CPU", config)
    except RuntimeError as err:
        raise BackendUnavailable(f"OpenVINO cannot compile this model for this CPU ({_first_line(err)})") from None
    ready = time.perf_counter() - start
    note = f"openvino {ov.__version__.split('-')[0]} on CPU, {_name(dtype)} ({how}, ready in {ready:.1f} s)"
    return Optimized(model, "openvino", dtype, _OpenVINORun(compiled, input_size), note)


def _first_line(err: BaseException) -> str:
    """The line of an OpenVINO error that names the problem (its report lists unconverted ops below a header)."""
    lines = [line.strip(" -") for line in str(err).splitlines() if line.strip(" -")]
    named = [line for line in lines if "no conversion rule" in line.lower()]
    return (named or lines or [type(err).__name__])[0][:300]


def _convert(ov: Any, model: torch.nn.Module, input_size: tuple[int, ...]) -> Any:
    """torch -> OpenVINO with a free batch and the fixed ``input_size`` (the positional embeddings fix T, H, W)."""
    from openvino.frontend import GeneralFailure, OpConversionFailure

    param = next(model.parameters(), None)
    source = model if param is None or param.dtype == torch.float32 else copy.deepcopy(model).float()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            # the tracer's deprecation notice and its warnings about shape checks, constant for the fixed input size
            warnings.simplefilter("ignore")
            return ov.convert_model(source, example_input=torch.zeros(1, *input_size), input=[(-1, *input_size)])
    except (RuntimeError, TypeError, ValueError, OpConversionFailure, GeneralFailure) as err:
        raise BackendUnavailable(f"OpenVINO cannot convert this model ({_first_line(err)})") from None


def _read_entry(core: Any, folder: Path) -> Any | None:
    """The cached OpenVINO model, or ``None`` when there is none; a damaged entry is removed, never used."""
    if not folder.is_dir():
        return None
    try:
        manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
        whole = all(file_sha256(folder / f) == manifest["files"][f] for f in _ENTRY_FILES)
        if whole:
            return core.read_model(folder / "model.xml")
    except (OSError, ValueError, KeyError, TypeError, RuntimeError):
        pass
    _say_once(f"vivit.optimize: the cached OpenVINO model in {folder} is damaged: converting it again")
    shutil.rmtree(folder, ignore_errors=True)
    return None


def _write_entry(ov: Any, ov_model: Any, folder: Path, key: dict[str, Any]) -> bool:
    """Save the converted model as a whole folder (IR + manifest of digests); ``False`` where it cannot be written."""
    def write(tmp: Path) -> None:
        ov.save_model(ov_model, tmp / "model.xml", compress_to_fp16=False)  # fp16 weights would cost accuracy
        files = {f: file_sha256(tmp / f) for f in _ENTRY_FILES}
        (tmp / "manifest.json").write_text(json.dumps({**key, "files": files}, indent=1), encoding="utf-8")

    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        write_folder_atomic(folder, write)  # another process converting at once: the first folder stays
    except OSError as err:
        _say_once(f"vivit.optimize: cannot write to {folder.parent} ({err.strerror or err}), so every process "
                  "converts the model again; set VIVIT_CACHE to a writable folder")
        return False
    return True
