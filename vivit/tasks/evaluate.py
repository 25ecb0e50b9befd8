"""Evaluate a classifier on every video of a listing, as a task of the dataset-job driver ``vivit.tasks.run`` (one
process or ``torchrun --nproc_per_node N``, whose rank 0 writes what a single process would).

:func:`evaluate_dataset` writes into ``out``:

- ``predictions.jsonl``: one line per video as it is done (``index`` in the listing, ``path``, ``label``, ``status``
  ``ok``/``failed``, top-5 or the failure ``reason``, ``logits_row``); the ranks of a distributed run write
  ``predictions.rank<r>.jsonl``, merged at the end. The finished file is in listing order.
- ``logits.npy``: ``(num_videos, num_classes)`` float32 view-averaged logits, row = listing index (NaN: failed).
- ``report.json``: ``top1``, ``top5``, ``mean_class_accuracy`` (percent, over the videos that could be read),
  ``top1_failed_as_wrong``, ``num_videos``, ``num_labelled``, ``num_evaluated``, ``num_failed``, ``failed`` (path and
  reason each), ``views``, ``model``, ``dtype``; a split head (EPIC-Kitchens: nouns | verbs) adds ``parts`` (each
  part's figures), and ``top1`` / ``top5`` are then the *action* accuracies (every part right).
- ``per_class.csv`` (per-class accuracy, the class each is most confused with) and ``confusion.png`` (row-normalised;
  needs matplotlib).

A video that cannot be decoded, or whose logits are not finite, is failed with its reason. A run started again with
the same ``out`` continues where it stopped and ends with the same report. On a resume a video recorded as done whose
logits row is missing or not finite is evaluated again; a file that is not what this module writes is refused,
naming it.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vivit.data.datasets import DataError, Dist, class_index
from vivit.files import first_line, trim_torn_line, write_atomic, write_text_atomic
from vivit.labels import LABEL_SETS
from vivit.tasks.extract import extract_features, load_features
from vivit.tasks.predict import top_k
from vivit.tasks.run import Run, RunOptions, Task, run_job

_logger = logging.getLogger(__name__)

PREDICTIONS = "predictions.jsonl"
RANK_PREDICTIONS = "predictions.rank*.jsonl"
REPORT = "report.json"
LOGITS = "logits.npy"
SPLIT_SEPARATOR = "|"  # a split head's label: one label per part, in logit order ("noun|verb" for EPIC-Kitchens)
STATUSES = ("ok", "failed")


@dataclass(frozen=True)
class _Head:
    """The model's classes: ``splits`` (sizes of the head's parts), class ``names`` and ``parts`` (part names)."""

    splits: list[int]
    names: list[str]
    parts: list[str]

    @classmethod
    def of(cls, model: torch.nn.Module) -> _Head:
        """One part unless ``class_splits`` says more, named by the package's label files (``*_nouns.txt``: nouns)."""
        cfg = getattr(model, "pretrained_cfg", None) or {}
        num = int(model.num_classes)
        splits = [int(s) for s in cfg.get("class_splits") or [num]]
        if sum(splits) != num:
            raise ValueError(f"pretrained_cfg class_splits {splits} do not add up to the head's {num} classes")
        label_set = cfg.get("label_set") or ""
        if len(splits) == 1:
            parts = ["classes"]
        elif label_set and len(files := LABEL_SETS.get(label_set, ())) == len(splits):
            parts = [Path(f).stem.removeprefix(f"{label_set}_") for f in files]
        else:
            parts = [f"part{i}" for i in range(len(splits))]
        return cls(splits, list(cfg.get("label_names") or [str(i) for i in range(num)]), parts)

    @property
    def offsets(self) -> list[int]:
        return np.cumsum([0, *self.splits]).tolist()

    def targets(self, labels: list[str | None], where: list[str], what: str) -> list[tuple[int, ...]]:
        """Global logit index of each part's label, per row (``()`` for unlabelled rows); unknown labels refused."""
        offsets, splits, names = self.offsets, self.splits, self.names
        lookups = [class_index(names[offsets[p]:offsets[p + 1]], allow_indices=True) for p in range(len(splits))]
        out: list[tuple[int, ...]] = []
        bad: list[str] = []
        for label, w in zip(labels, where, strict=True):
            if label is None:
                out.append(())
                continue
            pieces = label.split(SPLIT_SEPARATOR) if len(splits) > 1 else [label]
            found = [lookups[p](piece.strip()) for p, piece in enumerate(pieces)] if len(pieces) == len(splits) else []
            if not found or None in found:
                bad.append(f"{w}: {label!r}")  # refused below, so its target does not matter
            out.append(tuple(offsets[p] + int(f) for p, f in enumerate(found) if f is not None))
        if bad:
            form = (" (a split head: one label per part, '" + SPLIT_SEPARATOR.join(
                f"<part {i} ({s} classes) label>" for i, s in enumerate(splits)) + "')" if len(splits) > 1 else "")
            shown = ", ".join(names[:10]) + (" ..." if len(names) > 10 else "")
            raise DataError(f"{what}: {len(bad)} rows have labels the model does not know{form}: {'; '.join(bad[:5])}. "
                            f"The model's classes ({len(names)}): {shown}; labels may be names or class indices")
        return out


def evaluate_dataset(listing: str | Path, model: torch.nn.Module | str, out: str | Path,
                     options: RunOptions | None = None, **kwargs: Any) -> dict[str, Any] | None:
    """Evaluate ``model`` on every video of ``listing`` with multi-view averaging; write the outputs of the module
    docstring into ``out``.

    Args:
        listing: Anything :func:`vivit.data.datasets.read_listing` reads; labels are the model's class names (with
            spaces or ``_``) or class indices; a split head takes ``"noun|verb"``. Unlabelled rows get predictions.
        model: A model, or a name for ``vivit.create_model(name, pretrained=True)``.
        out: Output folder; an existing one from an interrupted run with the same settings is continued.
        options: How it runs (:class:`~vivit.tasks.run.RunOptions`), and/or its fields as ``kwargs``, e.g.
            ``views="4x3", backend="openvino", decoder="pyav"``.

    Returns:
        The report on rank 0; ``None`` on other ranks and when stopped early.
    """
    return run_job(listing, model, out, _Evaluate(), RunOptions.of(options, kwargs))


_Result = tuple[dict[str, Any], np.ndarray | None]  # a video's predictions line and logits row (None: failed)


class _Evaluate(Task):
    """Targets from the labels, logits rows and prediction lines per video, the report at the end."""

    what = "evaluate"
    outputs = (PREDICTIONS, RANK_PREDICTIONS, LOGITS, REPORT)

    def prepare(self, run: Run) -> dict[str, Any]:
        self.head = _Head.of(run.model)
        self.targets = self.head.targets(run.rows.labels, run.rows.where, str(run.listing))  # before any work
        return {"num_classes": int(run.model.num_classes)}

    def resume(self, run: Run) -> dict[int, _Result]:
        """What this rank finds done; a video recorded ``ok`` whose logits row is not finite (the file deleted or
        damaged) is evaluated again, never reported with NaN logits."""
        self.table = _open_logits(run.out / LOGITS, run.num, len(self.head.names), run.env)
        known = _read_predictions(run.out, run.rows.paths)
        redo = [i for i, r in known.items() if r["status"] == "ok" and not np.isfinite(self.table[i]).all()]
        if redo:
            _logger.warning("%s: %d videos recorded in %s have no finite logits in %s (missing or damaged); "
                            "evaluating them again", run.out, len(redo), PREDICTIONS, LOGITS)
        self.own = run.out / (PREDICTIONS if run.env.world_size == 1 else f"predictions.rank{run.env.rank}.jsonl")
        trim_torn_line(self.own)
        self.lines = open(self.own, "a", encoding="utf-8")
        self.new: dict[int, _Result] = {}
        return {i: (r, np.array(self.table[i]) if r["status"] == "ok" else None) for i, r in known.items()
                if i not in redo}

    def consume(self, run: Run, batch: list[tuple[int, str, torch.Tensor | None, str | None]]) -> None:
        done = []
        for i, path, logits, reason in batch:
            entry: dict[str, Any] = {"index": i, "path": path, "label": run.rows.labels[i], "status": "ok"}
            row = None
            if logits is None:
                entry.update(status="failed", reason=reason)
            else:
                mean = logits.mean(0)
                tops = top_k(mean, 5, self.head.names, self.head.splits)
                entry.update({"top5": tops[0]} if len(tops) == 1 else {"top5_by_split": tops}, logits_row=i)
                row = self.table[i] = mean.numpy()
            done.append((i, entry, row))
        self.table.flush()  # the batch's rows are on disk before the lines that point to them
        for i, entry, row in done:
            self.lines.write(json.dumps(entry) + "\n")
            self.new[i] = (entry, row)
        self.lines.flush()

    def end(self, run: Run, completed: bool) -> dict[int, _Result]:
        self.lines.close()
        return self.new

    def finish(self, run: Run, identity: dict[str, Any], results: dict[int, _Result]) -> dict[str, Any]:
        for i, (_, row) in results.items():
            if row is not None:
                self.table[i] = row
        self.table.flush()
        entries = [results[i][0] for i in range(run.num)]
        write_text_atomic(run.out / PREDICTIONS, "".join(json.dumps(e) + "\n" for e in entries))
        report = _report(entries, np.asarray(self.table), self.targets, self.head, identity, run.out)
        write_text_atomic(run.out / REPORT, json.dumps(report, indent=2) + "\n")
        return report

    def cleanup(self, run: Run) -> None:
        if run.env.world_size > 1:
            self.own.unlink(missing_ok=True)
        if run.env.main:
            for stale in run.out.glob(RANK_PREDICTIONS):
                stale.unlink(missing_ok=True)


def _open_logits(path: Path, num: int, num_classes: int, env: Dist) -> np.ndarray:
    """``logits.npy`` opened for writing, created (NaN rows) when missing (by rank 0, then by any rank whose node
    does not share the folder); a file of another run is refused."""
    def fill(tmp: Path) -> None:
        array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(num, num_classes))
        array[:] = np.nan
        array.flush()
        del array

    for first in (env.main, True):
        if first and not path.exists():
            write_atomic(path, fill, keep_suffix=True)
        env.barrier()
    try:
        table = np.load(path, mmap_mode="r+", allow_pickle=False)
    except (ValueError, OSError) as err:
        # numpy reads a file without the .npy header as a pickle, and its error then advises allow_pickle=True:
        # advice never to follow for a file found in an output folder, so it is not quoted
        reason = "not a .npy file, or one holding Python objects" if "pickle" in str(err) else first_line(err)
        raise ValueError(f"{path}: is not a logits file written by vivit evaluate ({reason}); delete it "
                         "to rebuild it from the videos, or pass another --out") from None
    if table.shape != (num, num_classes) or table.dtype != np.float32:
        raise ValueError(f"{path}: holds {table.shape} {table.dtype} logits, expected ({num}, {num_classes}) "
                         "float32; it belongs to another run: pass another --out")
    return table


def _read_predictions(out: Path, paths: list[str]) -> dict[int, dict[str, Any]]:
    """Records already written in ``out`` (this run's files and any rank's), checked against the listing; a last
    line a kill cut is skipped."""
    found: dict[int, dict[str, Any]] = {}
    for path in [out / PREDICTIONS, *sorted(out.glob(RANK_PREDICTIONS))]:
        if not path.exists():
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise ValueError(f"{path}: is not UTF-8 text, so not predictions written by vivit evaluate; delete it "
                             "(its videos are then evaluated again) or pass another --out") from None
        lines = text.splitlines()
        for number, line in enumerate(lines, start=1):
            try:
                entry = json.loads(line)
            except (json.JSONDecodeError, RecursionError):
                if number == len(lines) and not text.endswith("\n"):
                    continue  # torn by a kill
                entry = None
            index = entry.get("index") if isinstance(entry, dict) else None
            if not (isinstance(index, int) and not isinstance(index, bool) and 0 <= index < len(paths)
                    and entry.get("path") == paths[index] and entry.get("status") in STATUSES
                    and (isinstance(entry.get("reason"), str) if entry["status"] == "failed"
                         else entry.get("logits_row") == index)):
                raise ValueError(f"{path}:{number}: is not a prediction record of this run's listing (expected "
                                 "index, path, status and a reason or logits_row, as vivit evaluate writes them); "
                                 "delete the line (its video is then evaluated again) or pass another --out")
            found.setdefault(index, entry)
    return found


def _report(entries: list[dict[str, Any]], table: np.ndarray, targets: list[tuple[int, ...]], head: _Head,
            settings: dict[str, Any], out: Path) -> dict[str, Any]:
    """Accuracy figures, per-class table and confusion matrix of the merged results."""
    failed = [{"path": e["path"], "reason": e["reason"]} for e in entries if e["status"] == "failed"]
    labelled = [i for i, t in enumerate(targets) if t]
    scored = [i for i in labelled if entries[i]["status"] == "ok"]
    offsets = head.offsets
    parts: dict[str, dict[str, Any]] = {}
    right1 = right5 = np.ones(len(scored), bool)
    confusions, per_class = [], []
    for p, part in enumerate(head.parts):
        lo, hi = offsets[p], offsets[p + 1]
        truth = np.array([targets[i][p] - lo for i in scored], dtype=np.int64)
        logits = table[scored, lo:hi] if scored else np.zeros((0, hi - lo), np.float32)
        ranked = np.argsort(-logits, axis=1, kind="stable")[:, :5]
        hit1, hit5 = ranked[:, 0] == truth, (ranked == truth[:, None]).any(1)
        right1, right5 = right1 & hit1, right5 & hit5
        confusion = np.zeros((hi - lo, hi - lo), np.int64)
        np.add.at(confusion, (truth, ranked[:, 0]), 1)
        confusions.append(confusion)
        rows = _per_class(confusion, truth, hit5, head.names[lo:hi], part)
        per_class.extend(rows)
        parts[part] = {"top1": _pct(hit1, len(scored)), "top5": _pct(hit5, len(scored)),
                       "mean_class_accuracy": _mean([r["top1"] for r in rows if r["videos"]])}
    report: dict[str, Any] = {
        "model": settings["model"], "views": settings["views"], "dtype": settings["dtype"],
        "token_merging": settings["token_merging"],
        "num_videos": len(entries), "num_labelled": len(labelled), "num_evaluated": len(entries) - len(failed),
        "num_failed": len(failed), "top1": _pct(right1, len(scored)), "top5": _pct(right5, len(scored)),
        "mean_class_accuracy": parts[head.parts[0]]["mean_class_accuracy"] if len(parts) == 1 else None,
        "top1_failed_as_wrong": _pct(right1, len(labelled)), "failed": failed,
    }
    if len(parts) > 1:
        # scenic's EPIC-Kitchens metrics: each part alone, and the "action" (every part right), which top1 reports.
        report["mean_class_accuracy"] = _mean([p["mean_class_accuracy"] for p in parts.values()
                                               if p["mean_class_accuracy"] is not None] or [0.0])
        report["parts"] = parts
        report["class_splits"] = list(head.splits)
    report["per_class"] = report["confusion_png"] = None
    if labelled:  # an unlabelled listing (predictions only) has no per-class figures to draw
        text = io.StringIO()
        writer = csv.DictWriter(text, list(per_class[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(per_class)
        write_text_atomic(out / "per_class.csv", text.getvalue())
        report["per_class"] = "per_class.csv"
        report["confusion_png"] = _plot_confusion(out / "confusion.png", confusions, head)
    report["predictions"], report["logits"] = PREDICTIONS, LOGITS
    return report


def _pct(hits: Any, n: int) -> float | None:
    """``hits`` (a count, or booleans) of ``n`` in percent; ``None`` of none."""
    return round(100.0 * float(np.sum(hits) / n), 4) if n else None


def _mean(values: list[float]) -> float | None:
    return round(float(np.mean(values)), 4) if values else None


def _per_class(confusion: np.ndarray, truth: np.ndarray, hit5: np.ndarray, names: list[str],
               part: str) -> list[dict[str, Any]]:
    rows = []
    for c, name in enumerate(names):
        videos = int(confusion[c].sum())
        wrong = confusion[c].copy()
        wrong[c] = 0
        other = int(wrong.argmax()) if wrong.any() else None
        rows.append({"part": part, "index": c, "class": name, "videos": videos,
                     "top1": _pct(confusion[c, c], videos), "top5": _pct(hit5[truth == c], videos),
                     "most_confused_with": names[other] if other is not None else "",
                     "confused": int(wrong[other]) if other is not None else 0})
    return rows


def _plot_confusion(path: Path, confusions: list[np.ndarray], head: _Head) -> str | None:
    """Row-normalised confusion matrices, one panel per part; ``None`` (and a log line) without matplotlib."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        _logger.warning('no confusion.png: drawing it needs matplotlib, in the video extra '
                        '(pip install "vivit[video]" or pip install matplotlib)')
        return None
    size = max(5.0, min(16.0, 0.3 * max(c.shape[0] for c in confusions)))
    fig = Figure(figsize=(size * len(confusions), size), layout="constrained")
    for p, (confusion, part) in enumerate(zip(confusions, head.parts, strict=True)):
        ax = fig.add_subplot(1, len(confusions), p + 1)
        rows = confusion.sum(1, keepdims=True)
        image = ax.imshow(confusion / np.maximum(rows, 1), cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
        k = confusion.shape[0]
        if k <= 40:
            labels = head.names[head.offsets[p]:head.offsets[p + 1]]
            ax.set_xticks(range(k), labels, rotation=90, fontsize=7)
            ax.set_yticks(range(k), labels, fontsize=7)
        ax.set(xlabel="predicted", ylabel="true", title=part if len(confusions) > 1 else "confusion (row-normalised)")
        fig.colorbar(image, ax=ax, shrink=0.8)
    fig.savefig(path, dpi=100)
    return path.name


__all__ = ["evaluate_dataset", "extract_features", "load_features"]
