"""Evaluate a classifier on every video of a listing, as a task of the dataset-job driver ``vivit.tasks.run`` (one
process or ``torchrun --nproc_per_node N``, whose rank 0 writes what a single process would).

:func:`evaluate_dataset` writes ``predictions.jsonl`` (a line per video as it is done, in listing order at the end;
ranks write ``predictions.rank<r>.jsonl``, merged at the end), ``logits.npy`` (float32 view-averaged logits, row =
listing index, NaN: failed), ``report.json``, ``per_class.csv`` and ``confusion.png`` (needs matplotlib); the Kinetics
guide ("What comes out") lists their fields. A video that cannot be decoded, or whose logits are not finite, is failed
with its reason. A run started again with the same ``out`` continues where it stopped (a video recorded as done
without finite logits is evaluated again) and ends with the same report; a file this module did not write is refused.
"""

from __future__ import annotations

import csv
import io
import json
import logging
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


class _Head:
    """The model's classes: ``splits`` (sizes of the head's parts), their logit ``spans``, class ``names`` and part
    names ``parts``: one part unless ``class_splits`` says more, named by the package's label files (``*_nouns.txt``:
    nouns)."""

    def __init__(self, model: torch.nn.Module) -> None:
        cfg = getattr(model, "pretrained_cfg", None) or {}
        num = int(model.num_classes)
        self.splits = [int(s) for s in cfg.get("class_splits") or [num]]
        if sum(self.splits) != num:
            raise ValueError(f"pretrained_cfg class_splits {self.splits} do not add up to the head's {num} classes")
        ends = np.cumsum(self.splits).tolist()
        self.spans = [(end - size, end) for size, end in zip(self.splits, ends, strict=True)]
        self.names = list(cfg.get("label_names") or [str(i) for i in range(num)])
        label_set = cfg.get("label_set") or ""
        self.parts = ["classes"] if len(self.splits) == 1 else [f"part{i}" for i in range(len(self.splits))]
        if len(self.splits) > 1 and len(files := LABEL_SETS.get(label_set, ())) == len(self.splits):
            self.parts = [Path(f).stem.removeprefix(f"{label_set}_") for f in files]

    def targets(self, labels: list[str | None], where: list[str], what: str) -> list[tuple[int, ...]]:
        """Global logit index of each part's label, per row (``()`` for unlabelled rows); unknown labels refused."""
        spans, splits, names = self.spans, self.splits, self.names
        lookups = [class_index(names[lo:hi], allow_indices=True) for lo, hi in spans]
        out: list[tuple[int, ...]] = []
        bad: list[str] = []
        for label, w in zip(labels, where, strict=True):
            pieces = [] if label is None else label.split(SPLIT_SEPARATOR) if len(splits) > 1 else [label]
            found = ([look(piece.strip()) for look, piece in zip(lookups, pieces, strict=True)]
                     if len(pieces) == len(splits) else [None])
            if label is not None and None in found:
                bad.append(f"{w}: {label!r}")  # refused below, so its target does not matter
            out.append(() if None in found else tuple(lo + int(f) for (lo, _), f in zip(spans, found, strict=True)))
        if bad:
            form = (" (a split head: one label per part, '" + SPLIT_SEPARATOR.join(
                f"<part {i} ({s} classes) label>" for i, s in enumerate(splits)) + "')" if len(splits) > 1 else "")
            shown = ", ".join(names[:10]) + (" ..." if len(names) > 10 else "")
            raise DataError(f"{what}: {len(bad)} rows have labels the model does not know{form}: {'; '.join(bad[:5])}. "
                            f"The model's classes ({len(names)}): {shown}; labels may be names or class indices")
        return out


def evaluate_dataset(listing: str | Path, model: torch.nn.Module | str, out: str | Path,
                     options: RunOptions | None = None, **kwargs: Any) -> dict[str, Any] | None:
    """Evaluate ``model`` on every video of ``listing`` with multi-view averaging into ``out`` (module docstring).

    ``listing``: anything :func:`vivit.data.datasets.read_listing` reads; labels are the model's class names (with
    spaces or ``_``) or class indices, ``"noun|verb"`` for a split head; unlabelled rows get predictions. ``model``: a
    model or a name for ``vivit.create_model(name, pretrained=True)``. ``out``: one of an interrupted run with the same
    settings is continued. ``options`` (:class:`~vivit.tasks.run.RunOptions`) and/or its fields as ``kwargs``
    (``views="4x3", backend="openvino", decoder="pyav"``): how it runs. Returns the report on rank 0; ``None`` on
    other ranks and when stopped early.
    """
    return run_job(listing, model, out, _Evaluate(), RunOptions.of(options, kwargs))


_Result = tuple[dict[str, Any], np.ndarray | None]  # a video's predictions line and logits row (None: failed)


class _Evaluate(Task):
    """Targets from the labels, logits rows and prediction lines per video, the report at the end."""

    what = "evaluate"
    outputs = (PREDICTIONS, RANK_PREDICTIONS, LOGITS, REPORT)

    def prepare(self, run: Run) -> dict[str, Any]:
        self.head = _Head(run.model)
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
        for i, path, logits, reason in batch:
            entry: dict[str, Any] = {"index": i, "path": path, "label": run.rows.labels[i]}
            if logits is None:
                self.new[i] = ({**entry, "status": "failed", "reason": reason}, None)
                continue
            self.table[i] = row = logits.mean(0).numpy()
            tops = top_k(torch.from_numpy(row), 5, self.head.names, self.head.splits)
            top5 = {"top5": tops[0]} if len(tops) == 1 else {"top5_by_split": tops}
            self.new[i] = ({**entry, "status": "ok", **top5, "logits_row": i}, row)
        self.table.flush()  # the batch's rows are on disk before the lines that point to them
        self.lines.write("".join(json.dumps(self.new[i][0]) + "\n" for i, *_ in batch))
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

    def cleanup(self, run: Run) -> None:  # each rank its merged file (a folder per node), rank 0 any left
        merged = list(run.out.glob(RANK_PREDICTIONS)) if run.env.main else []
        for path in [*merged, self.own] if run.env.world_size > 1 else merged:
            path.unlink(missing_ok=True)


def _open_logits(path: Path, num: int, num_classes: int, env: Dist) -> np.ndarray:
    """``logits.npy`` opened for writing, created (NaN rows) when missing (by rank 0, then by any rank whose node
    does not share the folder); a file of another run is refused."""
    def fill(tmp: Path) -> None:  # on disk, not in memory: a listing may have millions of rows
        np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(num, num_classes))[:] = np.nan

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
    for path in [p for p in [out / PREDICTIONS, *sorted(out.glob(RANK_PREDICTIONS))] if p.exists()]:
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
                    and entry.get("path") == paths[index] and entry.get("status") in ("ok", "failed")
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
    parts: dict[str, dict[str, Any]] = {}
    right1 = right5 = np.ones(len(scored), bool)
    panels, per_class = [], []
    for p, (part, (lo, hi)) in enumerate(zip(head.parts, head.spans, strict=True)):
        truth = np.array([targets[i][p] - lo for i in scored], dtype=np.int64)
        ranked = np.argsort(-table[scored, lo:hi], axis=1, kind="stable")[:, :5]
        hit1, hit5 = ranked[:, 0] == truth, (ranked == truth[:, None]).any(1)
        right1, right5 = right1 & hit1, right5 & hit5
        confusion = np.zeros((hi - lo, hi - lo), np.int64)
        np.add.at(confusion, (truth, ranked[:, 0]), 1)
        wrong = confusion - np.diag(np.diag(confusion))  # the mistakes alone
        names, other = head.names[lo:hi], wrong.argmax(1)
        panels.append((part, names, confusion))
        rows = [{"part": part, "index": c, "class": names[c], "videos": int(n), "top1": _pct(confusion[c, c], n),
                 "top5": _pct(hit5[truth == c], n), "most_confused_with": names[other[c]] if wrong[c].any() else "",
                 "confused": int(wrong[c, other[c]])} for c, n in enumerate(confusion.sum(1))]
        per_class.extend(rows)
        parts[part] = {"top1": _pct(hit1, len(scored)), "top5": _pct(hit5, len(scored)),
                       "mean_class_accuracy": _mean([r["top1"] for r in rows if r["videos"]])}
    # scenic's EPIC-Kitchens metrics: each part alone, and the "action" (every part right), which top1 reports
    class_means = [m for part in parts.values() if (m := part["mean_class_accuracy"]) is not None]
    report: dict[str, Any] = {
        **{key: settings[key] for key in ("model", "views", "dtype", "token_merging")},
        "num_videos": len(entries), "num_labelled": len(labelled), "num_evaluated": len(entries) - len(failed),
        "num_failed": len(failed), "top1": _pct(right1, len(scored)), "top5": _pct(right5, len(scored)),
        "mean_class_accuracy": _mean(class_means or [0.0]) if len(parts) > 1 else _mean(class_means),
        "top1_failed_as_wrong": _pct(right1, len(labelled)), "failed": failed,
        **({"parts": parts, "class_splits": list(head.splits)} if len(parts) > 1 else {}),
        "per_class": None, "confusion_png": None, "predictions": PREDICTIONS, "logits": LOGITS,
    }
    if labelled:  # an unlabelled listing (predictions only) has no per-class figures to draw
        text = io.StringIO()
        csv.writer(text, lineterminator="\n").writerows([list(per_class[0]), *(row.values() for row in per_class)])
        write_text_atomic(out / "per_class.csv", text.getvalue())
        report.update(per_class="per_class.csv", confusion_png=_plot_confusion(out / "confusion.png", panels))
    return report


def _pct(hits: Any, n: int) -> float | None:
    """``hits`` (a count, or booleans) of ``n`` in percent; ``None`` of none."""
    return round(100.0 * float(np.sum(hits) / n), 4) if n else None


def _mean(values: list[float]) -> float | None:
    return round(float(np.mean(values)), 4) if values else None


def _plot_confusion(path: Path, panels: list[tuple[str, list[str], np.ndarray]]) -> str | None:
    """Row-normalised confusion matrices, a panel per (part, class names, matrix); ``None`` without matplotlib."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        _logger.warning('no confusion.png: drawing it needs matplotlib, in the video extra '
                        '(pip install "vivit[video]" or pip install matplotlib)')
        return None
    size = max(5.0, min(16.0, 0.3 * max(len(names) for _, names, _ in panels)))
    fig = Figure(figsize=(size * len(panels), size), layout="constrained")
    for p, (part, names, confusion) in enumerate(panels, start=1):
        ax = fig.add_subplot(1, len(panels), p)
        rows = confusion.sum(1, keepdims=True)
        image = ax.imshow(confusion / np.maximum(rows, 1), cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
        if len(names) <= 40:
            ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
            ax.set_yticks(range(len(names)), names, fontsize=7)
        ax.set(xlabel="predicted", ylabel="true", title=part if len(panels) > 1 else "confusion (row-normalised)")
        fig.colorbar(image, ax=ax, shrink=0.8)
    write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=100), keep_suffix=True)
    return path.name


__all__ = ["evaluate_dataset", "extract_features", "load_features"]
