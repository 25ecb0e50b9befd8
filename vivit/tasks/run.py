"""What every dataset job shares: its options, the output folder (identity, lock, resume), the model on this rank,
and the batch loop that decodes in workers while the model runs.

A run's **identity** is its inputs: the weights (a digest of the state dict), the model's config, the views, the
dtype, the listing's rows, and each job's own settings. ``run.json`` records it on the first start; a resume with any
other input is refused with one line naming what differs. One process writes an output folder at a time: rank 0
holds an ``fcntl`` lock on ``out/.lock`` for the whole run, which the system releases when the process dies, so a
killed run never leaves the folder locked.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vivit.data.datasets import (
    KINETICS_PATTERN,
    Dist,
    EvalVideos,
    Listing,
    collate_views,
    init_distributed,
    is_out_of_memory,
    make_loader,
    read_listing,
)
from vivit.data.video import BACKENDS as DECODERS
from vivit.data.video import parse_views
from vivit.files import write_text_atomic
from vivit.progress import progress_bar
from vivit.tasks.optimize import BACKENDS, DTYPES, Optimized, optimize
from vivit.tasks.predict import default_views
from vivit.weights.build import create_model
from vivit.zoo import tagged_name

_logger = logging.getLogger(__name__)

RUN = "run.json"
LOCK = ".lock"


class RunError(RuntimeError):
    """The run as a whole cannot go on (out of memory, a folder another process writes); no video is to blame."""


@dataclass(frozen=True)
class RunOptions:
    """How a dataset job runs; the arguments of :func:`vivit.tasks.evaluate.evaluate_dataset` and
    :func:`vivit.tasks.extract.extract_features` that both take (see there)."""

    views: str | Sequence[int] | None = None
    batch_size: int = 16
    workers: int = 2
    dtype: str | torch.dtype | None = None
    compile: bool = False
    video_root: str | Path | None = None
    pattern: str = KINETICS_PATTERN
    decoder: str = "auto"
    log_every: int = 100
    progress_bar: bool | None = None
    stop_after: int | None = None
    backend: str = "torch"  # "torch": the model as it is; "auto" / "openvino": through vivit.optimize
    pre_logits: bool = False  # the optimized callable returns pre-logits features instead of logits

    def __post_init__(self) -> None:
        check_backend(self.backend)


def check_backend(backend: str) -> None:
    """``backend`` names what runs the model; a decoder's name there (its meaning before 0.3) is refused, naming
    ``decoder=``, so an old call never silently means something else."""
    if backend in DECODERS:
        raise ValueError(f"backend={backend!r} names a video decoder, but backend now chooses what runs the model "
                         f"({', '.join(BACKENDS)}); choose the decoder with decoder={backend!r}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, found {backend!r}")


@dataclass
class Run:
    """A job set up on this rank: the listing's rows, the model ready to run, its views, and the output folder."""

    listing: Path
    out: Path
    rows: Listing
    model: Any
    name: str
    views: tuple[int, int]
    opts: RunOptions
    env: Dist
    weights: str
    fast: Optimized | None = None  # vivit.optimize's callable when opts.backend is not "torch"

    def identity(self, **extra: Any) -> dict[str, Any]:
        """The inputs a resume must share with the first start (``extra``: the job's own settings).

        A new option that changes the outputs (e.g. token merging) joins here, next to ``backend``: runs recorded
        without it then differ from runs with it, and are refused rather than mixed.
        """
        return {"model": self.name, "weights": self.weights, "config": _config_digest(self.model),
                "views": f"{self.views[0]}x{self.views[1]}",
                "dtype": str(self.fast.dtype).removeprefix("torch.") if self.fast else dtype_name(self.model),
                "decoder": self.opts.decoder, "backend": self.fast.backend if self.fast else "torch",
                "token_merging": token_merging(self.model), **extra,
                "num_videos": len(self.rows.paths),
                "listing": _listing_digest(self.rows)}

    @property
    def num(self) -> int:
        return len(self.rows.paths)


@contextlib.contextmanager
def joined(env: Dist | None, device: str | torch.device | None) -> Iterator[Dist]:
    """``env``, or torchrun's process group joined here and left at the end."""
    if env is not None:
        yield env
        return
    env = init_distributed(device)
    try:
        yield env
    finally:
        env.close()


@contextlib.contextmanager
def started(listing: str | Path, model: torch.nn.Module | str, out: str | Path, opts: RunOptions, env: Dist | None,
            device: str | torch.device | None) -> Iterator[Run]:
    """:func:`start` inside torchrun's process group (joined here when ``env`` is ``None``, and left at the end)."""
    with joined(env, device) as env:
        yield start(listing, model, out, opts, env)


def start(listing: str | Path, model: torch.nn.Module | str, out: str | Path, opts: RunOptions, env: Dist) -> Run:
    """Read the listing and make the model ready on this rank (nothing is written yet)."""
    if opts.batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, found {opts.batch_size}")
    rows = read_listing(listing, video_root=opts.video_root, pattern=opts.pattern)
    optimized = opts.backend != "torch"
    model, name, weights = prepare_model(model, env, None if optimized else opts.dtype)
    fast = optimize(model, opts.dtype, backend=opts.backend, pre_logits=opts.pre_logits) if optimized else None
    _logger.info("backend %s", fast.note if fast else "torch")
    views = default_views(model) if opts.views is None else parse_views(opts.views)
    return Run(Path(listing), Path(out), rows, model, name, views, opts, env, weights, fast)


def prepare_model(model: torch.nn.Module | str, env: Dist,
                   dtype: str | torch.dtype | None) -> tuple[Any, str, str]:
    """The model on this rank's device, in eval mode and ``dtype``, its name and the digest of its weights (taken
    before the cast); a name is created with its released weights."""
    name = model if isinstance(model, str) else model_name(model)
    if isinstance(model, str):
        if not env.main:
            env.barrier()  # rank 0 downloads (and caches) the weights first, the others then read the cache
        model = create_model(name, pretrained=True)
        if env.main:
            env.barrier()
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, found {dtype!r}")
        dtype = DTYPES[dtype]
    weights = weights_digest(model)
    if dtype is not None:
        model = model.to(dtype)
    return model.to(env.device).eval(), name, weights


def model_name(model: torch.nn.Module) -> str:
    """``arch.tag`` of the model's pretrained cfg (the class name without one)."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return tagged_name(cfg.get("architecture") or type(model).__name__, cfg.get("tag"))


def weights_digest(model: torch.nn.Module) -> str:
    """SHA-256 (16 hex digits) over every state-dict entry's name, dtype, shape and bytes: other weights, other run."""
    digest = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        tensor = value.detach().to("cpu").contiguous()
        digest.update(f"{key}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def _config_digest(model: torch.nn.Module) -> str | None:
    args = getattr(model, "model_args", None)
    if args is None:
        return None
    text = json.dumps(args, sort_keys=True, default=lambda v: list(v) if isinstance(v, tuple) else str(v))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def token_merging(model: torch.nn.Module) -> Any:
    """The model's ToMe ``r`` as JSON (an ``(r, inflection)`` pair as a dict, so it never reads as a per-block list)."""
    r = getattr(model, "token_merging", 0)
    return {"r": r[0], "inflection": r[1]} if isinstance(r, tuple) else r


def dtype_name(model: torch.nn.Module) -> str:
    """The model's parameter dtype without ``torch.`` (``float32`` for a model without parameters)."""
    param = next(model.parameters(), None)
    return str(param.dtype).removeprefix("torch.") if param is not None else "float32"


def param_dtype(model: torch.nn.Module) -> torch.dtype:
    """The dtype inputs are cast to: the model's floating-point parameters', else float32."""
    param = next(model.parameters(), None)
    return param.dtype if param is not None and param.is_floating_point() else torch.float32


def _listing_digest(rows: Listing) -> str:
    """Paths and labels of the listing: a run resumes only on the same rows."""
    return hashlib.sha256("\n".join(f"{p}\t{lab}" for p, lab in zip(rows.paths, rows.labels, strict=True))
                          .encode()).hexdigest()[:16]


# ================================================================================================ output folder
@contextlib.contextmanager
def claimed(out: Path, identity: dict[str, Any], env: Dist) -> Iterator[None]:
    """Own ``out`` for the run: the lock (rank 0), then the identity checked against ``run.json`` or recorded."""
    lock = _lock(out) if env.main else None
    try:
        _check_identity(out, identity, env)
        yield
    finally:
        if lock is not None:
            lock.close()  # closing the file releases the lock


def _lock(out: Path) -> Any:
    """An exclusive ``flock`` on ``out/.lock``, or an error naming the process that holds it."""
    try:
        import fcntl
    except ImportError:  # Windows: no flock; one writer per folder is then the user's to keep
        return None
    out.mkdir(parents=True, exist_ok=True)
    handle = open(out / LOCK, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "?"
        handle.close()
        raise RunError(f"{out}: another vivit process (pid {holder}) is writing this folder; wait for it to finish, "
                       "or pass another --out") from None
    handle.truncate(0)
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


def _check_identity(out: Path, identity: dict[str, Any], env: Dist) -> None:
    """Refuse to continue a run in ``out`` that was started with other inputs; record them on a first start."""
    path = out / RUN
    if path.exists():
        saved = read_json(path, "the settings of a run")
        changed = {k: (saved.get(k), v) for k, v in identity.items() if saved.get(k) != v}
        if changed:
            raise ValueError(f"{out}: holds a run with other settings (" + ", ".join(
                _difference(k, old, new) for k, (old, new) in changed.items())
                + "); continue it with the same settings, or pass another --out")
    elif env.main:
        out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, json.dumps(identity, indent=2) + "\n")
    env.barrier()


def _difference(key: str, old: Any, new: Any) -> str:
    if key == "listing":
        return "the listing's rows differ"
    if key in ("weights", "config"):
        return f"the model's {key} differ ({old} was recorded, this model's are {new})"
    return f"{key} was {old!r}, now {new!r}"


def read_json(path: Path, what: str) -> dict[str, Any]:
    """A JSON object this package wrote, or one line naming the file when it is not one."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise ValueError(f"{path}: is not valid JSON ({type(err).__name__}); it should hold {what}: delete it (and "
                         "the folder's other outputs) to start over, or pass another --out") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path}: holds a JSON {type(value).__name__}, expected an object with {what}; delete it "
                         "to start over, or pass another --out")
    return value


# ================================================================================================ batch loop
class Progress:
    """A tqdm bar (videos/s, ETA) when stderr is a terminal; otherwise a log line every ``every`` videos."""

    def __init__(self, total: int, what: str, every: int, env: Dist, bar: bool | None = None) -> None:
        self.total, self.what, self.every, self.env = total, what, max(1, every), env
        self.done = self.failed = 0
        self.start = time.perf_counter()
        self.bar = (progress_bar(total=total, desc=what, unit="video", dynamic_ncols=True, show=bar) if env.main
                    else None)

    def update(self, n: int, failed: int) -> None:
        self.done, self.failed = self.done + n, self.failed + failed
        if self.bar is not None:
            self.bar.update(n)
            if failed:
                self.bar.set_postfix(failed=self.failed)
        elif self.done // self.every != (self.done - n) // self.every or self.done == self.total:
            rate = self.done / max(time.perf_counter() - self.start, 1e-9)
            eta = (self.total - self.done) / rate if rate else math.inf
            _logger.info("%s%s: %d/%d videos (%d failed), %.2f videos/s, ETA %s", self.what,
                         f" [rank {self.env.rank}]" if self.env.world_size > 1 else "", self.done, self.total,
                         self.failed, rate, _duration(eta))

    def close(self) -> float:
        if self.bar is not None:
            self.bar.close()
        return self.done / max(time.perf_counter() - self.start, 1e-9)


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes // 60}h{minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m{secs:02d}s"


def outputs(run: Run, fn: Callable[[torch.Tensor], torch.Tensor],
            items: Sequence[Any]) -> Iterator[tuple[list[dict[str, Any]], list[torch.Tensor | None]]]:
    """Per loaded batch of ``items``: its video records and each video's per-view outputs (``None`` where decoding
    failed). Running out of memory stops the run with what to lower (it is no fault of one video)."""
    fn = run.fast or (torch.compile(fn) if run.opts.compile else fn)
    ds = EvalVideos(items, run.model, run.views, decoder=run.opts.decoder)
    dtype = param_dtype(run.model)
    try:
        for batch in _batches(ds, run):
            views = batch["views"]
            out = _forward(fn, views, run.opts.batch_size, run.env.device, dtype) if views is not None else None
            yield batch["records"], _split(out, batch["counts"])
    except (MemoryError, RuntimeError) as err:
        if not isinstance(err, MemoryError) and not is_out_of_memory(err):
            raise
        raise RunError(f"out of memory running {run.name} on {run.env.device} ({type(err).__name__}); lower "
                       f"--batch-size (now {run.opts.batch_size}), --workers (now {run.opts.workers}) or --views "
                       f"(now {run.views[0]}x{run.views[1]}), or use --dtype bfloat16; run again with the same --out "
                       "to continue") from None


def _batches(ds: EvalVideos, run: Run) -> Iterable[dict]:
    """Loader of :func:`collate_views` batches: as many whole videos as fit in ``batch_size`` views (at least one)."""
    per_batch = max(1, run.opts.batch_size // math.prod(run.views))
    return make_loader(ds, batch_size=per_batch, workers=run.opts.workers, collate_fn=collate_views,
                       pin_memory=run.env.device.type == "cuda")


@torch.inference_mode()
def _forward(fn: Callable[[torch.Tensor], torch.Tensor], views: torch.Tensor, batch_size: int, device: torch.device,
             dtype: torch.dtype) -> torch.Tensor:
    """``fn`` over ``views`` in chunks of ``batch_size``, float32 on the CPU."""
    outs = [fn(views[i:i + batch_size].to(device, dtype, non_blocking=True)).float().cpu()
            for i in range(0, views.shape[0], batch_size)]
    return torch.cat(outs)


def _split(values: torch.Tensor | None, counts: Sequence[int]) -> list[torch.Tensor | None]:
    """Per-record slices of the concatenated views' outputs (``None`` for records without views)."""
    parts = iter(values.split([c for c in counts if c]) if values is not None else [])
    return [next(parts) if c else None for c in counts]


NOT_FINITE = ("the model's outputs for this video are not finite (NaN or Inf), so they mean nothing; check the "
              "weights (or --dtype float16 overflowing)")


def finite_or_reason(values: torch.Tensor | None, error: str | None) -> tuple[torch.Tensor | None, str | None]:
    """``(values, None)`` when every value is finite; ``(None, reason)`` for a failed video or non-finite outputs."""
    if values is None:
        return None, error
    if not bool(torch.isfinite(values).all()):
        return None, NOT_FINITE
    return values, None


def stopping(run: Run, processed: int, what: str) -> bool:
    """Whether ``stop_after`` asks to leave now (logged as a killed job's stop)."""
    if run.opts.stop_after is None or processed < run.opts.stop_after:
        return False
    _logger.warning("stopping after %d videos as asked%s; run again with the same --out to continue", processed, what)
    return True




def trim_torn_line(path: Path) -> None:
    """Cut a last line that a kill left without its newline, so appended lines start on a line of their own."""
    if not path.exists() or path.stat().st_size == 0:
        return
    data = path.read_bytes()
    if not data.endswith(b"\n"):
        with open(path, "r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)


__all__ = ["Progress", "Run", "RunError", "RunOptions", "check_backend", "claimed", "dtype_name", "finite_or_reason",
           "joined", "model_name", "outputs", "param_dtype", "prepare_model", "read_json", "start", "started",
           "stopping", "token_merging", "trim_torn_line", "weights_digest"]
