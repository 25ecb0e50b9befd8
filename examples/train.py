"""Fine-tune a ViViT on labelled videos with the reference recipe, on one process or many (torchrun: DDP or FSDP2).

    python examples/train.py --train data/train.csv --val data/val.csv --model vivit_b_16x2 --pretrained --out runs/a
    torchrun --nproc_per_node 8 examples/train.py --train data/train --val data/val --model vivit_l_16x2_fe \\
        --inflate vit_large_patch16_224.augreg_in21k --fsdp --amp --grad-checkpointing --out runs/b
    python examples/train.py ... --resume runs/a            # continue from the newest checkpoint in runs/a

Data: a CSV of ``path,label`` rows (paths relative to the CSV; a ``path,label`` header is optional), a Kinetics CSV or a
folder with one sub-folder of videos per class, read by ``vivit.data.datasets`` (listings, clip datasets, loaders,
ranks).
Videos are decoded with ``vivit.data.video`` and augmented with ``vivit.data.transforms``.

The defaults are the reference's (scenic ``projects/vivit/configs``, see ``RECIPES``): SGD with momentum 0.9, a
linear warm-up of 2.5 epochs then cosine decay to zero, gradient clipping at global norm 1, no weight decay; label
smoothing, mixup, stochastic depth, frame stride, test views and augmentation follow ``--recipe``.

Every random draw is a function of ``--seed``: data order of ``(seed, epoch)``, a clip's frames and augmentation of
``(seed, epoch, index)``, model-side randomness (stochastic depth, mixup) of each rank's saved RNG state. A run
resumed from a checkpoint therefore ends with the same weights as one that was never interrupted.

Outputs in ``--out``: ``steps.csv`` (loss, lr per step), ``epochs.csv`` (top-1/top-5 of multi-view evaluation,
skipped files, samples/s), ``checkpoints/step_*.pt``, ``classes.txt``, ``args.json``, TensorBoard events when
``tensorboard`` is installed, and the final model in ``model/`` (``save_pretrained``: safetensors, config, card;
``vivit.create_model("local-dir:OUT/model", pretrained=True)`` loads it, ``push_to_hub`` publishes it).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import logging
import math
import os
import random
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

import vivit
from vivit.data.datasets import (
    DataError,
    Dist,
    EvalVideos,
    ResumableDistributedSampler,
    TrainClips,
    collate_first,
    init_distributed,
    make_loader,
    read_listing,
    resolve_classes,
    to_items,
)
from vivit.data.transforms import TRAIN_RECIPES, mixup, resolve_data_config, train_transform
from vivit.data.video import parse_views
from vivit.tasks.predict import predict_views

_logger = logging.getLogger("vivit.train")

# The reference configs' optimisation settings (scenic/projects/vivit/configs/*); augmentation, mixup alpha, label
# smoothing and frame stride come from vivit.data.transforms.TRAIN_RECIPES. All of them used a global batch of 64,
# optimizer 'momentum' (SGD, momentum 0.9), l2_decay_factor 0, max_grad_norm 1 and
# 'constant * cosine_decay * linear_warmup' with warmup_steps = 2.5 epochs.
RECIPES: dict[str, dict[str, Any]] = {
    # kinetics400/vivit_base_k400.py (Model 1: 0.1; vivit_base_factorised_encoder.py: 0.05; K600 large FE: 0.05)
    "kinetics": dict(lr=0.1, epochs=30, drop_path=0.0, views="4x3", posemb_init="tile"),
    # epic_kitchens/vivit_large_factorised_encoder.py (stochastic_droplayer_rate 0.2); SPEC 3.2: 4x1 views
    "epic_kitchens": dict(lr=0.5, epochs=50, drop_path=0.2, views="4x1", posemb_init="tile"),
    # something_something_v2/vivit_large_factorised_encoder.py (positional_embed_size_change 'resize')
    "ssv2": dict(lr=0.4, epochs=35, drop_path=0.3, views="4x3", posemb_init="resize"),
}
REFERENCE = dict(momentum=0.9, warmup_epochs=2.5, clip_grad=1.0, global_batch=64)
ADAMW_DEFAULTS = dict(lr=1e-4, weight_decay=0.05)
STOPPED_EXIT_CODE = 3  # --stop-after-steps: the run ends as an interrupted job would, without the final save


# ================================================================================================== model
def parse_model_args(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(f"--model-args must be a JSON object such as '{{\"drop_rate\": 0.1}}': {err}") from None
    if not isinstance(value, dict):
        raise DataError(f"--model-args must be a JSON object, found {text!r}")
    return value


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """An image ViT's weights: vivit's readers (format by content, wrappers unwrapped, clear errors)."""
    from vivit.weights.read import read_state_dict

    return read_state_dict(path)


def build_model(args: argparse.Namespace, num_classes: int) -> nn.Module:
    """The ViViT to fine-tune: architecture and overrides, then ``--pretrained`` weights or ``--inflate``."""
    kwargs = parse_model_args(args.model_args)
    kwargs.setdefault("drop_path_rate", args.drop_path)
    if args.inflate and "act_layer" not in kwargs:
        kwargs["act_layer"] = "gelu"  # timm image ViTs use exact GELU (SPEC 3.2); inflate refuses a mismatch
    for key in ("num_frames", "img_size"):
        if getattr(args, key) is not None:
            kwargs[key] = getattr(args, key)
    name = args.model
    from_folder = name.startswith(("hf-hub:", "hf_hub:", "local-dir:"))
    model = vivit.create_model(name, pretrained=from_folder and args.pretrained is not None,
                               num_classes=num_classes, **kwargs)
    if args.pretrained is not None and not from_folder:
        vivit.load_pretrained(model, None if args.pretrained == "default" else args.pretrained)
    elif args.inflate:
        path = Path(args.inflate)
        source = _read_state_dict(path) if path.is_file() else args.inflate
        vivit.inflate(model, source, kernel_init=args.inflate_kernel, posemb_init=args.inflate_posemb)
    return model


def _blocks(model: nn.Module) -> list[nn.Module]:
    """The transformer blocks (every variant keeps them in ``...blocks.<i>``): FSDP2's sharding units."""
    return [m for name, m in model.named_modules() if name.rsplit(".", 2)[-2:-1] == ["blocks"]]


def parallelize(model: nn.Module, args: argparse.Namespace, env: Dist) -> nn.Module:
    """FSDP2 (each block, then the root) or DDP; returns the module to call for training."""
    if args.fsdp:
        from torch.distributed.fsdp import fully_shard

        for block in _blocks(model):
            fully_shard(block)
        fully_shard(model)
        return model
    if env.initialised and env.world_size > 1:
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model, device_ids=[env.device.index] if env.device.type == "cuda" else None)
    return model


def build_optimizer(model: nn.Module, args: argparse.Namespace) -> torch.optim.Optimizer:
    """SGD (momentum 0.9) or AdamW over timm's layer-decay parameter groups (``lr_scale`` per group)."""
    from timm.optim import param_groups_layer_decay

    groups = param_groups_layer_decay(model, weight_decay=args.weight_decay,
                                      no_weight_decay_list=list(model.no_weight_decay()),
                                      layer_decay=args.layer_decay)
    for group in groups:
        group["lr"] = args.lr * group["lr_scale"]
    if args.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=args.lr, momentum=args.momentum)
    return torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.999))


def lr_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    """scenic ``compound`` 'constant * cosine_decay * linear_warmup' without the constant: the first update (step 0)
    has factor 0 when there is a warm-up, as in the reference."""
    warmup = min(1.0, step / warmup_steps) if warmup_steps > 0 else 1.0
    cycle = total_steps - warmup_steps
    if cycle <= 0:
        return warmup
    progress = max(0.0, step - warmup_steps) / cycle
    return warmup * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


# ================================================================================================== checkpoints
def rng_state() -> dict[str, Any]:
    """This process's RNG states, as plain tensors / lists so that the checkpoint loads with ``weights_only``."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, py_state, py_gauss = random.getstate()
    state = {"torch": torch.get_rng_state(), "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss,
                                                        gauss], "python": [version, list(py_state), py_gauss]}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, py_state, py_gauss = state["python"]
    random.setstate((version, tuple(py_state), py_gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def seed_everything(seed: int, rank: int) -> None:
    """Seeds of the model-side randomness (stochastic depth, mixup), different on every rank."""
    torch.manual_seed(seed * 1000 + rank + 1)
    np.random.seed((seed * 1000 + rank + 1) % 2**32)
    random.seed(seed * 1000 + rank + 1)


def _full_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict[str, Any], dict[str, Any]]:
    """Full (unsharded) model and optimizer state on CPU, keyed by parameter names (FSDP: on rank 0 only)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    return get_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def _atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # a killed save leaves a temp file, never a truncated checkpoint
    finally:
        tmp.unlink(missing_ok=True)


def save_checkpoint(out: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, scaler: Any,
                    progress: dict[str, Any], args: argparse.Namespace, env: Dist) -> Path | None:
    """Write ``checkpoints/step_<global step>.pt`` atomically (every rank takes part); keep the newest few."""
    model_state, optim_state = _full_state(model, optimizer)
    rngs = env.all_gather_object(rng_state())
    path = out / "checkpoints" / f"step_{progress['global_step']:08d}.pt"
    if env.main:
        path.parent.mkdir(parents=True, exist_ok=True)
        _atomic_save({"model": model_state, "optimizer": optim_state, "scheduler": scheduler.state_dict(),
                      "scaler": scaler.state_dict(), "progress": progress, "rng": rngs,
                      "world_size": env.world_size, "args": _resume_args(args)}, path)
        for old in sorted(path.parent.glob("step_*.pt"))[:-args.keep_checkpoints]:
            old.unlink(missing_ok=True)
        _logger.info("saved checkpoint %s", path)
    env.barrier()
    return path


# Settings (as resolved by resolve_args) that decide the data order, the model's shape and the optimisation; a resumed
# run must keep them. The optimiser and scheduler states restore the old lr, momentum, weight decay and warm-up, so a
# changed value would be silently ignored (or, for the data and loss settings, make the run differ from an
# uninterrupted one).
_RESUME_KEYS = ("model", "model_args", "batch_size", "accum_steps", "seed", "epochs", "recipe", "optimizer", "lr",
                "momentum", "weight_decay", "layer_decay", "warmup_epochs", "warmup_steps", "frame_stride", "mixup",
                "label_smoothing", "drop_path")


def _resume_args(args: argparse.Namespace) -> dict[str, Any]:
    """The settings of ``_RESUME_KEYS``, stored in each checkpoint and compared on resume."""
    return {k: getattr(args, k) for k in _RESUME_KEYS}


def find_checkpoint(path: str | Path) -> Path:
    path = Path(path)
    if path.is_dir():
        found = sorted((path / "checkpoints").glob("step_*.pt")) or sorted(path.glob("step_*.pt"))
        if not found:
            raise FileNotFoundError(f"{path}: no checkpoints/step_*.pt to resume from; pass a checkpoint file or the "
                                    "--out folder of an earlier run")
        return found[-1]
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint; pass a checkpoint file or the --out folder of a run")
    return path


def load_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, scaler: Any,
                    args: argparse.Namespace, env: Dist) -> dict[str, Any]:
    """Restore everything ``save_checkpoint`` wrote; returns the progress record."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    state = torch.load(path, map_location="cpu", weights_only=True)
    saved = state["args"]  # checkpoints of older versions lack some keys: those cannot be checked
    changed = {k: (v, saved[k]) for k, v in _resume_args(args).items() if k in saved and saved[k] != v}
    if changed:
        raise ValueError(f"{path}: written with other settings: "
                         + ", ".join(f"--{k.replace('_', '-')} was {old!r}, now {new!r}" for k, (new, old) in
                                     changed.items())
                         + "; resume with the same settings (they fix the data order, the model and the "
                           "optimisation)")
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"],
                   options=StateDictOptions(full_state_dict=True))
    scheduler.load_state_dict(state["scheduler"])
    scaler.load_state_dict(state["scaler"])
    progress = state["progress"]
    if state["world_size"] == env.world_size:
        set_rng_state(state["rng"][env.rank])
    elif progress["step_in_epoch"]:
        raise ValueError(f"{path}: saved mid-epoch by {state['world_size']} processes, now {env.world_size}; resume "
                         "with the same number of processes, or from a checkpoint at the end of an epoch")
    else:
        _logger.warning("%s: saved by %d processes, now %d: RNG states are re-seeded", path, state["world_size"],
                        env.world_size)
        seed_everything(args.seed + progress["epoch"], env.rank)
    _logger.info("resumed from %s (epoch %d, step %d)", path, progress["epoch"], progress["global_step"])
    return progress


# ================================================================================================== logging
class CsvLog:
    """Append-only CSV on rank 0; on resume, rows past the checkpoint are dropped so the file reads as one run."""

    def __init__(self, path: Path, fields: Sequence[str], keep: Any = None) -> None:
        self.path, self.fields = path, list(fields)
        rows = []
        if keep is not None and path.exists():
            with open(path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if keep(r)]
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, self.fields)
            writer.writeheader()
            writer.writerows(rows)

    def write(self, row: dict[str, Any]) -> None:
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, self.fields).writerow({k: _fmt(row.get(k)) for k in self.fields})


def _fmt(value: Any) -> Any:
    return f"{value:.6g}" if isinstance(value, float) else value


def _tensorboard(out: Path, purge_step: int | None = None) -> Any:
    """A TensorBoard writer, or None without ``tensorboard``. ``purge_step`` (a resume): TensorBoard drops the events
    an interrupted run wrote at that step and later, which the resumed run writes again."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(out / "tensorboard"), purge_step=purge_step)


# ================================================================================================== loops
def evaluate(model: nn.Module, loader: DataLoader, view_shape: tuple[int, ...], num_classes: int,
             args: argparse.Namespace, env: Dist) -> dict[str, float]:
    """Top-1 / top-5 and loss of view-averaged logits; ranks stay in lock-step (FSDP) by running pads and skipped
    videos on zeros."""
    sums = [0.0] * 5  # correct@1, correct@5, loss, videos, skipped
    k = min(5, num_classes)
    for item in loader:
        views = item["views"] if item["status"] == "ok" else torch.zeros(view_shape)
        with torch.autocast(env.device.type, dtype=args.amp_dtype, enabled=args.amp):
            logits = predict_views(model, views, args.eval_batch_size, device=env.device)
        if item["status"] == "failed":
            sums[4] += 1
        if item["status"] != "ok":
            continue
        label = torch.tensor(item["label"])
        top = logits.topk(k).indices
        sums[0] += float(top[0] == label)
        sums[1] += float((top == label).any())
        sums[2] += float(F.cross_entropy(logits[None], label[None]))
        sums[3] += 1
    c1, c5, loss, n, skipped = env.all_reduce(sums)
    n = max(n, 1)
    return {"top1": 100 * c1 / n, "top5": 100 * c5 / n, "val_loss": loss / n, "val_videos": int(n),
            "val_skipped": int(skipped)}


def train(args: argparse.Namespace, env: Dist) -> dict[str, Any]:
    """The whole run: data, model, optimiser, (resume), epochs of training and evaluation, final save."""
    out = Path(args.out)
    paths, labels, where = read_listing(args.train)
    classes = resolve_classes(labels, args.classes)
    train_items = to_items(paths, labels, where, classes, f"--train {args.train}", require_labels=True)
    val_items = (to_items(*read_listing(args.val), classes, f"--val {args.val}", require_labels=True) if args.val
                 else [])

    torch.manual_seed(args.seed)  # the same initial weights on every rank (FSDP needs it; DDP broadcasts anyway)
    if not env.main:
        env.barrier()  # rank 0 downloads (and caches) weights first, the others then read the cache
    model = build_model(args, len(classes))
    if env.main:
        env.barrier()
    data_cfg = resolve_data_config(model)
    data_cfg["frame_stride"] = args.frame_stride
    model.pretrained_cfg = {**model.pretrained_cfg, "frame_stride": data_cfg["frame_stride"], "tag": "",
                            "top1": None, "eval_views": None, "label_set": None, "class_splits": None}
    model.to(env.device)
    if args.grad_checkpointing:
        model.set_grad_checkpointing(True)
    net = parallelize(model, args, env)
    if args.compile:
        model.compile()  # in place: state-dict keys keep their names
    optimizer = build_optimizer(model, args)

    transform = train_transform(data_cfg, args.recipe, flip=False if args.no_flip else None,
                                color_augment=args.color_augment, rand_augment=args.rand_augment)
    train_set = TrainClips(train_items, data_cfg, transform, args.seed, args.video_backend)
    sampler = ResumableDistributedSampler(train_set, num_replicas=env.world_size, rank=env.rank, shuffle=True,
                                          seed=args.seed)
    steps_per_epoch = sampler.num_samples // args.batch_size // args.accum_steps
    if steps_per_epoch < 1:
        raise DataError(f"--train has {len(train_items)} videos, fewer than one step's {args.batch_size} (batch) x "
                        f"{args.accum_steps} (accumulation) x {env.world_size} (processes); lower --batch-size")
    total_steps = steps_per_epoch * args.epochs
    warmup_steps = args.warmup_steps if args.warmup_steps is not None else int(args.warmup_epochs * steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer,
                                                  lambda s: lr_factor(s, warmup_steps, total_steps))
    scaler = torch.amp.GradScaler(env.device.type, enabled=args.amp and args.amp_dtype == torch.float16)

    view_shape = (math.prod(parse_views(args.eval_views)), *data_cfg["input_size"])
    val_set = (EvalVideos(val_items, data_cfg, args.eval_views, decoder=args.video_backend, pad_to=env.world_size)
               if val_items else None)

    seed_everything(args.seed, env.rank)
    progress = {"epoch": 0, "step_in_epoch": 0, "global_step": 0}
    if args.resume:
        progress = load_checkpoint(find_checkpoint(args.resume), model, optimizer, scheduler, scaler, args, env)
    start_step = progress["global_step"]

    step_fields = ["step", "epoch", "loss", "lr", "samples_per_s"]
    epoch_fields = ["epoch", "step", "train_loss", "val_loss", "top1", "top5", "val_videos", "train_skipped",
                    "val_skipped", "samples_per_s", "seconds"]
    steps_log = epochs_log = writer = None
    if env.main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "classes.txt").write_text("\n".join(classes) + "\n")
        (out / "args.json").write_text(json.dumps({k: str(v) if isinstance(v, (Path, torch.dtype)) else v
                                                   for k, v in vars(args).items()}, indent=2) + "\n")
        resumed = args.resume is not None
        steps_log = CsvLog(out / "steps.csv", step_fields,
                           (lambda r: int(r["step"]) <= start_step) if resumed else None)
        epochs_log = CsvLog(out / "epochs.csv", epoch_fields,
                            (lambda r: int(r["epoch"]) < progress["epoch"]) if resumed else None)
        writer = _tensorboard(out, purge_step=start_step + 1 if resumed else None)
        _logger.info("%d classes, %d training / %d validation videos; %d processes x batch %d x %d accumulation = "
                     "%d clips per step (the reference used %d); %d steps per epoch, %d epochs, warm-up %d steps",
                     len(classes), len(train_items), len(val_items), env.world_size, args.batch_size,
                     args.accum_steps, env.world_size * args.batch_size * args.accum_steps,
                     REFERENCE["global_batch"], steps_per_epoch, args.epochs, warmup_steps)

    global_step = start_step
    history: list[dict[str, Any]] = []
    for epoch in range(progress["epoch"], args.epochs):
        resumed_in_epoch = progress["step_in_epoch"] if epoch == progress["epoch"] else 0
        train_set.epoch = epoch
        sampler.set_epoch(epoch)
        sampler.start = resumed_in_epoch * args.batch_size * args.accum_steps
        loader = make_loader(train_set, batch_size=args.batch_size, sampler=sampler, workers=args.workers,
                             drop_last=True, pin_memory=env.device.type == "cuda", seed=args.seed + epoch)
        net.train()
        step_in_epoch, micro, step_loss = resumed_in_epoch, 0, 0.0
        # sums over this rank's steps; a checkpoint stores their totals over ranks, which rank 0 carries on from
        epoch_loss, epoch_steps, skipped = 0.0, 0, 0
        if resumed_in_epoch and env.main:
            epoch_loss, epoch_steps, skipped = progress.get("epoch_sums", (0.0, 0, 0))
        log_loss, log_steps, log_start, epoch_start = 0.0, 0, time.perf_counter(), time.perf_counter()
        for batch in loader:
            if step_in_epoch >= steps_per_epoch:
                break
            x = batch["video"].to(env.device, non_blocking=True)
            y = batch["label"].to(env.device, non_blocking=True)
            skipped += int(batch["skipped"].sum())
            target = y
            if args.mixup > 0:
                x, target = mixup(x, y, args.mixup, num_classes=len(classes))
            last = (micro + 1) % args.accum_steps == 0
            with _no_grad_sync(net, args, sync=last):
                with torch.autocast(env.device.type, dtype=args.amp_dtype, enabled=args.amp):
                    logits = net(x)
                loss = F.cross_entropy(logits.float(), target, label_smoothing=args.label_smoothing)
                scaler.scale(loss / args.accum_steps).backward()
            step_loss += float(loss.detach()) / args.accum_steps
            micro += 1
            if not last:
                continue
            if args.clip_grad > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip_grad)
            # the lr this update used, as restored from a checkpoint on resume: the largest group's (lr_scale 1)
            lr = max(group["lr"] for group in optimizer.param_groups)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            step_in_epoch += 1
            global_step += 1
            epoch_loss, epoch_steps = epoch_loss + step_loss, epoch_steps + 1
            log_loss, log_steps, step_loss = log_loss + step_loss, log_steps + 1, 0.0
            if global_step % args.log_every == 0 or step_in_epoch == steps_per_epoch:
                mean_loss = env.all_reduce([log_loss / log_steps])[0] / env.world_size
                rate = log_steps * args.batch_size * args.accum_steps * env.world_size / (
                    time.perf_counter() - log_start)
                if env.main:
                    steps_log.write({"step": global_step, "epoch": epoch, "loss": mean_loss, "lr": lr,
                                     "samples_per_s": rate})
                    if writer is not None:
                        writer.add_scalar("train/loss", mean_loss, global_step)
                        writer.add_scalar("train/lr", lr, global_step)
                    _logger.info("epoch %d step %d/%d  loss %.4f  lr %.3g  %.1f samples/s", epoch, global_step,
                                 total_steps, mean_loss, lr, rate)
                log_loss, log_steps, log_start = 0.0, 0, time.perf_counter()
            # (the last step of an epoch is saved after evaluation, below)
            if args.checkpoint_every and global_step % args.checkpoint_every == 0 and step_in_epoch < steps_per_epoch:
                state = {"epoch": epoch, "step_in_epoch": step_in_epoch, "global_step": global_step,
                         "epoch_sums": env.all_reduce([epoch_loss, epoch_steps, skipped])}
                save_checkpoint(out, model, optimizer, scheduler, scaler, state, args, env)
            if args.stop_after_steps and global_step >= args.stop_after_steps:
                _logger.warning("stopping after step %d as asked (--stop-after-steps); continue with --resume %s",
                                global_step, out)
                env.barrier()
                return {"stopped": True}
        seconds = time.perf_counter() - epoch_start
        loss_sum, steps_sum, skipped_sum = env.all_reduce([epoch_loss, epoch_steps, skipped])
        done_here = step_in_epoch - resumed_in_epoch
        row: dict[str, Any] = {"epoch": epoch, "step": global_step, "train_loss": loss_sum / max(steps_sum, 1),
                               "train_skipped": int(skipped_sum), "seconds": seconds,
                               "samples_per_s": done_here * args.batch_size * args.accum_steps * env.world_size
                               / seconds}
        if val_set is not None and ((epoch + 1) % args.eval_every == 0 or epoch + 1 == args.epochs):
            val_sampler = DistributedSampler(val_set, num_replicas=env.world_size, rank=env.rank, shuffle=False)
            val_loader = make_loader(val_set, sampler=val_sampler, workers=args.workers, collate_fn=collate_first)
            row.update(evaluate(model, val_loader, view_shape, len(classes), args, env))
        history.append(row)
        if env.main:
            epochs_log.write(row)
            if writer is not None:
                for key in ("train_loss", "val_loss", "top1", "top5"):
                    if key in row:
                        writer.add_scalar(f"epoch/{key}", row[key], global_step)  # steps, as purge_step
            _logger.info("epoch %d done: %s", epoch, ", ".join(f"{k} {_fmt(v)}" for k, v in row.items()))
        if args.checkpoint_every:
            save_checkpoint(out, model, optimizer, scheduler, scaler,
                            {"epoch": epoch + 1, "step_in_epoch": 0, "global_step": global_step}, args, env)

    save_final(model, args, classes, env)
    if writer is not None:
        writer.close()
    return {"stopped": False, "history": history}


def _no_grad_sync(net: nn.Module, args: argparse.Namespace, sync: bool) -> Any:
    """Skip the gradient all-reduce on accumulation micro-steps (DDP ``no_sync``, FSDP2 gradient sync off)."""
    if args.fsdp:
        net.set_requires_gradient_sync(sync)
        return contextlib.nullcontext()
    if sync or not hasattr(net, "no_sync"):
        return contextlib.nullcontext()
    return net.no_sync()


def save_final(model: nn.Module, args: argparse.Namespace, classes: list[str], env: Dist) -> None:
    """``save_pretrained`` into ``OUT/model`` (FSDP: the gathered weights in an unsharded twin on rank 0)."""
    target = Path(args.out) / "model"
    if args.fsdp:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if env.main:
            with torch.device("meta"):
                twin = vivit.ViViT(**model.model_args)
            twin.load_state_dict(state, assign=True)
            twin.pretrained_cfg = dict(model.pretrained_cfg)
            twin.save_pretrained(str(target), label_names=classes)
    elif env.main:
        model.save_pretrained(str(target), label_names=classes)
    if env.main:
        _logger.info("saved the fine-tuned model to %s", target)
    env.barrier()


# ================================================================================================== CLI
def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    data = p.add_argument_group("data")
    data.add_argument("--train", required=True, help="training CSV (path,label) or folder-per-class tree")
    data.add_argument("--val", help="validation CSV or folder (evaluated with multi-view averaging)")
    data.add_argument("--classes", help="file with one class name per line, in logit order (default: sorted "
                                        "training labels)")
    data.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), help="data loader processes "
                                                                                      "per rank")
    data.add_argument("--video-backend", default="auto", choices=("auto", "pyav", "torchcodec"))
    data.add_argument("--frame-stride", type=int, help="temporal stride (default: the recipe's; 2 for Kinetics)")
    data.add_argument("--eval-views", help="CLIPSxCROPS test views (default: the recipe's, 4x3 for Kinetics)")
    data.add_argument("--eval-batch-size", type=int, default=4, help="views per forward pass in evaluation")
    data.add_argument("--no-flip", action="store_true", help="no random horizontal flip (direction-dependent labels)")
    data.add_argument("--color-augment", type=float, help="probability of colour augmentation (recipe default)")
    data.add_argument("--rand-augment", type=float, nargs=2, metavar=("LAYERS", "MAGNITUDE"),
                      help="RandAugment (recipe default; epic_kitchens 2 15, ssv2 2 20)")

    model = p.add_argument_group("model")
    model.add_argument("--model", default="vivit_b_16x2", help="registered name, arch.tag, hf-hub:org/repo or "
                                                               "local-dir:PATH")
    model.add_argument("--model-args", help="JSON object of extra ViViT kwargs, e.g. '{\"attn_impl\": \"sdpa\"}'")
    model.add_argument("--num-frames", type=int, help="clip length (positional embeddings are resampled)")
    model.add_argument("--img-size", type=int, help="frame size (positional embeddings are resampled)")
    init = model.add_mutually_exclusive_group()
    init.add_argument("--pretrained", nargs="?", const="default", metavar="TAG_OR_SOURCE",
                      help="start from released weights: the model's default tag, or an arch.tag, hf-hub:, URL or "
                           "file for vivit.load_pretrained; a new head is zero-initialised")
    init.add_argument("--inflate", metavar="VIT_NAME_OR_FILE",
                      help="initialise from a timm image ViT (name or .safetensors/.pt state dict) with vivit.inflate; "
                           "the model is built with act_layer='gelu' unless --model-args says otherwise")
    model.add_argument("--inflate-kernel", default="central_frame", choices=("central_frame", "average", "average_arp"))
    model.add_argument("--inflate-posemb", choices=("tile", "resize", "resize_tile"),
                       help="positional-embedding inflation (recipe default: tile; ssv2 resize)")
    model.add_argument("--drop-path", type=float, help="stochastic depth rate (recipe default: 0 Kinetics, 0.2 EPIC, "
                                                       "0.3 SSv2)")

    opt = p.add_argument_group("optimisation (reference defaults)")
    opt.add_argument("--recipe", default="kinetics", choices=sorted(RECIPES), help="reference config the defaults "
                                                                                   "come from")
    opt.add_argument("--optimizer", default="sgd", choices=("sgd", "adamw"))
    opt.add_argument("--lr", type=float, help="peak learning rate (recipe default for SGD, e.g. 0.1 Kinetics; AdamW "
                                              f"{ADAMW_DEFAULTS['lr']})")
    opt.add_argument("--momentum", type=float, default=REFERENCE["momentum"])
    opt.add_argument("--weight-decay", type=float, help="decoupled for AdamW, L2 for SGD (default 0 for SGD as the "
                                                        f"reference, {ADAMW_DEFAULTS['weight_decay']} for AdamW)")
    opt.add_argument("--layer-decay", type=float, default=1.0, help="layer-wise LR decay factor (timm param groups; "
                                                                    "1 = off, as the reference)")
    opt.add_argument("--epochs", type=int, help="training epochs (recipe default: 30 Kinetics)")
    opt.add_argument("--warmup-epochs", type=float, default=REFERENCE["warmup_epochs"])
    opt.add_argument("--warmup-steps", type=int, help="overrides --warmup-epochs")
    opt.add_argument("--batch-size", type=int, default=8, help="clips per process per micro-step")
    opt.add_argument("--accum-steps", type=int, default=1, help="micro-steps per optimiser step")
    opt.add_argument("--clip-grad", type=float, default=REFERENCE["clip_grad"], help="max global grad norm (0: off)")
    opt.add_argument("--label-smoothing", type=float, help="recipe default: 0 Kinetics, 0.2 EPIC, 0.3 SSv2")
    opt.add_argument("--mixup", type=float, help="mixup Beta alpha, 0 = off (recipe default: 0 Kinetics, 0.1 EPIC, "
                                                 "0.3 SSv2)")
    opt.add_argument("--seed", type=int, default=0)

    run = p.add_argument_group("run")
    run.add_argument("--out", required=True, help="output folder")
    run.add_argument("--resume", help="checkpoint file, or an --out folder (its newest checkpoint)")
    run.add_argument("--checkpoint-every", type=int, default=1000,
                     help="steps between checkpoints, plus one at each epoch end (0: no checkpoints)")
    run.add_argument("--keep-checkpoints", type=int, default=2)
    run.add_argument("--eval-every", type=int, default=1, help="epochs between evaluations")
    run.add_argument("--log-every", type=int, default=20, help="steps between loss lines")
    run.add_argument("--stop-after-steps", type=int, help="leave (exit status 3, no final save) after this step, as "
                                                          "a crash would; for testing --resume")
    run.add_argument("--fsdp", action="store_true", help="FSDP2 (fully_shard per block) instead of DDP")
    run.add_argument("--amp", action="store_true", help="bfloat16 autocast")
    run.add_argument("--amp-dtype", default="bfloat16", choices=("bfloat16", "float16"),
                     help="float16 adds a gradient scaler")
    run.add_argument("--grad-checkpointing", action="store_true")
    run.add_argument("--compile", action="store_true", help="torch.compile the model")
    run.add_argument("--device", help="default: cuda:LOCAL_RANK when available, else cpu")
    run.add_argument("--threads", type=int, help="torch intra-op threads per process")
    return p


def resolve_args(args: argparse.Namespace) -> argparse.Namespace:
    """Fill recipe defaults and check combinations."""
    recipe = {**TRAIN_RECIPES[args.recipe], **RECIPES[args.recipe]}
    adamw = args.optimizer == "adamw"
    defaults = dict(lr=ADAMW_DEFAULTS["lr"] if adamw else recipe["lr"], epochs=recipe["epochs"],
                    drop_path=recipe["drop_path"], label_smoothing=recipe["label_smoothing"],
                    mixup=recipe["mixup_alpha"], inflate_posemb=recipe["posemb_init"],
                    weight_decay=ADAMW_DEFAULTS["weight_decay"] if adamw else 0.0,
                    frame_stride=recipe["frame_stride"], eval_views=recipe["views"])
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.rand_augment is not None:
        args.rand_augment = (int(args.rand_augment[0]), args.rand_augment[1])
    args.amp_dtype = torch.bfloat16 if args.amp_dtype == "bfloat16" else torch.float16
    for key in ("batch_size", "accum_steps", "epochs", "log_every", "keep_checkpoints", "eval_every", "frame_stride"):
        if getattr(args, key) < 1:
            raise DataError(f"--{key.replace('_', '-')} must be >= 1, found {getattr(args, key)}")
    try:
        parse_views(args.eval_views)
    except ValueError as err:
        raise DataError(f"--eval-views: {err}") from None
    return args


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"%(asctime)s [rank {rank}] %(levelname)s %(message)s", datefmt="%H:%M:%S")
    try:
        args = resolve_args(args)
        if args.threads:
            torch.set_num_threads(args.threads)
        env = init_distributed(args.device, need_group=args.fsdp)
        try:
            result = train(args, env)
        finally:
            if env.initialised:
                dist.destroy_process_group()
    except DataError as err:
        parser.exit(2, f"{parser.prog}: error: {err}\n")
    return STOPPED_EXIT_CODE if result["stopped"] else 0


if __name__ == "__main__":
    sys.exit(main())
