"""The dataset-job driver: :func:`run_job` runs one :class:`RunOptions` from start to result; evaluate, extract and a
listing's timelines are :class:`Task` s plugged into it, each holding only its own outputs.

start (torchrun's group, the listing, the model on this rank's runtime) -> identity -> claim the output folder ->
resume (what any rank finds done) -> shard the rest over the ranks -> loader loop (DataLoader workers decode while the
model runs) -> the task consumes each batch -> stop (``stop_after``) -> gather every rank's results -> the task
finishes (rank 0 writes).

A run's **identity** is its inputs (weights digest, model config, views, dtype, decoder, runtime, token merging, the
listing's rows, the task's settings). ``run.json`` records it on the first start; a resume with other inputs is
refused naming what differs, and so is a folder holding a task's outputs without ``run.json``. Rank 0 holds an
``fcntl`` lock on ``out/.lock`` for the whole run, which the system releases when the process dies.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vivit.data.datasets import (
    KINETICS_PATTERN,
    Dist,
    EvalVideos,
    Item,
    Listing,
    collate_views,
    init_distributed,
    is_out_of_memory,
    make_loader,
    read_listing,
    shard,
    to_items,
)
from vivit.data.video import parse_views
from vivit.files import read_json, weights_digest, write_text_atomic
from vivit.progress import Progress
from vivit.tasks.optimize import Optimized
from vivit.tasks.predict import default_views, predict_views
from vivit.tasks.runtime import Runtime, as_dtype, check_backend, dtype_name, setup_runtime
from vivit.weights.build import create_model
from vivit.zoo import tagged_name

_logger = logging.getLogger(__name__)

RUN = "run.json"
LOCK = ".lock"
MAX_WORKERS = 16  # decoding processes per rank; each holds a decoder and its clips (24 once took 6.8 GB)
NOT_FINITE = ("the model's outputs for this video are not finite (NaN or Inf), so they mean nothing; check the "
              "weights (or --dtype float16 overflowing)")


class RunError(RuntimeError):
    """The run as a whole cannot go on (out of memory, a folder another process writes); no video is to blame."""


@dataclass(frozen=True)
class RunOptions:
    """How a dataset job runs (evaluate_dataset's and extract_features' options, as one object or as keywords).

    Attributes:
        views: ``"4x3"``; default the weights' ``eval_views``, else 4x3.
        batch_size: Views per forward pass; the views of ``batch_size // views`` videos share one pass.
        workers: Decoding processes per rank.
        device: Default ``cuda:LOCAL_RANK`` when available, else CPU.
        dtype: The precision the model runs in (``"bfloat16"`` ...); outputs are stored as float32.
        backend: ``"torch"``, ``"auto"``, ``"openvino"`` or a :func:`vivit.optimize` callable of the model (int8).
        decoder: The video decoder: ``"auto"``, ``"pyav"`` or ``"torchcodec"``.
        token_merging: ToMe's ``r`` to set on the model (``None`` keeps the model's).
        compile: ``torch.compile`` the model (torch backend).
        video_root: Folder of a Kinetics CSV's videos (default the CSV's folder).
        pattern: File names of a Kinetics CSV's rows.
        log_every: Videos between progress lines (without a terminal).
        progress_bar: Force the tqdm bar on or off (default: on a terminal).
        stop_after: Leave after this many videos on this rank, as a killed job would (the job returns ``None``).
        env: A :class:`vivit.data.datasets.Dist` (default: join torchrun's group when launched by torchrun).
    """

    views: str | Sequence[int] | None = None
    batch_size: int = 16
    workers: int = 2
    device: str | torch.device | None = None
    dtype: str | torch.dtype | None = None
    backend: str | Optimized = "torch"
    decoder: str = "auto"
    token_merging: Any = None
    compile: bool = False
    video_root: str | Path | None = None
    pattern: str = KINETICS_PATTERN
    log_every: int = 100
    progress_bar: bool | None = None
    stop_after: int | None = None
    env: Dist | None = None

    def __post_init__(self) -> None:
        if isinstance(self.backend, str):
            check_backend(self.backend)
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, found {self.batch_size}")
        if not isinstance(self.workers, int) or not 0 <= self.workers <= MAX_WORKERS:
            raise ValueError(f"workers must be an integer from 0 to {MAX_WORKERS} (each decoding process holds its "
                             f"own decoder and clips: 24 took 6.8 GB), found {self.workers!r}")

    @classmethod
    def of(cls, options: RunOptions | None, changes: dict[str, Any]) -> RunOptions:
        """``options`` (default the defaults) with ``changes``, a job function's keywords."""
        return dataclasses.replace(options or cls(), **changes)


@dataclass
class Run:
    """A job set up on this rank: the listing's rows, the model ready to run, its views, and the output folder."""

    listing: Path
    out: Path
    rows: Listing
    runtime: Runtime
    name: str
    views: tuple[int, int]
    opts: RunOptions
    env: Dist
    weights: str
    items: list[Item] = dataclasses.field(default_factory=list)  # the listing's videos, once checked

    @property
    def model(self) -> Any:
        return self.runtime.model

    def identity(self, **extra: Any) -> dict[str, Any]:
        """The inputs a resume must share with the first start (``extra``: the task's own settings); a new option
        that changes the outputs joins here, so runs recorded without it are refused rather than mixed."""
        fast = self.runtime.fast  # an int8 model's calibration set: another set quantizes another model
        calibration = {"calibration": fast.calibration} if fast is not None and fast.calibration else {}
        rows = "\n".join(f"{p}\t{lab}" for p, lab in zip(self.rows.paths, self.rows.labels, strict=True))
        return {"model": self.name, "weights": self.weights, **model_identity(self.model),
                "views": f"{self.views[0]}x{self.views[1]}", "dtype": dtype_name(self.runtime.dtype),
                "decoder": self.opts.decoder, "backend": self.runtime.backend, **extra, **calibration,
                "num_videos": self.num, "listing": _digest(rows)}

    @property
    def num(self) -> int:
        return len(self.rows.paths)


class Task:
    """One dataset job's own parts, plugged into :func:`run_job`, which calls them in this order (rank 0 alone
    calls ``finish``)."""

    what = "job"  # the first word of progress lines
    outputs: tuple[str, ...] = ()  # glob patterns of its files: found without run.json, the folder is refused
    stop_note = ""  # what a stop leaves out
    pre_logits = False  # an optimized runtime returns pre-logits features
    settings: dict[str, Any] = {}  # its own settings, part of the run's identity

    def forward(self, model: Any) -> Callable[[torch.Tensor], torch.Tensor] | None:  # torch's call (None: the model)
        return None

    def prepare(self, run: Run) -> dict[str, Any]:  # check the listing against the model; the identity's fields
        return self.settings

    def resume(self, run: Run) -> dict[int, Any]:  # {video index: result} this rank finds done; get ready for more
        return {}

    def batches(self, run: Run, mine: list[int]) -> Iterator[list[tuple[int, str, Any, str | None]] | None]:
        """This rank's videos, batch by batch: decoded in the loader's workers, run through the model and checked
        finite (``None``: the task stops early on a count of its own). Running out of memory stops the run with what
        to lower (it is no fault of one video)."""
        ds = EvalVideos([run.items[i] for i in mine], run.model, run.views, decoder=run.opts.decoder)
        per_batch = max(1, run.opts.batch_size // math.prod(run.views))  # whole videos, as many as fit (at least one)
        loader = make_loader(ds, batch_size=per_batch, workers=run.opts.workers, collate_fn=collate_views,
                             pin_memory=run.env.device.type == "cuda")
        try:
            for batch in loader:
                views = batch["views"]  # float32 on the CPU: predict_views moves and casts each chunk
                out = None if views is None else predict_views(run.model, views, run.opts.batch_size, reduce=False,
                                                               device=run.runtime.device, run=run.runtime.fn)
                parts = iter(out.split([c for c in batch["counts"] if c]) if out is not None else [])
                done = []
                for record, count in zip(batch["records"], batch["counts"], strict=True):
                    values = next(parts) if count else None  # None: no views (decoding failed)
                    bad = values is not None and not bool(torch.isfinite(values).all())
                    done.append((mine[record["index"]], record["path"], None if bad else values,
                                 NOT_FINITE if bad else record["error"]))
                yield done
        except (MemoryError, RuntimeError) as err:
            if not isinstance(err, MemoryError) and not is_out_of_memory(err):
                raise
            raise RunError(f"out of memory running {run.name} on {run.env.device} ({type(err).__name__}); lower "
                           f"--batch-size (now {run.opts.batch_size}), --workers (now {run.opts.workers}) or --views "
                           f"(now {run.views[0]}x{run.views[1]}), or use --dtype bfloat16; run again with the same "
                           "--out to continue") from None

    def consume(self, run: Run, batch: list[tuple[int, str, Any, str | None]]) -> None:
        """Per video: listing index, path, its outputs (of ``batches``: per-view outputs) or ``None`` (unreadable or
        not finite) and the reason."""
        raise NotImplementedError

    def end(self, run: Run, completed: bool) -> dict[int, Any]:  # this rank's results (a resumed index keeps its own)
        return {}

    def finish(self, run: Run, identity: dict[str, Any], results: dict[int, Any]) -> dict[str, Any]:  # rank 0 writes
        raise NotImplementedError

    def cleanup(self, run: Run) -> None:  # every rank, after rank 0 finished
        return None


def run_job(listing: str | Path, model: torch.nn.Module | str, out: str | Path, task: Task,
            opts: RunOptions) -> dict[str, Any] | None:
    """Run ``task`` over every video of ``listing`` into ``out`` (module docstring); its result on rank 0, ``None``
    on other ranks and when ``stop_after`` left early."""
    check_settings(out, opts, **task.settings)
    # torchrun's process group is joined here (and left at the end) unless the caller passes its own
    with contextlib.nullcontext(opts.env) if opts.env else contextlib.closing(init_distributed(opts.device)) as env:
        rows = read_listing(listing, video_root=opts.video_root, pattern=opts.pattern)
        model, name, weights = prepare_model(model, env)
        runtime = setup_runtime(model, env.device, opts.dtype, opts.backend, opts.token_merging,
                                pre_logits=task.pre_logits, compile=opts.compile, forward=task.forward)
        views = default_views(model) if opts.views is None else parse_views(opts.views)
        run = Run(Path(listing), Path(out), rows, runtime, name, views, opts, env, weights)
        extra = task.prepare(run)
        # A listing none of whose files exists (a wrong --video-root) is refused here, before anything is written.
        run.items = to_items(run.rows.paths, [None] * run.num, run.rows.where, [], str(run.listing))
        identity = run.identity(**extra)
        with claimed(run.out, identity, env, task.outputs):
            done = _gathered(env, task.resume(run), {})
            if env.main and done:
                _logger.info("%s: %d of %d videos already done; continuing", run.out, len(done), run.num)
            mine = shard([i for i in range(run.num) if i not in done], env.rank, env.world_size)
            if (collected := _loop(run, task, mine)) is None:
                return None
            results = _gathered(env, collected, done)
            result = task.finish(run, identity, results) if env.main else None
            env.barrier()
            task.cleanup(run)
            return result


def _gathered(env: Dist, mine: dict[int, Any], into: dict[int, Any]) -> dict[int, Any]:
    """``into`` with every rank's ``mine`` added (an index already there keeps its value, a lower rank's wins)."""
    return {i: value for part in reversed(env.all_gather_object(mine)) for i, value in part.items()} | into


def _loop(run: Run, task: Task, mine: list[int]) -> dict[int, Any] | None:
    """This rank's videos through ``task``; its results, ``None`` when ``stop_after`` (or the task) left early."""
    env = run.env
    bar = Progress(len(mine), task.what, every=run.opts.log_every, show=run.opts.progress_bar if env.main else False,
                   where=f" [rank {env.rank}]" if env.world_size > 1 else "", log=_logger)
    completed = False
    try:
        for batch in task.batches(run, mine):
            if batch is None:
                return None
            task.consume(run, batch)
            bar.update(len(batch), failed=sum(reason is not None for *_, reason in batch))
            if run.opts.stop_after is not None and bar.new >= run.opts.stop_after:
                _logger.warning("stopping after %d videos as asked%s; run again with the same --out to continue",
                                bar.new, task.stop_note)
                return None
        completed = True
    finally:
        collected = task.end(run, completed)
        rate = bar.close()
    _logger.info("rank %d: %d videos at %.2f videos/s", env.rank, bar.new, rate)
    return collected


def prepare_model(model: torch.nn.Module | str, env: Dist) -> tuple[Any, str, str]:
    """The model (a name is created with its released weights, downloaded by rank 0 first), its name (``arch.tag``,
    else the class name) and the digest of its weights."""
    if isinstance(model, str):
        name = model
        if not env.main:
            env.barrier()  # rank 0 downloads (and caches) the weights first, the others then read the cache
        model = create_model(name, pretrained=True)
        if env.main:
            env.barrier()
    else:
        cfg = getattr(model, "pretrained_cfg", None) or {}
        name = tagged_name(cfg.get("architecture") or type(model).__name__, cfg.get("tag"))
    return model, name, weights_digest(model)[:16]


def model_identity(model: torch.nn.Module) -> dict[str, Any]:
    """What every run's identity (a dataset job's, a timeline's) records of the model besides its weights: a digest
    of its config, its token merging and the threshold of skipped static tubelets (0: off)."""
    args = getattr(model, "model_args", None)
    config = None if args is None else _digest(json.dumps(args, sort_keys=True, default=lambda v: list(v) if isinstance(
        v, tuple) else str(v)))
    return {"config": config, "token_merging": _merging_json(getattr(model, "token_merging", 0)),
            "drop_static": float(getattr(model, "drop_static", 0) or 0)}


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _merging_json(r: Any) -> Any:
    """ToMe's ``r`` as JSON: an ``(r, inflection)`` pair as a dict, so it never reads as a per-block list."""
    return {"r": r[0], "inflection": r[1]} if isinstance(r, tuple) else list(r) if isinstance(r, list) else r


# ================================================================================================ output folder
@contextlib.contextmanager
def claimed(out: Path, identity: dict[str, Any], env: Dist, outputs: Sequence[str] = ()) -> Iterator[dict[str, Any]]:
    """Own ``out`` for the run: the lock (rank 0), then the identity checked against ``run.json`` (a run started with
    other inputs is refused) or recorded on a first start (a folder holding any of ``outputs``, glob patterns of the
    job's files, but no ``run.json`` is refused). Yields what ``run.json`` held (``{}`` on a first start)."""
    lock = _lock(out) if env.main else None
    saved: dict[str, Any] = {}
    try:
        if (out / RUN).exists():
            saved = _compare(out, identity)
        elif found := next((p for pattern in outputs for p in sorted(out.glob(pattern))), None):
            raise ValueError(f"{found}: an output of a run without {RUN}, so its settings are unknown (an older "
                             "vivit's, or another tool's); delete the folder's outputs to start over, or pass another "
                             "--out")
        elif env.main:
            out.mkdir(parents=True, exist_ok=True)
            write_text_atomic(out / RUN, json.dumps(identity, indent=2) + "\n")
        env.barrier()
        yield saved
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


def check_settings(out: str | Path, opts: RunOptions, **extra: Any) -> None:
    """Refuse a resume whose settings known without the model (``extra``: the task's own) differ from those
    ``out/run.json`` recorded, before the model is built or downloaded."""
    if not (Path(out) / RUN).exists():
        return
    backend = opts.backend.backend if isinstance(opts.backend, Optimized) else opts.backend
    known = {"decoder": opts.decoder, **extra, "views": opts.views and "{}x{}".format(*parse_views(opts.views)),
             "backend": None if backend == "auto" else backend,  # "auto" is recorded as what it picked
             "dtype": opts.dtype and dtype_name(as_dtype(opts.dtype)), "token_merging": opts.token_merging}
    check_recorded(out, {k: v for k, v in known.items() if v is not None})


def check_recorded(out: str | Path, known: dict[str, Any]) -> None:
    """Refuse a resume whose ``known`` settings (those the command line states; ``token_merging`` as given) differ
    from those ``out/run.json`` recorded; nothing to compare without one."""
    if (Path(out) / RUN).exists():
        merging = {"token_merging": _merging_json(known["token_merging"])} if "token_merging" in known else {}
        _compare(Path(out), {**known, **merging})


class OtherSettings(ValueError):
    """A resume with other settings than the folder's ``run.json`` recorded (the CLI's bad usage when the flags
    differ)."""


def _compare(out: Path, identity: dict[str, Any]) -> dict[str, Any]:
    saved = read_json(out / RUN, "the settings of a run")
    changed = {k: (saved.get(k), v) for k, v in identity.items() if saved.get(k) != v}
    if changed:
        raise OtherSettings(f"{out}: holds a run with other settings (" + ", ".join(
            _difference(k, old, new) for k, (old, new) in changed.items())
            + "); continue it with the same settings, or pass another --out")
    return saved


def _difference(key: str, old: Any, new: Any) -> str:
    if key == "listing":
        return "the listing's rows differ"
    if key in ("weights", "config"):
        return f"the model's {key} differ ({old} was recorded, this model's are {new})"
    return f"{key} was {old!r}, now {new!r}"


__all__ = ["Run", "RunError", "RunOptions", "Task", "check_settings", "claimed", "model_identity", "prepare_model",
           "run_job"]
