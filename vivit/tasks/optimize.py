"""Inference at the hardware's speed: :func:`optimize` runs a model on the fastest runtime of its device.

On CPU that is OpenVINO (``vivit[openvino]``): converted once, cached as IR keyed by all its graph depends on, compiled
by the process's one ``ov.Core``; without the extra, and on CUDA, torch (SDPA)."""

from __future__ import annotations

import contextlib
import copy
import enum
import functools
import hashlib
import json
import logging
import math
import os
import re
import shutil
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from vivit._version import __version__ as _vivit_version
from vivit.data.video import BACKENDS as DECODERS
from vivit.files import evict_least_recent, first_line, umask_mode, untrusted, weights_digest, write_folder_atomic
from vivit.weights.fetch import default_cache_dir
from vivit.weights.read import file_sha256

_logger = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "openvino")
INSTALL_HINT = 'pip install "vivit[openvino]"'
INT8_HINT = 'pip install "vivit[int8]"'
SMOOTH_QUANT_ALPHA = 0.95  # NNCF's default for transformers' matmuls (docs/guides/performance.md has the sweep)
CALIBRATION_CLIPS = 300  # NNCF's default subset_size
MAX_CALIBRATION_BYTES = 1 << 30  # calibration clips are held in memory (and hashed) as float32: at most 1 GiB
BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags of native bfloat16 matrix instructions
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
CACHE_LIMIT_ENV = "VIVIT_OPTIMIZE_CACHE_GB"
DEFAULT_CACHE_GB = 4.0  # about ten ViViT-B conversions (~350 MB each)
_MANIFEST_BYTES = 1 << 20
_ENTRY_FILES = ("model.xml", "model.bin")
_FILES = (*_ENTRY_FILES, "manifest.json")  # the manifest last: its time is the entry's last use
_said: set[str] = set()
_core: Any = None  # the process's one ov.Core: created once, never released (see openvino_core)
_core_lock = threading.Lock()
# One OpenVINO inference at a time in the process: two threads' requests running at once were seen to hang (1 in 8
# runs, more next to a torch thread), and each request already uses every core, so little is lost by taking turns.
_infer_lock = threading.Lock()


class BackendUnavailable(RuntimeError):
    """OpenVINO cannot run this model here; ``backend="auto"`` falls back to torch with this message."""


class ModelChanged(RuntimeError):
    """The model changed after :func:`optimize` in a way its optimized graph cannot follow: optimize it again."""


def _say_once(message: str) -> None:
    if message not in _said:
        _said.add(message)
        _logger.warning(message)


def check_backend(backend: str | Optimized) -> None:
    """Refuse a ``backend`` that names no runtime; a decoder's name (its old meaning) is refused naming ``decoder=``."""
    if backend in DECODERS:
        raise ValueError(f"backend={backend!r} names a video decoder, but backend now chooses what runs the model "
                         f"({', '.join(BACKENDS)}); choose the decoder with decoder={backend!r}")
    if not isinstance(backend, Optimized) and backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, found {backend!r}")


def as_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """``"bfloat16"`` -> ``torch.bfloat16`` (a dtype or ``None`` passes through); an unknown name is refused."""
    if isinstance(dtype, str) and dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, found {dtype!r}")
    return DTYPES[dtype] if isinstance(dtype, str) else dtype


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"``."""
    return str(dtype).removeprefix("torch.")


def param_dtype(model: torch.nn.Module) -> torch.dtype:
    """The dtype inputs are cast to: the model's floating-point parameters', else float32."""
    param = next(model.parameters(), None)
    return param.dtype if param is not None and param.is_floating_point() else torch.float32


def cpu_flags() -> set[str]:
    """The CPU's feature flags from ``/proc/cpuinfo`` (empty where it does not exist)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    return next((set(line.partition(":")[2].split()) for line in text.splitlines() if line.startswith("flags")), set())


def native_bfloat16() -> bool:
    """Whether the CPU multiplies bfloat16 matrices natively (AVX512-BF16 or AMX)."""
    return bool(set(BF16_FLAGS) & cpu_flags())


def auto_dtype(device: torch.device | str | None = None) -> torch.dtype:
    """bfloat16 on a CPU with native bfloat16 (2-4x faster there), else float32."""
    return torch.bfloat16 if torch.device(device or "cpu").type == "cpu" and native_bfloat16() else torch.float32


def openvino_core() -> Any:
    """The process's one ``openvino.Core``, made on first use and never released: cores released oldest-first leave
    the thread on an unmapped signal stack, and the next signal kills the process (docs/guides/performance.md). Code
    that makes its own ``ov.Core`` must keep it alive until the process ends."""
    global _core
    with _core_lock:
        if _core is None:
            import openvino as ov

            _core = ov.Core()
        return _core


def _tensors(model: torch.nn.Module) -> list[tuple[str, int, int, tuple[int, ...], torch.dtype]]:
    """Weights by storage and version counter (``load_state_dict``, ``torch.nn.init``, optimizer steps bump it), not
    bytes: ~3 ms for ViViT-B instead of a pass over 350 MB. Changes through ``param.data`` are not seen."""
    return [(name, t.data_ptr(), t._version, tuple(t.shape), t.dtype)
            for name, t in model.state_dict(keep_vars=True).items()]


def _what_changed(then: list[Any], now: list[Any]) -> str:
    """The first module setting that differs, as ``name.attribute: old -> new``."""
    old_modules, new_modules = {m[0]: m for m in then}, {m[0]: m for m in now}
    for name in [m[0] for m in then] + [m[0] for m in now]:
        a, b = old_modules.get(name), new_modules.get(name)
        if a is None or b is None or a[1] != b[1]:
            return f"module {name or 'model'} {'added' if a is None else 'removed' if b is None else 'replaced'}"
        if a[3] != b[3]:
            return f"forward hooks of {name or 'model'}"
        for key in sorted(set(a[2]) | set(b[2])):
            if a[2].get(key) != b[2].get(key):
                return f"{name + '.' if name else ''}{key}: {a[2].get(key)!r} -> {b[2].get(key)!r}"
    return "its structure"


class Optimized:
    """``model(x)`` on a faster runtime, float32 outputs on the model's device; one per thread (OpenVINO reuses one
    infer request). Where it runs a converted graph or a copy of the weights, each call first raises
    :class:`ModelChanged` if the model it was made from changed since. ``model`` is what it runs (the torch path's
    own low-precision copy where it made one); ``note`` says what runs; ``calibration`` is int8's clips' sha256."""

    def __init__(self, model: torch.nn.Module, backend: str, dtype: torch.dtype,
                 run: Callable[[torch.Tensor], Any], note: str, *, source: torch.nn.Module | None = None) -> None:
        self.model, self.backend, self.dtype, self.note = model, backend, dtype, note
        self.calibration: str | None = None
        self._run, self._source = run, source  # source: the model a converted graph or copy was made from
        if source is not None:  # run in eval mode whatever the model's mode now
            self._tensors, self._settings = _tensors(source), graph_settings(source, training=False)

    def __call__(self, x: torch.Tensor) -> Any:
        """``(B, C, T, H, W)`` -> the model's output (logits ``(B, K)``, or features for a headless model)."""
        if self._source is not None and (settings := graph_settings(self._source, training=False)) != self._settings:
            raise ModelChanged(f"the model changed after vivit.optimize ({_what_changed(self._settings, settings)}), "
                               "so its optimized graph would compute the old model: call vivit.optimize(model) again")
        if self._source is not None and (tensors := _tensors(self._source)) != self._tensors:
            names = [now[0] for then, now in zip(self._tensors, tensors, strict=False) if then != now] or ["the list"]
            raise ModelChanged(f"the model's weights changed after vivit.optimize ({names[0]}"
                               f"{f' and {len(names) - 1} more' if len(names) > 1 else ''}), so its optimized graph "
                               "would run the old ones: call vivit.optimize(model) again")
        return self._run(x)

    def __repr__(self) -> str:
        return f"Optimized({self.note})"


class PreLogits(torch.nn.Module):
    """A ViViT's pooled pre-logits features as its forward, so they convert (and run) like logits do."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(self.model.forward_features(x), pre_logits=True)


def optimize(model: torch.nn.Module, dtype: torch.dtype | str | None = None, *, backend: str = "auto",
             input_size: Sequence[int] | None = None, pre_logits: bool = False,
             cache_dir: str | Path | None = None, calibration: torch.Tensor | Iterable[torch.Tensor] | None = None,
             smooth_quant: float = SMOOTH_QUANT_ALPHA) -> Optimized:
    """``model`` compiled for the fastest runtime of its device, as a callable with the model's inputs and outputs:
    on CPU OpenVINO when installed (converted once, cached on disk), else torch eager (SDPA), said once; on CUDA torch
    (SDPA flash; ``autocast`` for a lower ``dtype``). The model is put in eval mode and otherwise left unchanged.

    Args:
        model: A ViViT (or any module taking one ``B x C x T x H x W`` tensor), on CPU or CUDA.
        dtype: ``torch.float32`` or ``torch.bfloat16`` (CUDA also ``float16``); default the weights' dtype.
            ``"int8"``: weights and activations quantized by NNCF on the OpenVINO model (CPU, the extra
            ``vivit[int8]``), calibrated on ``calibration``; the quantized model is cached like a conversion.
        backend: ``"auto"`` (the fastest available; ``$VIVIT_BACKEND`` may pin it, e.g. ``torch``), ``"torch"`` or
            ``"openvino"`` (an error where it cannot run).
        input_size: ``(C, T, H, W)`` the OpenVINO model is built for; default the ViViT's own. The batch is free.
        pre_logits: Return the pooled pre-logits features instead of ``model(x)`` (feature extraction).
        cache_dir: Where converted models are kept; default ``<vivit cache>/optimized``.
        calibration: For ``"int8"``: clips preprocessed exactly as at inference, one ``(N, C, T, H, W)`` tensor or
            an iterable of ``(B, C, T, H, W)`` batches (a few hundred clips; NNCF uses up to 300).
        smooth_quant: For ``"int8"``: NNCF's SmoothQuant alpha for matrix multiplies (``-1`` turns it off).

    Returns:
        An :class:`Optimized`; ``.backend`` and ``.note`` say what runs.
    """
    if backend == "auto":
        backend = os.environ.get("VIVIT_BACKEND") or "auto"
    check_backend(backend)
    int8 = dtype in ("int8", torch.int8)
    if getattr(model, "drop_static", 0):  # each clip keeps its own number of tokens: no fixed-shape graph holds that
        if backend == "openvino" or int8:
            raise ValueError("this model skips static tubelets (drop_static), so each clip keeps its own number of "
                             "tokens, which a converted OpenVINO graph cannot: run it with backend='torch' (or "
                             "backend='auto'), or call model.set_drop_static(0) before vivit.optimize")
        _say_once("vivit.optimize: drop_static keeps a different number of tokens per clip, which a converted graph "
                  "cannot: the model runs in torch (eager, SDPA)")
        backend = "torch"
    model = (PreLogits(model) if pre_logits else model).eval()
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    if int8:  # no fallback: int8 was asked for by name
        if backend == "torch" or device.type != "cpu":
            raise ValueError(f"dtype='int8' runs through OpenVINO on the CPU (backend {backend!r}, model on {device}): "
                             "use backend='auto' with the model on the CPU, or a float dtype")
        if calibration is None:
            raise ValueError("dtype='int8' needs calibration=clips: a few hundred clips preprocessed as at inference, "
                             "(N, C, T, H, W) or an iterable of batches")
        size = _input_size(model, input_size)
        clips = _calibration_clips(calibration, size)
        try:
            import nncf
            import openvino  # noqa: F401
        except ImportError:
            raise ImportError(f"dtype='int8' needs NNCF and OpenVINO: {INT8_HINT}") from None
        digest = _clips_digest(clips)
        run = _openvino(model, torch.int8, size, cache_dir, int8=(nncf, clips, digest, float(smooth_quant)))
        run.calibration = digest  # a dataset run's identity records it: another set is another model
        return run
    dtype = as_dtype(dtype) or param_dtype(model)
    if dtype not in DTYPES.values():
        raise ValueError(f"dtype must be torch.float32, torch.bfloat16 or torch.float16, found {dtype}")
    if backend == "openvino" and device.type != "cpu":
        raise ValueError(f"backend='openvino' runs on the CPU, the model is on {device}: move it with "
                         "model.cpu() or use backend='auto' (torch on CUDA)")
    if backend == "torch" or device.type != "cpu":
        return _torch(model, dtype, device)
    try:
        return _openvino(model, dtype, _input_size(model, input_size), cache_dir)
    except BackendUnavailable as err:
        if backend == "openvino" and isinstance(err.__cause__, ImportError):
            raise ImportError(f"backend='openvino' needs OpenVINO: {INSTALL_HINT}") from None
        if backend == "openvino":
            raise
        _say_once(f"vivit.optimize: {err}; running the model in torch (eager, SDPA) instead")
        return _torch(model, dtype, device)


def _torch(model: torch.nn.Module, dtype: torch.dtype, device: torch.device) -> Optimized:
    """The torch path: on CPU a low-precision copy of the weights (faster than autocast), on CUDA autocast."""
    source, autocast, how = None, None, "eager, SDPA"
    if dtype != param_dtype(model) and device.type == "cpu":
        source, model = model, copy.deepcopy(model).to(dtype)
        how += f", its own {dtype_name(dtype)} copy of the weights"
    elif dtype != param_dtype(model):
        autocast, how = dtype, how + f", {dtype_name(dtype)} autocast"
    weights = param_dtype(model)

    def run(x: torch.Tensor) -> Any:
        with torch.inference_mode(), torch.autocast(device.type, autocast or torch.bfloat16, enabled=bool(autocast)):
            out = model(x.to(device, weights))
        return out.float() if isinstance(out, torch.Tensor) else out

    run.autocast = autocast  # slice reuse runs the module itself, which it can only where no autocast is on
    return Optimized(model, "torch", dtype, run, f"torch {torch.__version__} ({how}), {dtype_name(dtype)} on {device}",
                     source=source)


def _input_size(model: torch.nn.Module, input_size: Sequence[int] | None) -> tuple[int, ...]:
    if input_size is not None:
        size = tuple(int(v) for v in input_size)
        if len(size) != 4 or min(size) < 1:
            raise ValueError(f"input_size must be (C, T, H, W) of positive ints, found {input_size!r}")
        return size
    vit = model.model if isinstance(model, PreLogits) else model
    try:
        return (int(vit.in_chans), int(vit.num_frames), *(int(v) for v in vit.img_size))
    except AttributeError:
        raise ValueError("this model does not say its input size: pass input_size=(C, T, H, W)") from None


def _clips_digest(clips: list[Any]) -> str:
    """The sha256 of the calibration set (its clips' float32 bytes, in order)."""
    digest = hashlib.sha256()
    for clip in clips:
        digest.update(clip.tobytes())
    return digest.hexdigest()


def _calibration_clips(calibration: torch.Tensor | Iterable[torch.Tensor], input_size: tuple[int, ...]) -> list[Any]:
    """The calibration set as float32 numpy batches of ``input_size``; one clear error for anything else."""
    out = []
    for batch in [calibration] if isinstance(calibration, torch.Tensor) else calibration:
        if not isinstance(batch, torch.Tensor) or batch.ndim != 5 or tuple(batch.shape[1:]) != input_size:
            found = tuple(batch.shape) if isinstance(batch, torch.Tensor) else type(batch).__name__
            raise ValueError(f"calibration clips must be (N, {', '.join(map(str, input_size))}) tensors, found {found}")
        if not torch.isfinite(batch).all():
            raise ValueError("calibration clips must be finite (found NaN or inf)")
        out.extend(batch[i : i + 1].detach().to("cpu", torch.float32).contiguous().numpy() for i in range(len(batch)))
    if not out:
        raise ValueError("calibration holds no clips")
    return out


def calibration_clips(listing: str | Path, model: torch.nn.Module, views: str | Sequence[int],
                      num_clips: int | None = None, *, decoder: str = "auto") -> torch.Tensor:
    """``(N, C, T, H, W)`` float32 clips for ``optimize(model, "int8", calibration=...)``: the evaluation's ``views``
    (:class:`vivit.data.datasets.EvalVideos`) of videos spread evenly over the listing, an unreadable one skipped.
    ``num_clips``: default ``CALIBRATION_CLIPS`` (NNCF's 300), fewer where they would take over 1 GiB as float32.
    Raises ValueError for a missing or empty listing, ``num_clips`` beyond that bound, or no readable video."""
    from vivit.data.datasets import EvalVideos, Item, read_listing

    rows = read_listing(listing)
    videos = EvalVideos([Item(path) for path in rows.paths], model, views, decoder=decoder)
    size = _input_size(model, None)
    most = max(1, MAX_CALIBRATION_BYTES // (4 * math.prod(size)))
    if num_clips is not None and not 1 <= num_clips <= most:
        raise ValueError(f"calibration clips of {'x'.join(map(str, size))} are held in memory: at most {most} "
                         f"(1 GiB of float32), found {num_clips}")
    wanted, count = min(num_clips or CALIBRATION_CLIPS, most), len(rows.paths)
    spread = min(count, math.ceil(wanted / math.prod(videos.views)))
    first = [i * count // spread for i in range(spread)]
    clips, tried = [], 0
    for index in first + sorted(set(range(count)) - set(first)):  # the evenly spread videos, then the rest
        if sum(map(len, clips)) >= wanted:
            break
        tried += 1
        if (item := videos[index])["status"] == "ok":  # EvalVideos logs an unreadable one
            clips.append(item["views"])
    if not clips:
        raise ValueError(f"{listing}: none of its {count} videos could be read, so there is nothing to calibrate on")
    out = torch.cat(clips)[:wanted].float()
    _logger.info("calibration: %d clips from %d videos of %s%s", len(out), len(clips), listing,
                 f" ({tried - len(clips)} unreadable skipped)" if tried > len(clips) else "")
    return out


def _openvino(model: torch.nn.Module, dtype: torch.dtype, input_size: tuple[int, ...], cache_dir: str | Path | None,
              int8: tuple[Any, list[Any], str, float] | None = None) -> Optimized:
    """Read the converted (and for int8 quantized) model from the cache or make and cache it, then compile it."""
    try:
        import openvino as ov
    except ImportError as err:
        raise BackendUnavailable(f"OpenVINO is not installed ({INSTALL_HINT} makes it 1.2-5x faster on CPU: "
                                 "ViViT-B at 8 x 160² on a 2-core AMD EPYC, docs/guides/performance.md)") from err
    if dtype == torch.float16:
        raise BackendUnavailable("OpenVINO on CPU runs float32 or bfloat16, not float16")
    core = openvino_core()
    if "CPU" not in core.available_devices:
        raise BackendUnavailable(f"OpenVINO {ov.__version__.split('-')[0]} finds no CPU device it supports here")
    if dtype == torch.bfloat16 and not native_bfloat16():
        _say_once("vivit.optimize: this CPU has no native bfloat16 (AVX512-BF16 or AMX), where bfloat16 is "
                  "slower than float32: OpenVINO runs float32")
        dtype = torch.float32
    key = cache_key(model, input_size, ov.__version__)
    start = time.perf_counter()
    converted = functools.partial(_cached, cache_dir, key, lambda: _convert(ov, model, input_size), "converted")
    if int8 is None:
        ov_model, how = converted()
    else:  # the quantized entry first: the float one is read (or made) only to quantize it
        nncf, clips, digest, alpha = int8
        int8_key = {**key, "int8": {"calibration": digest, "clips": len(clips), "nncf": nncf.__version__,
                                    "smooth_quant": alpha}}
        ov_model, how = _cached(cache_dir, int8_key, lambda: _quantize(nncf, converted()[0], clips, alpha), "quantized")
    # int8: what stays in floating point (LayerNorm, softmax, where NNCF keeps them) runs bfloat16 where it is native
    rest = "bf16" if dtype == torch.bfloat16 or (dtype == torch.int8 and native_bfloat16()) else "f32"
    config = {"INFERENCE_PRECISION_HINT": rest, "PERFORMANCE_HINT": "LATENCY",
              "INFERENCE_NUM_THREADS": torch.get_num_threads()}
    try:
        compiled = core.compile_model(ov_model, "CPU", config)
    except RuntimeError as err:
        raise BackendUnavailable(f"OpenVINO cannot compile this model for this CPU ({_first_line(err)})") from None
    ready = time.perf_counter() - start
    request, outputs = compiled.create_infer_request(), len(compiled.outputs)

    def run(x: torch.Tensor) -> Any:
        if x.ndim != 5 or tuple(x.shape[1:]) != input_size:
            raise ValueError(f"expected a video tensor B x C x T x H x W = B x {'x'.join(map(str, input_size))}, got "
                             f"shape {tuple(x.shape)}; the optimized model is built for that size: call "
                             "vivit.optimize(model, input_size=...) for another")
        x = x.detach().to("cpu", torch.float32).contiguous()  # shared with OpenVINO, not copied, where it can be
        with _infer_lock:
            result = request.infer({0: x.numpy()}, share_inputs=True)  # outputs copied: the request reuses them
        outs = [torch.from_numpy(result[i]) for i in range(outputs)]
        return outs[0] if outputs == 1 else tuple(outs)

    run.compiled = compiled  # the request must never outlive the compiled model
    note = f"openvino {ov.__version__.split('-')[0]} on CPU, {dtype_name(dtype)} ({how}, ready in {ready:.1f} s)"
    return Optimized(model, "openvino", dtype, run, note, source=model)


def _quantize(nncf: Any, ov_model: Any, clips: list[Any], alpha: float) -> Any:
    """NNCF's post-training int8 quantization of the OpenVINO model, with its transformer settings."""
    params = nncf.AdvancedQuantizationParameters(smooth_quant_alphas=nncf.AdvancedSmoothQuantParameters(matmul=alpha))
    try:
        with contextlib.redirect_stdout(sys.stderr):  # NNCF's progress bars: stdout is the caller's (JSON, pipes)
            return nncf.quantize(ov_model, nncf.Dataset(clips), model_type=nncf.ModelType.TRANSFORMER,
                                 subset_size=len(clips), advanced_parameters=params)
    except (RuntimeError, ValueError) as err:
        raise BackendUnavailable(f"NNCF cannot quantize this model ({_first_line(err)})") from None


def _first_line(err: BaseException) -> str:
    """The line of an OpenVINO error that names the problem (its report lists unconverted ops below a header)."""
    named = [line.strip(" -") for line in str(err).splitlines() if "no conversion rule" in line.lower()]
    return (named[0] if named else first_line(err))[:300]


def _convert(ov: Any, model: torch.nn.Module, input_size: tuple[int, ...]) -> Any:
    """torch -> OpenVINO with a free batch and the fixed ``input_size`` (the positional embeddings fix T, H, W)."""
    from openvino.frontend import GeneralFailure, OpConversionFailure

    source = model if param_dtype(model) == torch.float32 else copy.deepcopy(model).float()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            # the tracer's deprecation notice and its warnings about shape checks, constant for the fixed input size
            warnings.simplefilter("ignore")
            return ov.convert_model(source, example_input=torch.zeros(1, *input_size), input=[(-1, *input_size)])
    except (RuntimeError, TypeError, ValueError, OpConversionFailure, GeneralFailure) as err:
        raise BackendUnavailable(f"OpenVINO cannot convert this model ({_first_line(err)})") from None


_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")
_HOOKS = ("_forward_pre_hooks", "_forward_hooks")
_PLAIN = (bool, int, float, str)


_TENSOR = object()  # what _stable makes of a value that holds a tensor


def _stable(value: Any) -> Any:
    """``value`` as JSON data that is the same in every process (no memory addresses); ``_TENSOR`` where it holds a
    tensor."""
    if value is None or isinstance(value, _PLAIN):
        return value
    if isinstance(value, torch.Tensor):
        return _TENSOR
    if isinstance(value, (list, tuple, set, frozenset, dict)):
        items = [_stable(v) for v in (value.values() if isinstance(value, dict) else value)]
        if any(v is _TENSOR for v in items):
            return _TENSOR
        if isinstance(value, dict):
            return dict(zip(map(str, value), items, strict=True))
        return items if isinstance(value, (list, tuple)) else sorted(json.dumps(v, sort_keys=True) for v in items)
    if isinstance(value, (torch.dtype, torch.device, enum.Enum)):
        return str(value)
    name = f"{getattr(value, '__module__', '')}.{getattr(value, '__qualname__', type(value).__qualname__)}"
    code = getattr(value, "__code__", None)
    if callable(value) and code is not None:  # a function: its name and its code (two lambdas differ by their code)
        return f"{name}:{hashlib.sha256(code.co_code + repr(code.co_consts).encode()).hexdigest()[:16]}"
    if isinstance(value, type) or callable(value):
        return name
    return f"{type(value).__qualname__}:{_ADDRESS.sub('', repr(value))}"


def graph_settings(model: torch.nn.Module, *, training: bool = True) -> list[Any]:
    """Every module's class, public state and forward hooks, in module order, as JSON data: what the forward reads
    besides the weights (token merging, sizes, attention, pooling, dropout, train mode unless ``training=False``).
    Private attributes, tensors and ``None`` (per-call outputs such as token sizes) are left out."""
    settings = []
    for name, module in model.named_modules():
        cls = type(module)
        state = {}
        for k, v in vars(module).items():
            if k[0] == "_" or v is None or (k == "training" and not training):
                continue
            if type(v) in _PLAIN:  # the common case, first: every check runs before each optimized call
                state[k] = v
            elif (v := _stable(v)) is not _TENSOR:
                state[k] = v
        hooks = [_stable(hook) for attr in _HOOKS for hook in getattr(module, attr).values()] if (
            module._forward_hooks or module._forward_pre_hooks) else []
        settings.append([name, f"{cls.__module__}.{cls.__qualname__}", state, hooks])
    return settings


def cache_key(model: torch.nn.Module, input_size: tuple[int, ...], openvino_version: str) -> dict[str, Any]:
    """What a converted model depends on: weights, every module's settings, input size, source dtype, versions.
    Not the precision: the IR keeps float32 weights and float32 and bfloat16 share one entry."""
    settings = json.dumps(graph_settings(model), sort_keys=True)
    param = next(model.parameters(), None)
    return {"weights": weights_digest(model), "settings": hashlib.sha256(settings.encode()).hexdigest(),
            "input_size": list(input_size), "source_dtype": dtype_name(param.dtype) if param is not None else None,
            "openvino": openvino_version, "torch": torch.__version__, "vivit": _vivit_version}


def cache_limit_bytes() -> int:
    """The optimize cache's bound, ``$VIVIT_OPTIMIZE_CACHE_GB`` gigabytes (default 4): least recently used entries
    beyond it are removed when a new one is written."""
    text = os.environ.get(CACHE_LIMIT_ENV, "").strip()
    with contextlib.suppress(ValueError):
        if 0 <= (gigabytes := float(text or DEFAULT_CACHE_GB)) < float("inf"):
            return int(gigabytes * 1e9)
    raise ValueError(f"{CACHE_LIMIT_ENV} must be a size in gigabytes (e.g. 4 or 0.5), found {text!r}")


def _cached(cache_dir: str | Path | None, key: dict[str, Any], make: Callable[[], Any], made: str) -> tuple[Any, str]:
    """The cache entry of ``key`` (read, or made with ``make()`` and written), and how it was obtained. An entry not
    to be trusted is neither read nor replaced; a damaged one, or another model's, is removed and made again."""
    name = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    folder = Path(cache_dir or default_cache_dir() / "optimized").expanduser() / f"openvino-{name}"
    start = time.perf_counter()
    reason = untrusted(folder, _FILES) if os.path.lexists(folder) else None
    if reason is not None:
        _say_once(f"vivit.optimize: not using the cached OpenVINO model in {folder}: {reason}; converting the model "
                  f"in memory (remove that entry to cache it again)")
    elif os.path.lexists(folder):
        if (ov_model := _read_entry(folder, key)) is not None:
            return ov_model, f"read from {folder}"
        _say_once(f"vivit.optimize: the cached OpenVINO model in {folder} is damaged or another model's: "
                  "converting it again")
        shutil.rmtree(folder, ignore_errors=True)
    _logger.info("vivit.optimize: %s once (ViViT-B: ~30 s), cached in %s",
                 "converting the model to OpenVINO" if made == "converted" else "quantizing the model to int8", folder)
    fresh = make()
    how = f"{made} in {time.perf_counter() - start:.0f} s"
    written = reason is None and _write_entry(fresh, folder, key)
    return fresh, how + (f", cached in {folder}" if written else ", not cached")


def _read_entry(folder: Path, key: dict[str, Any]) -> Any:
    """The entry's OpenVINO model; ``None`` where it is damaged or another model's."""
    import openvino as ov

    try:
        if (folder / "manifest.json").stat().st_size > _MANIFEST_BYTES:
            return None
        manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
        if {k: manifest.get(k) for k in key} != key:  # copied here, or a name collision: never run it
            return None
        if all(file_sha256(folder / f) == manifest["files"][f] for f in _ENTRY_FILES):
            ov_model = openvino_core().read_model(folder / "model.xml")
            want = ov.PartialShape([-1, *key["input_size"]])  # a planted IR of another size fails here, not at a call
            if len(ov_model.inputs) == 1 and ov_model.inputs[0].get_partial_shape() == want:
                with contextlib.suppress(OSError):
                    os.utime(folder / "manifest.json")  # its time is when the entry was last used (the LRU order)
                return ov_model
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RuntimeError):
        pass
    return None


def _write_entry(ov_model: Any, folder: Path, key: dict[str, Any]) -> bool:
    """Save the model as a whole folder (IR + manifest of key and digests), then keep the cache within its bound;
    ``False`` where it cannot be written (read-only, full disk: nothing of it is left)."""
    import openvino as ov

    file_mode = umask_mode() & ~0o022  # never writable by others: such an entry would not be trusted when read
    folder_mode = (file_mode | (file_mode & 0o444) >> 2) & ~0o022

    def write(tmp: Path) -> None:
        ov.save_model(ov_model, tmp / "model.xml", compress_to_fp16=False)  # fp16 weights would cost accuracy
        files = {f: file_sha256(tmp / f) for f in _ENTRY_FILES}
        (tmp / "manifest.json").write_text(json.dumps({**key, "files": files}, indent=1), encoding="utf-8")
        for f in _FILES:
            os.chmod(tmp / f, file_mode)
        os.chmod(tmp, folder_mode)

    limit = cache_limit_bytes()
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        write_folder_atomic(folder, write)  # another process converting at once: the first folder stays
    except (OSError, RuntimeError) as err:  # OpenVINO's writer says a full disk as RuntimeError "basic_ios::clear"
        reason = err.strerror if isinstance(err, OSError) and err.strerror else _first_line(err)
        _say_once(f"vivit.optimize: cannot write the converted model to {folder.parent} ({reason}), so it is not "
                  "cached and every process converts it again; free space there or set VIVIT_CACHE to a writable "
                  "folder")
        return False
    for entry in evict_least_recent(folder.parent, "openvino-*", _FILES, limit, keep=folder):
        _logger.info("vivit.optimize: removed the least recently used entry %s (the cache is above %s = %.1f GB)",
                     entry, CACHE_LIMIT_ENV, limit / 1e9)
    return True
