"""Whole datasets: evaluate a classifier on, or extract features from, every video of a listing.

Both jobs run the same way on one process or under ``torchrun --nproc_per_node N`` (and across nodes): each rank
takes a disjoint shard of the videos not done yet, decodes them in DataLoader workers while the model runs, and
batches the views of several videos into one forward pass. ``torch.distributed`` is used only to gather results
(gloo on CPU, NCCL on GPU); rank 0 writes the merged outputs, identical to those of a single-process run.

**evaluate** (:func:`evaluate_dataset`) writes into ``out``:

- ``predictions.jsonl``: one line per video as it is done (``index`` in the listing, ``path``, ``label``, ``status``
  ``ok``/``failed``, top-5 or the failure ``reason``, ``logits_row``); ranks of a distributed run write
  ``predictions.rank<r>.jsonl`` and rank 0 merges them at the end. The finished file is in listing order.
- ``logits.npy``: ``(num_videos, num_classes)`` float32 view-averaged logits, row = listing index (NaN: failed).
- ``report.json``: ``top1``, ``top5``, ``mean_class_accuracy`` (percent, over the videos that could be read),
  ``top1_failed_as_wrong``, ``num_videos``, ``num_labelled``, ``num_evaluated``, ``num_failed``, ``failed`` (path and
  one-line reason each), ``views``, ``model``, ``dtype``; for a split head (EPIC-Kitchens: nouns | verbs) ``parts``
  with each part's top-1/top-5/mean class accuracy; ``top1`` / ``top5`` are then the *action* accuracies (every part
  right, within its top 5) and ``mean_class_accuracy`` the mean over the parts.
- ``per_class.csv`` (per-class accuracy and the class each one is most confused with) and ``confusion.png``
  (row-normalised confusion matrix; needs matplotlib).

A run killed midway and started again with the same ``out`` continues where it stopped (``run.json`` holds the
settings it must keep) and ends with the same report as an uninterrupted run.

**extract** (:func:`extract_features`) writes pooled pre-logits features (``forward_head(forward_features(x),
pre_logits=True)``, or the token mean of block ``layer``) per video (the mean over views) or per view, in safetensors
shards under ``out/shards/`` and ``out/index.json`` mapping each video to its shard and rows;
:func:`load_features` reads them back in listing order.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vivit.files import write_atomic, write_text_atomic
from vivit.data.datasets import (
    KINETICS_PATTERN,
    DataError,
    Dist,
    EvalVideos,
    Listing,
    class_index,
    collate_views,
    init_distributed,
    make_loader,
    read_listing,
    shard,
    to_items,
)
from vivit.tasks.optimize import Optimized, optimize
from vivit.tasks.predict import default_views, top_k
from vivit.weights.build import create_model
from vivit.labels import LABEL_SETS
from vivit.data.video import parse_views

_logger = logging.getLogger(__name__)

PREDICTIONS = "predictions.jsonl"
REPORT = "report.json"
LOGITS = "logits.npy"
INDEX = "index.json"
RUN = "run.json"
SPLIT_SEPARATOR = "|"  # a split head's label: one label per part, in logit order ("noun|verb" for EPIC-Kitchens)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# ================================================================================================ shared parts
def _prepare_model(model: torch.nn.Module | str, env: Dist, dtype: str | torch.dtype | None) -> tuple[Any, str]:
    """The model on this rank's device, in eval mode and ``dtype``; a name is created with its released weights."""
    name = model if isinstance(model, str) else _model_name(model)
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
    if dtype is not None:
        model = model.to(dtype)
    return model.to(env.device).eval(), name


def _model_name(model: torch.nn.Module) -> str:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    arch, tag = cfg.get("architecture") or type(model).__name__, cfg.get("tag")
    return f"{arch}.{tag}" if tag else arch


def _dtype_name(model: torch.nn.Module, fast: Optimized | None = None) -> str:
    """The precision the model runs in: the optimized callable's where there is one, else the weights'."""
    if fast is not None:
        return str(fast.dtype).removeprefix("torch.")
    param = next(model.parameters(), None)
    return str(param.dtype).removeprefix("torch.") if param is not None else "float32"


def _views(model: torch.nn.Module, views: str | Sequence[int] | None) -> tuple[int, int]:
    return default_views(model) if views is None else parse_views(views)


def _check_run(out: Path, settings: dict[str, Any], env: Dist) -> None:
    """Refuse to continue a run in ``out`` that was started with other settings; record them for a first start."""
    path = out / RUN
    if path.exists():
        saved = json.loads(path.read_text())
        changed = {k: (saved.get(k), v) for k, v in settings.items() if saved.get(k) != v}
        if changed:
            raise ValueError(f"{out}: holds a run with other settings (" + ", ".join(
                "the listing's rows differ" if k == "listing" else f"{k} was {old!r}, now {new!r}"
                for k, (old, new) in changed.items())
                + "); continue it with the same settings, or pass another --out")
    elif env.main:
        out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, json.dumps(settings, indent=2) + "\n")
    env.barrier()


def _listing_digest(rows: Listing) -> str:
    """Paths and labels of the listing: a run resumes only on the same rows."""
    return hashlib.sha256("\n".join(f"{p}\t{lab}" for p, lab in zip(rows.paths, rows.labels, strict=True))
                          .encode()).hexdigest()[:16]


class _Progress:
    """A tqdm bar (videos/s, ETA) when stderr is a terminal; otherwise a log line every ``every`` videos."""

    def __init__(self, total: int, what: str, every: int, env: Dist, bar: bool | None = None) -> None:
        self.total, self.what, self.every, self.env = total, what, max(1, every), env
        self.done = self.failed = 0
        self.start = time.perf_counter()
        self.bar = None
        if (sys.stderr.isatty() if bar is None else bar) and env.main:
            try:
                from tqdm.auto import tqdm
            except ImportError:
                pass
            else:
                self.bar = tqdm(total=total, desc=what, unit="video", dynamic_ncols=True)

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


def _outputs(fn: Callable[[torch.Tensor], torch.Tensor], ds: EvalVideos, view_shape: tuple[int, int],
             batch_size: int, workers: int, env: Dist,
             model_dtype: torch.dtype) -> Iterator[tuple[list[dict[str, Any]], list[torch.Tensor | None]]]:
    """Per loaded batch: its video records and each video's per-view outputs (``None`` where decoding failed)."""
    for batch in _batches(ds, view_shape, batch_size, workers, env):
        views = batch["views"]
        outputs = _run(fn, views, batch_size, env.device, model_dtype) if views is not None else torch.empty(0)
        yield batch["records"], _split(outputs, batch["counts"])


def _batches(ds: EvalVideos, views: tuple[int, int], batch_size: int, workers: int, env: Dist) -> Iterable[dict]:
    """Loader of :func:`collate_views` batches: as many whole videos as fit in ``batch_size`` views (at least one)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, found {batch_size}")
    per_batch = max(1, batch_size // math.prod(views))
    return make_loader(ds, batch_size=per_batch, workers=workers, collate_fn=collate_views,
                       pin_memory=env.device.type == "cuda")


@torch.inference_mode()
def _run(fn: Callable[[torch.Tensor], torch.Tensor], views: torch.Tensor, batch_size: int, device: torch.device,
         dtype: torch.dtype) -> torch.Tensor:
    """``fn`` over ``views`` in chunks of ``batch_size``, float32 on the CPU."""
    outs = [fn(views[i:i + batch_size].to(device, dtype, non_blocking=True)).float().cpu()
            for i in range(0, views.shape[0], batch_size)]
    return torch.cat(outs)


def _split(values: torch.Tensor, counts: Sequence[int]) -> list[torch.Tensor | None]:
    """Per-record slices of the concatenated views' outputs (``None`` for records without views)."""
    parts = iter(values.split([c for c in counts if c]) if values.numel() else [])
    return [next(parts) if c else None for c in counts]


def _param_dtype(model: torch.nn.Module) -> torch.dtype:
    param = next(model.parameters(), None)
    return param.dtype if param is not None and param.is_floating_point() else torch.float32


def _begin(env: Dist | None, device: str | torch.device | None) -> tuple[Dist, bool]:
    if env is not None:
        return env, False
    return init_distributed(device), True


# ================================================================================================ labels
def _class_parts(model: torch.nn.Module) -> tuple[list[int], list[str], list[str]]:
    """``(split sizes, class names, part names)`` of the model's head; one part unless ``class_splits`` says more."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    num = int(model.num_classes)
    splits = [int(s) for s in cfg.get("class_splits") or [num]]
    if sum(splits) != num:
        raise ValueError(f"pretrained_cfg class_splits {splits} do not add up to the head's {num} classes")
    names = list(cfg.get("label_names") or [str(i) for i in range(num)])
    parts = list(cfg.get("class_split_names") or _split_names(cfg.get("label_set"), len(splits)))
    return splits, names, parts


def _split_names(label_set: str | None, n: int) -> list[str]:
    """Part names of a split head: the package label files' suffixes (``epic_kitchens100_nouns.txt`` -> nouns)."""
    if n == 1:
        return ["classes"]
    files = LABEL_SETS.get(label_set or "", ())
    if len(files) == n and label_set:
        return [Path(f).stem.removeprefix(f"{label_set}_") for f in files]
    return [f"part{i}" for i in range(n)]


def _targets(labels: Sequence[str | None], where: Sequence[str], splits: Sequence[int], names: Sequence[str],
             what: str) -> list[tuple[int, ...]]:
    """Global logit index of each part's label, per row (``()`` for unlabelled rows)."""
    offsets = np.cumsum([0, *splits]).tolist()
    lookups = [class_index(names[offsets[p]:offsets[p + 1]], allow_indices=True) for p in range(len(splits))]
    out: list[tuple[int, ...]] = []
    bad: list[str] = []
    for label, w in zip(labels, where, strict=True):
        if label is None:
            out.append(())
            continue
        pieces = label.split(SPLIT_SEPARATOR) if len(splits) > 1 else [label]
        found = [lookups[p](piece.strip()) for p, piece in enumerate(pieces)] if len(pieces) == len(splits) else []
        if not found or any(f is None for f in found):
            bad.append(f"{w}: {label!r}")
            out.append(())
            continue
        out.append(tuple(offsets[p] + int(f) for p, f in enumerate(found)))  # type: ignore[arg-type]
    if bad:
        form = (" (a split head: one label per part, '" + SPLIT_SEPARATOR.join(f"<{n} label>" for n in
                                                                             _split_labels_hint(splits)) + "')"
                if len(splits) > 1 else "")
        known = ", ".join(list(names)[:10]) + (" ..." if len(names) > 10 else "")
        raise DataError(f"{what}: {len(bad)} rows have labels the model does not know{form}: {'; '.join(bad[:5])}. "
                        f"The model's classes ({len(names)}): {known}; labels may be names or class indices")
    return out


def _split_labels_hint(splits: Sequence[int]) -> list[str]:
    return [f"part {i} ({s} classes)" for i, s in enumerate(splits)]


# ================================================================================================ evaluate
def evaluate_dataset(listing: str | Path, model: torch.nn.Module | str, out: str | Path, *,
                     views: str | Sequence[int] | None = None, batch_size: int = 16, workers: int = 2,
                     device: str | torch.device | None = None, dtype: str | torch.dtype | None = None,
                     compile: bool = False, video_root: str | Path | None = None, pattern: str = KINETICS_PATTERN,
                     backend: str = "auto", log_every: int = 100, progress_bar: bool | None = None,
                     stop_after: int | None = None, env: Dist | None = None,
                     runtime: str = "torch") -> dict[str, Any] | None:
    """Evaluate ``model`` on every video of ``listing`` with multi-view averaging; write the outputs of the module
    docstring into ``out``.

    Args:
        listing: Anything :func:`vivit.data.datasets.read_listing` reads; labels are class names of the model (Kinetics CSVs
            spell them with spaces, folder trees often with ``_``: both match) or class indices; a split head takes
            ``"noun|verb"``. Unlabelled rows get predictions only.
        model: A model, or a name for ``vivit.create_model(name, pretrained=True)``.
        out: Output folder; an existing one from an interrupted run with the same settings is continued.
        views: ``"4x3"``; default the weights' ``eval_views``, else 4x3.
        batch_size: Views per forward pass; the views of ``batch_size // views`` videos share one pass.
        workers: Decoding processes per rank.
        device: Default ``cuda:LOCAL_RANK`` when available, else CPU.
        dtype: ``"bfloat16"`` etc.: cast the weights (inputs follow).
        compile: ``torch.compile`` the model.
        video_root: Folder of a Kinetics CSV's videos (default the CSV's folder).
        pattern: File names of a Kinetics CSV's rows.
        backend: Decoder (``"auto"``, ``"pyav"``, ``"torchcodec"``).
        log_every: Videos between progress lines (without a terminal).
        progress_bar: Force the tqdm bar on or off (default: on a terminal).
        stop_after: Leave after this many videos on this rank without a report, as a killed job would (returns
            ``None``); for testing resumption.
        env: A :class:`vivit.data.datasets.Dist` (default: join torchrun's group when launched by torchrun).
        runtime: ``"torch"`` runs the model as it is; ``"auto"`` / ``"openvino"`` run :func:`vivit.optimize`'s.

    Returns:
        The report on rank 0; ``None`` on other ranks and when stopped early.
    """
    env, owned = _begin(env, device)
    try:
        return _evaluate(Path(listing), model, Path(out), views, batch_size, workers, dtype, compile, video_root,
                         pattern, backend, log_every, progress_bar, stop_after, env, runtime=runtime)
    finally:
        if owned:
            env.close()


def _evaluate(listing: Path, model_arg: torch.nn.Module | str, out: Path, views_arg: Any, batch_size: int,
              workers: int, dtype: Any, compile: bool, video_root: Any, pattern: str, backend: str, log_every: int,
              progress_bar: bool | None, stop_after: int | None, env: Dist,
              runtime: str = "torch") -> dict[str, Any] | None:
    rows = read_listing(listing, video_root=video_root, pattern=pattern)
    model, name = _prepare_model(model_arg, env, dtype if runtime == "torch" else None)
    fast = optimize(model, dtype, backend=runtime) if runtime != "torch" else None
    _logger.info("backend %s", fast.note if fast else "torch")
    splits, names, part_names = _class_parts(model)
    targets = _targets(rows.labels, rows.where, splits, names, str(listing))
    # The targets hold the labels (one index per part); items only the paths. A listing none of whose files exists
    # (a wrong --video-root) is refused here rather than reported as all failed.
    items = to_items(rows.paths, [None] * len(rows.paths), rows.where, names, str(listing))
    view_shape = _views(model, views_arg)
    views_text = f"{view_shape[0]}x{view_shape[1]}"
    num, num_classes = len(items), int(model.num_classes)
    settings = {"model": name, "views": views_text, "dtype": _dtype_name(model, fast), "num_videos": num,
                "num_classes": num_classes, "listing": _listing_digest(rows)}
    _check_run(out, settings, env)

    logits_path = out / LOGITS
    _ensure_logits_file(logits_path, num, num_classes, env)
    table = np.load(logits_path, mmap_mode="r+")
    known = _read_predictions(out, num)
    # Every rank reports what it found (its node may not share the folder), with the logits rows of its ok records.
    gathered = env.all_gather_object({i: (r, np.array(table[i]) if r["status"] == "ok" else None)
                                      for i, r in known.items()})
    done: dict[int, tuple[dict[str, Any], np.ndarray | None]] = {}
    for part in gathered:
        for i, value in part.items():
            done.setdefault(i, value)
    remaining = [i for i in range(num) if i not in done]
    mine = shard(remaining, env.rank, env.world_size)
    if env.main and done:
        _logger.info("%s: %d of %d videos already done; continuing", out, len(done), num)

    fn: Callable[[torch.Tensor], torch.Tensor] = fast or (torch.compile(model) if compile else model)
    ds = EvalVideos([items[i] for i in mine], model, view_shape, backend=backend)
    own = out / (PREDICTIONS if env.world_size == 1 else f"predictions.rank{env.rank}.jsonl")
    _trim_torn_line(own)
    bar = _Progress(len(mine), "evaluate", log_every, env, progress_bar)
    new: dict[int, tuple[dict[str, Any], np.ndarray | None]] = {}
    model_dtype = _param_dtype(model)
    stopped = False
    with open(own, "a") as lines:
        for records, outputs in _outputs(fn, ds, view_shape, batch_size, workers, env, model_dtype):
            done_now = []
            for record, logits in zip(records, outputs, strict=True):
                index = mine[record["index"]]
                entry = _prediction(index, items[index].path, rows.labels[index], record, logits, splits, names)
                row = None if logits is None else logits.mean(0).numpy()
                if row is not None:
                    table[index] = row
                done_now.append((index, entry, row))
            table.flush()  # the batch's rows are on disk before the lines that point to them
            for index, entry, row in done_now:
                lines.write(json.dumps(entry) + "\n")
                new[index] = (entry, row)
            lines.flush()
            failed = sum(entry["status"] == "failed" for _, entry, _ in done_now)
            bar.update(len(records), failed)
            if stop_after is not None and len(new) >= stop_after:
                stopped = True
                break
    rate = bar.close()
    if stopped:
        _logger.warning("stopping after %d videos as asked; run again with the same --out to continue", len(new))
        return None
    _logger.info("rank %d: %d videos at %.2f videos/s", env.rank, len(new), rate)

    for part in env.all_gather_object(new):
        done.update(part)
    report = None
    if env.main:
        for i, (_, row) in done.items():
            if row is not None:
                table[i] = row
        table.flush()
        entries = [done[i][0] for i in range(num)]
        write_text_atomic(out / PREDICTIONS, "".join(json.dumps(e) + "\n" for e in entries))
        report = _report(entries, np.asarray(table), targets, splits, names, part_names, settings, out)
        write_text_atomic(out / REPORT, json.dumps(report, indent=2) + "\n")
    env.barrier()
    if env.world_size > 1:
        own.unlink(missing_ok=True)
    if env.main:
        for stale in out.glob("predictions.rank*.jsonl"):
            stale.unlink(missing_ok=True)
    return report


def _ensure_logits_file(path: Path, num: int, num_classes: int, env: Dist) -> None:
    """Create ``logits.npy`` (NaN rows) once; ranks on nodes that do not share the folder create their own copy."""
    def fill(tmp: Path) -> None:
        array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(num, num_classes))
        array[:] = np.nan
        array.flush()
        del array

    def create() -> None:
        write_atomic(path, fill, keep_suffix=True)

    if env.main and not path.exists():
        create()
    env.barrier()
    if not path.exists():
        create()
    env.barrier()
    shape = np.load(path, mmap_mode="r").shape
    if shape != (num, num_classes):
        raise ValueError(f"{path}: holds {shape} logits, expected ({num}, {num_classes}); it belongs to another run: "
                         "pass another --out")


def _read_predictions(out: Path, num: int) -> dict[int, dict[str, Any]]:
    """Records already written in ``out`` (this run's files and any rank's), skipping a torn last line."""
    found: dict[int, dict[str, Any]] = {}
    for path in [out / PREDICTIONS, *sorted(out.glob("predictions.rank*.jsonl"))]:
        if not path.exists():
            continue
        for line in path.read_text().splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a kill
            if isinstance(entry, dict) and isinstance(entry.get("index"), int) and 0 <= entry["index"] < num:
                found.setdefault(entry["index"], entry)
    return found


def _trim_torn_line(path: Path) -> None:
    """Cut a last line that a kill left without its newline, so appended lines start on a line of their own."""
    if not path.exists() or path.stat().st_size == 0:
        return
    data = path.read_bytes()
    if not data.endswith(b"\n"):
        with open(path, "r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)


def _prediction(index: int, path: str, label: str | None, record: dict[str, Any], logits: torch.Tensor | None,
                splits: Sequence[int], names: Sequence[str]) -> dict[str, Any]:
    entry: dict[str, Any] = {"index": index, "path": path, "label": label, "status": record["status"]}
    if logits is None:
        entry["reason"] = record["error"]
        return entry
    tops = top_k(logits.mean(0), 5, names, splits)
    entry.update({"top5": tops[0]} if len(tops) == 1 else {"top5_by_split": tops})
    entry["logits_row"] = index
    return entry


def _report(entries: list[dict[str, Any]], table: np.ndarray, targets: list[tuple[int, ...]], splits: Sequence[int],
            names: Sequence[str], part_names: Sequence[str], settings: dict[str, Any], out: Path) -> dict[str, Any]:
    """Accuracy figures, per-class table and confusion matrix of the merged results."""
    failed = [{"path": e["path"], "reason": e["reason"]} for e in entries if e["status"] == "failed"]
    labelled = [i for i, t in enumerate(targets) if t]
    scored = [i for i in labelled if entries[i]["status"] == "ok"]
    offsets = np.cumsum([0, *splits]).tolist()
    parts: dict[str, dict[str, Any]] = {}
    right1 = np.ones(len(scored), bool)
    right5 = np.ones(len(scored), bool)
    confusions, per_class_rows = [], []
    for p, part in enumerate(part_names):
        lo, hi = offsets[p], offsets[p + 1]
        truth = np.array([targets[i][p] - lo for i in scored], dtype=np.int64)
        logits = table[scored, lo:hi] if scored else np.zeros((0, hi - lo), np.float32)
        ranked = np.argsort(-logits, axis=1, kind="stable")[:, :5]
        hit1, hit5 = ranked[:, 0] == truth, (ranked == truth[:, None]).any(1)
        right1 &= hit1
        right5 &= hit5
        confusion = np.zeros((hi - lo, hi - lo), np.int64)
        np.add.at(confusion, (truth, ranked[:, 0]), 1)
        confusions.append(confusion)
        per_class = _per_class(confusion, truth, hit5, names[lo:hi], part)
        per_class_rows.extend(per_class)
        present = [r["top1"] for r in per_class if r["videos"]]
        parts[part] = {"top1": _pct(hit1.mean()) if len(scored) else None,
                       "top5": _pct(hit5.mean()) if len(scored) else None,
                       "mean_class_accuracy": round(float(np.mean(present)), 4) if present else None}
    report: dict[str, Any] = {
        "model": settings["model"], "views": settings["views"], "dtype": settings["dtype"],
        "num_videos": len(entries), "num_labelled": len(labelled), "num_evaluated": len(entries) - len(failed),
        "num_failed": len(failed),
        "top1": _pct(right1.mean()) if scored else None, "top5": _pct(right5.mean()) if scored else None,
        "mean_class_accuracy": parts[part_names[0]]["mean_class_accuracy"] if len(splits) == 1 else None,
        "top1_failed_as_wrong": _pct(right1.sum() / len(labelled)) if labelled else None,
        "failed": failed,
    }
    if len(splits) > 1:
        # scenic's EPIC-Kitchens metrics: each part alone, and the "action" (every part right), which top1 reports.
        report["mean_class_accuracy"] = round(float(np.mean([p["mean_class_accuracy"] for p in parts.values()
                                                            if p["mean_class_accuracy"] is not None] or [0.0])), 4)
        report["parts"] = parts
        report["class_splits"] = list(splits)
    report["per_class"] = report["confusion_png"] = None
    if labelled:  # an unlabelled listing (predictions only) has no per-class figures to draw
        _write_per_class(out / "per_class.csv", per_class_rows)
        report["per_class"] = "per_class.csv"
        report["confusion_png"] = _plot_confusion(out / "confusion.png", confusions, names, offsets, part_names)
    report["predictions"], report["logits"] = PREDICTIONS, LOGITS
    return report


def _pct(value: float) -> float:
    return round(100.0 * float(value), 4)


def _per_class(confusion: np.ndarray, truth: np.ndarray, hit5: np.ndarray, names: Sequence[str],
               part: str) -> list[dict[str, Any]]:
    rows = []
    for c, name in enumerate(names):
        videos = int(confusion[c].sum())
        wrong = confusion[c].copy()
        wrong[c] = 0
        other = int(wrong.argmax()) if wrong.any() else None
        rows.append({"part": part, "index": c, "class": name, "videos": videos,
                     "top1": _pct(confusion[c, c] / videos) if videos else None,
                     "top5": _pct(hit5[truth == c].mean()) if videos else None,
                     "most_confused_with": names[other] if other is not None else "",
                     "confused": int(wrong[other]) if other is not None else 0})
    return rows


def _write_per_class(path: Path, rows: list[dict[str, Any]]) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, ["part", "index", "class", "videos", "top1", "top5", "most_confused_with",
                                        "confused"])
            writer.writeheader()
            writer.writerows(rows)

    write_atomic(path, write)


def _plot_confusion(path: Path, confusions: list[np.ndarray], names: Sequence[str], offsets: Sequence[int],
                    part_names: Sequence[str]) -> str | None:
    """Row-normalised confusion matrices, one panel per part; ``None`` (and a log line) without matplotlib."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        _logger.warning("no confusion.png: drawing it needs matplotlib (pip install matplotlib)")
        return None
    size = max(5.0, min(16.0, 0.3 * max(c.shape[0] for c in confusions)))
    fig = Figure(figsize=(size * len(confusions), size), layout="constrained")
    for p, (confusion, part) in enumerate(zip(confusions, part_names, strict=True)):
        ax = fig.add_subplot(1, len(confusions), p + 1)
        rows = confusion.sum(1, keepdims=True)
        image = ax.imshow(confusion / np.maximum(rows, 1), cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
        k = confusion.shape[0]
        if k <= 40:
            labels = list(names[offsets[p]:offsets[p + 1]])
            ax.set_xticks(range(k), labels, rotation=90, fontsize=7)
            ax.set_yticks(range(k), labels, fontsize=7)
        ax.set(xlabel="predicted", ylabel="true", title=part if len(confusions) > 1 else "confusion (row-normalised)")
        fig.colorbar(image, ax=ax, shrink=0.8)
    fig.savefig(path, dpi=100)
    return path.name


# ================================================================================================ extract
def extract_features(listing: str | Path, model: torch.nn.Module | str, out: str | Path, *, per_clip: bool = False,
                     layer: int | None = None, views: str | Sequence[int] | None = None, batch_size: int = 16,
                     workers: int = 2, device: str | torch.device | None = None,
                     dtype: str | torch.dtype | None = None, compile: bool = False,
                     video_root: str | Path | None = None, pattern: str = KINETICS_PATTERN, backend: str = "auto",
                     shard_size: int = 1024, log_every: int = 100, progress_bar: bool | None = None,
                     stop_after: int | None = None, env: Dist | None = None,
                     runtime: str = "torch") -> dict[str, Any] | None:
    """Pooled features of every video of ``listing`` into safetensors shards plus ``index.json``.

    A feature is ``model.forward_head(model.forward_features(x), pre_logits=True)`` (``layer=None``), or the mean
    over tokens of block ``layer``'s output after the final norm (``forward_intermediates``; Model 2: a spatial block).
    Per video it is the mean over its views; ``per_clip`` keeps one row per view (``clip * crops + crop``).

    Args:
        listing: Anything :func:`vivit.data.datasets.read_listing` reads; labels are kept as given.
        model: A model, or a name for ``vivit.create_model(name, pretrained=True)``.
        out: Output folder; an interrupted run is continued (shards already written are kept).
        per_clip: One row per view instead of the mean.
        layer: Block index (negative from the end) instead of the pre-logits.
        views: ``"4x3"``; default the weights' ``eval_views``, else 4x3.
        batch_size: Views per forward pass.
        workers: Decoding processes per rank.
        device: Default ``cuda:LOCAL_RANK`` when available, else CPU.
        dtype: Cast the weights (features are stored as float32).
        compile: ``torch.compile`` the feature function.
        video_root: Folder of a Kinetics CSV's videos.
        pattern: File names of a Kinetics CSV's rows.
        backend: Decoder.
        shard_size: Videos per shard file (a kill loses at most one unwritten shard per rank).
        log_every: Videos between progress lines.
        progress_bar: Force the tqdm bar on or off.
        stop_after: Leave after this many videos without writing the pending shard or the index, as a killed job
            would; for testing resumption.
        env: A :class:`vivit.data.datasets.Dist`.
        runtime: ``"torch"`` runs the model as it is; ``"auto"`` / ``"openvino"`` run :func:`vivit.optimize`'s
            (``layer=None`` only; ``layer`` features run in torch).

    Returns:
        The index on rank 0; ``None`` on other ranks and when stopped early.
    """
    env, owned = _begin(env, device)
    try:
        return _extract(Path(listing), model, Path(out), per_clip, layer, views, batch_size, workers, dtype, compile,
                        video_root, pattern, backend, shard_size, log_every, progress_bar, stop_after, env,
                        runtime=runtime)
    finally:
        if owned:
            env.close()


def _feature_fn(model: torch.nn.Module, layer: int | None) -> Callable[[torch.Tensor], torch.Tensor]:
    if layer is None:
        return lambda x: model.forward_head(model.forward_features(x), pre_logits=True)

    def tokens_mean(x: torch.Tensor) -> torch.Tensor:
        (tokens,) = model.forward_intermediates(x, indices=[layer], norm=True, output_fmt="NLC",
                                                intermediates_only=True)
        return tokens.mean(1)

    return tokens_mean


def _extract(listing: Path, model_arg: Any, out: Path, per_clip: bool, layer: int | None, views_arg: Any,
             batch_size: int, workers: int, dtype: Any, compile: bool, video_root: Any, pattern: str, backend: str,
             shard_size: int, log_every: int, progress_bar: bool | None, stop_after: int | None,
             env: Dist, runtime: str = "torch") -> dict[str, Any] | None:
    from safetensors.torch import save_file

    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, found {shard_size}")
    rows = read_listing(listing, video_root=video_root, pattern=pattern)
    fast_features = runtime != "torch" and layer is None
    model, name = _prepare_model(model_arg, env, None if fast_features else dtype)
    fast = optimize(model, dtype, backend=runtime, pre_logits=True) if fast_features else None
    _logger.info("backend %s", fast.note if fast else "torch")
    items = to_items(rows.paths, [None] * len(rows.paths), rows.where, [], str(listing))
    view_shape = _views(model, views_arg)
    num = len(items)
    settings = {"model": name, "views": f"{view_shape[0]}x{view_shape[1]}", "dtype": _dtype_name(model, fast),
                "per_clip": per_clip, "layer": layer, "num_videos": num, "listing": _listing_digest(rows)}
    _check_run(out, settings, env)
    shards = out / "shards"
    shards.mkdir(parents=True, exist_ok=True)

    known = _scan_shards(shards, num)
    done: set[int] = set()
    for part in env.all_gather_object(sorted(known)):
        done.update(part)
    mine = shard([i for i in range(num) if i not in done], env.rank, env.world_size)
    seq = 1 + max((int(p.stem.split("-")[-1]) for p in shards.glob(f"features-{env.rank:03d}-*.safetensors")),
                  default=-1)

    fn = _feature_fn(model, layer)
    fn = fast or (torch.compile(fn) if compile else fn)
    ds = EvalVideos([items[i] for i in mine], model, view_shape, backend=backend)
    bar = _Progress(len(mine), "extract", log_every, env, progress_bar)
    pending: dict[str, list] = {"features": [], "video": [], "view": [], "failed": []}
    pending_videos = processed = 0
    model_dtype = _param_dtype(model)

    def flush() -> None:
        nonlocal seq, pending_videos
        if not pending_videos:
            return
        dim = pending["features"][0].shape[1] if pending["features"] else 0
        tensors = {"features": torch.cat(pending["features"]) if pending["features"] else torch.zeros(0, dim),
                   "video": torch.tensor(pending["video"], dtype=torch.int64),
                   "view": torch.tensor(pending["view"], dtype=torch.int64)}
        path = shards / f"features-{env.rank:03d}-{seq:05d}.safetensors"
        # a killed write leaves no shard
        write_atomic(path, lambda tmp: save_file(tensors, str(tmp), metadata={"failed": json.dumps(pending["failed"]),
                                                                               "model": name}))
        seq += 1
        pending_videos = 0
        for value in pending.values():
            value.clear()

    for records, outputs in _outputs(fn, ds, view_shape, batch_size, workers, env, model_dtype):
        failed = 0
        for record, feats in zip(records, outputs, strict=True):
            index = mine[record["index"]]
            if feats is None:
                pending["failed"].append({"index": index, "reason": record["error"]})
                failed += 1
            else:
                feats = feats if per_clip else feats.mean(0, keepdim=True)
                pending["features"].append(feats)
                pending["video"].extend([index] * feats.shape[0])
                pending["view"].extend(range(feats.shape[0]) if per_clip else [-1])
            pending_videos += 1
            processed += 1
        bar.update(len(records), failed)
        if stop_after is not None and processed >= stop_after:
            bar.close()
            _logger.warning("stopping after %d videos as asked (the pending shard is not written); run again with "
                            "the same --out to continue", processed)
            return None
        if pending_videos >= shard_size:
            flush()
    flush()
    bar.close()

    entries = _scan_shards(shards, num)
    merged: dict[int, dict[str, Any]] = {}
    for part in env.all_gather_object(entries):
        for i, entry in part.items():
            merged.setdefault(i, entry)
    index = None
    if env.main:
        missing = [i for i in range(num) if i not in merged]
        if missing:
            raise RuntimeError(f"{out}: no features or failure record for {len(missing)} videos (first: "
                               f"{items[missing[0]].path}); the ranks do not share {shards}: copy the shards into "
                               "one folder and run again")
        videos = [{"path": rows.paths[i], "label": rows.labels[i], **merged[i]} for i in range(num)]
        failed = [{"path": v["path"], "reason": v["reason"]} for v in videos if "reason" in v]
        dims = {int(v["dim"]) for v in videos if "dim" in v}
        index = {**settings, "dim": dims.pop() if dims else None, "num_extracted": num - len(failed),
                 "num_failed": len(failed), "failed": failed,
                 "shards": sorted({v["shard"] for v in videos if "shard" in v}),
                 "videos": [{k: v for k, v in video.items() if k != "dim"} for video in videos]}
        write_text_atomic(out / INDEX, json.dumps(index, indent=2) + "\n")
    env.barrier()
    return index


def _scan_shards(shards: Path, num: int) -> dict[int, dict[str, Any]]:
    """Where each video's rows are in the shards present: ``{index: {"shard", "row", "rows", "dim"} or {"reason"}}``."""
    from safetensors import safe_open

    found: dict[int, dict[str, Any]] = {}
    for path in sorted(shards.glob("features-*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            videos = f.get_tensor("video").tolist()
            dim = f.get_slice("features").get_shape()[1]
            failed = json.loads((f.metadata() or {}).get("failed", "[]"))
        start = 0
        while start < len(videos):
            stop = start
            while stop < len(videos) and videos[stop] == videos[start]:
                stop += 1
            if 0 <= videos[start] < num:
                found.setdefault(videos[start], {"shard": path.name, "row": start, "rows": stop - start, "dim": dim})
            start = stop
        for record in failed:
            found.setdefault(int(record["index"]), {"reason": record["reason"]})
    return found


def load_features(out: str | Path) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    """The features an :func:`extract_features` run wrote, in listing order.

    Returns:
        ``(features, rows)``: ``(R, D)`` float32, one row per video (or per view with ``per_clip``), failed videos
        left out; ``rows[r]`` is the index entry of row ``r``'s video (``path``, ``label``, ``shard`` ...).
    """
    from safetensors.torch import load_file

    out = Path(out)
    index_path = out / INDEX
    if not index_path.exists():
        raise FileNotFoundError(f"{index_path}: no such file; run vivit extract (extract_features) into {out} first, "
                                "or let an interrupted run finish")
    index = json.loads(index_path.read_text())
    cache: dict[str, dict[str, torch.Tensor]] = {}
    parts, rows = [], []
    for video in index["videos"]:
        if "shard" not in video:
            continue
        if video["shard"] not in cache:
            cache[video["shard"]] = load_file(str(out / "shards" / video["shard"]))
        parts.append(cache[video["shard"]]["features"][video["row"]:video["row"] + video["rows"]])
        rows.extend([video] * video["rows"])
    features = torch.cat(parts) if parts else torch.zeros(0, index.get("dim") or 0)
    return features, rows


__all__ = ["evaluate_dataset", "extract_features", "load_features"]
