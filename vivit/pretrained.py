"""load_pretrained: resolve a source -> fetch -> detect its format -> convert -> resample -> strict load.

Sources: a registry tag (``"vivit_b_16x2_fe.k400"``), ``"hf-hub:org/repo[@rev]"`` (a vivit folder or a transformers
ViViT repo), an ``http(s)`` URL, a local file (safetensors, torch state dict, reference flax checkpoint, ``.npz`` of
flax paths) or a local folder (``save_pretrained`` output, transformers folder, reference checkpoint folder).
"""

from __future__ import annotations

import json
import logging
import math
import pickle
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .embed import frame_sampling_grid, resample_pos_embed, sample_frame_indices
from .model import ViViT

_logger = logging.getLogger(__name__)

HEAD_KEYS = ("head.weight", "head.bias")
_MSGPACK_MAP_STARTS = {*range(0x81, 0x90), 0xDE, 0xDF}
FORMATS = ("safetensors", "torch", "scenic", "npz", "vivit-folder", "transformers-folder")


@dataclass
class Weights:
    """Weights in one of our layouts plus what is known about where they came from."""

    state: dict[str, torch.Tensor]
    grid: tuple[int, int, int] | None = None  # token grid the weights were trained on, when known
    label_names: list[str] | None = None


# ------------------------------------------------------------------------------------------------ detection
def detect_format(path: str | Path) -> str:
    """Name the weight format of a local file or folder (one of ``FORMATS``); ``ValueError`` if it is none."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"weights file {path} does not exist")
    if path.is_dir():
        config = path / "config.json"
        if config.is_file():
            cfg = _read_json(config)
            if isinstance(cfg.get("model_args"), dict):
                return "vivit-folder"
            if cfg.get("model_type") == "vivit":
                return "transformers-folder"
        if any(p.name.startswith("checkpoint") for p in path.iterdir()):
            return "scenic"
        raise ValueError(f"{path} is a folder but not a saved ViViT (config.json with model_args), a transformers "
                         "ViViT folder, or a folder of reference checkpoint_<step> files")
    with path.open("rb") as f:
        head = f.read(16)
    size = path.stat().st_size
    if len(head) >= 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") < size:
        return "safetensors"
    if head[:4] == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
        except zipfile.BadZipFile:
            raise ValueError(f"{path} starts like a zip archive (torch or .npz) but is corrupt or truncated") from None
        return "npz" if names and all(n.endswith(".npy") for n in names) else "torch"
    if head[:1] == b"\x80" and len(head) > 1 and 2 <= head[1] <= 5:
        return "torch"  # legacy (non-zip) torch.save pickle
    if head[:1] and head[0] in _MSGPACK_MAP_STARTS:
        return "scenic"
    raise ValueError(
        f"{path} is not a weights file vivit reads (size {size} bytes, starts {head[:8]!r}); expected safetensors, a "
        "torch state dict (.pt/.pth/.bin), a reference flax checkpoint (checkpoint_<step>) or an .npz of flax params"
    )


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} holds a JSON {type(data).__name__}, expected an object")
    return data


# -------------------------------------------------------------------------------------------------- reading
def read_torch_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A torch state dict file (``weights_only=True``; training checkpoints' ``state_dict``/``model`` unwrapped)."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)  # never executes pickled code
    except pickle.UnpicklingError as err:
        raise ValueError(f"{path} is not a plain torch state dict: the safe loader refused it ({str(err)[:200]}). "
                         "Only tensors and containers are accepted; re-save with torch.save(model.state_dict())"
                         ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile) as err:
        raise ValueError(f"{path} is not a readable torch file ({str(err)[:200]}); it may be truncated") from None
    for key in ("state_dict", "model", "model_state_dict", "module"):  # training checkpoints wrap the weights
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path} does not hold a state dict of tensors (found {type(obj).__name__})")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file; ``ValueError`` naming it when corrupt or truncated."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{path} is not a valid safetensors file ({err}); it may be corrupt or truncated") from None


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        params = {k: data[k] for k in data.files if k.startswith("params/")} or dict(data)
    from .convert.scenic import flatten_params

    return flatten_params(params)


def read_weights(path: str | Path, model: ViViT) -> Weights:
    """Read a local file or folder and bring its weights into our key layout for ``model``'s variant."""
    path = Path(path)
    fmt = detect_format(path)
    _logger.info("reading %s weights from %s", fmt, path)
    if fmt == "vivit-folder":
        from .hub import load_saved

        config, state = load_saved(path)
        return Weights(state, _grid_of_args(config["model_args"]), config.get("label_names"))
    if fmt == "transformers-folder":
        return _from_transformers(_read_flat(_folder_weights_file(path)), _read_json(path / "config.json"))
    if fmt in ("scenic", "npz"):
        from .convert.checkpoint import read_scenic_checkpoint
        from .convert.scenic import convert_scenic_params

        params = read_scenic_checkpoint(path) if fmt == "scenic" else _load_npz(path)
        return Weights(convert_scenic_params(params, model.variant))
    state = _read_flat(path)
    return _from_state_dict(state, path)


def _folder_weights_file(folder: Path) -> Path:
    """``model.safetensors``, else the older ``pytorch_model.bin``, of a model folder."""
    from .hub import LEGACY_WEIGHTS_NAME, WEIGHTS_NAME

    found = next((folder / n for n in (WEIGHTS_NAME, LEGACY_WEIGHTS_NAME) if (folder / n).is_file()), None)
    if found is None:
        raise FileNotFoundError(f"{folder} has a config.json but no weights ({WEIGHTS_NAME} or {LEGACY_WEIGHTS_NAME})")
    return found


def _weights_from_config(state: dict[str, torch.Tensor], config: Mapping[str, Any]) -> Weights:
    """Weights read beside a vivit ``config.json`` (our layout) or a transformers one (converted)."""
    if isinstance(config.get("model_args"), dict):
        return Weights(state, _grid_of_args(config["model_args"]), config.get("label_names"))
    return _from_transformers(state, config)


def _read_flat(path: Path) -> dict[str, torch.Tensor]:
    return read_safetensors(path) if detect_format(path) == "safetensors" else read_torch_state_dict(path)


def _from_state_dict(state: dict[str, torch.Tensor], path: Path) -> Weights:
    keys = set(state)
    if any("patch_embeddings.projection" in k for k in keys):
        config = path.parent / "config.json"
        if not config.is_file():
            raise ValueError(f"{path} holds transformers ViViT weights; put its config.json beside it (or pass the "
                             "folder) so activation, eps and sizes can be read")
        return _from_transformers(state, _read_json(config))
    if "patch_embed.proj.weight" in keys and state["patch_embed.proj.weight"].ndim == 4 and not any(
            k.startswith("encoder.") for k in keys):
        raise ValueError(f"{path} holds a 2D image ViT (patch_embed.proj is a Conv2d): use vivit.inflate(model, "
                         "state_dict) to inflate it into a video model")
    return Weights(state)


def _from_transformers(state: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> Weights:
    from .convert.transformers import from_transformers

    source = from_transformers(state, config)
    return Weights(source.state_dict(), source.grid_size, source.pretrained_cfg.get("label_names"))


def _grid_of_args(args: Mapping[str, Any]) -> tuple[int, int, int]:
    img = args.get("img_size", 224)
    img_h, img_w = (img, img) if isinstance(img, int) else img
    t, h, w = args.get("tubelet_size", (2, 16, 16))
    frames = args.get("num_frames", 32)
    if args.get("embedding") == "frame_sampling":
        sampled = sample_frame_indices(frames, args["n_sampled_frames"], args.get("exact_frame_count", False))
        return frame_sampling_grid(len(sampled), (img_h, img_w), (h, w))
    return (frames // t, img_h // h, img_w // w)


# ------------------------------------------------------------------------------------------------ adapting
def _source_grid(state: Mapping[str, torch.Tensor], model: ViViT, known: tuple[int, int, int] | None):
    """The token grid the weights were made for: as stated by the source, else inferred from posemb lengths."""
    if known is not None:
        return tuple(known)
    t, h, w = model.grid_size
    target = model.state_dict()

    def tokens(key: str) -> int | None:
        if key not in state:
            return None
        prefix = target[key].shape[1] - math.prod(_grid_for_key(key, (t, h, w)))
        return state[key].shape[1] - prefix

    def square(n: int) -> tuple[int, int]:
        r = math.isqrt(n)
        if r * r != n:
            raise ValueError(f"cannot tell the token grid of {n} positions; load into a model built for the weights' "
                             "own frames/size, or convert with a config that states them")
        return (r, r)

    if (s := tokens("encoder.spatial.pos_embed")) is not None:
        hw = (h, w) if s == h * w else square(s)
        return (tokens("encoder.temporal.pos_embed") or t, *hw)
    if (n := tokens("encoder.pos_embed")) is None or n == t * h * w:
        return (t, h, w)
    if n % (h * w) == 0:
        return (n // (h * w), h, w)
    if n % t == 0:
        return (t, *square(n // t))
    raise ValueError(f"the weights' positional embedding has {n} positions, which fits neither the model's "
                     f"{t}x{h}x{w} grid with another clip length nor with another frame size")


def _grid_for_key(key: str, grid: tuple[int, int, int]) -> tuple[int, ...]:
    return {"encoder.spatial.pos_embed": grid[1:], "encoder.temporal.pos_embed": grid[:1]}.get(key, grid)


def fit_pos_embeds(state: dict[str, torch.Tensor], model: ViViT, source_grid: tuple[int, int, int]) -> None:
    """Resample every positional embedding in ``state`` from ``source_grid`` to the model's token grid (SPEC 4.3)."""
    target = model.state_dict()
    for key in ("encoder.pos_embed", "encoder.spatial.pos_embed", "encoder.temporal.pos_embed"):
        if key not in state or key not in target:
            continue
        old, new = _grid_for_key(key, tuple(source_grid)), _grid_for_key(key, model.grid_size)
        if old != new:
            prefix = target[key].shape[1] - math.prod(new)
            state[key] = resample_pos_embed(state[key], old, new, prefix)
            _logger.info("resampled %s from grid %s to %s", key, old, new)


def load_weights_into(model: ViViT, weights: Weights, *, strict: bool = True) -> ViViT:
    """Resample, reconcile the head, and load; only the head may be left out, and only when its size changed."""
    state = dict(weights.state)
    fit_pos_embeds(state, model, _source_grid(state, model, weights.grid))
    target = model.state_dict()
    allowed_missing: set[str] = set()
    head_kept = True
    if any(k in state for k in HEAD_KEYS):
        source_classes = state["head.weight"].shape[0] if "head.weight" in state else None
        if model.num_classes == 0 or source_classes != model.num_classes:
            for k in HEAD_KEYS:
                state.pop(k, None)
            allowed_missing = {k for k in HEAD_KEYS if k in target}
            head_kept = False
            _logger.info("new classifier: %s classes in the weights, %s in the model; head left at init",
                         source_classes, model.num_classes)
    elif model.num_classes > 0:
        allowed_missing = set(HEAD_KEYS)  # headless weights (a backbone): the head keeps its zero init
        head_kept = False
    for key, value in state.items():
        if key in target and tuple(value.shape) != tuple(target[key].shape):
            raise ValueError(f"weight {key} has shape {tuple(value.shape)} but the model expects "
                             f"{tuple(target[key].shape)}: the weights belong to another architecture "
                             f"(model: {model.variant}, embed_dim {model.embed_dim})")
    missing = sorted(set(target) - set(state) - allowed_missing)
    unexpected = sorted(set(state) - set(target))
    if (missing or unexpected) and strict:
        raise ValueError(f"weights do not fit this {model.variant} model: {len(missing)} missing keys "
                         f"{missing[:12]}, {len(unexpected)} unexpected keys {unexpected[:12]}. Check the "
                         "architecture, or pass strict=False to load what fits")
    if missing or unexpected:
        _logger.warning("strict=False: %d missing keys %s, %d unexpected keys %s", len(missing), missing[:12],
                        len(unexpected), unexpected[:12])
    model.load_state_dict({k: v for k, v in state.items() if k in target}, strict=False)
    if head_kept and weights.label_names and len(weights.label_names) == model.num_classes:
        model.pretrained_cfg["label_names"] = list(weights.label_names)
    return model


# ---------------------------------------------------------------------------------------------- resolving
def fetch_weights(source: str | Path, model: ViViT) -> Weights:
    """Resolve ``source`` (tag, ``hf-hub:``, URL, path) to weights in our layout."""
    from . import hub
    from .registry import PRETRAINED

    text = str(source)
    if text in PRETRAINED:
        cfg = PRETRAINED[text]
        if cfg.file:  # shipped inside the package
            from importlib import resources

            source_path = Path(str(resources.files("vivit").joinpath(cfg.file)))
        else:
            source_path = f"hf-hub:{cfg.hf_hub_id}" if cfg.hf_hub_id else cfg.url
        weights = fetch_weights(source_path, model)
        if weights.grid is None and cfg.source_format in ("scenic", "vivit"):
            c, t, h, w = cfg.input_size
            weights.grid = _grid_of_args({**model.model_args, "num_frames": t, "img_size": (h, w)})
        if weights.label_names is None and cfg.label_set:  # a checkpoint's own id2label wins (SPEC 3.2)
            from .labels import label_names

            weights.label_names = label_names(cfg.label_set)
        return weights
    if text.startswith(hub.HUB_PREFIXES):
        repo_id, revision = hub.parse_hub_name(text)
        config = _read_json(hub.hf_hub_file(repo_id, "config.json", revision))
        if isinstance(config.get("model_args"), dict) or config.get("model_type") == "vivit":
            return _weights_from_config(_read_flat(_hub_weights_file(repo_id, revision)), config)
        raise ValueError(f"hf-hub:{repo_id} config.json is neither a vivit config (model_args) nor a transformers "
                         f"ViViT config (model_type 'vivit'); found keys {sorted(config)[:10]}")
    if text.startswith(("http://", "https://")):
        return read_weights(hub.download_url(text), model)
    return read_weights(Path(source), model)


def _hub_weights_file(repo_id: str, revision: str | None) -> Path:
    from . import hub

    try:
        return hub.hf_hub_file(repo_id, hub.WEIGHTS_NAME, revision)
    except (FileNotFoundError, RuntimeError) as missing:
        # Older repos only have the pickle (read with weights_only=True). Offline, a missing safetensors file is a
        # RuntimeError ("not in the cache"), and a cached pickle must still be found.
        try:
            return hub.hf_hub_file(repo_id, hub.LEGACY_WEIGHTS_NAME, revision)
        except (FileNotFoundError, RuntimeError):
            raise missing from None


def saved_source(cfg: Mapping[str, Any]) -> str | None:
    """The source a model made by ``create_model("hf-hub:...")`` / ``("local-dir:...")`` came from, else ``None``."""
    if cfg.get("source") == "hf-hub" and cfg.get("hf_hub_id"):
        return f"hf-hub:{cfg['hf_hub_id']}"
    if cfg.get("source") == "local-dir" and cfg.get("file"):
        return str(cfg["file"])
    return None


def load_pretrained(model: ViViT, source: str | Path | None = None, *, strict: bool = True) -> ViViT:
    """Load weights into ``model``, converting foreign layouts and resampling positional embeddings.

    Args:
        model: The model to fill (its variant, sizes and head decide what is expected).
        source: ``None`` (the model's own pretrained cfg), a tag ``"arch.tag"``, ``"hf-hub:org/repo[@rev]"``, an
            ``http(s)`` URL, or a local file/folder; the format is detected (see ``FORMATS``).
        strict: Refuse missing or unexpected keys (listing them). A head whose size differs from the model's is
            always dropped and left at its zero init; that is the only tolerated gap.

    Returns:
        ``model``, in place.
    """
    if source is None:
        cfg = model.pretrained_cfg or {}
        name = f"{cfg['architecture']}.{cfg['tag']}" if cfg.get("tag") else cfg.get("architecture")
        if not cfg.get("hf_hub_id") and not cfg.get("url") and not cfg.get("file"):
            raise ValueError(f"model {name or '(unnamed)'} has no default weights; pass a source (tag, 'hf-hub:...', "
                             "URL or local path)")
        source = saved_source(cfg) or name
    weights = fetch_weights(source, model)
    return load_weights_into(model, weights, strict=strict)


def _model_from_config(config: Mapping[str, Any], weights_file: Any, where: str, overrides: Mapping[str, Any],
                       pretrained: bool) -> ViViT:
    """A model built from a vivit or transformers ``config.json``, with its weights when ``pretrained``.

    ``weights_file()`` is read at most once: a transformers config needs the weights' shapes to name the
    architecture, and those same tensors are then loaded.
    """
    state = None
    if isinstance(config.get("model_args"), dict):
        args, labels = dict(config["model_args"]), config.get("label_names")
        pretrained_cfg = dict(config.get("pretrained_cfg") or {})
    elif config.get("model_type") == "vivit":
        from .convert.transformers import _config_dict, model_args_from_transformers

        state = _read_flat(weights_file())
        args = model_args_from_transformers(_config_dict(config), state)
        labels, pretrained_cfg = None, {}
    else:
        raise ValueError(f"{where} is not a vivit or transformers ViViT model (config.json keys: "
                         f"{sorted(config)[:10]})")
    model = ViViT(**{**args, **overrides})
    model.pretrained_cfg = {**pretrained_cfg, "input_size": (model.in_chans, model.num_frames, *model.img_size),
                            "num_classes": model.num_classes}
    if labels and model.num_classes == len(labels):
        model.pretrained_cfg["label_names"] = list(labels)
    if pretrained:
        load_weights_into(model, _weights_from_config(_read_flat(weights_file()) if state is None else state, config))
    return model


def create_from_hub(name: str, pretrained: bool = False, **overrides: Any) -> ViViT:
    """``create_model("hf-hub:org/repo[@rev]")``: rebuild the architecture from the repo's config.json.

    A vivit repo (``save_pretrained``) gives its ``model_args``; a transformers ViViT repo its config. ``overrides``
    (``num_classes``, ``num_frames``, ``img_size``, any ViViT kwarg) replace the stored values; with ``pretrained``
    the weights are loaded and resampled to them.
    """
    from . import hub

    repo_id, revision = hub.parse_hub_name(name)
    config = _read_json(hub.hf_hub_file(repo_id, "config.json", revision))
    model = _model_from_config(config, lambda: _hub_weights_file(repo_id, revision), f"hf-hub:{repo_id}", overrides,
                               pretrained)
    model.pretrained_cfg.update(hf_hub_id=repo_id, source="hf-hub")
    return model


def create_from_folder(path: str | Path, pretrained: bool = True, **overrides: Any) -> ViViT:
    """``create_model("local-dir:PATH")``: a folder written by ``save_pretrained`` or a transformers ViViT folder."""
    folder = Path(path)
    fmt = detect_format(folder)
    if fmt not in ("vivit-folder", "transformers-folder"):
        raise ValueError(f"{folder} is a {fmt} source, not a model folder: create the architecture and call "
                         "vivit.load_pretrained(model, path)")

    model = _model_from_config(_read_json(folder / "config.json"), lambda: _folder_weights_file(folder), str(folder),
                               overrides, pretrained)
    model.pretrained_cfg.update(file=str(folder), source="local-dir")
    return model
