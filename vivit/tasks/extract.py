"""Feature extraction over a whole listing, as a task of the dataset-job driver ``vivit.tasks.run``:
:func:`extract_features` writes safetensors shards (each rank its own, so a kill loses at most the pending one) and
``index.json`` (each video's shard and rows, or its failure reason); :func:`load_features` reads them back.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import safetensors.torch as st  # looked up at each call: tests replace st.save_file
import torch
from safetensors import SafetensorError, safe_open

from vivit.files import read_json, umask_mode, write_atomic, write_text_atomic
from vivit.tasks.run import Run, RunOptions, Task, run_job

INDEX = "index.json"
SHARDS = "shards"


def extract_features(listing: str | Path, model: torch.nn.Module | str, out: str | Path,
                     options: RunOptions | None = None, *, per_clip: bool = False, layer: int | None = None,
                     shard_size: int = 1024, **kwargs: Any) -> dict[str, Any] | None:
    """Pooled features of every video of ``listing`` into ``out/shards/`` (``shard_size`` videos a file) plus
    ``out/index.json``; the other arguments are as in :func:`~vivit.tasks.evaluate.evaluate_dataset` (labels are kept
    as given; ``stop_after`` leaves without writing the pending shard or the index). Returns the index on rank 0,
    ``None`` on other ranks and when stopped early.

    A feature is ``model.forward_head(model.forward_features(x), pre_logits=True)`` (``layer=None``), or the token
    mean of block ``layer``'s output after the final norm (Model 2: a spatial block; runs on the torch backend),
    averaged over the views unless ``per_clip`` keeps a row per view (``clip * crops + crop``).
    """
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, found {shard_size}")
    if layer is not None:  # vivit.optimize runs logits or pre-logits only
        kwargs["backend"] = "torch"
    return run_job(listing, model, out, _Extract(per_clip, layer, shard_size), RunOptions.of(options, kwargs))


class _Extract(Task):
    """Features per video into shards per rank; the index of every rank's shards at the end."""

    what = "extract"
    outputs = (INDEX, f"{SHARDS}/features-*.safetensors")
    stop_note = " (the pending shard is not written)"
    pre_logits = True

    def __init__(self, per_clip: bool, layer: int | None, shard_size: int) -> None:
        self.per_clip, self.layer, self.shard_size = per_clip, layer, shard_size
        self.settings = {"per_clip": per_clip, "layer": layer}
        self.pending: list[tuple[int, torch.Tensor | None, str | None]] = []  # (index, features or None, reason)

    def forward(self, model: Any) -> Callable[[torch.Tensor], torch.Tensor] | None:  # None: the runtime's pre-logits
        return None if self.layer is None else lambda x: model.forward_intermediates(
            x, indices=[self.layer], norm=True, output_fmt="NLC", intermediates_only=True)[0].mean(1)

    def prepare(self, run: Run) -> dict[str, Any]:
        if self.layer is not None and run.model.token_merging:
            raise ValueError("layer features are one block's tokens, which token merging changes from block to block: "
                             "set token merging off (0), or layer=None for the pooled pre-logits")
        return self.settings

    def resume(self, run: Run) -> dict[int, dict[str, Any]]:
        self.shards = run.out / SHARDS
        self.shards.mkdir(parents=True, exist_ok=True)
        return _scan_shards(self.shards, run.num)

    def consume(self, run: Run, batch: list[tuple[int, str, torch.Tensor | None, str | None]]) -> None:
        for i, _, f, why in batch:
            self.pending.append((i, f if f is None or self.per_clip else f.mean(0, keepdim=True), why))
        if len(self.pending) >= self.shard_size:
            self._flush(run)

    def end(self, run: Run, completed: bool) -> dict[int, dict[str, Any]]:
        if completed and self.pending:
            self._flush(run)
        return _scan_shards(self.shards, run.num) if completed else {}

    def _flush(self, run: Run) -> None:
        """Write the pending videos as a shard (a killed write leaves no shard)."""
        done = [(i, feats) for i, feats, _ in self.pending if feats is not None]
        tensors = {"features": torch.cat([f for _, f in done]) if done else torch.zeros(0, 0),
                   "video": torch.tensor([i for i, f in done for _ in range(len(f))], dtype=torch.int64),
                   "view": torch.tensor([v for _, f in done for v in (range(len(f)) if self.per_clip else [-1])],
                                        dtype=torch.int64)}
        failed = [{"index": i, "reason": reason} for i, feats, reason in self.pending if feats is None]
        metadata = {"failed": json.dumps(failed), "model": run.name}
        # named by its rank and first video: unique, as each video is written once (a shard deleted is written anew);
        # the "v" keeps these names apart from the sequence numbers (features-000-00001) of folders written before
        path = self.shards / f"features-{run.env.rank:03d}-v{self.pending[0][0]:05d}.safetensors"
        try:  # safetensors writes 0600; the shard gets the mode of the folder's other outputs
            write_atomic(path, lambda tmp: st.save_file(tensors, str(tmp), metadata=metadata), mode=umask_mode())
        except SafetensorError as err:  # e.g. a full disk: one line, not the library's traceback
            raise OSError(f"{path}: cannot write the shard ({' '.join(str(err).split())}); free disk space (or fix "
                          "the folder's permissions) and run again with the same --out to continue") from None
        self.pending.clear()

    def finish(self, run: Run, identity: dict[str, Any], merged: dict[int, dict[str, Any]]) -> dict[str, Any]:
        """``index.json`` of every rank's shards (``merged``: each video's entry of :func:`_scan_shards`)."""
        videos = [{"path": run.rows.paths[i], "label": run.rows.labels[i], **merged[i]} for i in range(run.num)]
        shards = sorted({v["shard"] for v in videos if "shard" in v})
        if lost := [name for name in shards if not (self.shards / name).exists()]:  # each rank scanned its own
            raise RuntimeError(f"{self.shards}: lacks {len(lost)} shards other ranks wrote (first: {lost[0]}); the "
                               f"ranks do not share {run.out}: copy the shards into one folder and run again")
        failed = [{"path": v["path"], "reason": v["reason"]} for v in videos if "reason" in v]
        dims = {int(v.pop("dim")) for v in videos if "dim" in v}
        index = {**identity, "dim": dims.pop() if dims else None, "num_extracted": run.num - len(failed),
                 "num_failed": len(failed), "failed": failed, "shards": shards, "videos": videos}
        write_text_atomic(run.out / INDEX, json.dumps(index, indent=2) + "\n")
        return index


def _scan_shards(shards: Path, num: int) -> dict[int, dict[str, Any]]:
    """Where each video's rows are in the shards present: ``{index: {"shard", "row", "rows", "dim"} or {"reason"}}``."""
    found: dict[int, dict[str, Any]] = {}
    for path in sorted(shards.glob("features-*.safetensors")):
        try:
            with safe_open(str(path), framework="pt") as f:
                videos, counts = f.get_tensor("video").unique_consecutive(return_counts=True)  # rows are by video
                dim = f.get_slice("features").get_shape()[1]
                failed = json.loads((f.metadata() or {}).get("failed", "[]"))
        except (SafetensorError, KeyError, ValueError, OSError) as err:
            raise ValueError(f"{path}: is not a feature shard written by vivit extract ({type(err).__name__}); "
                             "delete it (its videos are then extracted again) or pass another --out") from None
        for video, end, rows in zip(videos.tolist(), counts.cumsum(0).tolist(), counts.tolist(), strict=True):
            if 0 <= video < num:
                found.setdefault(video, {"shard": path.name, "row": end - rows, "rows": rows, "dim": dim})
        for record in failed:
            found.setdefault(int(record["index"]), {"reason": record["reason"]})
    return found


def load_features(out: str | Path) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    """The features an :func:`extract_features` run wrote, in listing order: ``(features, rows)``, ``(R, D)`` float32
    with a row per video (or per view with ``per_clip``), failed videos left out, and each row's index entry."""
    out = Path(out)
    if not (out / INDEX).exists():
        raise FileNotFoundError(f"{out / INDEX}: no such file; run vivit extract (extract_features) into {out} first, "
                                "or let an interrupted run finish")
    index = read_json(out / INDEX, "the index of an extract run")
    shards = {name: st.load_file(str(out / SHARDS / name))["features"] for name in index["shards"]}
    videos = [v for v in index["videos"] if "shard" in v]
    parts = [shards[v["shard"]][v["row"]:v["row"] + v["rows"]] for v in videos]
    rows = [v for v in videos for _ in range(v["rows"])]
    return (torch.cat(parts) if parts else torch.zeros(0, index.get("dim") or 0)), rows


__all__ = ["extract_features", "load_features"]
