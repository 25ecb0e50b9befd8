"""Feature extraction over a whole listing: pooled features of every video into safetensors shards plus an index.

:func:`extract_features` writes pooled pre-logits features (``forward_head(forward_features(x), pre_logits=True)``,
or the token mean of block ``layer``) per video (the mean over views) or per view, in safetensors shards under
``out/shards/`` (each rank writes its own, ``shard_size`` videos each, so a kill loses at most one pending shard) and
``out/index.json`` mapping each video to its shard and rows; :func:`load_features` reads them back in listing order.
A video that cannot be decoded, or whose features are not finite, is recorded as failed with its reason.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from vivit.data.datasets import KINETICS_PATTERN, Dist, shard, to_items
from vivit.files import umask_mode, write_atomic, write_text_atomic
from vivit.tasks.run import (
    Progress,
    Run,
    RunOptions,
    claimed,
    finite_or_reason,
        outputs,
    read_json,
    started,
    stopping,
)

INDEX = "index.json"
SHARDS = "shards"


def extract_features(listing: str | Path, model: torch.nn.Module | str, out: str | Path, *, per_clip: bool = False,
                     layer: int | None = None, views: str | Sequence[int] | None = None, batch_size: int = 16,
                     workers: int = 2, device: str | torch.device | None = None,
                     dtype: str | torch.dtype | None = None, compile: bool = False,
                     video_root: str | Path | None = None, pattern: str = KINETICS_PATTERN, decoder: str = "auto",
                     shard_size: int = 1024, log_every: int = 100, progress_bar: bool | None = None,
                     stop_after: int | None = None, env: Dist | None = None,
                     backend: str = "torch") -> dict[str, Any] | None:
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
        decoder: ``"auto"``, ``"pyav"`` or ``"torchcodec"``.
        shard_size: Videos per shard file (a kill loses at most one unwritten shard per rank).
        log_every: Videos between progress lines.
        progress_bar: Force the tqdm bar on or off.
        stop_after: Leave after this many videos without writing the pending shard or the index, as a killed job
            would; for testing resumption.
        env: A :class:`vivit.data.datasets.Dist`.

        backend: What runs the model: ``"torch"`` (the model as it is), ``"auto"`` or ``"openvino"``
            (:func:`vivit.optimize`)
            (``layer=None`` only; ``layer`` features run in torch).
    Returns:
        The index on rank 0; ``None`` on other ranks and when stopped early.
    """
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, found {shard_size}")
    opts = RunOptions(views, batch_size, workers, dtype, compile, video_root, pattern, decoder, log_every,
                      progress_bar, stop_after, backend=backend if layer is None else "torch",
                      pre_logits=True)
    with started(listing, model, out, opts, env, device) as run:
        identity = run.identity(per_clip=per_clip, layer=layer)
        with claimed(run.out, identity, run.env):
            return _extract(run, identity, per_clip, layer, shard_size)


def _extract(run: Run, identity: dict[str, Any], per_clip: bool, layer: int | None,
             shard_size: int) -> dict[str, Any] | None:
    items = to_items(run.rows.paths, [None] * run.num, run.rows.where, [], str(run.listing))
    shards = run.out / SHARDS
    shards.mkdir(parents=True, exist_ok=True)
    done: set[int] = set()
    for part in run.env.all_gather_object(sorted(_scan_shards(shards, run.num))):
        done.update(part)
    mine = shard([i for i in range(run.num) if i not in done], run.env.rank, run.env.world_size)
    writer = _ShardWriter(shards, run.env.rank, run.name)
    bar = Progress(len(mine), "extract", run.opts.log_every, run.env, run.opts.progress_bar)
    processed = 0
    for records, feats in outputs(run, _feature_fn(run.model, layer), [items[i] for i in mine]):
        failed = sum(writer.add(mine[r["index"]], f, r["error"], per_clip) for r, f in zip(records, feats, strict=True))
        processed += len(records)
        bar.update(len(records), failed)
        if stopping(run, processed, " (the pending shard is not written)"):
            bar.close()
            return None
        if writer.videos >= shard_size:
            writer.flush()
    writer.flush()
    bar.close()
    return _write_index(run, identity, shards)


def _feature_fn(model: torch.nn.Module, layer: int | None) -> Callable[[torch.Tensor], torch.Tensor]:
    if layer is None:
        return lambda x: model.forward_head(model.forward_features(x), pre_logits=True)

    def tokens_mean(x: torch.Tensor) -> torch.Tensor:
        (tokens,) = model.forward_intermediates(x, indices=[layer], norm=True, output_fmt="NLC",
                                                intermediates_only=True)
        return tokens.mean(1)

    return tokens_mean


class _ShardWriter:
    """Collects one rank's features and failure records and writes them as numbered shards."""

    def __init__(self, shards: Path, rank: int, name: str) -> None:
        self.shards, self.rank, self.name = shards, rank, name
        self.seq = 1 + max((int(p.stem.split("-")[-1]) for p in shards.glob(f"features-{rank:03d}-*.safetensors")),
                           default=-1)
        self.features: list[torch.Tensor] = []
        self.video: list[int] = []
        self.view: list[int] = []
        self.failed: list[dict[str, Any]] = []
        self.videos = 0

    def add(self, index: int, feats: torch.Tensor | None, error: str | None, per_clip: bool) -> bool:
        """Record one video; ``True`` when it failed (unreadable, or features that are not finite)."""
        self.videos += 1
        feats, reason = finite_or_reason(feats, error)
        if feats is None:
            self.failed.append({"index": index, "reason": reason})
            return True
        feats = feats if per_clip else feats.mean(0, keepdim=True)
        self.features.append(feats)
        self.video.extend([index] * feats.shape[0])
        self.view.extend(range(feats.shape[0]) if per_clip else [-1])
        return False

    def flush(self) -> None:
        """Write the pending videos as the next shard (a killed write leaves no shard)."""
        from safetensors import SafetensorError
        from safetensors.torch import save_file

        if not self.videos:
            return
        dim = self.features[0].shape[1] if self.features else 0
        tensors = {"features": torch.cat(self.features) if self.features else torch.zeros(0, dim),
                   "video": torch.tensor(self.video, dtype=torch.int64),
                   "view": torch.tensor(self.view, dtype=torch.int64)}
        path = self.shards / f"features-{self.rank:03d}-{self.seq:05d}.safetensors"
        metadata = {"failed": json.dumps(self.failed), "model": self.name}
        try:  # safetensors writes 0600; the shard gets the mode of the folder's other outputs
            write_atomic(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata), mode=umask_mode())
        except SafetensorError as err:  # e.g. a full disk: one line, not the library's traceback
            reason = " ".join(str(err).split())
            raise OSError(f"{path}: cannot write the shard ({reason}); free disk space (or fix the folder's "
                          "permissions) and run again with the same --out to continue") from None
        self.seq += 1
        self.videos = 0
        for pending in (self.features, self.video, self.view, self.failed):
            pending.clear()


def _write_index(run: Run, identity: dict[str, Any], shards: Path) -> dict[str, Any] | None:
    """Merge every rank's shards into ``index.json`` (rank 0); the index, or ``None`` on other ranks."""
    merged: dict[int, dict[str, Any]] = {}
    for part in run.env.all_gather_object(_scan_shards(shards, run.num)):
        for i, entry in part.items():
            merged.setdefault(i, entry)
    index = None
    if run.env.main:
        missing = [i for i in range(run.num) if i not in merged]
        if missing:
            raise RuntimeError(f"{run.out}: no features or failure record for {len(missing)} videos (first: "
                               f"{run.rows.paths[missing[0]]}); the ranks do not share {shards}: copy the shards "
                               "into one folder and run again")
        videos = [{"path": run.rows.paths[i], "label": run.rows.labels[i], **merged[i]} for i in range(run.num)]
        failed = [{"path": v["path"], "reason": v["reason"]} for v in videos if "reason" in v]
        dims = {int(v["dim"]) for v in videos if "dim" in v}
        index = {**identity, "dim": dims.pop() if dims else None, "num_extracted": run.num - len(failed),
                 "num_failed": len(failed), "failed": failed,
                 "shards": sorted({v["shard"] for v in videos if "shard" in v}),
                 "videos": [{k: v for k, v in video.items() if k != "dim"} for video in videos]}
        write_text_atomic(run.out / INDEX, json.dumps(index, indent=2) + "\n")
    run.env.barrier()
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
    index = read_json(index_path, "the index of an extract run")
    cache: dict[str, dict[str, torch.Tensor]] = {}
    parts, rows = [], []
    for video in index["videos"]:
        if "shard" not in video:
            continue
        if video["shard"] not in cache:
            cache[video["shard"]] = load_file(str(out / SHARDS / video["shard"]))
        parts.append(cache[video["shard"]]["features"][video["row"]:video["row"] + video["rows"]])
        rows.extend([video] * video["rows"])
    features = torch.cat(parts) if parts else torch.zeros(0, index.get("dim") or 0)
    return features, rows


__all__ = ["extract_features", "load_features"]
