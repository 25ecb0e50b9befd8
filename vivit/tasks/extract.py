"""Feature extraction over a whole listing, as a task of the dataset-job driver ``vivit.tasks.run``.

:func:`extract_features` writes pooled features per video (or per view) into safetensors shards under
``out/shards/`` (each rank its own, ``shard_size`` videos each, so a kill loses at most one pending shard) and
``out/index.json`` mapping each video to its shard and rows, or to its failure reason; :func:`load_features` reads
them back in listing order.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from vivit.files import read_json, umask_mode, write_atomic, write_text_atomic
from vivit.tasks.run import Run, RunOptions, Task, run_job

INDEX = "index.json"
SHARDS = "shards"


def extract_features(listing: str | Path, model: torch.nn.Module | str, out: str | Path,
                     options: RunOptions | None = None, *, per_clip: bool = False, layer: int | None = None,
                     shard_size: int = 1024, **kwargs: Any) -> dict[str, Any] | None:
    """Pooled features of every video of ``listing`` into safetensors shards plus ``index.json``.

    A feature is ``model.forward_head(model.forward_features(x), pre_logits=True)`` (``layer=None``), or the mean
    over tokens of block ``layer``'s output after the final norm (``forward_intermediates``; Model 2: a spatial block;
    run on the torch backend). Per video it is the mean over its views; ``per_clip`` keeps one row per view
    (``clip * crops + crop``). ``listing``, ``model``, ``out``, ``options`` and ``kwargs`` are as in
    :func:`~vivit.tasks.evaluate.evaluate_dataset` (labels are kept as given); ``stop_after`` leaves without writing
    the pending shard or the index. ``shard_size`` is the videos per shard file.

    Returns:
        The index on rank 0; ``None`` on other ranks and when stopped early.
    """
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, found {shard_size}")
    opts = RunOptions.of(options, kwargs)
    if layer is not None:  # vivit.optimize runs logits or pre-logits only
        opts = RunOptions.of(opts, {"backend": "torch"})
    return run_job(listing, model, out, _Extract(per_clip, layer, shard_size), opts)


class _Extract(Task):
    """Features per video into numbered shards per rank; the index of every rank's shards at the end."""

    what = "extract"
    outputs = (INDEX, f"{SHARDS}/features-*.safetensors")
    stop_note = " (the pending shard is not written)"
    pre_logits = True

    def __init__(self, per_clip: bool, layer: int | None, shard_size: int) -> None:
        self.per_clip, self.layer, self.shard_size = per_clip, layer, shard_size
        self.settings = {"per_clip": per_clip, "layer": layer}
        self.pending: list[tuple[int, torch.Tensor | None, str | None]] = []  # (index, features or None, reason)

    def forward(self, model: Any) -> Callable[[torch.Tensor], torch.Tensor] | None:
        if self.layer is None:
            return None  # the runtime's pre-logits

        def tokens_mean(x: torch.Tensor) -> torch.Tensor:
            (tokens,) = model.forward_intermediates(x, indices=[self.layer], norm=True, output_fmt="NLC",
                                                    intermediates_only=True)
            return tokens.mean(1)

        return tokens_mean

    def prepare(self, run: Run) -> dict[str, Any]:
        if self.layer is not None and run.model.token_merging:
            raise ValueError("layer features are one block's tokens, which token merging changes from block to block: "
                             "set token merging off (0), or layer=None for the pooled pre-logits")
        return self.settings

    def resume(self, run: Run) -> dict[int, dict[str, Any]]:
        self.shards = run.out / SHARDS
        self.shards.mkdir(parents=True, exist_ok=True)
        self.prefix = f"features-{run.env.rank:03d}-"
        self.seq = 1 + max((int(p.stem.split("-")[-1]) for p in self.shards.glob(f"{self.prefix}*.safetensors")),
                           default=-1)
        return _scan_shards(self.shards, run.num)

    def consume(self, run: Run, batch: list[tuple[int, str, torch.Tensor | None, str | None]]) -> None:
        for index, _, feats, reason in batch:
            self.pending.append((index, feats if feats is None or self.per_clip else feats.mean(0, keepdim=True),
                                 reason))
        if len(self.pending) >= self.shard_size:
            self._flush(run)

    def end(self, run: Run, completed: bool) -> dict[int, dict[str, Any]]:
        if not completed:
            return {}
        self._flush(run)
        return _scan_shards(self.shards, run.num)

    def _flush(self, run: Run) -> None:
        """Write the pending videos as the next shard (a killed write leaves no shard)."""
        from safetensors import SafetensorError
        from safetensors.torch import save_file

        if not self.pending:
            return
        done = [(i, feats) for i, feats, _ in self.pending if feats is not None]
        tensors = {"features": torch.cat([f for _, f in done]) if done else torch.zeros(0, 0),
                   "video": torch.tensor([i for i, f in done for _ in range(len(f))], dtype=torch.int64),
                   "view": torch.tensor([v for _, f in done for v in (range(len(f)) if self.per_clip else [-1])],
                                        dtype=torch.int64)}
        failed = [{"index": i, "reason": reason} for i, feats, reason in self.pending if feats is None]
        metadata = {"failed": json.dumps(failed), "model": run.name}
        path = self.shards / f"{self.prefix}{self.seq:05d}.safetensors"
        try:  # safetensors writes 0600; the shard gets the mode of the folder's other outputs
            write_atomic(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata), mode=umask_mode())
        except SafetensorError as err:  # e.g. a full disk: one line, not the library's traceback
            reason = " ".join(str(err).split())
            raise OSError(f"{path}: cannot write the shard ({reason}); free disk space (or fix the folder's "
                          "permissions) and run again with the same --out to continue") from None
        self.seq += 1
        self.pending.clear()

    def finish(self, run: Run, identity: dict[str, Any], merged: dict[int, dict[str, Any]]) -> dict[str, Any]:
        """``index.json`` of every rank's shards (``merged``: each video's entry of :func:`_scan_shards`)."""
        missing = [i for i in range(run.num) if i not in merged]
        if missing:
            raise RuntimeError(f"{run.out}: no features or failure record for {len(missing)} videos (first: "
                               f"{run.rows.paths[missing[0]]}); the ranks do not share {run.out / SHARDS}: copy the "
                               "shards into one folder and run again")
        videos = [{"path": run.rows.paths[i], "label": run.rows.labels[i], **merged[i]} for i in range(run.num)]
        failed = [{"path": v["path"], "reason": v["reason"]} for v in videos if "reason" in v]
        dims = {int(v["dim"]) for v in videos if "dim" in v}
        index = {**identity, "dim": dims.pop() if dims else None, "num_extracted": run.num - len(failed),
                 "num_failed": len(failed), "failed": failed,
                 "shards": sorted({v["shard"] for v in videos if "shard" in v}),
                 "videos": [{k: v for k, v in video.items() if k != "dim"} for video in videos]}
        write_text_atomic(run.out / INDEX, json.dumps(index, indent=2) + "\n")
        return index


def _scan_shards(shards: Path, num: int) -> dict[int, dict[str, Any]]:
    """Where each video's rows are in the shards present: ``{index: {"shard", "row", "rows", "dim"} or {"reason"}}``."""
    from safetensors import SafetensorError, safe_open

    found: dict[int, dict[str, Any]] = {}
    for path in sorted(shards.glob("features-*.safetensors")):
        try:
            with safe_open(str(path), framework="pt") as f:
                videos = f.get_tensor("video").tolist()
                dim = f.get_slice("features").get_shape()[1]
                failed = json.loads((f.metadata() or {}).get("failed", "[]"))
        except (SafetensorError, KeyError, ValueError, OSError) as err:
            raise ValueError(f"{path}: is not a feature shard written by vivit extract ({type(err).__name__}); "
                             "delete it (its videos are then extracted again) or pass another --out") from None
        row = 0
        for video, group in itertools.groupby(videos):  # a video's rows are consecutive
            rows = len(list(group))
            if 0 <= video < num:
                found.setdefault(video, {"shard": path.name, "row": row, "rows": rows, "dim": dim})
            row += rows
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
    if not (out / INDEX).exists():
        raise FileNotFoundError(f"{out / INDEX}: no such file; run vivit extract (extract_features) into {out} first, "
                                "or let an interrupted run finish")
    index = read_json(out / INDEX, "the index of an extract run")
    shards: dict[str, dict[str, torch.Tensor]] = {}
    parts, rows = [], []
    for video in (v for v in index["videos"] if "shard" in v):
        if video["shard"] not in shards:
            shards[video["shard"]] = load_file(str(out / SHARDS / video["shard"]))
        parts.append(shards[video["shard"]]["features"][video["row"]:video["row"] + video["rows"]])
        rows.extend([video] * video["rows"])
    return (torch.cat(parts) if parts else torch.zeros(0, index.get("dim") or 0)), rows


__all__ = ["extract_features", "load_features"]
